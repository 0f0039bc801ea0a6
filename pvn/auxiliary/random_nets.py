"""Frozen random Nature-DQN conv nets, many at once as grouped convolutions.

The PVN code's RND indicators are ``M`` independent Nature-DQN encoders (SAME padding, Xavier
init, ``tasks_per_module`` outputs each, final relu) vmapped over ``M``. Here the ``M`` nets are
one network whose layers after the first are grouped convolutions (``groups=M``) and whose last
layer is a batched matmul: the same functions, one kernel launch per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from pvn.auxiliary.init import init_module_, same_pad, xavier_


class RandomConvNets(nn.Module):
    """``num_nets`` frozen Nature-DQN encoders with ``outputs_per_net`` outputs each.

    Output: ``(B, num_nets * outputs_per_net)`` float, task ``k`` of net ``m`` at ``m * K + k``.
    Weights are buffers (frozen, saved with the state dict, never seen by an optimizer).
    """

    def __init__(
        self,
        num_nets: int,
        outputs_per_net: int,
        gen: torch.Generator,
        in_channels: int = 4,
        final_relu: bool = True,
    ) -> None:
        super().__init__()
        M, K = num_nets, outputs_per_net
        self.M, self.K, self.final_relu = M, K, final_relu
        layers, size, c_in, groups = [], 84, in_channels, 1
        for c_out, k, s in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            before, after = same_pad(size, k, s)
            layers += [
                nn.ZeroPad2d((before, after, before, after)),
                nn.Conv2d(c_in, c_out * M, k, stride=s, groups=groups),
                nn.ReLU(),
            ]
            size, c_in, groups = -(-size // s), c_out * M, M
        convs = nn.Sequential(*layers)
        init_module_(convs, gen)  # grouped convs get per-net fans
        # conv1 is not grouped (the nets share the input): use one net's fans, not M nets'.
        xavier_(convs[1].weight, in_channels * 64, 32 * 64, gen)
        self.convs = convs.requires_grad_(False)  # frozen: never trained
        flat = 64 * size * size
        dense = torch.empty(M, flat, K)
        xavier_(dense, flat, K, gen)
        self.register_buffer("dense_w", dense)
        self.register_buffer("dense_b", torch.zeros(M, K))

    @classmethod
    def for_tasks(
        cls, num_tasks: int, tasks_per_module: int, gen: torch.Generator, final_relu: bool
    ) -> RandomConvNets:
        """``num_tasks`` outputs from nets of ``tasks_per_module`` outputs each."""
        if num_tasks % tasks_per_module:
            raise ValueError(
                f"tasks.num_tasks={num_tasks} must be a multiple of "
                f"tasks.tasks_per_module={tasks_per_module}"
            )
        return cls(num_tasks // tasks_per_module, tasks_per_module, gen, final_relu=final_relu)

    @torch.no_grad()
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.convs(obs.float().div_(255.0))  # (B, 64*M, s, s), net m in channels m*64..
        B = x.shape[0]
        x = x.view(B, self.M, -1)  # each net's flattened features
        out = torch.einsum("bmf,mfk->bmk", x, self.dense_w) + self.dense_b
        if self.final_relu:
            out = torch.relu(out)
        return out.reshape(B, self.M * self.K)
