"""The PVN learner: successor measures of many auxiliary tasks, learned off-policy by TD.

For each task ``t`` with reward ``r_t(s)`` (an indicator of a set of states for the paper's
tasks), the head ``Q_t(s, a)`` learns the discounted measure of that set under the policy that
acts uniformly at random from the next state on (Farebrother et al. 2023, Eq. 3 with the mean
over next actions; ``aggregate="max"`` learns per-task control values instead)::

    y_t = r_t(s) + (1 - terminal) * gamma^n * agg_{a'} Q_t^target(s', a')
    loss = mean_{b,t} 1/2 (y_t - Q_t(s, a))^2          (or Huber)

The target network follows the online one by Polyak averaging
(``target <- (1 - tau) target + tau online``; paper: tau = 0.01) or a hard copy every
``target_period`` updates. While the tasks calibrate (``warmup_steps``; paper: 62,500) only their
calibration loss is optimised. Task parameters have their own optimizer, as in the PVN code.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auxiliary import TaskFamily
from pvn.networks import PVNNetwork
from replay import TorchBatch


@dataclass
class TDConfig:
    gamma: float = 0.99
    n_step: int = 1
    aggregate: str = "mean"  # mean: uniform-policy successor measure; max: per-task control
    loss: str = "l2"  # l2 (paper) or huber
    target_tau: float | None = 0.01
    target_period: int | None = None
    warmup_steps: int = 0
    max_grad_norm: float | None = None
    bf16: bool = False


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
        calibration_decay: float | None = None,
    ) -> None:
        if cfg.aggregate not in ("mean", "max"):
            raise ValueError(f"td.aggregate={cfg.aggregate!r}: choose mean or max")
        if cfg.loss not in ("l2", "huber"):
            raise ValueError(f"td.loss={cfg.loss!r}: choose l2 or huber")
        if (cfg.target_tau is None) == (cfg.target_period is None):
            raise ValueError("set exactly one of td.target_tau and td.target_period")
        self.online, self.tasks, self.cfg = network, tasks, cfg
        self.target = copy.deepcopy(network).requires_grad_(False)
        self.optimizer, self.task_optimizer = optimizer, task_optimizer
        # Robbins-Monro step sizes for the task calibration: lr / (1 + t / decay)
        self.task_schedule = None
        if task_optimizer is not None and calibration_decay:
            self.task_schedule = torch.optim.lr_scheduler.LambdaLR(
                task_optimizer, lambda t: 1.0 / (1.0 + t / calibration_decay)
            )
        self.discount = cfg.gamma**cfg.n_step
        self._online_params = [p for p in network.parameters() if p.requires_grad]
        self._target_params = list(self.target.parameters())
        self._online_all = list(network.parameters())  # paired with _target_params

    def _autocast(self, device: torch.device):
        if self.cfg.bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    def update(self, batch: TorchBatch, step: int) -> dict[str, torch.Tensor]:
        """One gradient step; returns device tensors (no host sync)."""
        obs, action, reward, next_obs, terminal = batch
        out: dict[str, torch.Tensor] = {}
        td_on = step >= self.cfg.warmup_steps
        with self._autocast(obs.device):
            tasks = self.tasks(obs, reward)
            loss = obs.new_zeros((), dtype=torch.float32)
            if tasks.calibration_loss is not None:
                loss = loss + tasks.calibration_loss.float()
                out["calibration_loss"] = tasks.calibration_loss.detach().float()
            if td_on:
                q, features = self.online(obs)
                with torch.no_grad():
                    q_next, _ = self.target(next_obs)
                    y = td_target(
                        tasks.rewards.float(),
                        terminal,
                        q_next.float(),
                        self.discount,
                        self.cfg.aggregate,
                    )
                idx = action.view(-1, 1, 1).expand(-1, q.shape[1], 1)
                q_sa = q.gather(2, idx).squeeze(2).float()
                if self.cfg.loss == "l2":
                    td_loss = 0.5 * (y - q_sa).pow(2).mean()
                else:
                    td_loss = nn.functional.huber_loss(q_sa, y, delta=1.0)
                loss = loss + td_loss
                out.update(td_loss=td_loss.detach(), q_mean=q_sa.detach().mean())
                out["features"] = features.detach()
        self.optimizer.zero_grad(set_to_none=True)
        if self.task_optimizer is not None:
            self.task_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if td_on:
            max_norm = self.cfg.max_grad_norm or math.inf
            out["grad_norm"] = nn.utils.clip_grad_norm_(self._online_params, max_norm).detach()
            self.optimizer.step()
            self._update_target(step)
        if self.task_optimizer is not None and tasks.calibration_loss is not None:
            self.task_optimizer.step()
            if self.task_schedule is not None:
                self.task_schedule.step()
        out["loss"] = loss.detach()
        out["rewards"] = tasks.rewards.detach()
        return out

    @torch.no_grad()
    def _update_target(self, step: int) -> None:
        if self.cfg.target_tau is not None:
            torch._foreach_lerp_(self._target_params, self._online_all, self.cfg.target_tau)
        elif (step + 1) % self.cfg.target_period == 0:
            self.target.load_state_dict(self.online.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "tasks": self.tasks.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "task_optimizer": self.task_optimizer.state_dict() if self.task_optimizer else None,
            "task_schedule": self.task_schedule.state_dict() if self.task_schedule else None,
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
