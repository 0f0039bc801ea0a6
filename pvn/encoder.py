"""``pvn.load_encoder``: the frozen torso of a pretraining run, as a plain ``nn.Module``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pvn.checkpoint import load_checkpoint, resolve_checkpoint
from pvn.errors import CheckpointError
from pvn.networks import torso_from_spec


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The torso of a run directory's latest checkpoint (or of a checkpoint file), frozen.

    uint8 ``(B, 4, 84, 84)`` in, ``(B, D)`` features out; ``.feature_dim`` gives D. Parameters
    have ``requires_grad=False`` and the module is in eval mode.

    Args:
        path: a ``pvn pretrain`` run directory (its latest checkpoint) or a checkpoint file.
        device: where the encoder runs.

    Returns:
        The frozen torso. A random torso is not a checkpoint: build one with
        :func:`pvn.networks.build_torso` (what ``pvn evaluate encoder=random`` does).
    """
    if str(path) in ("random", "e2e"):
        raise CheckpointError(
            f"load_encoder({str(path)!r}): takes a pretraining run dir or checkpoint; for a random "
            "torso use pvn.networks.build_torso('nature', torch.Generator().manual_seed(seed))"
        )
    ckpt = resolve_checkpoint(path)
    state = load_checkpoint(ckpt)
    try:
        torso_cfg = dict(state["meta"]["torso"])
        moe_cfg = state["meta"].get("moe")
        online = state["learner"]["online"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{ckpt}: not a pvn pretraining checkpoint") from None
    # the generator's draws are overwritten by the checkpoint's weights
    torso = torso_from_spec(torso_cfg, torch.Generator().manual_seed(0), moe_cfg)
    prefix = "torso."
    torso.load_state_dict({k[len(prefix) :]: v for k, v in online.items() if k.startswith(prefix)})
    return torso.to(device).eval().requires_grad_(False)
