"""Counting the memory a training step holds for backward, on any device.

:class:`SavedTensorMeter` sees every tensor autograd saves for backward through
``torch.autograd.graph.saved_tensors_hooks`` and tracks the bytes alive at each moment (by
storage, so views of one tensor count once) and their peak. Parameters saved by an op (weights)
are not activations and are left out. This is the CPU counterpart of
``torch.cuda.max_memory_allocated`` for comparing end-to-end and local learning (the saving of
local learning is in activations, Wang et al. ICLR 2021), and it is deterministic.
"""

from __future__ import annotations

import torch
from torch import nn


class _Held:
    """A saved tensor; when autograd frees it (the graph is released), its bytes are too."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: tuple, tensor: torch.Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: ``peak`` and ``live`` bytes of activations saved for backward."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._refs: dict[tuple, list[int]] = {}  # storage -> [saved tensors alive, bytes]

    def _pack(self, t: torch.Tensor):
        base = t if t._base is None else t._base  # a linear layer saves its weight as a view
        if isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad):  # weights
            return t
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.device)
        ref = self._refs.get(key)
        if ref is None:
            self._refs[key] = [1, storage.nbytes()]
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        else:
            ref[0] += 1
        return _Held(self, key, t)

    @staticmethod
    def _unpack(held):
        return held.tensor if isinstance(held, _Held) else held

    def _release(self, key: tuple) -> None:
        ref = self._refs[key]
        ref[0] -= 1
        if ref[0] == 0:
            self.live -= ref[1]
            del self._refs[key]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def state_bytes(*modules: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Bytes of parameters, gradients and optimizer state (the step's non-activation memory)."""
    params = {id(p): p for m in modules for p in m.parameters()}.values()
    out = {
        "parameters": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(
            p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None
        ),
        "optimizer": 0,
    }
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    out["optimizer"] += v.numel() * v.element_size()
    return out
