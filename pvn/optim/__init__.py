"""Optimizer registry: ``optimizer=adam|adamw|sgd|adan``.

Each entry maps the config group's keys (``lr``, ``eps``, ``betas``, ``weight_decay``,
``momentum``, ``nesterov``; for Adan also ``no_prox``, ``max_grad_norm`` and ``foreach``) to an
optimizer: ``torch.optim``'s, or :class:`~pvn.optim.adan.Adan` (Xie et al., 2022), which has no
``torch.optim`` counterpart. The entries have no defaults of their own: every value comes from
the option's file (``configs/optimizer/<option>.yaml``, their one home), so a key missing from a
config is an error here, never a silent second default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from pvn.optim.adan import Adan

__all__ = ["OPTIMIZERS", "Adan", "build_optimizer"]


def _adam(params, *, lr, betas, eps, weight_decay):
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _adamw(params, *, lr, betas, eps, weight_decay):
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _sgd(params, *, lr, momentum, weight_decay, nesterov):
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )


def _adan(params, *, lr, betas, eps, weight_decay, no_prox, max_grad_norm, foreach=None):
    """``foreach``: None picks the multi-tensor path where torch has it (Adan's own rule)."""
    return Adan(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                no_prox=no_prox, max_grad_norm=max_grad_norm, foreach=foreach)  # fmt: skip


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
    "adan": _adan,
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
    try:
        return OPTIMIZERS[name](list(params), **cfg)
    except TypeError as e:  # a key missing from the option, or one it does not take
        raise ValueError(f"optimizer={name}: {e} (its keys: configs/optimizer/)") from None
