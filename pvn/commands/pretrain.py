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
from pvn.pretraining import PretrainConfig, open_team, train
from pvn.run_dir import RunDir
from pvn.threads import announce


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) ``pvn pretrain``, one worker or many; returns the last logged metrics."""
    spec: PretrainConfig = validate("pretrain", cfg)  # the typed config the core takes
    require_device(cfg.device)
    run = RunDir(Path(cfg.run_dir), "pretraining", schema=PretrainConfig)
    latest = run.latest(cfg)
    team = open_team(spec)
    try:
        if team.rank == 0:  # the lead process writes the run directory
            run.save_config(cfg)
            announce(cfg.threads)
        return train(spec, team, run.path, latest)
    finally:
        team.close()
