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
from dataclasses import astuple, dataclass, field
from typing import Any

import torch
from torch import nn

from pvn.agents.rmsprop_tf import RMSPropTF
from pvn.auxiliary.init import xavier_
from pvn.replay.feature_replay import FeatureBatch

REWARD_CLIPS = ("return", "step", "none")


@dataclass
class RMSPropConfig:
    """TF1's RMSProp as Dopamine's DQN sets it (``agent.optimizer=rmsprop_tf``)."""

    decay: float = 0.95
    momentum: float = 0.0
    eps: float = 1.0e-5
    centered: bool = True


#: Huber loss threshold of every DQN here (Mnih et al. 2015; Dopamine's and Acme's 1.0)
HUBER_DELTA = 1.0


@dataclass
class DQNConfig:
    """The ``agent:`` section of ``pvn evaluate``: the learner, its replay and its exploration
    (one home for each default; ``eval_preset=paper`` sets the official protocol's values, which
    are the defaults here except reward_clip, max_grad_norm and feature_dtype)."""

    n_step: int = 5  # n-step returns (paper: 5)
    gamma: float = 0.99
    optimizer: str = "adam"  # adam | rmsprop_tf (TF1's RMSProp, Dopamine's DQN; settings below)
    lr: float = 6.25e-5  # Adam (paper: 6.25e-5, eps 1.5e-4)
    adam_eps: float = 1.5e-4
    rmsprop: RMSPropConfig = field(default_factory=RMSPropConfig)  # optimizer=rmsprop_tf
    double_q: bool = True  # double Q-learning targets (paper); false: max over the target net
    reward_clip: str = "step"  # return: clip the discounted n-step return to [-1, 1] in the loss
    # (Acme's learner: the paper) | step: clip each reward (Dopamine) | none
    max_grad_norm: float | None = 10.0  # global gradient-norm clip; null: none (the paper's run:
    # its config names 10, but Acme's DQN never applies it)
    target_period: int = 2_000  # updates between hard target copies (paper: 2,000)
    batch_size: int = 32  # (paper: 32)
    update_every: int = 4  # agent steps per update (paper: 4)
    min_replay: int = 2_000  # transitions before learning starts (paper: 2,000)
    capacity: int = 1_000_000  # replay slots (paper: 1M); features, not frames, are stored
    epsilon_train: float = 0.01  # exploration while learning (paper: 0.01, fixed); with a decay,
    # its final value
    epsilon_start: float = 1.0  # with a decay: the value until min_replay agent steps
    epsilon_decay_steps: int = 0  # agent steps of linear decay after min_replay (Dopamine:
    # 250,000; 0: epsilon_train throughout)
    epsilon_eval: float = 0.001  # exploration in evaluation episodes (paper: 0.001)
    feature_dtype: str = "float16"  # float16 | float32 storage of the replayed features
    feature_norm: bool = False  # linear heads: read phi / c, c = the features' mean L2 norm over
    # the replay when learning starts, so that lr is the same step for every torso (a PVN's
    # features are 30-90x a random torso's; the paper: off)

    def __post_init__(self) -> None:
        if self.reward_clip not in REWARD_CLIPS:
            raise ValueError(
                f"agent.reward_clip={self.reward_clip!r}: choose one of {', '.join(REWARD_CLIPS)}"
            )
        if self.optimizer not in ("adam", "rmsprop_tf"):
            raise ValueError(f"agent.optimizer={self.optimizer!r}: choose adam or rmsprop_tf")
        if self.epsilon_decay_steps < 0:
            raise ValueError(f"agent.epsilon_decay_steps={self.epsilon_decay_steps}: must be >= 0")
        if self.feature_dtype not in ("float16", "float32"):
            raise ValueError(
                f"agent.feature_dtype={self.feature_dtype!r}: choose float16 or float32"
            )


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
                self.params, cfg.lr, *astuple(cfg.rmsprop)
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
        loss = nn.functional.huber_loss(q, y, delta=HUBER_DELTA)
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
