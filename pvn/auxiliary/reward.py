"""The logged reward as the single task: value-function pretraining (n-step returns allowed)."""

from __future__ import annotations

import torch

from pvn.auxiliary.base import TaskFamily, TaskOutput


class LoggedReward(TaskFamily):
    state_based = False
    cacheable = False

    def __init__(self, gen: torch.Generator | None = None, *, num_tasks: int) -> None:
        super().__init__()
        if num_tasks != 1:
            raise ValueError(f"tasks.num_tasks={num_tasks}: the reward family has exactly 1 task")
        self.num_tasks = 1

    def from_frozen(self, frozen: None, reward: torch.Tensor) -> TaskOutput:
        return TaskOutput(rewards=reward.float().unsqueeze(1))
