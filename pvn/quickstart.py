"""``pvn quickstart``: the embedded default pipeline, runnable on a laptop CPU in minutes.

Today: collect a small DQN-Replay-format log with a random policy and summarise it. Pretraining,
evaluation and the report join as they land.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import OmegaConf

from pvn.collect import collect
from pvn.config import load_config
from pvn.report_data import format_summary
from replay.summary import summarize


def quickstart(cfg) -> None:
    out = Path(cfg.out)
    data_dir = out / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    collect_cfg = load_config(
        "collect",
        [
            f"game={cfg.game}",
            f"steps={cfg.steps}",
            f"out={data_dir}",
            f"num_envs={cfg.num_envs}",
            f"seed={cfg.seed}",
            f"progress={str(cfg.progress).lower()}",
        ],
    )
    print(f"[1/1] collecting {cfg.steps} random-policy steps of {cfg.game} into {data_dir}")
    summary = collect(collect_cfg)
    print(
        f"      {summary['episodes']} episodes, mean return {summary['return_mean']}, "
        f"{summary['steps_per_second']} steps/s"
    )
    print()
    print(format_summary(summarize(data_dir)))
    OmegaConf.save(cfg, out / "config.yaml")
