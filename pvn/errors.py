"""User-facing errors: every mistake a user can make raises one of these, and the CLI prints one
line naming the file or key and exits with status 2."""

from typing import Any

from pvn.envs.errors import EnvError
from pvn.replay.errors import ReplayError

#: the exit status of ``pvn pretrain`` when its loss or parameters stopped being finite
DIVERGED_EXIT = 3
#: the exit status of a run stopped by a signal after writing a checkpoint (sysexits'
#: EX_TEMPFAIL: the same command resumes it; :mod:`pvn.preemption`)
PREEMPTED_EXIT = 75


class PVNError(Exception):
    """Base of pvn's own errors; a command that raises one exits with ``exit_code``."""

    exit_code = 2


class ConfigError(PVNError):
    """A bad config key or value; the message names the key and the valid choices."""


class CheckpointError(PVNError):
    """A missing, corrupt or incompatible checkpoint or run directory."""


class WriteError(PVNError):
    """A file could not be written (a full disk, a file-size limit, no permission); the message
    names the file and the cause, and nothing half-written is left behind."""


USER_ERRORS = (PVNError, ReplayError, EnvError)


def require_device(device: str) -> None:
    """``device`` must be cpu or cuda, and cuda must be available if asked for."""
    require(device in ("cpu", "cuda"), "device", device, "choose cpu or cuda")
    if device == "cuda":
        import torch

        require(torch.cuda.is_available(), "device", device, "no CUDA device is available")


def require(cond: bool, key: str, value: Any, why: str) -> None:
    """Raise a one-line :class:`ConfigError` for ``key=value`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")
