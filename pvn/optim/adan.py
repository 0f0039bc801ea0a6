"""Adan: adaptive Nesterov momentum (Xie et al., 2022, arXiv:2208.06677, Algorithm 1).

Adan keeps Adam's first moment ``m`` and adds a moving average ``v`` of the gradient *difference*
``d_k = g_k - g_{k-1}``, which acts as a cheap Nesterov look-ahead; the second moment ``n`` tracks
the square of the look-ahead gradient ``g_k + b2 * d_k``. This module follows the official code
(sail-sg/Adan ``adan.py``), whose betas are the paper's ``1 - beta``:

    m_k = b1 m_{k-1} + (1 - b1) g_k
    v_k = b2 v_{k-1} + (1 - b2) d_k                      (d_1 = 0)
    n_k = b3 n_{k-1} + (1 - b3) (g_k + b2 d_k)^2
    denom = sqrt(n_k) / sqrt(1 - b3^k) + eps
    theta <- theta - lr / (1 - b1^k) * m_k / denom - lr * b2 / (1 - b2^k) * v_k / denom

with the proximal weight decay of Algorithm 1, ``theta <- theta / (1 + lr * wd)`` after the step
(``no_prox=False``, the default), or AdamW's ``theta * (1 - lr * wd)`` before it (``no_prox=True``).
The paper's defaults ``(beta1, beta2, beta3) = (0.02, 0.08, 0.01)`` are the code's
``betas=(0.98, 0.92, 0.99)``.

Two implementations run the same 12 elementwise passes: a loop over parameters
(``foreach=False``) and a multi-tensor one built on ``torch._foreach_*`` (``foreach=True``), which
launches each pass once per (device, dtype) instead of once per parameter. ``foreach=None`` picks
the multi-tensor path when every parameter of the group is on a GPU (``cuda``/``xpu``), as
``torch.optim`` does, and the loop elsewhere (on CPU both run at the same speed). The passes keep
one temporary alive at a time (``d``, then ``denom``) and compute the look-ahead gradient in the
previous-gradient buffer as ``lerp(g_{k-1}, g_k, 1 + b2) = g_k + b2 d_k``.

Differences from the official code, none of which changes the update: the step count is kept
per parameter (the official code keeps one per group; they agree whenever every parameter gets a
gradient every step, and a parameter that joins late gets its own bias corrections); the global
clipping coefficient stays on the device (the official code calls ``.item()``) and its norm is
accumulated in at least float32; the previous gradient is stored as ``+g`` (the official code
keeps ``-g``); and ``sqrt(1 - b3^k)`` is folded into the step sizes (see :func:`_step_scalars`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

_FOREACH_DEVICES = ("cuda", "xpu")


class Adan(torch.optim.Optimizer):
    """Adan (Xie et al., 2022, Algorithm 1) in the official code's beta convention.

    Args:
        params: parameters or parameter groups (each group may set its own ``lr``, ``betas``,
            ``eps``, ``weight_decay``, ``no_prox`` and ``foreach``).
        lr: learning rate.
        betas: ``(b1, b2, b3)``, the decays of the gradient, gradient-difference and squared
            look-ahead-gradient averages (the paper's ``1 - beta1..3``), each in ``[0, 1)``.
        eps: added to the bias-corrected ``sqrt(n)`` in the denominator.
        weight_decay: decoupled weight decay ``wd``.
        no_prox: ``False``: proximal decay ``theta / (1 + lr * wd)`` after the step (the paper);
            ``True``: AdamW-style ``theta * (1 - lr * wd)`` before it.
        max_grad_norm: if ``> 0``, all gradients (every group together) are scaled by
            ``min(1, max_grad_norm / (||g||_2 + eps))`` before the update, as
            ``torch.nn.utils.clip_grad_norm_`` does; ``p.grad`` holds the clipped gradient
            afterwards. The coefficient stays a tensor: clipping never waits for the device. It is
            global, so it is set on the optimizer, not per group; ``eps`` here is the optimizer's.
        foreach: ``True``: multi-tensor ``torch._foreach_*`` path; ``False``: per-parameter loop;
            ``None``: multi-tensor when all of a group's parameters are on a GPU.

    State per parameter: ``step`` (an ``int``, so resumed runs continue exactly), ``exp_avg``
    (m), ``exp_avg_diff`` (v), ``exp_avg_sq`` (n) and ``prev_grad`` (the last clipped gradient).
    A parameter's first step, and its first step after :meth:`restart_opt`, use ``d = 0``.
    Gradients reaching :meth:`step` must be unscaled (``torch.amp.GradScaler.step`` does this).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        no_prox: bool = False,
        max_grad_norm: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        if not 0.0 <= max_grad_norm < math.inf:
            raise ValueError(f"max_grad_norm={max_grad_norm}: must be finite and >= 0 (0 = off)")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            no_prox=no_prox,
            max_grad_norm=max_grad_norm,
            foreach=foreach,
        )
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "max_grad_norm" in param_group and (
            param_group["max_grad_norm"] != self.defaults["max_grad_norm"]
        ):
            raise ValueError(
                f"max_grad_norm={param_group['max_grad_norm']} in a parameter group: clipping is "
                "global (one norm over all parameters); set max_grad_norm on the optimizer"
            )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["betas"] = tuple(group["betas"])
        _check_hyperparameters(group)

    @torch.no_grad()
    def restart_opt(self) -> None:
        """Forget the moments and the step count (the official code's restart): the next step
        is a first step again, with ``d = 0`` and fresh bias corrections. Buffers are zeroed in
        place, not reallocated."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                state["step"] = 0
                for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq"):
                    state[key].zero_()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Adan update of every parameter that has a gradient; returns ``closure()``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Adan does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("Adan does not support complex parameters")
            groups.append((group, params))

        if self.defaults["max_grad_norm"] > 0:
            _clip_grads_(
                [p.grad for _, ps in groups for p in ps],
                self.defaults["max_grad_norm"],
                self.defaults["eps"],
            )

        for group, params in groups:
            if not params:
                continue
            grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, steps = [], [], [], [], [], []
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_diff"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["prev_grad"] = p.grad.clone(memory_format=torch.preserve_format)
                elif state["step"] == 0:  # after restart_opt: d_1 = 0 again
                    state["prev_grad"].copy_(p.grad)
                state["step"] += 1
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_diffs.append(state["exp_avg_diff"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                prev_grads.append(state["prev_grad"])
                steps.append(state["step"])

            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.device.type in _FOREACH_DEVICES for p in params)
            b1, b2, b3 = group["betas"]
            kwargs = dict(
                beta1=b1,
                beta2=b2,
                beta3=b3,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                no_prox=group["no_prox"],
            )
            fn = _multi_tensor_adan if foreach else _single_tensor_adan
            fn(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, steps, **kwargs)
        return loss


def _check_hyperparameters(group: dict[str, Any]) -> None:
    lr, eps, wd, betas = group["lr"], group["eps"], group["weight_decay"], group["betas"]
    if isinstance(lr, Tensor):
        raise ValueError("lr: a tensor learning rate is not supported; pass a float")
    if not 0.0 <= lr < math.inf:
        raise ValueError(f"lr={lr}: must be finite and >= 0")
    if not 0.0 <= eps < math.inf:
        raise ValueError(f"eps={eps}: must be finite and >= 0")
    if not 0.0 <= wd < math.inf:
        raise ValueError(f"weight_decay={wd}: must be finite and >= 0")
    if len(betas) != 3:
        raise ValueError(f"betas={betas}: Adan takes three betas (b1, b2, b3)")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"betas[{i}]={b}: must be in [0, 1)")


def _clip_grads_(grads: list[Tensor], max_norm: float, eps: float) -> None:
    """Scale ``grads`` in place by ``min(1, max_norm / (||grads||_2 + eps))`` without a host sync
    (the coefficient is a device tensor). Norms are accumulated in float32 at least."""
    if not grads:
        return
    buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        buckets.setdefault((g.device, g.dtype), []).append(g)
    norms = []
    for (_, dtype), gs in buckets.items():
        per_tensor = torch._foreach_norm(gs, 2, dtype=torch.promote_types(torch.float32, dtype))
        norms.append(torch.linalg.vector_norm(torch.stack(per_tensor)))
    device, dtype = grads[0].device, functools.reduce(torch.promote_types, [n.dtype for n in norms])
    total = torch.linalg.vector_norm(torch.stack([n.to(device, dtype) for n in norms]))
    coef = torch.clamp(max_norm / (total + eps), max=1.0)
    for (device, dtype), gs in buckets.items():
        torch._foreach_mul_(gs, coef.to(device, dtype))


def _step_scalars(
    step: int, beta1: float, beta2: float, beta3: float, lr: float, eps: float
) -> tuple[float, float, float]:
    """Host scalars of step ``k``: ``(a, b, e)`` with
    ``theta -= a m / (sqrt(n) + e) + b v / (sqrt(n) + e)``.

    That is ``lr/(1-b1^k) m/denom + lr b2/(1-b2^k) v/denom`` with ``denom = sqrt(n)/s + eps`` and
    ``s = sqrt(1-b3^k)``, numerator and denominator multiplied by ``s``: the same update without
    a pass that divides ``sqrt(n)`` by ``s``."""
    s = math.sqrt(1.0 - beta3**step)
    return lr * s / (1.0 - beta1**step), lr * beta2 * s / (1.0 - beta2**step), eps * s


# (one parameter per hyperparameter and state list: torch.optim's functional-step convention)
def _single_tensor_adan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    steps: list[int],
    *,
    beta1: float,
    beta2: float,
    beta3: float,
    lr: float,
    weight_decay: float,
    eps: float,
    no_prox: bool,
) -> None:
    for i, p in enumerate(params):
        g, m, v, n, prev = grads[i], exp_avgs[i], exp_avg_diffs[i], exp_avg_sqs[i], prev_grads[i]
        a, b, e = _step_scalars(steps[i], beta1, beta2, beta3, lr, eps)
        m.lerp_(g, 1.0 - beta1)
        d = g - prev  # d_k = g_k - g_{k-1}
        v.lerp_(d, 1.0 - beta2)
        del d  # freed before sqrt(n) allocates: the allocator hands the same block back
        # prev <- prev + (1+b2) (g - prev) = g + b2 d_k: the look-ahead gradient, in place
        prev.lerp_(g, 1.0 + beta2)
        n.mul_(beta3).addcmul_(prev, prev, value=1.0 - beta3)
        prev.copy_(g)
        denom = n.sqrt().add_(e)
        if weight_decay != 0.0 and no_prox:
            p.mul_(1.0 - lr * weight_decay)
        p.addcdiv_(m, denom, value=-a)
        p.addcdiv_(v, denom, value=-b)
        if weight_decay != 0.0 and not no_prox:
            p.div_(1.0 + lr * weight_decay)


# (the same signature as _single_tensor_adan, for the foreach path)
def _multi_tensor_adan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    steps: list[int],
    *,
    beta1: float,
    beta2: float,
    beta3: float,
    lr: float,
    weight_decay: float,
    eps: float,
    no_prox: bool,
) -> None:
    """The ops of :func:`_single_tensor_adan`, each over a list: one list per (device, dtype) for
    the fused kernels, and per step count (usually one per group) so the scalars are plain."""
    buckets: dict[tuple[torch.device, torch.dtype, int], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype, steps[i]), []).append(i)
    for (_, _, step), idx in buckets.items():
        ps = [params[i] for i in idx]
        gs = [grads[i] for i in idx]
        ms = [exp_avgs[i] for i in idx]
        vs = [exp_avg_diffs[i] for i in idx]
        ns = [exp_avg_sqs[i] for i in idx]
        prevs = [prev_grads[i] for i in idx]
        a, b, e = _step_scalars(step, beta1, beta2, beta3, lr, eps)
        torch._foreach_lerp_(ms, gs, 1.0 - beta1)
        ds = torch._foreach_sub(gs, prevs)
        torch._foreach_lerp_(vs, ds, 1.0 - beta2)
        del ds
        torch._foreach_lerp_(prevs, gs, 1.0 + beta2)
        torch._foreach_mul_(ns, beta3)
        torch._foreach_addcmul_(ns, prevs, prevs, value=1.0 - beta3)
        torch._foreach_copy_(prevs, gs)
        denoms = torch._foreach_sqrt(ns)
        torch._foreach_add_(denoms, e)
        if weight_decay != 0.0 and no_prox:
            torch._foreach_mul_(ps, 1.0 - lr * weight_decay)
        torch._foreach_addcdiv_(ps, ms, denoms, value=-a)
        torch._foreach_addcdiv_(ps, vs, denoms, value=-b)
        if weight_decay != 0.0 and not no_prox:
            torch._foreach_div_(ps, 1.0 + lr * weight_decay)
