"""Acting policies for data collection and evaluation.

A policy maps a batch of observations, uint8 ``(N, 4, 84, 84)`` zero-padded stacks, to int actions
``(N,)``. Anything with that ``act`` method plugs into ``pvn collect``; trained agents provide one
through :class:`EpsilonGreedyPolicy` around their Q-function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch


class Policy(Protocol):
    num_actions: int

    def act(self, obs: np.ndarray) -> np.ndarray: ...


def linearly_decaying_epsilon(
    step: int, final: float, decay_steps: int, warmup_steps: int, start: float = 1.0
) -> float:
    """Dopamine's ``linearly_decaying_epsilon``: ``start`` for the first ``warmup_steps`` agent
    steps (the replay's minimum fill), then linear to ``final`` over ``decay_steps``, then
    ``final``; ``decay_steps=0`` is a fixed ``final``."""
    if decay_steps <= 0:
        return final
    bonus = (start - final) * (decay_steps + warmup_steps - step) / decay_steps
    return final + min(max(bonus, 0.0), start - final)


def epsilon_greedy(q: torch.Tensor, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """argmax of ``q`` (N, A) per row, replaced by a uniform action with probability epsilon."""
    greedy = q.argmax(dim=1).cpu().numpy()
    explore = rng.random(len(greedy)) < epsilon
    return np.where(explore, rng.integers(0, q.shape[1], size=len(greedy)), greedy)


class RandomPolicy:
    """Uniform random actions from a seeded generator (the DQN Replay "random" baseline)."""

    def __init__(self, num_actions: int, seed: int = 0) -> None:
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.integers(0, self.num_actions, size=len(obs))


class EpsilonGreedyPolicy:
    """Greedy in ``q_fn(obs)`` with probability ``1 - epsilon``, else uniform random.

    ``q_fn`` takes a uint8 tensor ``(N, 4, 84, 84)`` on ``device`` and returns ``(N, A)`` values;
    one batched forward pass serves every env.
    """

    def __init__(
        self,
        q_fn: Callable[[torch.Tensor], torch.Tensor],
        num_actions: int,
        epsilon: float,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.q_fn, self.num_actions, self.epsilon = q_fn, num_actions, epsilon
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        q = self.q_fn(torch.from_numpy(obs).to(self.device, non_blocking=True))
        return epsilon_greedy(q, self.epsilon, self.rng)


POLICIES = ("random", "epsilon_greedy")
