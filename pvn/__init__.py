"""pvn: proto-value networks, representation learning for RL from logged Atari data."""

from __future__ import annotations

__version__ = "0.1.0"


def load_encoder(path, device="cpu"):
    """The frozen torso of a pretraining run (see :func:`pvn.encoder.load_encoder`)."""
    from pvn.encoder import load_encoder as _load

    return _load(path, device)


__all__ = ["load_encoder"]
