"""Frozen random Nature-DQN conv nets, many at once.

The PVN code's RND indicators are ``M`` independent Nature-DQN encoders (SAME padding, Xavier
init, ``tasks_per_module`` outputs each, final relu) vmapped over ``M``. Here the ``M`` nets'
weights are stored as one network whose layers after the first are grouped convolutions
(``groups=M``) and whose last layer is a batched matmul. The forward pass runs the first layer
once for all nets (they share the input) and the later convolutions net by net on slices of the
grouped weights: on CPU, oneDNN's grouped convolution ran 1.3-1.5x slower than ``M`` plain ones
for the same values, bit for bit (``scripts/bench_tasks.py``). Computing these outputs for every
logged state is most of the cost of a task cache on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        pad1, conv1, _, pad2, conv2, _, pad3, conv3, _ = self.convs
        h1 = F.relu(conv1(pad1(obs.float().div_(255.0))))  # (B, 32*M, 21, 21): all nets at once
        feats = []
        for m in range(self.M):
            h = h1[:, 32 * m : 32 * (m + 1)]
            for pad, conv in ((pad2, conv2), (pad3, conv3)):
                rows = slice(64 * m, 64 * (m + 1))
                h = F.relu(F.conv2d(pad(h), conv.weight[rows], conv.bias[rows], conv.stride))
            feats.append(h.flatten(1))
        x = torch.stack(feats, 1)  # (B, M, flat): each net's flattened features
        out = torch.einsum("bmf,mfk->bmk", x, self.dense_w) + self.dense_b
        if self.final_relu:
            out = torch.relu(out)
        return out.reshape(obs.shape[0], self.M * self.K)
