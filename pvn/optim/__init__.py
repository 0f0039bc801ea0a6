"""Optimizer registry: ``optimizer=adam|adamw|sgd`` (a later issue adds ``adan``).

Each entry maps the config group's keys (``lr``, ``eps``, ``betas``, ``weight_decay``,
``momentum``) to a ``torch.optim`` optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


def _adam(params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **_):
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _adamw(params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, **_):
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _sgd(params, lr, momentum=0.0, weight_decay=0.0, nesterov=False, **_):
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
}


def build_optimizer(
    cfg: dict[str, Any], params: Iterable[torch.nn.Parameter], lr: float | None = None
) -> torch.optim.Optimizer:
    """An optimizer from a config dict with ``name`` and its hyperparameters.

    ``lr`` overrides the config's learning rate (the task-calibration optimizer uses its own).
    """
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r}: unknown; choose one of {sorted(OPTIMIZERS)}")
    if lr is not None:
        cfg["lr"] = lr
    return OPTIMIZERS[name](list(params), **cfg)
