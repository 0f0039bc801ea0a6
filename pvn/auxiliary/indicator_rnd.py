"""Random-network indicators, the PVN paper's task family (Farebrother et al. 2023, Sec. 4).

Task ``i`` is the set of states on which a frozen random network's output ``f_i(s)``, shifted by a
learned bias ``b_i``, is positive: ``r_i(s) = 1[f_i(s) + b_i > 0]``. The biases are fit by a
quantile (pinball) loss ``mean(u * ((1 - p) - 1[u < 0]))`` with ``u = f_i(s) + b_i``, whose
minimiser puts ``b_i`` at the ``(1 - p)``-quantile of ``-f_i``, so each indicator fires on a
fraction ``p`` of the data's states (``target_reward_proportion``; paper: 0.01). Only the biases
learn; the networks stay at their random init.

``final_relu``: the PVN code ends each random net with a relu. A random output unit is then
exactly 0 on most states whenever its weights lean negative, and ``f_i + b_i > 0`` cannot fire on
a fraction ``p`` of states: the bias oscillates around 0 and the indicator flips between never
and always firing (about half of the tasks on real Breakout frames at p = 0.1). pvn's default
drops that relu so every task calibrates; ``preset=paper`` keeps it, as the official code does.

``calibration_reduce``: the official code averages the quantile loss over batch and tasks
(``mean``, ``preset=paper``); pvn's default sums it over tasks (``sum``), so the gradient of
each bias is ``rate_i - p`` whatever the number of tasks and plain SGD takes Robbins-Monro steps
of ``lr * (rate_i - p)``. Adam is invariant to that scale except through its ``eps``.
"""

from __future__ import annotations

import torch
from torch import nn

from pvn.auxiliary.base import TaskFamily, TaskOutput
from pvn.auxiliary.random_nets import RandomConvNets


class IndicatorRND(TaskFamily):
    indicator = True

    def __init__(
        self,
        gen: torch.Generator,
        *,
        num_tasks: int,
        tasks_per_module: int,
        target_proportion: float,
        final_relu: bool,
        calibration_reduce: str,
    ) -> None:
        super().__init__()
        if calibration_reduce not in ("sum", "mean"):
            raise ValueError(f"tasks.calibration_reduce={calibration_reduce!r}: choose sum or mean")
        self.num_tasks, self.p = num_tasks, target_proportion
        self.reduce_mean = calibration_reduce == "mean"
        self.nets = RandomConvNets.for_tasks(num_tasks, tasks_per_module, gen, final_relu)
        self.bias = nn.Parameter(torch.zeros(num_tasks))

    @property
    def base_rate(self) -> float:
        return self.p  # what the calibration drives each task's firing rate to

    def frozen(self, obs: torch.Tensor) -> torch.Tensor:
        return self.nets(obs)

    def from_frozen(self, frozen: torch.Tensor, reward: torch.Tensor) -> TaskOutput:
        pre = frozen + self.bias  # gradient reaches the bias only
        below = (pre < 0).to(pre.dtype)
        pinball = (pre * ((1.0 - self.p) - below)).mean(0)  # per task, mean over the batch
        loss = pinball.mean() if self.reduce_mean else pinball.sum()
        return TaskOutput(rewards=(pre.detach() > 0).to(pre.dtype), calibration_loss=loss)
