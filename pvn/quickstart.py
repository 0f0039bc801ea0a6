"""``pvn quickstart``: the embedded default pipeline, runnable on a laptop CPU in minutes.

Collect a small DQN-Replay-format log with a random policy; pretrain a small PVN on it; fit a
linear Q head online on the frozen PVN features and on random features of the same torso; report
both, with offline linear probes on the collected log.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pvn.collect import collect
from pvn.config import load_config, save_config
from pvn.data_info import format_summary
from pvn.evaluate import evaluate
from pvn.pretrain import pretrain
from pvn.report import report
from replay.summary import summarize


def quickstart(cfg) -> None:
    out = Path(cfg.out)
    data_dir, run_dir = out / "data", out / "pvn"
    evals = {"pvn": out / "eval_pvn", "random": out / "eval_random"}
    for d in (data_dir, run_dir, *evals.values(), out / "report"):
        if d.exists():
            shutil.rmtree(d)
    progress = f"progress={str(cfg.progress).lower()}"
    print(f"[1/4] collecting {cfg.steps} random-policy steps of {cfg.game} into {data_dir}")
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
    print(f"[2/4] pretraining a PVN for {cfg.pretrain_steps} updates into {run_dir}")
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
    print(f"\n[3/4] linear control for {cfg.eval_steps} steps on frozen PVN and random features")
    for name, enc in (("pvn", run_dir), ("random", "random")):
        r = evaluate(
            load_config(
                "evaluate",
                [
                    f"encoder={enc}",
                    f"game={cfg.game}",
                    f"steps={cfg.eval_steps}",
                    f"num_envs={cfg.num_envs}",
                    f"run_dir={evals[name]}",
                    f"seed={cfg.seed}",
                    progress,
                ],
            )
        )
        print(
            f"      {name}: {r['episodes']} episodes, mean return (last 10) "
            f"{r['mean_return_last_10']}"
        )
    print("\n[4/4] report (and offline linear probes on the collected log)\n")
    print(report([str(d) for d in evals.values()], out / "report", data=data_dir))
    print(f"\nfiles: {out / 'report'} (report.md, report.csv, curves.png, probes.json)")
    save_config(cfg, out)
