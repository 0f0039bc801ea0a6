"""Multi-task action-value heads: one linear head per auxiliary task, ``(B, T, A)`` out."""

from __future__ import annotations

import torch
from torch import nn

from pvn.auxiliary.init import xavier_


class MultiTaskHead(nn.Module):
    """``T`` independent ``Dense(num_actions)`` heads on shared features, computed as one matmul.

    Each head is Xavier-initialised with its own fans (D in, A out), as the PVN code's vmapped
    ``Dense`` layers are, not with the fans of the fused ``(T*A, D)`` matrix.
    """

    def __init__(self, feature_dim: int, num_tasks: int, num_actions: int, gen: torch.Generator):
        super().__init__()
        self.num_tasks, self.num_actions = num_tasks, num_actions
        self.weight = nn.Parameter(torch.empty(num_tasks * num_actions, feature_dim))
        self.bias = nn.Parameter(torch.zeros(num_tasks * num_actions))
        xavier_(self.weight, feature_dim, num_actions, gen)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(features, self.weight, self.bias)
        return out.view(-1, self.num_tasks, self.num_actions)


class PVNNetwork(nn.Module):
    """Torso + multi-task head; returns ``(q (B, T, A), features (B, D))``."""

    def __init__(self, torso: nn.Module, head: MultiTaskHead) -> None:
        super().__init__()
        self.torso, self.head = torso, head

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.torso(obs)
        return self.head(features), features
