"""``pvn pretrain``: proto-value network pretraining, from a resolved config to a run directory.

Validate the config; resume from the run directory's latest checkpoint if there is one (under
the same settings); open the team of workers (one for a plain run); run the loop
(:func:`pvn.pretraining.train`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pvn.config import require, require_device
from pvn.pretraining import open_team, td_config, train
from pvn.run_dir import RunDir


def _validate(cfg: DictConfig) -> None:
    require(cfg.steps > 0, "steps", cfg.steps, "must be > 0")
    require(cfg.batch_size > 0, "batch_size", cfg.batch_size, "must be > 0")
    require(cfg.checkpoint_every > 0, "checkpoint_every", cfg.checkpoint_every, "must be > 0")
    require(cfg.log_every > 0, "log_every", cfg.log_every, "must be > 0")
    require(cfg.keep_checkpoints > 0, "keep_checkpoints", cfg.keep_checkpoints, "must be > 0")
    require_device(cfg.device)
    require(
        isinstance(cfg.data.path, str) or cfg.distributed.name != "none",
        "data.path",
        cfg.data.path,
        "one replay directory (a list of games needs distributed.partition=games)",
    )
    require(
        cfg.data.task_cache in ("auto", True, False),
        "data.task_cache",
        cfg.data.task_cache,
        "choose auto, true or false",
    )
    td_config(cfg)


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) ``pvn pretrain``, one worker or many; returns the last logged metrics."""
    _validate(cfg)
    run = RunDir(Path(cfg.run_dir), "pretraining")
    latest = run.latest(cfg)
    team = open_team(cfg)
    try:
        return train(cfg, team, run.path, latest)
    finally:
        team.close()
