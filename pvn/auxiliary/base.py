"""The interface every auxiliary task family implements.

A family turns a batch into per-task rewards ``(B, T)`` (the cumulants whose successor measures
or values the PVN heads learn) and may carry its own calibration loss (the RND indicators'
quantile loss on their biases). Families know nothing of the learner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TaskOutput:
    rewards: torch.Tensor  # (B, T) float, no gradient
    calibration_loss: torch.Tensor | None = None  # scalar, gradient to the family's parameters


class TaskFamily(nn.Module):
    """Base class: ``forward(obs, reward) -> TaskOutput``, in two parts.

    ``obs`` is the uint8 stack ``(B, 4, 84, 84)`` of the transition's first state and ``reward``
    its logged (n-step) reward ``(B,)``. :meth:`frozen` is the part of the rewards that is a fixed
    function of the state (the random networks' outputs, the hashes): a run may compute it once
    per logged state and look it up (:mod:`pvn.task_cache`). :meth:`from_frozen` turns it into
    the rewards and the calibration loss, which depend on learned parameters.
    """

    num_tasks: int
    #: True when rewards depend on the state only, so the learner must use one-step transitions
    #: (an n-step return would need the tasks' rewards of the intermediate states).
    state_based: bool = True
    #: True when rewards are indicators, so firing fractions are worth logging.
    indicator: bool = False
    #: True when :meth:`frozen` returns the state's fixed outputs (False: it returns None).
    cacheable: bool = True
    #: The expected reward of every task on the data when it is fixed by construction (the
    #: indicators' firing rate p); ``None`` when unknown. ``td.center`` subtracts it.
    base_rate: float | None = None

    def frozen(self, obs: torch.Tensor) -> torch.Tensor | None:
        """``(B, T)`` float: the state's fixed task outputs; ``None`` when the family has none."""
        return None

    def from_frozen(self, frozen: torch.Tensor | None, reward: torch.Tensor) -> TaskOutput:
        raise NotImplementedError

    def forward(self, obs: torch.Tensor, reward: torch.Tensor) -> TaskOutput:
        return self.from_frozen(self.frozen(obs), reward)
