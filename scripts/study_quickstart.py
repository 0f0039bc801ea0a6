"""Study (issue 4, item 7): which quickstart budget makes PVN vs random features say something?

The quickstart has 10 minutes of 2 CPU cores for the whole pipeline, about 1/1000 of the paper's
pretraining and 1/20 of its evaluation. This script runs the quickstart's pipeline with its
defaults (Boxing, 30k logged random-play steps, 2,000 PVN updates, 45k agent steps of online
linear DQN per encoder and seed) over the two choices that decide whether the comparison says
anything at that scale, and writes the numbers to ``docs/study_quickstart_<game>_results.json``
(all of them) and ``docs/study_quickstart_<game>_tables.md`` (plain tables), and the figure
``docs/study_quickstart_<game>_curves.png`` (``docs/study_quickstart_<game>.md`` is written by hand
from them):

* the pretraining rule: the paper's uncentred successor measures, or ``td.center=true`` (the
  SM of ``r - p``; see ``pvn/learner.py``);
* the linear head's learning rate: the paper's protocol (``eval_preset=none``, Adam 6.25e-5,
  target period 2,000) or ``eval_preset=short`` (target period 500) at lr 3e-4, 1e-3, 3e-3
  (the preset's) and 1e-2, since the encoders' feature scales differ by up to 65x and a head's
  best step size with them; the fair comparison is each encoder at its best.

Every (encoder, preset) runs the same seeds; a seed fixes the envs, the exploration and the
head's init, so runs with the same seed differ only in the encoder (paired). The random encoder
is the same torso at a random init (a different one per seed, as ``pvn evaluate encoder=random``
draws it). Per encoder the tables also give the offline probes (``pvn.analysis.probes``), the
features' effective rank, dormant fraction and mean norm on logged states. Finished runs in
``--out`` are reused; about 55 minutes on 2 cores with the defaults.

    .venv/bin/python scripts/study_quickstart.py
    .venv/bin/python scripts/study_quickstart.py --seeds 0 1 2 3 4 5 --out runs/study_qs6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study import REPO, fmt, log, pyplot, save_figure, table, write_results

ENCODERS = {"random": "random features", "pvn": "PVN (paper rule)", "pvn_c": "PVN (td.center)"}
COLORS = {"random": "tab:blue", "pvn": "tab:orange", "pvn_c": "tab:green"}
#: head settings: name -> (label, evaluate overrides)
HEADS = {
    "paper": ("paper head (lr 6.25e-5)", ["eval_preset=none"]),
    "short_3e-4": ("short preset, lr 3e-4", ["eval_preset=short", "agent.lr=3e-4"]),
    "short_1e-3": ("short preset, lr 1e-3", ["eval_preset=short", "agent.lr=1e-3"]),
    "short": ("short preset (lr 3e-3)", ["eval_preset=short"]),
    "short_1e-2": ("short preset, lr 1e-2", ["eval_preset=short", "agent.lr=1e-2"]),
}
#: every encoder under the paper's head and the short preset at lr 1e-3, then the head
#: learning-rate sweep of the two encoders the quickstart compares
GRID = [(e, h) for h in ("paper", "short_1e-3") for e in ENCODERS] + [
    (e, h) for h in ("short_3e-4", "short", "short_1e-2") for e in ("random", "pvn_c")
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--game", default="Boxing", help="ALE game (default: Boxing)")
    ap.add_argument("--collect-steps", type=int, default=30_000, help="logged steps (30000)")
    ap.add_argument("--pretrain-steps", type=int, default=2000, help="PVN updates (2000)")
    ap.add_argument("--eval-steps", type=int, default=45_000, help="agent steps per run (45000)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="(0 1 2 3)")
    ap.add_argument(
        "--heads",
        nargs="+",
        default=list(HEADS),
        choices=list(HEADS),
        help="head settings to run (default: all; paper and short_1e-3 for every encoder, the "
        "others for random and pvn_c only)",
    )
    ap.add_argument("--out", type=Path, help="runs (default: runs/study_quickstart_<game>)")
    ap.add_argument(
        "--docs",
        type=Path,
        default=REPO / "docs",
        help="where study_quickstart_<game>_tables.md, _results.json and _curves.png go",
    )
    args = ap.parse_args(argv)
    args.out = args.out or REPO / "runs" / f"study_quickstart_{args.game.lower()}"
    return args


def pvn(*args: str) -> None:
    """One ``pvn`` command in a subprocess (its output discarded, its errors raised)."""
    log("pvn " + " ".join(args))
    subprocess.run(
        [sys.executable, "-m", "pvn", *args, "progress=false"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    out, data = args.out, args.out / "data"
    if not (data / "collect.json").is_file():
        pvn(
            "collect",
            f"game={args.game}",
            f"steps={args.collect_steps}",
            f"out={data}",
            "num_envs=8",
            "seed=0",
        )
    encoders = {"random": "random"}
    for name, center in (("pvn", "false"), ("pvn_c", "true")):
        run = out / name
        if not (run / "metrics.jsonl").is_file() or not list((run / "checkpoints").glob("*.pt")):
            pvn(
                "pretrain",
                f"data.path={data}",
                f"run_dir={run}",
                f"steps={args.pretrain_steps}",
                "seed=0",
                f"td.center={center}",
                f"checkpoint_every={args.pretrain_steps}",
            )
        encoders[name] = str(run)
    runs: dict[str, Any] = {}
    for seed in args.seeds:
        for name, head in grid(args):
            rd = out / "eval" / f"{name}_{head}_s{seed}"
            if not (rd / "results.json").is_file():
                t0 = time.perf_counter()
                pvn(
                    "evaluate",
                    f"encoder={encoders[name]}",
                    f"game={args.game}",
                    f"steps={args.eval_steps}",
                    "num_envs=8",
                    f"run_dir={rd}",
                    f"seed={seed}",
                    "checkpoint_every=0",
                    *HEADS[head][1],
                )
                log(f"  {time.perf_counter() - t0:.0f} s")
            res = json.loads((rd / "results.json").read_text())
            runs[f"{name}/{head}/{seed}"] = [(e["step"], e["return"]) for e in res["episodes"]]
    return {"encoders": encoders, "runs": runs}


def grid(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(e, h) for e, h in GRID if h in args.heads]


@torch.no_grad()
def features_table(data: Path, encoders: dict[str, str], seeds: list[int]) -> dict[str, Any]:
    """Probes, srank, dormant fraction and mean feature norm per encoder (random: per seed's
    torso, averaged)."""
    from pvn.analysis.probes import linear_probes
    from pvn.commands.evaluate import encoder_for
    from pvn.config import load_config
    from pvn.replay import DQNReplayDataset

    ds = DQNReplayDataset(data)
    ck = ds.checkpoints[0]
    idx = np.sort(np.random.default_rng(1).choice(np.flatnonzero(ds.valid_mask(ck)), 1024, False))
    obs = torch.from_numpy(ds.gather(ck, idx).observation)
    table = {}
    for name, enc in encoders.items():
        rows = []
        for seed in seeds if name == "random" else seeds[:1]:
            cfg = load_config("evaluate", [f"encoder={enc}", "run_dir=x", f"seed={seed}"])
            e = encoder_for(cfg, torch.device("cpu"))
            p = linear_probes(e, ds)
            p["norm"] = float(e(obs).float().norm(dim=1).mean())
            rows.append(p)
        table[name] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return table


def final(curve: list[tuple[int, float]]) -> float:
    """``pvn report``'s final return: the mean of the last 10 episodes."""
    from pvn.commands.report import final_and_best

    return final_and_best([r for _, r in curve], 10)[0]


def tables(args: argparse.Namespace, res: dict[str, Any], feats: dict[str, Any]) -> tuple:
    """The returns table, the features table and the numbers behind them (``summary``: per
    encoder/head, the final returns and the gaps to random features per seed)."""
    runs, seeds = res["runs"], args.seeds
    rows, summary = [], {}
    for name, head in grid(args):
        base = [final(runs[f"random/{head}/{s}"]) for s in seeds]
        f = [final(runs[f"{name}/{head}/{s}"]) for s in seeds]
        gaps = [a - b for a, b in zip(f, base, strict=True)]
        summary[f"{name}/{head}"] = {"final": f, "gaps": gaps}
        rand = name == "random"
        rows.append(
            [
                HEADS[head][0],
                ENCODERS[name],
                ", ".join(f"{x:.1f}" for x in f),
                fmt(float(np.mean(f)), 1),
                "—" if rand else ", ".join(f"{g:+.1f}" for g in gaps),
                "—" if rand else sum(g > 0 for g in gaps),
            ]
        )
    header = ["head", "encoder", "final return per seed", "mean", "gap to random per seed"]
    returns = table(
        f"{args.game}, seeds {seeds}: final return (mean of the last 10 episodes) per head preset "
        "and encoder, and the paired gap to random features at the same seed.",
        [*header, f"seeds ahead of random (of {len(seeds)})"],
        rows,
    )
    keys = [("return_r2", 3), ("reward_r2", 3), ("srank", 0), ("dormant", 2), ("norm", 2)]
    features = table(
        "Features on logged states: probe R² (held-out later episodes), srank, dormant fraction, "
        "mean L2 norm (random: mean over the seeds' torsos).",
        ["encoder", "R² return-to-go", "R² next reward", "srank", "dormant", "norm"],
        [[label, *(fmt(feats[n][k], d) for k, d in keys)] for n, label in ENCODERS.items()],
    )
    return [returns, features], summary


def doc_name(args: argparse.Namespace, suffix: str) -> str:
    return f"study_quickstart_{args.game.lower()}{suffix}"


def plot(args: argparse.Namespace, runs: dict[str, Any]) -> None:
    """Mean return of the episodes ending in each bout (8 envs end theirs together) per arm."""
    plt = pyplot()
    heads = [h for h in ("paper", "short_1e-3", "short") if h in args.heads]
    fig, axes = plt.subplots(
        1, len(heads), figsize=(5.5 * len(heads), 3.8), sharey=True, squeeze=False
    )
    bins = np.linspace(0, args.eval_steps, 7)
    for ax, head in zip(axes[0], heads, strict=True):
        for name, label in ENCODERS.items():
            if f"{name}/{head}/{args.seeds[0]}" not in runs:
                continue
            ep = [e for s in args.seeds for e in runs[f"{name}/{head}/{s}"]]
            steps, rets = np.array([e[0] for e in ep]), np.array([e[1] for e in ep])
            at = np.digitize(steps, bins)
            xs = [steps[at == b].mean() for b in np.unique(at)]
            ys = [rets[at == b].mean() for b in np.unique(at)]
            ax.plot(xs, ys, marker="o", label=label, color=COLORS[name])
        ax.set_title(f"{args.game}, {HEADS[head][0]}, seeds {args.seeds}")
        ax.set_xlabel("agent steps")
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("episode return (mean over seeds and envs)")
    save_figure(fig, args.docs / doc_name(args, "_curves.png"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    res = run_pipeline(args)
    feats = features_table(args.out / "data", res["encoders"], args.seeds)
    plot(args, res["runs"])
    tabs, summary = tables(args, res, feats)
    data = {"args": vars(args), **res, "summary": summary, "features": feats}
    title = f"Quickstart budget study, {args.game}"
    path = write_results(
        args.docs, doc_name(args, ""), "study_quickstart.py", title, tabs, data, args.out
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
