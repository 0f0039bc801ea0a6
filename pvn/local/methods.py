"""The local-learning methods: how block k's auxiliary network is made.

* ``dgl`` -- Belilovsky et al. (ICML 2020), the InfoPro/AugLocal baseline: a small fresh net per
  block (:func:`pvn.local.blocks.small_head`).
* ``man`` -- Su et al. (ECCV 2024, Momentum Auxiliary Network): ``LB_k(x) + EMA_k(x)``, then a small
  head. ``EMA_k`` is a frozen copy of the first layer of block k+1
  (:func:`pvn.local.blocks.first_layer`), *initialised from the live layer* and moved towards
  it after every optimizer step (``ema <- m ema + (1 - m) live``,
  m = 0.995); ``LB_k`` is a trainable copy of the same unit (the "learnable bias"). Block k gets
  gradient through both; the EMA copy and the live block k+1 get none from this loss (the
  original's pitfalls -- an EMA copy from a fresh random init, a default decay of 1.0 that
  freezes it -- are avoided). ``man_pp`` (MAN++): ``s LB_k(x) + (2 - s) EMA_k(x)`` with one
  learnable scalar ``s`` per block, starting at 1.
* ``auglocal`` -- Ma et al. (ICLR 2024): fresh layers shaped like uniformly sampled later units,
  ``round(l + (L - l - 1) / d_i * j)`` for j = 1..d_i (every later unit when ``d_i >= L - 1 - l``;
  the last unit is always included), then the Q output; the depth shrinks with the block index
  ``i``: ``d_i = max(1, round(d (1 - i tau / (K - 2)) + i tau / (K - 2)))`` (tau = 0.5). Python's
  ``round`` (half to even), as the official code.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pvn.auxiliary.init import init_module_
from pvn.local.blocks import (
    QOutput,
    first_layer,
    out_shape,
    small_head,
    split_units,
    torso_units,
)
from pvn.networks.torsos import ResidualBlock


class LocalAux(nn.Module):
    """The auxiliary networks of blocks ``0 .. K-2`` (and any state they carry).

    ``blocks`` are the torso's own modules grouped into K blocks (held in a plain list, so the
    torso's parameters are not registered twice); ``self(k, h)`` maps block k's output to
    ``(B, tasks, actions)``.
    """

    def __init__(self, blocks: list[list[tuple[str, nn.Module]]], aux: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = [nn.Sequential(*(m for _, m in b)) for b in blocks]
        self.names = [b[0][0] for b in blocks]
        self.aux = nn.ModuleList(aux)

    def forward(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.aux[k](h)

    def after_step(self) -> None:
        """Called after every optimizer step."""


class MANAux(nn.Module):
    """``LB(x) + EMA(x)`` (or MAN++'s ``s LB(x) + (2 - s) EMA(x)``) followed by a small head."""

    def __init__(self, live: nn.Module, head: nn.Module, learn_mix: bool) -> None:
        super().__init__()
        mods = list(live) if isinstance(live, nn.Sequential) else [live]
        n_pre = next(i for i, m in enumerate(mods) if any(True for _ in m.parameters()))
        # parameter-free leading layers (a residual branch's ReLU) run once, shared by LB and EMA
        self.pre = nn.Sequential(*(copy.deepcopy(m) for m in mods[:n_pre]))
        layer = nn.Sequential(*mods[n_pre:])
        self.live = [layer]  # not a submodule: it belongs to block k+1
        self.lb = copy.deepcopy(layer).requires_grad_(True)
        self.ema = copy.deepcopy(layer).requires_grad_(False)
        self.head = head
        self.s = nn.Parameter(torch.ones(())) if learn_mix else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        lb, ema = self.lb(x), self.ema(x)
        if self.s is None:
            return self.head(lb + ema)
        # s LB + (2 - s) EMA, written so that autograd saves one map for s, not two
        return self.head(torch.addcmul(2.0 * ema, self.s, lb - ema))

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        ema, live = list(self.ema.parameters()), list(self.live[0].parameters())
        torch._foreach_lerp_(ema, live, 1.0 - decay)


class MANLocal(LocalAux):
    def __init__(self, blocks, aux, decay: float) -> None:
        super().__init__(blocks, aux)
        self.decay = decay

    def after_step(self) -> None:
        for a in self.aux:
            a.update_ema(self.decay)


def auglocal_depths(d: int, K: int, tau: float) -> list[int]:
    """AugLocal's depth schedule for the aux nets of blocks ``0 .. K-2``."""
    if K <= 2:
        return [d] * (K - 1)
    return [max(1, round(d * (1 - i * tau / (K - 2)) + i * tau / (K - 2))) for i in range(K - 1)]


def auglocal_indices(layer: int, num_layers: int, depth: int) -> list[int]:
    """AugLocal's uniformly sampled later units for a block ending at unit ``layer``."""
    if depth >= num_layers - 1 - layer:
        return list(range(layer + 1, num_layers))
    return [round(layer + (num_layers - layer - 1) / depth * j) for j in range(1, depth + 1)]


def _like(unit: nn.Module, orig_in: tuple[int, ...], in_shape: tuple[int, ...]) -> nn.Module:
    """Fresh layers shaped like ``unit`` (whose real input is ``orig_in``) that read ``in_shape``:
    a larger map is first average-pooled to the size the real unit reads (the official code
    downsamples by strides likewise), so the copy runs at the real unit's resolution and width;
    channel counts follow the input."""
    layers: list[nn.Module] = []
    shape = in_shape
    if len(shape) == 3 and len(orig_in) == 3 and shape[1] > orig_in[1]:
        layers.append(nn.AdaptiveAvgPool2d(orig_in[1:]))
        shape = (shape[0], *orig_in[1:])
    for m in unit if isinstance(unit, nn.Sequential) else [unit]:
        if isinstance(m, nn.Conv2d):
            new: nn.Module = nn.Conv2d(shape[0], m.out_channels, m.kernel_size, m.stride, m.padding)
        elif isinstance(m, ResidualBlock):
            c = m.conv1.in_channels
            if shape[0] != c:
                layers.append(nn.Conv2d(shape[0], c, 1))
                shape = (c, *shape[1:])
            new = ResidualBlock(c)
        elif isinstance(m, nn.Linear) or (hasattr(m, "dense") and hasattr(m, "stack")):
            width = m.out_features if isinstance(m, nn.Linear) else m.dense.out_features
            new = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), width))
            if not isinstance(m, nn.Linear):  # an MoE feature block: copied as a dense layer
                new.append(nn.ReLU())
        elif isinstance(m, nn.Flatten):
            continue  # the dense copy flattens (after pooling)
        elif not any(True for _ in m.parameters()):
            new = copy.deepcopy(m)
        else:
            raise ValueError(f"local=auglocal: cannot copy the shape of {type(m).__name__}")
        layers.append(new)
        shape = out_shape(new, shape)
    return nn.Sequential(*layers)


def build_local(
    cfg: Mapping[str, Any],
    torso: nn.Module,
    torso_name: str,
    num_tasks: int,
    num_actions: int,
    gen: torch.Generator,
) -> LocalAux | None:
    """The ``local=`` method's auxiliary networks for ``torso`` (None for ``local=none``)."""
    from pvn.local.blocks import DEFAULT_CUTS

    name = cfg["name"]
    if name == "none":
        return None
    units = torso_units(torso)
    cuts = cfg.get("cuts") or DEFAULT_CUTS.get(torso_name)
    if cuts is None:
        raise ValueError(f"local.cuts: no default split for torso={torso_name}; name the cuts")
    blocks = split_units(units, list(cuts))
    K = len(blocks)
    if K < 2:
        raise ValueError("local.cuts: local learning needs at least 2 blocks")
    in_shapes = [(4, 84, 84)]
    for _, m in units:
        in_shapes.append(out_shape(m, in_shapes[-1]))
    block_ends = [sum(len(b) for b in blocks[: k + 1]) - 1 for k in range(K)]
    aux: list[nn.Module] = []
    for k in range(K - 1):
        h_shape = in_shapes[block_ends[k] + 1]
        if name == "dgl":
            width = (cfg["channels"], cfg["hidden"])
            aux.append(small_head(h_shape, num_tasks, num_actions, *width, gen))
        elif name in ("man", "man_pp"):
            live = first_layer(blocks[k + 1][0][1])
            width = (cfg["channels"], cfg["hidden"])
            head = small_head(out_shape(live, h_shape), num_tasks, num_actions, *width, gen)
            aux.append(MANAux(live, head, learn_mix=name == "man_pp"))
        elif name == "auglocal":
            depth = auglocal_depths(cfg["depth"], K, cfg["tau"])[k]
            layers, shape = [], h_shape
            for j in auglocal_indices(block_ends[k], len(units), depth):
                layers.append(_like(units[j][1], in_shapes[j], shape))
                shape = out_shape(layers[-1], shape)
            net = nn.Sequential(*layers)
            init_module_(net, gen)
            net.append(QOutput(math.prod(shape), num_tasks, num_actions))
            init_module_(net[-1], gen)
            aux.append(net)
        else:
            raise ValueError(f"local={name!r}: choose none, dgl, man, man_pp or auglocal")
    if name in ("man", "man_pp"):
        decay = cfg["decay"]
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"local.decay={decay}: must be in [0, 1) (1.0 freezes the EMA copy)")
        return MANLocal(blocks, aux, decay)
    return LocalAux(blocks, aux)
