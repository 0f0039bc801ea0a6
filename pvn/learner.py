"""The PVN learner: successor measures of many auxiliary tasks, learned off-policy by TD.

For each task ``t`` with reward ``r_t(s)`` (an indicator of a set of states for the paper's
tasks), the head ``Q_t(s, a)`` learns the discounted measure of that set under the policy that
acts uniformly at random from the next state on (Farebrother et al. 2023, Eq. 3 with the mean
over next actions; ``aggregate="max"`` learns per-task control values instead)::

    y_t = r_t(s) + (1 - terminal) * gamma^n * agg_{a'} Q_t^target(s', a')
    loss = mean_{b,t} 1/2 (y_t - Q_t(s, a))^2          (or Huber)

The target network follows the online one by Polyak averaging
(``target <- (1 - tau) target + tau online``, with the online weights from before the update, as
the PVN code's ``apply_gradients`` does; paper: tau = 0.01) or a hard copy every
``target_period`` updates. For the first ``warmup_steps`` updates (paper: the TD loss is masked
while ``step <= 62,500``, so ``62,501``) only the tasks' calibration loss counts; it stays on
for the whole run. ``warmup_mode`` says what the main optimizer does meanwhile: ``skip`` (pvn's
default) leaves it alone; ``zero_td`` is the official update, which multiplies the TD loss by 0
and still steps the main Adam on the zero gradient, so its step count (hence its bias
correction) when TD starts is the official one. Task parameters have their own optimizer, as in
the PVN code. Task rewards are computed in float32 even under ``bf16`` autocast, so a threshold
never flips on a bfloat16 rounding.

``center``: learn the successor measure of the centred cumulant ``r_t(s) - p`` instead, where
``p`` is the indicator's base rate (the fraction of logged states its calibration, or its hash,
puts in the set). Without terminals the centred fixed point is exactly
``Q_t(s, a) - p / (1 - gamma)``: the same function up to one constant per task, which a linear
read-out absorbs in its bias. What changes is learning: uncentred, the targets are dominated by
that shared constant (5 at p = 0.05, gamma = 0.99; TD error of that size in every state for the
first thousands of updates), and an optimizer with per-parameter step sizes (Adam moves each
weight by about ``lr`` per step) builds it faster from many torso units than from one head
bias, so the features align and go dormant. This is reward centring (Naik et al. 2024, "Reward
Centering", with the rate known exactly rather than estimated); not in the PVN paper.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pvn.auxiliary import TaskFamily, TaskOutput
from pvn.networks import PVNNetwork
from pvn.networks.moe import (
    moe_aux_loss,
    moe_layers,
    moe_load_rng_state,
    moe_rng_state,
    moe_stats,
)
from pvn.replay import TorchBatch


@dataclass
class TDConfig:
    """The ``td:`` section of ``pvn pretrain``: how the successor measures are learned (the
    PVN paper's Eq. 4 TD update). The discount and horizon come from the data (``data.gamma``,
    ``data.n_step``)."""

    aggregate: str = "mean"  # mean: successor measure of the uniform policy (paper); max: control
    loss: str = "l2"  # l2: 1/2 squared error (paper) | huber
    target_tau: float | None = 0.01  # Polyak weight of the online net per update (paper 0.01)
    target_period: int | None = None  # hard target copy every N updates (set target_tau: null)
    warmup_steps: int = 100  # updates with only the task calibration loss (paper: 62,501)
    warmup_mode: str = "skip"  # skip: the main optimizer waits | zero_td: it steps on a zero TD
    # gradient, as the official code does (paper)
    max_grad_norm: float | None = None  # global gradient-norm clip; null: none (paper)
    center: bool = False  # learn the SM of r - p (indicator tasks): keeps the torso from
    # collapsing onto the constant p/(1-gamma); paper: false

    def __post_init__(self) -> None:
        """Refuse settings the update rule has no meaning for, naming the ``td.`` key."""
        if self.aggregate not in ("mean", "max"):
            raise ValueError(f"td.aggregate={self.aggregate!r}: choose mean or max")
        if self.loss not in ("l2", "huber"):
            raise ValueError(f"td.loss={self.loss!r}: choose l2 or huber")
        if self.warmup_mode not in ("skip", "zero_td"):
            raise ValueError(f"td.warmup_mode={self.warmup_mode!r}: choose skip or zero_td")
        if (self.target_tau is None) == (self.target_period is None):
            raise ValueError("td.target_tau: set exactly one of td.target_tau and td.target_period")
        if self.target_tau is not None and not 0 < self.target_tau <= 1:
            raise ValueError(f"td.target_tau={self.target_tau}: must be in (0, 1]")
        if self.target_period is not None and self.target_period < 1:
            raise ValueError(f"td.target_period={self.target_period}: must be >= 1")


def td_target(
    rewards: torch.Tensor,
    terminal: torch.Tensor,
    q_next: torch.Tensor,
    discount: float,
    aggregate: str = "mean",
) -> torch.Tensor:
    """``r + (1 - terminal) * discount * agg_a' q_next``: rewards (B, T), q_next (B, T, A)."""
    agg = q_next.mean(dim=2) if aggregate == "mean" else q_next.amax(dim=2)
    live = (~terminal).to(agg.dtype).unsqueeze(1)
    return rewards + live * discount * agg


class PVNLearner:
    """Online and target networks, task family and optimizers; one :meth:`update` per batch."""

    def __init__(
        self,
        network: PVNNetwork,
        tasks: TaskFamily,
        optimizer: torch.optim.Optimizer,
        task_optimizer: torch.optim.Optimizer | None,
        cfg: TDConfig,
        discount: float,
        *,
        bf16: bool,
        calibration_decay: float | None = None,
    ) -> None:
        if cfg.center and tasks.base_rate is None:
            raise ValueError(
                "td.center=true: the task family has no known base rate (indicator tasks only)"
            )
        self.online, self.tasks, self.cfg = network, tasks, cfg
        # eval mode: the target's MoE routers add no exploration noise
        self.target = copy.deepcopy(network).requires_grad_(False).eval()
        self.optimizer, self.task_optimizer = optimizer, task_optimizer
        # Robbins-Monro step sizes for the task calibration: lr / (1 + t / decay)
        self.task_schedule = None
        if task_optimizer is not None and calibration_decay:
            self.task_schedule = torch.optim.lr_scheduler.LambdaLR(
                task_optimizer, lambda t: 1.0 / (1.0 + t / calibration_decay)
            )
        self.discount, self.bf16 = discount, bf16  # gamma^n of the data's n-step transitions
        self._center = float(tasks.base_rate) if cfg.center else 0.0
        self._online_params = [p for p in network.parameters() if p.requires_grad]
        self._target_params = list(self.target.parameters())
        self._online_all = list(network.parameters())  # paired with _target_params
        self._has_moe = bool(moe_layers(network))
        #: the frozen task outputs of every logged state (:mod:`pvn.task_cache`), when stored
        self.task_cache: Any = None

    def autocast(self, device: torch.device):
        if self.bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    def update(self, batch: TorchBatch, step: int) -> dict[str, torch.Tensor]:
        """One gradient step; returns device tensors (no host sync)."""
        return self.apply(step, self.backward(batch, step))

    def task_output(self, batch: TorchBatch) -> TaskOutput:
        """The batch's task rewards and calibration loss, the frozen part from the cache when
        one is attached (and the batch says which slots it holds); float32 under any autocast."""
        with torch.autocast(batch.observation.device.type, enabled=False):
            if self.task_cache is None or batch.shard is None:
                return self.tasks(batch.observation, batch.reward)
            frozen = self.task_cache(batch.shard, batch.index)
            return self.tasks.from_frozen(frozen, batch.reward)

    def backward(self, batch: TorchBatch, step: int) -> dict[str, Any]:
        """The batch's gradients, left in ``.grad`` (zeroed first), and its metrics. Multi-worker
        algorithms combine workers' gradients or parameters between this and :meth:`apply`."""
        obs, action, _, next_obs, terminal = batch[:5]
        out: dict[str, torch.Tensor] = {}
        td_on = step >= self.cfg.warmup_steps
        with self.autocast(obs.device):
            tasks = self.task_output(batch)
            loss = self._calibration_loss(tasks, out)
            if td_on:
                y = self.td_targets(tasks.rewards, next_obs, terminal)
                q, features = self.online(obs)
                loss = loss + self.td_loss(q, action, y, out) + self._moe_loss(out)
                out["features"] = features.detach()
        self._zero_grad()
        if loss.requires_grad:  # not while a family without calibration sits out the warm-up
            loss.backward()
        out["loss"] = loss.detach()
        out["rewards"] = tasks.rewards.detach()
        out["calibrating"] = tasks.calibration_loss is not None
        return out

    def apply(self, step: int, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Clip, step the optimizers and follow with the target; returns the metrics."""
        td_on = step >= self.cfg.warmup_steps
        grad_norm = self._step(step, td_on, out.pop("calibrating"))
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def _calibration_loss(self, tasks: TaskOutput, out: dict[str, torch.Tensor]) -> torch.Tensor:
        if tasks.calibration_loss is None:
            return tasks.rewards.new_zeros((), dtype=torch.float32)
        out["calibration_loss"] = tasks.calibration_loss.detach().float()
        return tasks.calibration_loss.float()

    @torch.no_grad()
    def td_targets(
        self, rewards: torch.Tensor, next_obs: torch.Tensor, terminal: torch.Tensor
    ) -> torch.Tensor:
        """The batch's TD targets ``y`` (B, T) from the target network (no gradient), for the
        centred rewards ``r - p`` when ``center`` is on."""
        q_next, _ = self.target(next_obs)
        return td_target(
            rewards.float() - self._center,
            terminal,
            q_next.float(),
            self.discount,
            self.cfg.aggregate,
        )

    def td_loss(
        self,
        q: torch.Tensor,
        action: torch.Tensor,
        y: torch.Tensor,
        out: dict[str, torch.Tensor] | None = None,
        per_sample: bool = False,
    ) -> torch.Tensor:
        """L2 (1/2 squared error, the paper) or Huber loss of ``Q(s, a)`` (B, T, A) against ``y``,
        averaged over tasks and transitions (``per_sample``: over tasks only, shape (B,), whose
        mean is the loss); with ``out``, records ``td_loss`` and ``q_mean`` there."""
        idx = action.view(-1, 1, 1).expand(-1, q.shape[1], 1)
        q_sa = q.gather(2, idx).squeeze(2).float()
        if self.cfg.loss == "l2":
            loss = 0.5 * (y - q_sa).pow(2)
        else:
            loss = nn.functional.huber_loss(q_sa, y, delta=1.0, reduction="none")
        loss = loss.mean(1) if per_sample else loss.mean()
        if out is not None:
            out.update(td_loss=loss.detach().mean(), q_mean=q_sa.detach().mean())
        return loss

    def _moe_loss(self, out: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """The MoE layers' auxiliary losses of the online forward just run (0 without MoE);
        their routing statistics go to ``out``."""
        if not self._has_moe:
            return 0.0
        aux = moe_aux_loss(self.online)
        out["moe_aux_loss"] = aux.detach()
        out.update({f"moe_{k}": v for k, v in moe_stats(self.online).items()})
        return aux

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.task_optimizer is not None:
            self.task_optimizer.zero_grad(set_to_none=True)

    def _step(self, step: int, td_on: bool, calibrating: bool) -> torch.Tensor | None:
        """Clip, step the optimizers and follow with the target; returns the gradient norm."""
        grad_norm = None
        if td_on or self.cfg.warmup_mode == "zero_td":
            if not td_on:  # the official warm-up: the TD gradient is there, and zero
                for p in self._online_params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            max_norm = self.cfg.max_grad_norm or math.inf
            grad_norm = nn.utils.clip_grad_norm_(self._online_params, max_norm).detach()
            with torch.no_grad():
                if self.cfg.target_tau is not None:  # from the pre-update weights (PVN code)
                    tau = self.cfg.target_tau
                    torch._foreach_lerp_(self._target_params, self._online_all, tau)
                self.optimizer.step()
                if self.cfg.target_period and (step + 1) % self.cfg.target_period == 0:
                    self.target.load_state_dict(self.online.state_dict())
        if self.task_optimizer is not None and calibrating:
            self.task_optimizer.step()
            if self.task_schedule is not None:
                self.task_schedule.step()
        return grad_norm

    def state_dict(self) -> dict[str, Any]:
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "tasks": self.tasks.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "task_optimizer": self.task_optimizer.state_dict() if self.task_optimizer else None,
            "task_schedule": self.task_schedule.state_dict() if self.task_schedule else None,
            "moe_rng": moe_rng_state(self.online),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.tasks.load_state_dict(state["tasks"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.task_optimizer is not None:
            self.task_optimizer.load_state_dict(state["task_optimizer"])
        if self.task_schedule is not None:
            self.task_schedule.load_state_dict(state["task_schedule"])
        moe_load_rng_state(self.online, state.get("moe_rng", {}))
