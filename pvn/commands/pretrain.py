"""``pvn pretrain``: proto-value network pretraining, from a resolved config to a run directory.

Validate the config (its schema's checks, :mod:`pvn.schema`); resume from the run directory's
latest checkpoint if there is one (under the same settings); open the team of workers (one for a
plain run); run the loop (:func:`pvn.pretraining.train`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pvn.config import validate
from pvn.errors import require_device
from pvn.pretraining import open_team, train
from pvn.run_dir import RunDir
from pvn.schema import PretrainConfig


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) ``pvn pretrain``, one worker or many; returns the last logged metrics."""
    validate("pretrain", cfg)
    require_device(cfg.device)
    run = RunDir(Path(cfg.run_dir), "pretraining", schema=PretrainConfig)
    latest = run.latest(cfg)
    team = open_team(cfg)
    try:
        return train(cfg, team, run.path, latest)
    finally:
        team.close()
