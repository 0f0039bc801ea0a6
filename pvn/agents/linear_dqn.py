"""Linear DQN on frozen features: the PVN paper's evaluation of a representation.

A single linear layer ``Q(s, .) = W phi(s) + b`` on the frozen encoder's features, trained with
the shared DQN rule of :mod:`pvn.agents.dqn` as in the PVN code's online evaluation (Acme DQN;
Farebrother et al. 2023, Sec. 5): double Q-learning with n-step returns and Huber(1); where
rewards are clipped and whether gradients are is that module's ``reward_clip`` and
``max_grad_norm``. The replay holds features, so updates never run the torso.

``agent.feature_norm=true`` reads ``phi(s) / c`` instead, ``c`` the mean L2 norm of the features in
the replay when learning starts (:meth:`LinearDQN.calibrate`), fixed from then on. The function
class is the same (any ``W`` on ``phi / c`` is ``W / c`` on ``phi``), but the optimizer's step is
not: Adam moves each weight by about ``lr`` per update whatever the gradient's scale, so the
Q-values move by about ``lr * ||phi||_1`` per update. A pretrained torso's features can be
tens of times larger than a random torso's, so one ``lr`` is a different effective step for each
representation compared; dividing by ``c`` makes ``lr`` mean the same thing for all of them (the
measured norms: docs/results/evidence_cpu/results.md, "Feature scale").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pvn.agents.dqn import DQN, DQNConfig, linear_head


class ScaledLinear(nn.Linear):
    """``Linear(x * scale)``; ``scale`` (1 until calibrated) is not part of the layer's
    state dict, so heads saved before it existed load unchanged; :class:`LinearDQN` saves it."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("scale", torch.ones(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.scale.to(x.dtype))


class LinearDQN(DQN):
    """:class:`agents.dqn.DQN` whose network is one Xavier-initialised linear layer, reading
    the features divided by a fixed scale with ``feature_norm`` (module docstring)."""

    def __init__(
        self,
        feature_dim: int,
        num_actions: int,
        cfg: DQNConfig,
        gen: torch.Generator,
    ) -> None:
        # without feature_norm a plain layer: no multiply on the acting and update paths
        layer = ScaledLinear if cfg.feature_norm else nn.Linear
        super().__init__(linear_head(feature_dim, num_actions, gen, layer), cfg)
        self.feature_norm = cfg.feature_norm

    @property
    def head(self) -> nn.Linear:
        return self.network

    @property
    def feature_scale(self) -> float:
        """What the features are multiplied by before the layer (1 without ``feature_norm``)."""
        return float(self.network.scale) if self.feature_norm else 1.0

    @torch.no_grad()
    def calibrate(self, features: torch.Tensor) -> None:
        """Fix the scale to ``1 / mean ||phi||_2`` over ``features`` (the replay's states when
        learning starts); a no-op without ``feature_norm``."""
        if not self.feature_norm or len(features) == 0:
            return
        norm = features.float().norm(dim=1).mean()
        scale = 1.0 / norm.clamp_min(1e-8)
        self.network.scale.fill_(scale)
        self.target.scale.fill_(scale)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "feature_scale": self.feature_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if not self.feature_norm:
            return
        scale = float(state.get("feature_scale", 1.0))  # heads saved before it: unscaled
        self.network.scale.fill_(scale)
        self.target.scale.fill_(scale)
