"""``pvn pretrain``: proto-value network pretraining, from a resolved config to a run directory.

Validate the config (its schema's checks, :mod:`pvn.schema`); resume from the run directory's
latest checkpoint if there is one (under the same settings); open the team of workers (one for a
plain run); run the loop (:func:`pvn.pretraining.train`). A run whose loss or parameters stop
being finite stops with an error, exits 3 and leaves ``diverged.json`` (the error, for studies
that count a divergence as an outcome: ``pvn experiment``'s pretraining arms).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pvn.config import validate
from pvn.errors import require_device
from pvn.files import write_text_atomic
from pvn.pretrain_callbacks import NonFiniteLoss
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
    diverged = run.path / "diverged.json"
    try:
        if team.rank == 0:  # the lead process writes the run directory
            run.save_config(cfg)
            announce(cfg.threads)
            diverged.unlink(missing_ok=True)  # a resumed or restarted run: not (yet) diverged
        return train(spec, team, run.path, latest)
    except NonFiniteLoss as e:
        if team.rank == 0:
            write_text_atomic(diverged, json.dumps({"error": str(e)}) + "\n")
        raise
    finally:
        team.close()
