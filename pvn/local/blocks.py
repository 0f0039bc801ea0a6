"""Splitting a torso into gradient-isolated local blocks, and the pieces every method shares.

A torso (:class:`pvn.networks.Torso`) is a sequence of named blocks; for local learning it is
read at a finer grain, as *units*: each parameterised layer together with the parameter-free
layers after it (ReLU, max-pool). A ``nature`` torso has the units ``conv1, conv2, conv3,
features``; an ``impala`` torso ``stack1.0`` (conv + pool), ``stack1.2``, ``stack1.3`` (residual
blocks), ``stack2.0``, ..., ``stack3.3``, ``features``. A local split names the units where
blocks 2..K start (``cuts``); a cut may also name a whole torso block (``stack2``: its first unit).

Block k runs on the detached output of block k-1, so no gradient crosses a cut, and is trained
through an auxiliary network that outputs what the PVN head outputs, ``(B, tasks, actions)``
(:class:`pvn.local.learner.LocalPVNLearner`). The last block is trained by the real head.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from pvn.auxiliary.init import init_module_

#: Default cuts per torso: K = 4 blocks. For impala the first stack is split at its residual
#: blocks because its 84x84 and 42x42 maps hold most of the activations.
DEFAULT_CUTS = {
    "nature": ["conv2", "conv3", "features"],
    "impala": ["stack1.2", "stack1.3", "stack2"],
}


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def torso_units(torso: nn.Module) -> list[tuple[str, nn.Module]]:
    """The torso's units in order: ``(name, module)``, each a parameterised layer with the
    parameter-free layers that follow it (leading parameter-free layers join the first)."""
    units: list[tuple[str, nn.Module]] = []
    for name, block in torso.blocks.items():
        if not isinstance(block, nn.Sequential) or name == "features":
            units.append((name, block))
            continue
        groups: list[tuple[int, list[nn.Module]]] = []
        for i, child in enumerate(block):
            if _has_params(child) or not groups:
                if groups and not any(_has_params(c) for c in groups[-1][1]):
                    groups[-1][1].append(child)  # leading parameter-free layers
                else:
                    groups.append((i, [child]))
            else:
                groups[-1][1].append(child)
        if len(groups) == 1:
            units.append((name, block))
        else:
            units += [(f"{name}.{i}", nn.Sequential(*mods)) for i, mods in groups]
    return units


def split_units(
    units: Sequence[tuple[str, nn.Module]], cuts: Sequence[str]
) -> list[list[tuple[str, nn.Module]]]:
    """Group ``units`` into blocks starting at each cut (a unit name, or a torso block name)."""
    names = [n for n, _ in units]
    starts = []
    for cut in cuts:
        hits = [i for i, n in enumerate(names) if n == cut or n.startswith(cut + ".")]
        if not hits:
            raise ValueError(f"local.cuts: {cut!r} is not a unit of this torso; units: {names}")
        starts.append(hits[0])
    if starts != sorted(set(starts)) or (starts and starts[0] == 0):
        raise ValueError(f"local.cuts={list(cuts)}: name distinct units in order, after the first")
    bounds = [0, *starts, len(units)]
    return [list(units[a:b]) for a, b in itertools.pairwise(bounds)]


def out_shape(module: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape (no batch) of ``module`` for inputs of ``in_shape``."""
    p = next(module.parameters(), None)
    x = torch.zeros(2, *in_shape, device=p.device if p is not None else None)
    training = module.training
    module.eval()
    with torch.no_grad():
        y = module(x)
    module.train(training)
    return tuple(y.shape[1:])


class QOutput(nn.Module):
    """``Dense(tasks * actions)`` reshaped to ``(B, tasks, actions)``: the PVN head's output."""

    def __init__(self, in_features: int, num_tasks: int, num_actions: int) -> None:
        super().__init__()
        self.num_tasks, self.num_actions = num_tasks, num_actions
        self.linear = nn.Linear(in_features, num_tasks * num_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).view(-1, self.num_tasks, self.num_actions)


def small_head(
    in_shape: tuple[int, ...],
    num_tasks: int,
    num_actions: int,
    channels: int,
    hidden: int,
    gen: torch.Generator,
) -> nn.Module:
    """A small auxiliary head to Q-values, shaped as DGL's (Belilovsky et al. 2020; its official
    auxiliary nets): average-pool the map to a quarter of its side, two 1x1 convs, pool to at
    most 2x2, an MLP. Pooling first keeps the head's activations small next to the block's.
    Flat inputs get one linear layer, like the PVN head."""
    if len(in_shape) == 1:
        head: nn.Module = QOutput(in_shape[0], num_tasks, num_actions)
    else:
        c, h = in_shape[0], in_shape[1]
        side = min(math.ceil(h / 4), 2)
        head = nn.Sequential(
            nn.AdaptiveAvgPool2d(math.ceil(h / 4)),
            nn.Conv2d(c, channels, 1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(side),
            nn.Flatten(),
            nn.Linear(side * side * channels, hidden),
            nn.ReLU(),
            QOutput(hidden, num_tasks, num_actions),
        )
    init_module_(head, gen)
    return head


def first_layer(unit: nn.Module) -> nn.Module:
    """The first layer of a unit, made of the unit's live modules: its first parameterised
    module with the parameter-free ones before it and the activation after it; for a residual
    block, ``relu -> conv1`` of its branch (MAN's EMA and LB copy this layer)."""
    from pvn.networks.torsos import ResidualBlock

    if isinstance(unit, ResidualBlock):
        return nn.Sequential(nn.ReLU(), unit.conv1)
    if not isinstance(unit, nn.Sequential):
        return unit
    mods = list(unit)
    i = next(j for j, m in enumerate(mods) if _has_params(m))
    end = i + 2 if i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU) else i + 1
    return nn.Sequential(*mods[:end])
