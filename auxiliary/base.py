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
    """Base class: ``forward(obs, reward) -> TaskOutput``.

    ``obs`` is the uint8 stack ``(B, 4, 84, 84)`` of the transition's first state and ``reward``
    its logged (n-step) reward ``(B,)``.
    """

    num_tasks: int
    #: True when rewards depend on the state only, so the learner must use one-step transitions
    #: (an n-step return would need the tasks' rewards of the intermediate states).
    state_based: bool = True
    #: True when rewards are indicators, so firing fractions are worth logging.
    indicator: bool = False

    def forward(self, obs: torch.Tensor, reward: torch.Tensor) -> TaskOutput:
        raise NotImplementedError
