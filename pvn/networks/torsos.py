"""Torsos: uint8 ``(B, 4, 84, 84)`` observations in, ``(B, D)`` features out.

A torso is an ordered sequence of named blocks (``torso.blocks``), the last of which produces the
feature layer. Later methods address blocks by name: local learning trains each block with its
own loss, MoE layers replace the feature block.

* ``nature`` -- Mnih et al. (2015): conv 32x8x8/4, 64x4x4/2, 64x3x3/1 (valid padding), Dense(512).
* ``impala`` -- Espeholt et al. (2018) as in the PVN code: three stacks of
  [conv3x3 -> maxpool 3x3/2 with Flax's SAME padding (84 -> 42 and 42 -> 21 pad 0 before and 1
  after, 21 -> 11 pads 1 and 1) -> 2 residual blocks (relu, conv, relu, conv, +skip)] with
  (16, 32, 32) x ``width`` channels, then relu, flatten, Dense(``feature_dim``), relu.
  ``impala_x8`` (width 8, 4096 features) is the PVN paper's ~133M-parameter torso.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pvn.auxiliary.init import init_module_, same_pad


class Torso(nn.Module):
    """An ordered sequence of named blocks; input scaled from uint8 to [0, 1] first."""

    def __init__(self, blocks: list[tuple[str, nn.Module]], feature_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(OrderedDict(blocks))
        self.feature_dim = feature_dim

    @staticmethod
    def prepare(obs: torch.Tensor) -> torch.Tensor:
        """uint8 pixels to floats in [0, 1] (other inputs pass through)."""
        return obs.float().div_(255.0) if obs.dtype == torch.uint8 else obs

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.prepare(obs)
        for block in self.blocks.values():
            x = block(x)
        return x


def _flat_dense(in_features: int, out_features: int, relu_first: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.ReLU()] if relu_first else []
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_features, out_features), nn.ReLU())


def nature(in_channels: int = 4, feature_dim: int = 512) -> Torso:
    blocks = [
        ("conv1", nn.Sequential(nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU())),
        ("conv2", nn.Sequential(nn.Conv2d(32, 64, 4, stride=2), nn.ReLU())),
        ("conv3", nn.Sequential(nn.Conv2d(64, 64, 3, stride=1), nn.ReLU())),
        ("features", _flat_dense(64 * 7 * 7, feature_dim, relu_first=False)),
    ]
    return Torso(blocks, feature_dim)


class ResidualBlock(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class SamePool(nn.Module):
    """3x3/2 max-pool with TensorFlow/Flax 'SAME' padding (-inf, possibly asymmetric) for an
    input of side ``size``; PyTorch's ``padding=1`` pads both sides and shifts the windows."""

    def __init__(self, size: int, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        before, after = same_pad(size, kernel, stride)
        self.pad = (before, after, before, after)
        self.pool = nn.MaxPool2d(kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(nn.functional.pad(x, self.pad, value=-math.inf))


def impala_stack(in_channels: int, channels: int, size: int, num_blocks: int = 2) -> nn.Sequential:
    """conv3x3 -> SAME max-pool 3x3/2 -> residual blocks, for inputs of side ``size``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        SamePool(size),
        *(ResidualBlock(channels) for _ in range(num_blocks)),
    )


def impala(
    in_channels: int = 4,
    width: int = 1,
    feature_dim: int = 512,
    stack_sizes: tuple[int, ...] = (16, 32, 32),
    num_blocks: int = 2,
) -> Torso:
    blocks, c, size = [], in_channels, 84
    for i, s in enumerate(stack_sizes, start=1):
        blocks.append((f"stack{i}", impala_stack(c, s * width, size, num_blocks)))
        c, size = s * width, (size + 1) // 2
    blocks.append(("features", _flat_dense(c * size * size, feature_dim, relu_first=True)))
    return Torso(blocks, feature_dim)


TORSOS = {"nature": nature, "impala": impala}


def build_torso(
    name: str, gen: torch.Generator, moe: Mapping[str, Any] | None = None, **kwargs
) -> Torso:
    """A torso by registry name, Xavier-initialised from ``gen``.

    ``moe`` (a ``configs/moe/*.yaml`` mapping; ``name: none`` or ``None`` for none) replaces the
    ``features`` block by a mixture-of-experts block over tokens of the conv output
    (:func:`pvn.networks.moe.moe_features_block`; Obando-Ceron et al. 2024).

    Args:
        name: ``nature`` (Mnih et al. 2015), ``impala`` or ``impala_x8`` (Espeholt et al. 2018).
        gen: the generator every weight is drawn from.
        moe: a mixture-of-experts config, or ``None``.
        **kwargs: the torso's own settings (``width``, ``feature_dim``, ``in_channels``).

    Returns:
        The torso: uint8 ``(B, 4, 84, 84)`` in, ``(B, feature_dim)`` features out.
    """
    if name not in TORSOS:
        raise ValueError(f"torso={name!r}: unknown; choose one of {sorted(TORSOS)}")
    torso = TORSOS[name](**kwargs)
    init_module_(torso, gen)
    if moe is not None and moe.get("name", "none") != "none":
        from pvn.networks.moe import moe_features_block

        with torch.no_grad():
            x = torch.zeros(1, kwargs.get("in_channels", 4), 84, 84)
            for key, block in torso.blocks.items():
                if key != "features":
                    x = block(x)
        torso.blocks["features"] = moe_features_block(
            moe, tuple(x.shape[1:]), torso.feature_dim, gen, relu_first=name == "impala"
        )
    return torso


def torso_from_spec(
    spec: Mapping[str, Any], gen: torch.Generator, moe: Mapping[str, Any] | None = None
) -> Torso:
    """The torso a ``torso:`` config block describes (``name`` plus :func:`build_torso`'s
    keyword arguments), drawn from ``gen``: the one way every command and the encoder loader
    build a torso from a config. A bad name or value raises :class:`pvn.errors.ConfigError`."""
    from pvn.errors import ConfigError

    kwargs = dict(spec)
    try:
        return build_torso(kwargs.pop("name"), gen, moe=moe, **kwargs)
    except ValueError as e:  # names the key itself (torso=..., width=...)
        raise ConfigError(str(e)) from None
    except (KeyError, TypeError) as e:  # no name, or a keyword the torso does not take
        raise ConfigError(f"torso: {e}") from None
