"""Random cumulants: the (squashed) outputs of frozen random networks as continuous rewards.

The usual baseline for indicator tasks (e.g. Dabney et al. 2021; Lyle et al. 2021): the same
frozen Nature-DQN nets as the RND indicators, without thresholding, squashed by ``tanh`` into
[-1, 1] like clipped Atari rewards.
"""

from __future__ import annotations

import torch

from pvn.auxiliary.base import TaskFamily, TaskOutput
from pvn.auxiliary.random_nets import RandomConvNets


class RandomCumulants(TaskFamily):
    def __init__(self, gen: torch.Generator, *, num_tasks: int, tasks_per_module: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.nets = RandomConvNets.for_tasks(num_tasks, tasks_per_module, gen, False)

    def frozen(self, obs: torch.Tensor) -> torch.Tensor:
        return self.nets(obs)

    def from_frozen(self, frozen: torch.Tensor, reward: torch.Tensor) -> TaskOutput:
        return TaskOutput(rewards=torch.tanh(frozen))
