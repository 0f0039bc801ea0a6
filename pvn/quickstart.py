"""``pvn quickstart``: the embedded default pipeline, runnable on a laptop CPU in minutes.

Today: collect a small DQN-Replay-format log with a random policy, pretrain a small PVN on it and
print its diagnostics. Evaluation (PVN vs random features) and the report join as they land.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pvn.collect import collect
from pvn.config import load_config, save_config
from pvn.pretrain import pretrain
from pvn.report_data import format_summary
from replay.summary import summarize


def quickstart(cfg) -> None:
    out = Path(cfg.out)
    data_dir, run_dir = out / "data", out / "pvn"
    for d in (data_dir, run_dir):
        if d.exists():
            shutil.rmtree(d)
    progress = f"progress={str(cfg.progress).lower()}"
    print(f"[1/2] collecting {cfg.steps} random-policy steps of {cfg.game} into {data_dir}")
    summary = collect(
        load_config(
            "collect",
            [
                f"game={cfg.game}",
                f"steps={cfg.steps}",
                f"out={data_dir}",
                f"num_envs={cfg.num_envs}",
                f"seed={cfg.seed}",
                progress,
            ],
        )
    )
    print(
        f"      {summary['episodes']} episodes, mean return {summary['return_mean']}, "
        f"{summary['steps_per_second']} steps/s\n"
    )
    print(format_summary(summarize(data_dir)), "\n")
    print(f"[2/2] pretraining a PVN for {cfg.pretrain_steps} updates into {run_dir}")
    pcfg = load_config(
        "pretrain",
        [
            f"data.path={data_dir}",
            f"run_dir={run_dir}",
            f"steps={cfg.pretrain_steps}",
            f"seed={cfg.seed}",
            f"checkpoint_every={cfg.pretrain_steps}",
            progress,
        ],
    )
    m = pretrain(pcfg)
    p = pcfg.tasks.target_proportion
    print(
        f"      TD loss {m.get('td_loss', float('nan')):.4f}; indicators fire on "
        f"{m['fire_mean']:.3f} of states (target p = {p}, tasks range {m['fire_min']:.3f}-"
        f"{m['fire_max']:.3f}); feature srank {m.get('srank')} of {pcfg.torso.feature_dim}, "
        f"dormant units {m.get('dormant_fraction', float('nan')):.2f}; "
        f"{m['updates_per_s']:.1f} updates/s"
    )
    print(
        f"      curves: tensorboard --logdir {run_dir / 'tb'}\n"
        f"      encoder: pvn.load_encoder('{run_dir}')"
    )
    save_config(cfg, out)
