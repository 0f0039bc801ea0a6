"""``pvn.load_encoder``: the frozen torso of a pretraining run, as a plain ``nn.Module``; and
:func:`export_encoder`, the torso alone in a file of a few MB, for sharing a pretrained
representation without its run (a checkpoint also holds the task heads, the target network and
the optimizer's state: ~4x the torso)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pvn.checkpoint import load_checkpoint, resolve_checkpoint, save_torch_atomic
from pvn.errors import CheckpointError
from pvn.networks import torso_from_spec

#: the ``format`` of an exported encoder file (a pretraining checkpoint's is an int)
ENCODER_FORMAT = "pvn-encoder/1"
_PREFIX = "torso."


def _torso_parts(path: Path, state: dict[str, Any]) -> tuple[dict, dict | None, dict]:
    """The torso's spec, its MoE config and its weights, from a checkpoint or an encoder file."""
    try:
        if state.get("format") == ENCODER_FORMAT:
            return dict(state["torso"]), state.get("moe"), state["state"]
        meta, online = state["meta"], state["learner"]["online"]
        weights = {k[len(_PREFIX) :]: v for k, v in online.items() if k.startswith(_PREFIX)}
        return dict(meta["torso"]), meta.get("moe"), weights
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(
            f"{path}: neither a pvn pretraining checkpoint nor an exported encoder"
        ) from None


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The torso of a run directory's latest checkpoint (or of a checkpoint file, or of a file
    written by :func:`export_encoder`), frozen.

    uint8 ``(B, 4, 84, 84)`` in, ``(B, D)`` features out; ``.feature_dim`` gives D. Parameters
    have ``requires_grad=False`` and the module is in eval mode.

    Args:
        path: a ``pvn pretrain`` run directory (its latest checkpoint), a checkpoint file or an
            exported encoder file.
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
    spec, moe_cfg, weights = _torso_parts(ckpt, load_checkpoint(ckpt))
    # the generator's draws are overwritten by the checkpoint's weights
    torso = torso_from_spec(spec, torch.Generator().manual_seed(0), moe_cfg)
    try:
        torso.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"{ckpt}: weights do not fit its torso ({str(e).splitlines()[0]})"
        ) from None
    return torso.to(device).eval().requires_grad_(False)


def export_encoder(src: str | Path, dst: str | Path, **info: Any) -> Path:
    """Write the torso of ``src`` to ``dst``, atomically: its spec, MoE config and weights, bit
    for bit, the pretraining step and ``info``, all that :func:`load_encoder` needs to rebuild
    it.

    Args:
        src: a ``pvn pretrain`` run directory (its latest checkpoint) or a checkpoint file.
        dst: the file to write (its directory is made).
        **info: plain values saved beside the torso (the game, the command that made it).

    Returns:
        ``dst``.
    """
    ckpt = resolve_checkpoint(src)
    state = load_checkpoint(ckpt)
    spec, moe_cfg, weights = _torso_parts(ckpt, state)
    out = {
        "format": ENCODER_FORMAT,
        "torso": spec,
        "moe": moe_cfg,
        # contiguous copies: a view would save its whole (mmapped) checkpoint storage
        "state": {k: v.detach().clone() for k, v in weights.items()},
        "step": int(state.get("step", -1)),
        **info,
    }
    return save_torch_atomic(dst, out)
