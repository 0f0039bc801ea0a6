"""Linear DQN on frozen features: the PVN paper's evaluation of a representation.

A single linear layer ``Q(s, .) = W phi(s) + b`` on the frozen encoder's features, trained with
the shared DQN rule of :mod:`agents.dqn` as in the PVN code's online evaluation (Acme DQN;
Farebrother et al. 2023, Sec. 5): double Q-learning with n-step returns, Huber(1), Adam
(lr 6.25e-5, eps 1.5e-4), gradient-norm clip 10, a hard target copy every 2,000 updates, rewards
clipped to [-1, 1] before they are stored. The replay holds features, so updates never run the
torso.
"""

from __future__ import annotations

import torch

from agents.dqn import DQN, DQNConfig, linear_head


class LinearDQN(DQN):
    """:class:`agents.dqn.DQN` whose network is one Xavier-initialised linear layer."""

    def __init__(
        self, feature_dim: int, num_actions: int, cfg: DQNConfig, gen: torch.Generator
    ) -> None:
        super().__init__(linear_head(feature_dim, num_actions, gen), cfg)

    @property
    def head(self) -> torch.nn.Linear:
        return self.network
