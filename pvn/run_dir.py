"""One harness for every command's run directory: refuse a finished run, resume an unfinished
one only under the settings that started it, save the config, mark the run done.

A run directory holds ``config.yaml`` (the resolved config, saved when the run starts),
``checkpoints/`` (:mod:`pvn.checkpoint`) and, once finished, the command's done file
(``results.json`` for an evaluation, ``collect.json`` for a collection). Re-running a command
on an unfinished directory continues it from its latest checkpoint; a finished one is refused,
and so is a resume under a config that computes something else
(:func:`check_resumable`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pvn.checkpoint import list_checkpoints, load_checkpoint
from pvn.errors import ConfigError
from pvn.files import write_text_atomic

#: Keys a resumed run may change: they do not change what is computed. ``steps`` extends a run;
#: the thread plan follows the machine a run resumes on; a run directory may be moved or copied
#: (``run_dir``, ``collect``'s ``out``).
RESUMABLE_KEYS = frozenset(
    {
        "run_dir",
        "out",
        "steps",
        "progress",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "threads",
        "diagnostics",
    }
)


def check_resumable(run_dir: str | Path, cfg: DictConfig, schema: type | None = None) -> None:
    """Refuse to resume the run in ``run_dir`` under a config that computes something else: a
    resumed run continues from its checkpoint, so any other change (a learning rate, a game, an
    epsilon schedule) would silently splice two experiments into one run. Every key outside
    :data:`RESUMABLE_KEYS` must equal the saved ``config.yaml``'s.

    With the command's ``schema`` (:mod:`pvn.schema`), a run saved by an older pvn resumes: a
    key it lacks takes the schema's default (a key added later defaults to what the run did),
    and a key the schema no longer has is named in a one-line error.

    Args:
        run_dir: the run directory.
        cfg: the config it would resume under.
        schema: the command's schema dataclass.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():  # killed before its config was saved: nothing to compare
        return
    saved = OmegaConf.load(path)
    if schema is not None:
        try:
            saved = OmegaConf.merge(OmegaConf.structured(schema), saved)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or " ".join(str(e).split())
            raise ConfigError(
                f"{path}: key '{key}' is not in this pvn's {schema.__name__}; it moved or was "
                "removed (see the changelog); start a new run_dir"
            ) from None
    old = OmegaConf.to_container(saved, resolve=True)
    new = OmegaConf.to_container(cfg, resolve=True)
    diff = sorted(
        k for k in set(old) | set(new) if k not in RESUMABLE_KEYS and old.get(k) != new.get(k)
    )
    if diff:
        raise ConfigError(
            f"{run_dir}: holds a run with a different config ({', '.join(diff)}); "
            "resume with the same settings or choose a new run_dir"
        )


def save_config(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Write the resolved config to ``run_dir/config.yaml`` atomically.

    Args:
        cfg: the command's resolved config.
        run_dir: the run directory.

    Returns:
        The path written.
    """
    return write_text_atomic(Path(run_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


@dataclass
class RunDir:
    """A command's run directory.

    Args:
        path: the directory.
        what: what the command makes, for messages (``evaluation``, ``collection``).
        done_file: the file that marks a finished run (``None``: the command writes none).
        error: the exception type of the command's user errors.
        schema: the command's config schema (an older run's config then resumes with the
            defaults of keys added since).
    """

    path: Path
    what: str
    done_file: str | None = None
    error: type[Exception] = ConfigError
    schema: type | None = None

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
            check_resumable(self.path, cfg, self.schema)
            print(f"pvn: resuming {self.what} from {found[-1]}", file=sys.stderr)
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
