"""One harness for every command's run directory: refuse a finished run, resume an unfinished
one only under the settings that started it, save the config, mark the run done.

A run directory holds ``config.yaml`` (the resolved config, saved when the run starts),
``checkpoints/`` (:mod:`pvn.checkpoint`) and, once finished, the command's done file
(``results.json`` for an evaluation, ``collect.json`` for a collection). Re-running a command
on an unfinished directory continues it from its latest checkpoint; a finished one is refused,
and so is a resume under a config that computes something else
(:func:`pvn.config.check_resumable`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pvn.checkpoint import list_checkpoints, load_checkpoint
from pvn.config import check_resumable, save_config
from pvn.errors import ConfigError
from pvn.files import write_text_atomic


@dataclass
class RunDir:
    """A command's run directory.

    Args:
        path: the directory.
        what: what the command makes, for messages (``evaluation``, ``collection``).
        done_file: the file that marks a finished run (``None``: the command writes none).
        error: the exception type of the command's user errors.
    """

    path: Path
    what: str
    done_file: str | None = None
    error: type[Exception] = ConfigError

    def refuse_finished(self) -> None:
        """A finished run is never run again: its results stay as they were made."""
        if self.done_file and (self.path / self.done_file).exists():
            raise self.error(
                f"{self.path}: already holds {self.done_file}: it holds a finished {self.what}; "
                "choose a new directory"
            )

    def latest(self, cfg: DictConfig) -> Path | None:
        """The checkpoint to resume from (the latest), after checking that ``cfg`` computes
        what the run was started with; ``None`` for a new run."""
        found = list_checkpoints(self.path)
        if found:
            check_resumable(self.path, cfg)
        return found[-1] if found else None

    def resume(self, cfg: DictConfig, key: str) -> dict[str, Any] | None:
        """The state a command saved under ``key`` in the latest checkpoint, or ``None``."""
        latest = self.latest(cfg)
        if latest is None:
            return None
        state = load_checkpoint(latest).get(key)
        if state is None:
            raise self.error(f"{latest}: not a checkpoint of a running {self.what}")
        return state

    def save_config(self, cfg: DictConfig) -> Path:
        return save_config(cfg, self.path)

    def finish(self, payload: dict[str, Any], indent: int = 1) -> Path:
        """Write the done file (atomically: a killed run leaves none, so it resumes)."""
        assert self.done_file is not None
        return write_text_atomic(self.path / self.done_file, json.dumps(payload, indent=indent))
