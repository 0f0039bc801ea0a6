"""pvn: proto-value networks, representation learning for RL from logged Atari data."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["load_encoder"]


def __getattr__(name: str) -> Any:
    """``pvn.load_encoder`` is :func:`pvn.encoder.load_encoder`, imported on first use: the
    ``pvn`` command sets OpenMP's wait policy before anything imports torch (pvn.console)."""
    if name == "load_encoder":
        from pvn.encoder import load_encoder

        return load_encoder
    raise AttributeError(f"module 'pvn' has no attribute {name!r}")
