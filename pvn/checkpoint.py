"""Run-directory checkpoints: atomic writes, keep the last K, find the latest, load safely.

A checkpoint is written to a temporary file, fsynced, then renamed over ``ckpt_<step>.pt``, so a
kill at any moment leaves either the previous set or the new one, never half a file. Loading uses
``torch.load(weights_only=True)``: tensors and plain containers only, no arbitrary unpickling.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvn.errors import CheckpointError, WriteError
from pvn.files import failed_write

_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(d / f for f in os.listdir(d) if _NAME.match(f))


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint file was saved at (its name's number)."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise CheckpointError(f"{path}: not a checkpoint's name (ckpt_<9 digits>.pt)")
    return int(m.group(1))


def resumed_env_seed(seed: int, step: int) -> int:
    """The env seed of a run resumed at ``step``: envpool cannot restore emulators, so a resumed
    run starts fresh episodes, seeded by where it resumes (``seed`` itself at step 0)."""
    if not step:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0] >> 1)


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    path = save_torch_atomic(checkpoint_dir(run_dir) / f"ckpt_{step:09d}.pt", state)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()
    return path


def save_torch_atomic(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file, fsynced, renamed over ``path`` and the directory
    fsynced: a kill or a full disk at any moment leaves the old file or the new one."""
    path = Path(path)
    d = path.parent
    tmp = d / f".{path.name}.tmp-{os.getpid()}"
    try:
        with failed_write(path, tmp):
            d.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except RuntimeError as e:  # torch's zip writer reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise WriteError(f"{path}: could not be written ({str(e).splitlines()[0]})") from None
    dir_fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        # mmap: a run's replay (GBs) is read from the page cache as it is copied into place,
        # not first into a second copy in memory
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated, not a torch file, or holds non-tensor objects
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None


#: a pretraining's torso alone (pvn.encoder.export_encoder), kept and restored by an experiment
#: (pvn.experiments.kept) in place of its checkpoints
TORSO_FILE = "torso.pt"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory (of a pretraining run dir
    restored from an experiment's kept record, which holds only its exported torso:
    :data:`TORSO_FILE`)."""
    path = Path(path)
    if path.is_file():
        return path
    found = list_checkpoints(path)
    if not found and (path / TORSO_FILE).is_file():
        return path / TORSO_FILE
    if not found:
        raise CheckpointError(f"{path}: neither a checkpoint file nor a run dir with checkpoints")
    return found[-1]
