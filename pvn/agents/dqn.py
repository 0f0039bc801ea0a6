"""DQN with double Q-learning and n-step returns, for any Q network over replayed states.

One update rule serves both baselines of the evaluation (Farebrother et al. 2023, Sec. 5; the
PVN code's online evaluation runs Acme DQN):

* linear control on frozen features (``agents.linear_dqn``): the network is one linear layer and
  the replay holds features;
* end-to-end DQN (Mnih et al. 2015, the classic baseline): the network is a trainable torso plus a
  linear layer and the replay holds frames, stacked at sample time.

The rule (van Hasselt et al. 2016, double Q-learning with n-step returns)::

    y = clip(R^(n)) + discount * Q_target(s', argmax_a' Q(s', a'))   discount = gamma^n or 0
    loss = mean Huber_1(Q(s, a) - y)

(``double_q=False``: ``max_a' Q_target(s', a')``, the Nature DQN target that Dopamine's DQN,
the agent of the DQN Replay Dataset, uses; ``optimizer=rmsprop_tf``: its optimizer,
:class:`agents.rmsprop_tf.RMSPropTF`.)

with Adam (paper: lr 6.25e-5, eps 1.5e-4) and a hard target copy every ``target_period``
(2,000) updates. ``reward_clip`` says where rewards meet [-1, 1]: ``return`` clips the
discounted n-step return inside the loss, as Acme's DQN learner does (its n-step adder sums the
raw rewards); ``step`` clips each reward before it is stored (Dopamine's rule, and pvn's before
the paper preset followed Acme); ``none`` never clips. ``max_grad_norm`` clips the global
gradient norm; ``None`` does not, which is what the official run did (its config names 10, but
Acme's DQN builder never passes the value to the learner).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pvn.agents.rmsprop_tf import RMSPropTF
from pvn.auxiliary.init import xavier_
from pvn.replay.feature_replay import FeatureBatch

REWARD_CLIPS = ("return", "step", "none")


@dataclass
class DQNConfig:
    lr: float = 6.25e-5
    adam_eps: float = 1.5e-4
    max_grad_norm: float | None = 10.0
    target_period: int = 2_000
    huber_delta: float = 1.0
    reward_clip: str = "step"  # return (Acme, the paper) | step (Dopamine) | none
    double_q: bool = True  # False: max over the target's values (Nature DQN, Dopamine)
    optimizer: str = "adam"  # adam | rmsprop_tf (Dopamine's DQN: TF1 RMSProp)
    rms_decay: float = 0.95
    rms_momentum: float = 0.0
    rms_eps: float = 1e-5
    rms_centered: bool = True

    def __post_init__(self) -> None:
        if self.reward_clip not in REWARD_CLIPS:
            raise ValueError(
                f"agent.reward_clip={self.reward_clip!r}: choose one of {', '.join(REWARD_CLIPS)}"
            )
        if self.optimizer not in ("adam", "rmsprop_tf"):
            raise ValueError(f"agent.optimizer={self.optimizer!r}: choose adam or rmsprop_tf")


def double_dqn_target(
    ret: torch.Tensor,
    discount: torch.Tensor,
    q_next_online: torch.Tensor | None,
    q_next_target: torch.Tensor,
) -> torch.Tensor:
    """``ret + discount * q_next_target[argmax q_next_online]`` for each row; without online
    values, ``ret + discount * max q_next_target`` (the Nature DQN target)."""
    if q_next_online is None:
        return ret + discount * q_next_target.amax(dim=1)
    best = q_next_online.argmax(dim=1, keepdim=True)
    return ret + discount * q_next_target.gather(1, best).squeeze(1)


def linear_head(
    feature_dim: int, num_actions: int, gen: torch.Generator, cls: type[nn.Linear] = nn.Linear
) -> nn.Linear:
    """``Dense(num_actions)`` (a ``cls``): Xavier-uniform weight from ``gen``, zero bias."""
    head = cls(feature_dim, num_actions)
    xavier_(head.weight, feature_dim, num_actions, gen)
    nn.init.zeros_(head.bias)
    return head


class DQN:
    """A Q network, its target copy and Adam; :meth:`update` takes a :class:`FeatureBatch`.

    ``network`` maps what the replay stores (features, or uint8 frame stacks) to ``(B, A)``.
    """

    def __init__(self, network: nn.Module, cfg: DQNConfig) -> None:
        self.cfg = cfg
        self.network = network
        self.target = copy.deepcopy(network).requires_grad_(False)
        self.params = [p for p in network.parameters() if p.requires_grad]
        if cfg.optimizer == "rmsprop_tf":
            self.optimizer: torch.optim.Optimizer = RMSPropTF(
                self.params, cfg.lr, cfg.rms_decay, cfg.rms_momentum, cfg.rms_eps, cfg.rms_centered
            )
        else:  # fused: one kernel per step; a linear head's update is otherwise dispatch-bound
            self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        self.updates = 0

    def to(self, device: str | torch.device) -> DQN:
        self.network.to(device)
        self.target.to(device)
        return self

    @torch.no_grad()
    def q_values(self, states: torch.Tensor) -> torch.Tensor:
        return self.network(states)

    def calibrate(self, states: torch.Tensor) -> None:
        """Called once, when learning starts, with the states the replay holds; DQN itself has
        nothing to fit to them (:class:`agents.linear_dqn.LinearDQN` scales its features)."""

    def update(self, batch: FeatureBatch) -> dict[str, torch.Tensor]:
        """One gradient step; returns device tensors (no host sync)."""
        ret = batch.ret.clamp(-1.0, 1.0) if self.cfg.reward_clip == "return" else batch.ret
        with torch.no_grad():
            y = double_dqn_target(
                ret,
                batch.discount,
                self.network(batch.next_features) if self.cfg.double_q else None,
                self.target(batch.next_features),
            )
        q = self.network(batch.features).gather(1, batch.action.view(-1, 1)).squeeze(1)
        loss = nn.functional.huber_loss(q, y, delta=self.cfg.huber_delta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = math.inf if self.cfg.max_grad_norm is None else self.cfg.max_grad_norm
        grad_norm = nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.updates += 1
        if self.updates % self.cfg.target_period == 0:
            self.target.load_state_dict(self.network.state_dict())
        return {"loss": loss.detach(), "q_mean": q.detach().mean(), "grad_norm": grad_norm}

    def state_dict(self) -> dict[str, Any]:
        return {
            "network": self.network.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


class QNetwork(nn.Module):
    """A torso and a linear Q layer, trained together (end-to-end DQN): frames in, ``(B, A)``."""

    def __init__(self, torso: nn.Module, num_actions: int, gen: torch.Generator) -> None:
        super().__init__()
        self.torso = torso
        self.head = linear_head(torso.feature_dim, num_actions, gen)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(obs))


def end_to_end_dqn(torso: nn.Module, num_actions: int, cfg: DQNConfig, gen: torch.Generator) -> DQN:
    """End-to-end DQN: ``torso`` (trainable) plus a linear layer, learned from frames."""
    return DQN(QNetwork(torso.requires_grad_(True).train(), num_actions, gen), cfg)
