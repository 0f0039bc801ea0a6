"""Linear DQN on frozen features: the PVN paper's evaluation of a representation.

A single linear layer ``Q(s, .) = W phi(s) + b`` on the frozen encoder's features, trained as
in the PVN code's online evaluation (Acme DQN; Farebrother et al. 2023, Sec. 5): double
Q-learning (van Hasselt et al. 2016) with n-step returns,

    y = R^(n) + discount * Q_target(s', argmax_a' Q(s', a'))      discount = gamma^n or 0
    loss = mean Huber_1(Q(s, a) - y)

Adam (lr 6.25e-5, eps 1.5e-4), global gradient-norm clip 10, a hard target copy every 2,000
updates, rewards clipped to [-1, 1] before they are stored.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agents.feature_replay import FeatureBatch
from pvn.networks.init import xavier_


@dataclass
class LinearDQNConfig:
    lr: float = 6.25e-5
    adam_eps: float = 1.5e-4
    max_grad_norm: float = 10.0
    target_period: int = 2_000
    huber_delta: float = 1.0


def double_dqn_target(
    ret: torch.Tensor,
    discount: torch.Tensor,
    q_next_online: torch.Tensor,
    q_next_target: torch.Tensor,
) -> torch.Tensor:
    """``ret + discount * q_next_target[argmax q_next_online]`` for each row."""
    best = q_next_online.argmax(dim=1, keepdim=True)
    return ret + discount * q_next_target.gather(1, best).squeeze(1)


class LinearDQN:
    """The linear head, its target copy and optimizer; :meth:`update` takes a FeatureBatch."""

    def __init__(
        self, feature_dim: int, num_actions: int, cfg: LinearDQNConfig, gen: torch.Generator
    ) -> None:
        self.cfg = cfg
        self.head = nn.Linear(feature_dim, num_actions)
        xavier_(self.head.weight, feature_dim, num_actions, gen)
        nn.init.zeros_(self.head.bias)
        self.target = copy.deepcopy(self.head).requires_grad_(False)
        self.optimizer = torch.optim.Adam(
            self.head.parameters(), lr=cfg.lr, eps=cfg.adam_eps, foreach=True
        )
        self.updates = 0

    def to(self, device: str | torch.device) -> LinearDQN:
        self.head.to(device)
        self.target.to(device)
        return self

    @torch.no_grad()
    def q_values(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.float())

    def update(self, batch: FeatureBatch) -> dict[str, torch.Tensor]:
        """One gradient step; returns device tensors (no host sync)."""
        with torch.no_grad():
            y = double_dqn_target(
                batch.ret,
                batch.discount,
                self.head(batch.next_features),
                self.target(batch.next_features),
            )
        q = self.head(batch.features).gather(1, batch.action.view(-1, 1)).squeeze(1)
        loss = nn.functional.huber_loss(q, y, delta=self.cfg.huber_delta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.head.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        if self.updates % self.cfg.target_period == 0:
            self.target.load_state_dict(self.head.state_dict())
        return {"loss": loss.detach(), "q_mean": q.detach().mean(), "grad_norm": grad_norm}

    def state_dict(self) -> dict[str, Any]:
        return {
            "head": self.head.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
