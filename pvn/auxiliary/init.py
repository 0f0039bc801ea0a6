"""Seeded Xavier-uniform initialisation (the PVN code's ``xavier_uniform`` for every layer).

Every random draw takes an explicit ``torch.Generator``: library code never touches the global
RNG, so a run's parameters depend on its ``seed`` alone.

It lives in ``auxiliary``, the lowest layer that needs it: the random task networks
(:mod:`auxiliary.random_nets`) and pvn's torsos and heads (:mod:`pvn.networks`) follow the same
Flax conventions (Xavier-uniform weights, zero biases, 'SAME' padding), and ``auxiliary`` may
import only torch and numpy, so the helpers cannot stay in ``pvn.networks``. Everything above
(``pvn``, ``agents``) imports them from here.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def xavier_(weight: torch.Tensor, fan_in: int, fan_out: int, gen: torch.Generator) -> None:
    """U(-b, b) with b = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-bound, bound, generator=gen)


def init_module_(module: nn.Module, gen: torch.Generator) -> None:
    """Xavier-uniform weights and zero biases for every conv and linear layer of ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            xavier_(m.weight, m.in_channels // m.groups * k, m.out_channels // m.groups * k, gen)
        elif isinstance(m, nn.Linear):
            xavier_(m.weight, m.in_features, m.out_features, gen)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/Flax 'SAME' padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
