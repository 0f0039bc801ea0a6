"""RMSProp as TensorFlow 1 computes it: the optimizer of Dopamine's DQN, hence of the agent that
logged the DQN Replay Dataset (``dqn.gin``: lr 2.5e-4, decay 0.95, momentum 0, epsilon 1e-5,
centered).

It differs from ``torch.optim.RMSprop`` in two ways that matter at Dopamine's settings:
``epsilon`` is added *inside* the square root, and the mean-square accumulator starts at 1,
not 0 (``tf.compat.v1.train.RMSPropOptimizer`` creates its ``rms`` slot with ones), so the first
steps are about ``lr * g`` rather than ``lr * sign(g) / sqrt(1 - decay)``. Per parameter::

    ms  <- decay ms + (1 - decay) g^2                 (ms starts at 1)
    mg  <- decay mg + (1 - decay) g                   (centered only; starts at 0)
    mom <- momentum mom + lr g / sqrt(ms - mg^2 + eps)   (mg = 0 when not centered)
    w   <- w - mom
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class RMSPropTF(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        decay: float = 0.9,
        momentum: float = 0.0,
        eps: float = 1e-10,
        centered: bool = False,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay}: must be in [0, 1)")
        if eps < 0 or momentum < 0 or lr < 0:
            raise ValueError("lr, momentum and eps must be >= 0")
        super().__init__(
            params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, centered=centered)
        )

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient, as multi-tensor (``_foreach``) ops:
        the update is memory-bound, so passes over the state are what it costs."""
        loss = None if closure is None else closure()
        for group in self.param_groups:
            rho, mu, eps, lr = group["decay"], group["momentum"], group["eps"], group["lr"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p)
                    if mu:
                        state["mom"] = torch.zeros_like(p)
                    if group["centered"]:
                        state["mg"] = torch.zeros_like(p)
            ms = [self.state[p]["ms"] for p in params]
            torch._foreach_mul_(ms, rho)
            torch._foreach_addcmul_(ms, grads, grads, value=1 - rho)
            denom = torch._foreach_add(ms, eps)
            if group["centered"]:
                mg = [self.state[p]["mg"] for p in params]
                torch._foreach_mul_(mg, rho)
                torch._foreach_add_(mg, grads, alpha=1 - rho)
                torch._foreach_addcmul_(denom, mg, mg, value=-1)
            torch._foreach_sqrt_(denom)
            if mu:
                mom = [self.state[p]["mom"] for p in params]
                torch._foreach_mul_(mom, mu)
                torch._foreach_addcdiv_(mom, grads, denom, value=lr)
                torch._foreach_sub_(params, mom)
            else:  # mom = lr g / denom, never kept
                torch._foreach_addcdiv_(params, grads, denom, value=-lr)
        return loss
