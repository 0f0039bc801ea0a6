"""Study (issue 5, item 6): pretrain the PVN torso end to end vs with local learning (DGL, MAN,
MAN++, AugLocal) on the same data -- TD-loss curves, per-block local losses, held-out TD loss,
offline linear probes of the frozen torso and, optionally, online linear control.

What it does, top to bottom:
  1. collects one log of uniform-random play (``pvn collect``) with a checkpoint capacity of 45%
     of the steps, so two full, disjoint replay checkpoints are written (plus a small partial
     third one, unused): checkpoint 0 trains every arm, checkpoint 1 is held out;
  2. pretrains each arm on checkpoint 0 through ``pvn.pretrain.pretrain`` (the function behind
     ``pvn pretrain``), ``local=none|dgl|man|man_pp|auglocal``, everything else equal: data,
     seed(s), updates, batch, torso, tasks, optimizer. With the same seed every arm starts from
     the *same* torso and head weights (the torso is drawn first from the seed's generator);
  3. per run: the training TD-loss curve of the final head and the ``local_loss/<block>`` curves
     of the auxiliary heads (``metrics.jsonl``); the final values (mean of the last
     ``--final-logs`` logs); the held-out TD loss of the final head and of every block's
     auxiliary head on ``--eval-transitions`` transitions of checkpoint 1 (targets from the run's
     own target network); offline ridge probes of the frozen torso (``pvn.load_encoder`` +
     ``pvn.analysis.probes.linear_probes``, the function ``pvn report --data`` runs) on
     checkpoint 1; wall time; and, with ``--control-steps N``, online linear control
     (``pvn evaluate``, a linear Q head on the frozen torso) for N agent steps;
  4. the probe floor: the arms' common torso at initialisation (no pretraining);
  5. writes ``docs/study_local.md`` (setup, tables, plots, a reading generated from the numbers)
     and ``docs/study_local_{td_curves,block_losses}.png``; prints the table as Markdown.

Runs use one torch thread (and OMP_NUM_THREADS=1 for subprocesses). Finished runs are reused
when the script is re-run with the same --out (delete the folder or pass --force to redo them).
The default budget (Pong, 24k logged steps, 1,000 updates of batch 32 on the nature torso,
seed 0 for every arm plus two extra end-to-end seeds as the noise yardstick) takes about
20-25 minutes on one CPU thread; scale up with --steps, --seeds, --torso, --game,
--collect-steps.

    .venv/bin/python scripts/study_local.py
    .venv/bin/python scripts/study_local.py --steps 20000 --seeds 0 1 2 --out runs/study_local_big
    .venv/bin/python scripts/study_local.py --control-steps 100000   # adds online control
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study import (
    HELDOUT_CKPT,
    REPO,
    TRAIN_CKPT,
    collect_data,
    heldout_losses,
    heldout_transitions,
    load_learner,
    log,
    machine,
)
from _study import env as _env
from _study import rel as _rel

#: arm -> ``local=`` option; "none" is end-to-end backpropagation through the whole torso
ARMS = ["none", "dgl", "man", "man_pp", "auglocal"]
LABEL = {
    "none": "end-to-end",
    "dgl": "DGL",
    "man": "MAN",
    "man_pp": "MAN++",
    "auglocal": "AugLocal",
}
REFERENCE = "none"
#: MAN++ starts as MAN (s = 1) and s moves slowly, so its curve is dashed to show both
STYLE = {"none": "-", "dgl": "-", "man": "-", "man_pp": "--", "auglocal": "-"}
COLORS = {
    "none": "black",
    "dgl": "tab:blue",
    "man": "tab:red",
    "man_pp": "tab:orange",
    "auglocal": "tab:green",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--game", default="Pong", help="ALE game to log (default: Pong)")
    ap.add_argument(
        "--collect-steps",
        type=int,
        default=24_000,
        help="agent steps of random play to log; the checkpoint capacity is 45%% of it, so two "
        "full disjoint checkpoints (train, held out) are written (default: 24000)",
    )
    ap.add_argument("--steps", type=int, default=1000, help="updates per run (default: 1000)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch per update (default: 32)")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="seeds of every arm (default: 0)"
    )
    ap.add_argument(
        "--yardstick-seeds",
        type=int,
        nargs="*",
        default=[1, 2],
        help="extra seeds of the end-to-end arm whose spread is the seed-noise yardstick "
        "(default: 1 2; none: pass the flag alone)",
    )
    ap.add_argument(
        "--arms",
        nargs="+",
        default=list(ARMS),
        choices=ARMS,
        metavar="ARM",
        help=f"local= options to run, from {', '.join(ARMS)} (default: all five)",
    )
    ap.add_argument(
        "--torso",
        default="nature",
        choices=["nature", "impala", "impala_x8"],
        help="torso config group; nature is by far the cheapest on a CPU (default: nature)",
    )
    ap.add_argument(
        "--block-method",
        default="dgl",
        choices=ARMS[1:],
        help="local method whose per-block loss curves get the large panel (default: dgl)",
    )
    ap.add_argument(
        "--eval-transitions",
        type=int,
        default=2048,
        help="held-out transitions for the held-out TD losses (default: 2048)",
    )
    ap.add_argument(
        "--probe-states", type=int, default=4000, help="states per probe fit (default: 4000)"
    )
    ap.add_argument(
        "--control-steps",
        type=int,
        default=0,
        help="agent steps of online linear control (`pvn evaluate`) per run and for the random "
        "torso; 0: skip (default: 0; 20k steps of Pong score about -21 whatever the features, so "
        "use >= 100k for a signal)",
    )
    ap.add_argument("--log-every", type=int, default=50, help="updates between logs (default: 50)")
    ap.add_argument(
        "--final-logs",
        type=int,
        default=4,
        help="logs averaged into the final training losses (default: 4, i.e. the last 200 "
        "updates at --log-every 50)",
    )
    ap.add_argument(
        "--out",
        default=str(REPO / "runs" / "study_local"),
        help="work folder: data/, cache/, runs/, control/, results.json "
        "(default: runs/study_local)",
    )
    ap.add_argument(
        "--docs",
        default=str(REPO / "docs"),
        help="where study_local.md and its PNGs go (default: docs/)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="RESULTS_JSON",
        help="results.json of other runs of this script (e.g. a longer budget in another --out) "
        "to add to the doc as extra sections with their own table and curves (default: none)",
    )
    ap.add_argument("--force", action="store_true", help="redo runs found finished in --out")
    args = ap.parse_args(argv)
    if args.steps <= 100:
        ap.error("--steps: must exceed the 100 warm-up updates of the default config")
    if args.collect_steps < 2000:
        ap.error("--collect-steps: too few for two replay checkpoints with whole episodes")
    return args


# ---------------------------------------------------------------------------------------------
# 1. data
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# 2. pretraining
# ---------------------------------------------------------------------------------------------


def overrides_for(
    args: argparse.Namespace, arm: str, seed: int, data_dir: Path, run_dir: Path
) -> list[str]:
    return [
        f"data.path={data_dir}",
        f"data.checkpoints=[{TRAIN_CKPT}]",
        f"data.cache_dir={Path(args.out) / 'cache'}",
        f"run_dir={run_dir}",
        f"steps={args.steps}",
        f"batch_size={args.batch_size}",
        f"seed={seed}",
        f"torso={args.torso}",
        f"local={arm}",
        f"log_every={args.log_every}",
        f"checkpoint_every={args.steps}",
        "keep_checkpoints=1",
        "progress=false",
    ]


def pretrain_run(
    args: argparse.Namespace, arm: str, seed: int, data_dir: Path, run_dir: Path
) -> dict[str, Any]:
    """Pretrain one (arm, seed), or reuse a finished run; returns its wall time."""
    from pvn.checkpoint import list_checkpoints
    from pvn.config import load_config
    from pvn.pretrain import pretrain

    timing = run_dir / "study_timing.json"
    finished = timing.is_file() and any(
        p.name == f"ckpt_{args.steps:09d}.pt" for p in list_checkpoints(run_dir)
    )
    if finished and not args.force:
        return json.loads(timing.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)  # interrupted or forced: start clean so the wall time is whole
    ov = overrides_for(args, arm, seed, data_dir, run_dir)
    cfg = load_config("pretrain", ov)
    log(f"pretrain local={arm} seed {seed}: {args.steps} updates")
    t0 = time.perf_counter()
    pretrain(cfg)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "updates_per_s": args.steps / wall, "overrides": ov}
    timing.write_text(json.dumps(out, indent=1))
    log(f"  done in {wall:.0f} s ({args.steps / wall:.1f} upd/s)")
    return out


# ---------------------------------------------------------------------------------------------
# 3. evaluation
# ---------------------------------------------------------------------------------------------


FEATURE_STATES = 1024


@torch.no_grad()
def feature_stats(torso, obs: torch.Tensor) -> dict[str, float]:
    """srank and dormant fraction of a torso's features on the first ``FEATURE_STATES``
    held-out states (the same states for every run and for the initial torso)."""
    from pvn.diagnostics import dormant_fraction, srank

    was = torso.training
    torso.eval()
    f = torch.cat([torso(obs[i : i + 256]) for i in range(0, min(len(obs), FEATURE_STATES), 256)])
    torso.train(was)
    return {"srank": int(srank(f)), "dormant": float(dormant_fraction(f))}


def curves(run_dir: Path) -> dict[str, dict[str, list]]:
    """``{metric: {"step": [...], "value": [...]}}`` for td_loss and every local_loss/<block>."""
    out: dict[str, dict[str, list]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, v in rec.items():
            if k == "td_loss" or k.startswith("local_loss/"):
                c = out.setdefault(k, {"step": [], "value": []})
                c["step"].append(rec["step"])
                c["value"].append(v)
    return out


def param_counts(learner) -> dict[str, int]:
    torso = sum(p.numel() for p in learner.online.torso.parameters())
    head = sum(p.numel() for p in learner.online.head.parameters())
    local = getattr(learner, "local", None)
    aux = sum(p.numel() for p in local.parameters() if p.requires_grad) if local else 0
    return {"torso": torso, "head": head, "aux": aux}


def evaluate_run(
    args: argparse.Namespace, run_dir: Path, ds_eval, batch, wall: dict
) -> dict[str, Any]:
    from pvn import load_encoder
    from pvn.analysis.probes import linear_probes

    cache = run_dir / "study_eval.json"
    key = f"v3|{args.eval_transitions}|{args.probe_states}|{args.final_logs}"
    if cache.is_file() and not args.force:
        ev = json.loads(cache.read_text())
        if ev.get("eval_key") == key:
            return ev
    t0 = time.perf_counter()
    cfg, learner, _ = load_learner(run_dir)
    held = heldout_losses(learner, batch)
    probe = linear_probes(
        load_encoder(run_dir), ds_eval, gamma=float(cfg.data.gamma), max_states=args.probe_states
    )
    cur = curves(run_dir)
    final = {k: float(np.mean(c["value"][-args.final_logs :])) for k, c in cur.items()}
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ups = [r["updates_per_s"] for r in recs if "td_loss" in r and "updates_per_s" in r]
    last = recs[-1] if recs else {}
    ev = {
        "eval_key": key,
        "params": param_counts(learner),
        "curves": cur,
        "final": final,  # td_loss and local_loss/<block>, training, mean of the last logs
        "heldout": held,  # td and local/<block>, held-out checkpoint
        "probe": probe,
        "srank_train": last.get("srank"),  # of the last logged training batch (<= batch size)
        **feature_stats(learner.online.torso, batch.observation),
        "dormant_fraction": last.get("dormant_fraction"),
        **wall,
        # median logged rate of the TD phase: excludes start-up (config, data, checkpoint)
        "updates_per_s_td": float(np.median(ups)) if ups else wall["updates_per_s"],
    }
    ev["eval_s"] = time.perf_counter() - t0
    cache.write_text(json.dumps(ev, indent=1))
    return ev


@torch.no_grad()
def init_probe(args: argparse.Namespace, run_dir: Path, ds_eval, batch) -> dict[str, Any]:
    """The probe floor: the arms' common torso at initialisation, rebuilt from the seed."""
    from pvn.analysis.probes import linear_probes
    from pvn.pretrain import build

    cfg, _, num_actions = load_learner(run_dir)

    torso = build(cfg, num_actions).online.torso.eval()
    out = linear_probes(torso, ds_eval, gamma=float(cfg.data.gamma), max_states=args.probe_states)
    return {**out, **feature_stats(torso, batch.observation)}


@torch.no_grad()
def man_twins(out: Path, results: dict, seed: int) -> dict[str, Any] | None:
    """MAN and MAN++ on the same seed start identical and MAN++'s mix ``s`` starts at 1 and moves
    slowly, so their torsos stay close: how far apart are their weights, losses and probes? A
    yardstick of how much the probes move for a near-identical torso."""
    from pvn import load_encoder
    from pvn.checkpoint import load_checkpoint, resolve_checkpoint

    if seed not in results.get("man", {}) or seed not in results.get("man_pp", {}):
        return None
    a = load_encoder(out / "runs" / f"man_s{seed}")
    b = load_encoder(out / "runs" / f"man_pp_s{seed}")
    pa = torch.cat([p.flatten() for p in a.parameters()])
    pb = torch.cat([p.flatten() for p in b.parameters()])
    local = load_checkpoint(resolve_checkpoint(out / "runs" / f"man_pp_s{seed}"))["learner"]
    mix = [float(v) for k, v in local["local"].items() if k.endswith(".s")]
    ea, eb = results["man"][seed], results["man_pp"][seed]
    return {
        "weight_rel_dist": float((pa - pb).norm() / pa.norm()),
        "s_range": [min(mix), max(mix)] if mix else [1.0, 1.0],
        "td_rel_diff": abs(eb["heldout"]["td"] / ea["heldout"]["td"] - 1),
        "d_return": abs(ea["probe"]["return_r2"] - eb["probe"]["return_r2"]),
        "d_reward": abs(ea["probe"]["reward_r2"] - eb["probe"]["reward_r2"]),
    }


def control_run(
    args: argparse.Namespace, encoder: str, seed: int, run_dir: Path
) -> dict[str, Any] | None:
    """Online linear control on a frozen torso (``pvn evaluate``); final/best return."""
    from pvn.report import final_and_best

    res_file = run_dir / "results.json"
    wall_file = run_dir / "study_wall.json"
    if not (res_file.is_file() and wall_file.is_file()) or args.force:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        cmd = [
            sys.executable,
            "-m",
            "pvn",
            "evaluate",
            f"encoder={encoder}",
            f"game={args.game}",
            f"steps={args.control_steps}",
            "num_envs=8",
            f"run_dir={run_dir}",
            f"seed={seed}",
            f"torso={args.torso}",
            "progress=false",
        ]
        log(f"control: {shlex.join(cmd[3:])}")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=_env())
        wall_file.write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    res = json.loads(res_file.read_text())
    rets = [e["return"] for e in res["episodes"]]
    final, best = final_and_best(rets, 10)
    return {
        "episodes": len(rets),
        "final_return": final,
        "best_return": best,
        "wall_s": json.loads(wall_file.read_text())["wall_s"],
    }


# ---------------------------------------------------------------------------------------------
# 4. tables, plots, doc
# ---------------------------------------------------------------------------------------------


def fmt(values: list[float], digits: int = 3, sci: bool = False) -> str:
    """A value, or mean ± sd over seeds."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "—"
    f = (lambda v: f"{v:.{digits}g}") if sci else (lambda v: f"{v:.{digits}f}")
    if len(values) == 1:
        return f(values[0])
    return f"{f(float(np.mean(values)))} ± {f(float(np.std(values, ddof=1)))}"


def main_table(results: dict, arms: list[str], seeds: list[int], control: bool) -> str:
    head = (
        "| arm (`local=`) | TD loss, train (final) | TD loss, held out | held out ÷ best "
        "constant | probe R² return-to-go | probe R² next reward | srank | dormant | aux params | "
        "wall s (upd/s) |"
    )
    if control:
        head += " control: final return |"
    lines = [head, "|" + "---|" * (10 + int(control))]
    for arm in arms:
        evs = [results[arm][s] for s in seeds]
        e0 = evs[0]
        cells = [
            f"{LABEL[arm]} (`{arm}`)",
            fmt([e["final"]["td_loss"] for e in evs], 3, sci=True),
            fmt([e["heldout"]["td"] for e in evs], 3, sci=True),
            fmt(
                [e["heldout"]["td"] / e["heldout"]["const"] for e in evs if "const" in e["heldout"]]
            ),
            fmt([e["probe"]["return_r2"] for e in evs]),
            fmt([e["probe"]["reward_r2"] for e in evs]),
            fmt([e.get("srank") for e in evs], 0),
            fmt([e.get("dormant") for e in evs], 2),
            f"{e0['params']['aux'] / 1e3:.0f}k" if e0["params"]["aux"] else "0",
            f"{np.mean([e['wall_s'] for e in evs]):.0f} "
            f"({np.mean([e['updates_per_s_td'] for e in evs]):.1f})",
        ]
        if control:
            cells.append(fmt([(e.get("control") or {}).get("final_return") for e in evs], 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block_table(results: dict, arms: list[str], seeds: list[int]) -> str:
    """Per local method and block: final training loss and held-out loss of its aux head."""
    names: list[str] = []
    for arm in arms:
        for k in results[arm][seeds[0]]["heldout"]:
            b = k.split("/", 1)[1] if "/" in k else None
            if b and b not in names:
                names.append(b)
    if not names:
        return "(no local arm run)"
    lines = [
        "| arm | "
        + " | ".join(f"block `{b}…`: train / held out" for b in names)
        + " | final head: train / held out |",
        "|" + "---|" * (len(names) + 2),
    ]
    for arm in arms:
        if arm == "none":
            continue
        evs = [results[arm][s] for s in seeds]
        cells = [LABEL[arm]]
        for b in names:
            tr = fmt([e["final"].get(f"local_loss/{b}") for e in evs], 3, sci=True)
            he = fmt([e["heldout"].get(f"local/{b}") for e in evs], 3, sci=True)
            cells.append(f"{tr} / {he}")
        tr = fmt([e["final"]["td_loss"] for e in evs], 3, sci=True)
        he = fmt([e["heldout"]["td"] for e in evs], 3, sci=True)
        cells.append(f"{tr} / {he}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def yardstick_rows(results: dict, ref_seeds: list[int], control: bool) -> str:
    lines = [
        "| end-to-end seed | TD train (final) | TD held out | probe R² return-to-go | "
        "probe R² next reward |" + (" control: final return |" if control else ""),
        "|---|---|---|---|---|" + ("---|" if control else ""),
    ]
    for s in ref_seeds:
        e = results[REFERENCE][s]
        row = (
            f"| {s} | {e['final']['td_loss']:.3g} | {e['heldout']['td']:.3g} | "
            f"{e['probe']['return_r2']:.3f} | {e['probe']['reward_r2']:.3f} |"
        )
        if control:
            c = e.get("control")
            row += f" {c['final_return']:.1f} |" if c else " — |"
        lines.append(row)
    return "\n".join(lines)


def _smooth(y: np.ndarray, w: int = 3) -> np.ndarray:
    if len(y) < w:
        return y
    return np.convolve(np.pad(y, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, "valid")


def plot_td_curves(results, arms, seeds, ref_seeds, path: Path) -> None:
    """Left: the final head's training TD loss per arm. Right: each arm's loss divided by
    end-to-end's on the same seed, log by log (paired: same batches, so the shared batch-to-batch
    noise cancels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = REFERENCE in arms
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(12 if paired else 7.2, 4.2))
    ax = axes[0] if paired else axes
    for arm in arms:
        for s in seeds:
            c = results[arm][s]["curves"]["td_loss"]
            lab = LABEL[arm] + (f" s{s}" if len(seeds) > 1 else "")
            ax.plot(c["step"], c["value"], color=COLORS[arm], ls=STYLE[arm], lw=1.6, label=lab)
    for s in ref_seeds:
        if s in seeds:
            continue
        c = results[REFERENCE][s]["curves"]["td_loss"]
        ax.plot(c["step"], c["value"], color=COLORS[REFERENCE], lw=0.8, ls=":", alpha=0.8)
    if any(s not in seeds for s in ref_seeds):
        ax.plot([], [], color="black", lw=0.8, ls=":", label="end-to-end, other seeds")
    ax.set_xlabel("update")
    ax.set_ylabel("training TD loss of the final head")
    ax.set_title("Final-head TD loss (training batches)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    if paired:
        ax = axes[1]
        for arm in arms:
            if arm == REFERENCE:
                continue
            for s in seeds:
                c, r = results[arm][s]["curves"]["td_loss"], results[REFERENCE][s]["curves"]
                ref = dict(zip(r["td_loss"]["step"], r["td_loss"]["value"], strict=True))
                pts = [
                    (t, v / ref[t]) for t, v in zip(c["step"], c["value"], strict=True) if t in ref
                ]
                lab = LABEL[arm] + (f" s{s}" if len(seeds) > 1 else "")
                ax.plot(
                    *zip(*pts, strict=True), color=COLORS[arm], ls=STYLE[arm], lw=1.6, label=lab
                )
        ax.axhline(1.0, color="black", lw=1.0)
        ax.set_xlabel("update")
        ax.set_ylabel("TD loss ÷ end-to-end's (same seed)")
        ax.set_title("Paired with end-to-end (same init, tasks, batches)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("PVN pretraining: end-to-end vs local learning of the torso", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_block_losses(results, arms, seed: int, big: str, path: Path) -> None:
    """Per-block local losses and the final head's TD loss: a large panel for ``big`` and a
    small one for every other local method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    local_arms = [a for a in arms if a != "none"]
    if not local_arms:
        return
    order = [big] + [a for a in local_arms if a != big] if big in local_arms else local_arms
    fig = plt.figure(figsize=(10, 4.4))
    n_small = len(order) - 1
    gs = fig.add_gridspec(
        2, 1 + max(1, (n_small + 1) // 2), width_ratios=[2.2] + [1] * max(1, (n_small + 1) // 2)
    )
    axes = [fig.add_subplot(gs[:, 0])]
    for i in range(n_small):
        axes.append(fig.add_subplot(gs[i % 2, 1 + i // 2], sharey=axes[0]))
    cmap = plt.get_cmap("viridis")
    for ax, arm in zip(axes, order, strict=False):
        cur = results[arm][seed]["curves"]
        blocks = [k for k in cur if k.startswith("local_loss/")]
        for j, k in enumerate(blocks):
            ax.plot(
                cur[k]["step"],
                cur[k]["value"],
                color=cmap(j / max(1, len(blocks))),
                lw=1.4 if ax is axes[0] else 1.0,
                label=f"block {j + 1} aux (`{k.split('/', 1)[1]}`…)",
            )
        c = cur["td_loss"]
        ax.plot(
            c["step"],
            c["value"],
            color="black",
            lw=1.4 if ax is axes[0] else 1.0,
            label=f"block {len(blocks) + 1}: final head",
        )
        e2e = results["none"][seed]["curves"]["td_loss"] if "none" in results else None
        if e2e is not None:
            ax.plot(
                e2e["step"],
                e2e["value"],
                color="gray",
                ls="--",
                lw=0.9,
                label="end-to-end final head",
            )
        ax.set_title(LABEL[arm], fontsize=11 if ax is axes[0] else 9)
        ax.grid(alpha=0.3, which="both")
        if ax is axes[0]:
            ax.set_xlabel("update")
            ax.set_ylabel("training TD loss")
            ax.legend(fontsize=7.5)
        else:
            ax.tick_params(labelsize=7)
    fig.suptitle(f"Per-block local losses (seed {seed})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def floor_txt(floor: dict[str, Any]) -> str:
    txt = (
        "Floor, the arms' common torso at initialisation (no pretraining): probe R² return-to-go "
        f"{floor['return_r2']:.3f}, R² next reward {floor['reward_r2']:.3f} "
        f"({floor['states']} probe states)"
    )
    if "srank" in floor:
        txt += f"; srank {floor['srank']}, dormant {floor['dormant']:.2f}"
    return txt + "."


def reading(results, arms, seeds, ref_seeds, floor, twin=None) -> str:
    """Sentences generated from the numbers. TD losses: each local arm against end-to-end on the
    same seed (a paired comparison: same initial weights, tasks and batch sequence). Probes:
    against the range of the end-to-end seeds (the yardstick of seed noise) and the floor."""
    s0 = seeds[0]
    ref = [results[REFERENCE][s] for s in ref_seeds] if ref_seeds else []
    paired = results.get(REFERENCE, {}).get(s0)
    out = []

    def pct(v: float, base: float) -> str:
        return f"{100 * (v / base - 1):+.1f}%"

    probes = [
        ("R² return-to-go", lambda e: e["probe"]["return_r2"]),
        ("R² next reward", lambda e: e["probe"]["reward_r2"]),
    ]
    if len(ref) > 1:
        cells = []
        for name, key in probes:
            vals = [key(e) for e in ref]
            cells.append(f"{name} {min(vals):.3f} to {max(vals):.3f}")
        tds = [e["heldout"]["td"] for e in ref]
        trs = [e["final"]["td_loss"] for e in ref]
        out.append(
            f"- End-to-end over seeds {', '.join(map(str, ref_seeds))}: probe "
            + ", ".join(cells)
            + f"; training TD loss {min(trs):.3g} to {max(trs):.3g}, held-out {min(tds):.3g} "
            f"to {max(tds):.3g} (across seeds the tasks differ too, so this spread mixes task and "
            "training noise; the same-seed comparisons below share tasks, initial weights and "
            "batch sequence)."
        )
    for arm in arms:
        if arm == REFERENCE:
            continue
        e = results[arm][s0]
        parts = []
        if paired is not None:
            parts.append(
                f"final-head TD loss {pct(e['final']['td_loss'], paired['final']['td_loss'])} "
                f"(train) and {pct(e['heldout']['td'], paired['heldout']['td'])} (held out) "
                "vs end-to-end on the same seed"
            )
        for name, key in probes:
            v = key(e)
            if len(ref) > 1:
                vals = [key(r) for r in ref]
                lo, hi = min(vals), max(vals)
                where = (
                    "inside the end-to-end seed range"
                    if lo <= v <= hi
                    else ("above" if v > hi else "below") + " every end-to-end seed"
                )
            elif paired is not None:
                where = f"end-to-end {key(paired):.3f}"
            else:
                where = ""
            parts.append(f"probe {name} {v:.3f}" + (f" ({where})" if where else ""))
        out.append(f"- {LABEL[arm]} (seed {s0}): " + "; ".join(parts) + ".")
    runs = [(a, s, results[a][s]) for a in results for s in results[a]]
    ratios = [
        e["heldout"]["td"] / e["heldout"]["const"] for _, _, e in runs if "const" in e["heldout"]
    ]
    if ratios:
        out.append(
            f"- How much the final heads have learned: the held-out TD loss is "
            f"{min(ratios):.3f}–{max(ratios):.3f} times the loss of the best per-task constant "
            "fitted on the same held-out targets (a head that ignores the state; an optimistic "
            "floor, since it is fitted on the test targets). "
            + (
                "At or near 1, every head predicts little beyond the mean of each task's "
                "target, so the TD-loss differences between arms measure small departures from "
                "that mean, not how much state information the torsos carry."
                if min(ratios) > 0.95
                else "Ratios well below 1 mean the heads use the state; compare the arms on "
                "this ratio rather than on the raw loss, whose level is set by the tasks' "
                "reward variance."
            )
        )
    if floor is not None:
        below = [
            (f"{LABEL[a]} s{s}" if len(results[a]) > 1 else LABEL[a])
            for a, s, e in runs
            if e["probe"]["reward_r2"] <= floor["reward_r2"]
        ]
        out.append(
            f"- Probe floor (the shared initial torso, no pretraining): R² return-to-go "
            f"{floor['return_r2']:.3f}, R² next reward {floor['reward_r2']:.3f}. "
            + (
                f"{len(below)} of {len(runs)} pretrained torsos ({', '.join(below)}) do not "
                "beat it on next reward"
                if below
                else "Every pretrained torso beats it on next reward"
            )
            + "."
        )
    if floor is not None and "srank" in floor and all("srank" in e for _, _, e in runs):
        ranks = ", ".join(
            f"{LABEL[a]}{f' s{s}' if len(results[a]) > 1 else ''} {e['srank']}" for a, s, e in runs
        )
        out.append(
            f"- Feature rank (srank on {FEATURE_STATES} held-out states): {ranks}; the initial "
            f"torso {floor['srank']}. A rank far below the initial one means the pretraining "
            "has collapsed the features onto a few directions."
        )
    if twin is not None:
        out.append(
            f"- A yardstick of probe sensitivity: the MAN and MAN++ torsos (same seed; MAN++'s "
            f"mix s moved only to {twin['s_range'][0]:.3f}–{twin['s_range'][1]:.3f} from 1) differ "
            f"by {100 * twin['weight_rel_dist']:.2f}% in weights (relative L2) and their final "
            f"TD losses agree to {100 * twin['td_rel_diff']:.2f}%, yet their probe R² differ by "
            f"{twin['d_return']:.3f} (return-to-go) and {twin['d_reward']:.3f} (next reward): "
            "probe differences of that size between arms say nothing."
        )
    return "\n".join(out)


def command_of(res: dict[str, Any]) -> str:
    """The command line of a stored run of this script (rebuilt from its flags that differ from
    the defaults when the run did not store it)."""
    if res.get("command"):
        return res["command"]
    a = res["args"]
    defaults = vars(parse_args([]))
    flags = []
    for k, v in a.items():
        if k in ("docs", "force", "compare", "command") or v == defaults.get(k):
            continue
        if k == "out":
            v = _rel(Path(v))
        flag = "--" + k.replace("_", "-")
        if isinstance(v, list):
            flags.append(" ".join([flag, *map(str, v)]))
        else:
            flags.append(f"{flag} {v}")
    return "OMP_NUM_THREADS=1 .venv/bin/python scripts/study_local.py " + " ".join(flags)


def compare_section(path: str, docs: Path, main_args: argparse.Namespace) -> str:
    """An extra section for another run of this script: its table, curves and reading."""
    res = json.loads(Path(path).read_text())
    a = res["args"]
    results = {arm: {int(s): e for s, e in r.items()} for arm, r in res["results"].items()}
    arms = [x for x in a["arms"] if x in results]
    seeds = a["seeds"]
    ref_seeds = sorted(results.get(REFERENCE, {})) if REFERENCE in arms else []
    ref_seeds = [s for s in seeds if s in ref_seeds] + [s for s in ref_seeds if s not in seeds]
    png = f"study_local_td_curves_{a['steps']}.png"
    plot_td_curves(results, arms, seeds, ref_seeds, docs / png)
    t = res["timing"]
    work = t["collect_s"] + t["pretrain_s"] + t["evaluate_s"] + t.get("control_s", 0.0)
    floor = res["probe_floor"]
    same = (Path(a["out"]) / "data").resolve() == (Path(main_args.out) / "data").resolve()
    data = (
        "the same log and held-out checkpoint as above (its data folder links to this one's)"
        if same
        else f"its own log: `{res['data']['command']}`"
    )
    kind = "Longer" if a["steps"] > main_args.steps else "Another"
    return f"""
## {kind} budget: {a["steps"]:,} updates

The same config and metrics as above, {a["steps"]:,} updates of batch {a["batch_size"]} per
arm (seed(s) {", ".join(map(str, seeds))}), on {data}. Command: `{command_of(res)}`
({work / 60:.0f} min of work).

{main_table(results, arms, seeds, bool(a.get("control_steps")))}

{floor_txt(floor)}

![TD-loss curves, {a["steps"]:,} updates]({png})

{block_table(results, arms, seeds)}

Reading, generated as above:

{reading(results, arms, seeds, ref_seeds, floor, res.get("man_twins"))}
"""


def write_doc(
    args, summary, results, floor, arms, ref_seeds, command, timing, docs: Path, twin=None
) -> str:
    control = args.control_steps > 0
    table = main_table(results, arms, args.seeds, control)
    mean_ret = summary["return_mean"]
    ds_rows = (
        f"{summary['steps']:,} agent steps of uniform-random {args.game} play "
        f"({summary['episodes']} finished episodes, mean return "
        f"{'n/a' if mean_ret is None else f'{mean_ret:.1f}'}), "
        f"checkpoint capacity {summary['capacity']:,}"
    )
    ex = overrides_for(args, "ARM", args.seeds[0], Path("DATA"), Path("RUN"))
    seeds_txt = ", ".join(map(str, args.seeds))
    extra = ", ".join(map(str, [s for s in ref_seeds if s not in args.seeds])) or "none"
    n_runs = sum(len(r) for r in results.values())
    work = timing["collect_s"] + timing["pretrain_s"] + timing["evaluate_s"] + timing["control_s"]
    e0 = results[arms[0]][args.seeds[0]]
    torso_p = e0["params"]["torso"]
    control_txt = (
        f"*Control:* `pvn evaluate encoder=RUN steps={args.control_steps} num_envs=8` — a "
        "linear Q head trained online on the frozen torso under the `eval` protocol; final return "
        "= mean of the last 10 episodes. The random-torso row uses `encoder=random`."
        if control
        else "*Control:* not run (`--control-steps 0`): at budgets that fit here (≈20k agent "
        "steps) a linear head on any features scores about −21 on Pong (README, quickstart), "
        "which would compare nothing; pass `--control-steps 100000` or more where there is time."
    )
    ctl_floor = ""
    if control and timing.get("control_random"):
        c = timing["control_random"]
        ctl_floor = (
            f"Online control with the random torso (`encoder=random`): final return "
            f"{c['final_return']:.1f} ({c['episodes']} episodes)."
        )
    rates = [e["updates_per_s_td"] for e in results.get(REFERENCE, {}).values()]
    rate_note = (
        f"the end-to-end runs alone, identical work, ran at {min(rates):.1f}–{max(rates):.1f} "
        "upd/s as the machine's load changed, so read speed differences smaller than that with "
        "care."
        if len(rates) > 1
        else "the machine's load moves these."
    )
    ctl_time = f", online control {timing['control_s']:.0f} s" if control else ""
    passes = args.steps * args.batch_size / summary["capacity"]
    text = f"""# Study: end-to-end vs local learning (DGL, MAN, MAN++, AugLocal) of the PVN torso

Generated by `scripts/study_local.py` from measured runs (issue 5, item 6). Every number below
comes from the runs recorded here; re-running the command regenerates this page.

## Setup

- **Command:** `{command}`. The work reported took {work / 60:.1f} min: data collection
  {timing["collect_s"]:.0f} s, {n_runs} pretraining runs {timing["pretrain_s"]:.0f} s, held-out
  losses and probes {timing["evaluate_s"]:.0f} s{ctl_time}
  (the invocation that wrote this page: {timing["invocation_s"] / 60:.1f} min; finished runs are
  reused on re-runs).
- **Machine:** {machine()}. Other engineers' jobs shared the 2 cores, so wall times are
  indicative only; compare the arms' update rates with each other, not with other pages.
- **Data:** `{summary["command"]}` — {ds_rows}. Replay checkpoint {TRAIN_CKPT} trains every
  arm; checkpoint {HELDOUT_CKPT} (disjoint slots of the same log: the circular buffer after one
  full overwrite) is held out for the held-out TD losses and the probes.
- **Pretraining:** each arm is `pvn pretrain {" ".join(ex[4:9])}` on checkpoint
  {TRAIN_CKPT} ({args.steps:,} updates × batch {args.batch_size} =
  {args.steps * args.batch_size:,} samples, ≈{passes:.1f}
  passes over it); everything else is the default config: `torso={args.torso}`
  ({torso_p / 1e6:.2f}M torso parameters), 20 random-network indicator tasks at p = 0.05
  (`tasks=indicator_rnd`), L2 TD loss to the uniform-policy successor measure, Polyak
  τ = 0.01, 100 warm-up updates of task calibration only (no TD loss, so the curves start at
  update 100), Adam lr 1e-4. Local arms use their config group's defaults
  (`configs/local/*.yaml`): K = 4 blocks cut at the default units (nature:
  `conv1 | conv2 | conv3 | features`), DGL/MAN aux heads of 32 channels and 128 hidden, MAN
  decay 0.995, AugLocal depth 2 with τ = 0.5. The auxiliary nets are extra trainable parameters
  that are thrown away after pretraining (column *aux params*). All arms share seed(s)
  {seeds_txt} — hence the same initial torso and head — the data and the update count; the
  end-to-end arm also ran seeds {extra} as a yardstick of seed-to-seed noise.
- **Metrics.** *TD loss, train (final):* mean of the last {args.final_logs} logged windows
  ({args.log_every} updates each) of the final head's training TD loss. For the local arms this
  head sits on the last block (`features`), which trains only through it; the earlier blocks
  train only through their own auxiliary heads (`local_loss/<block>`). *TD loss, held out:* the
  final online network on {args.eval_transitions} transitions of checkpoint {HELDOUT_CKPT},
  targets from the run's own target network and calibrated tasks (so every arm is scored
  against its own targets, as in training — the TD loss is not a fixed yardstick across arms).
  *Held out ÷ best constant:* that loss over the loss of the best per-task constant fitted to
  the same held-out targets (half their variance, averaged over tasks; ≈ p(1 − p)/2 for
  indicator rewards): 1 means the head does no better than ignoring the state.
  *Probes:* `pvn.analysis.probes.linear_probes` (what `pvn report --data` runs) on checkpoint
  {HELDOUT_CKPT}: ridge regression from the frozen torso's 512 features
  (`pvn.load_encoder(run_dir)`) to the logging policy's discounted return-to-go and to the next
  reward, fit on the earlier 80% of its episodes, R² on the later 20% (up to
  {args.probe_states} states); the one measure here that scores every arm on the same targets.
  *srank:* effective rank (Kumar et al. 2021, δ = 0.01) of the frozen torso's features on
  {FEATURE_STATES} held-out states (of 512 dimensions); *dormant:* fraction of the 512 feature
  units whose mean |activation| is ≤ 0.025 of the layer's mean (Sokar et al. 2023), same states.
  *Wall s (upd/s):* the run's wall time and its median logged update rate during the TD phase;
  {rate_note}
  {control_txt}

## Results

{table}

Values are for seed {seeds_txt}{" (mean ± sd over seeds)" if len(args.seeds) > 1 else ""}.
{floor_txt(floor)}
{ctl_floor}

![TD-loss curves of the final head](study_local_td_curves.png)

### Per-block losses (final training value / held-out value)

Each local block's auxiliary head is scored by the same PVN TD loss as the final head (block 1 =
`conv1`, the aux head reading its output; the last column is the real head on the last block).

{block_table(results, arms, args.seeds)}

![Per-block local losses](study_local_block_losses.png)

### Seed yardstick (end-to-end)

{yardstick_rows(results, ref_seeds, control) if len(ref_seeds) > 1 else "(no extra seeds run)"}

## Reading

Generated from the numbers above (TD losses: each local arm against end-to-end on seed
{args.seeds[0]}; probes: against the range of the end-to-end seeds):

{reading(results, arms, args.seeds, ref_seeds, floor, twin)}

Caveats that hold whatever the numbers: {args.steps:,} updates of batch {args.batch_size} on
random-policy {args.game} data is {100 * args.steps / 1_562_500:.2g}% of the paper's 1.56M
updates; the networks are far from converged, and a ranking at this stage need not hold later
(the methods' papers measure their gap to end-to-end after full training, and it grows with the
number of blocks). The local arms are run with {len(args.seeds)} seed(s) and only the end-to-end
arm has a seed yardstick, so a difference smaller than that spread is noise. The probes' test
split is the last ~20% of the held-out checkpoint's episodes (a handful of random-play Pong
episodes whose rewards are almost all −1), so their R² carries sizeable sampling noise, and they
ask about the *logging* policy's return, which the PVN tasks do not target directly; compare
them with the floor of the untrained torso. The held-out TD losses are each against the run's own
target network, so a lower value can also mean a flatter (easier) target; the ratio to the best
constant corrects the level, not the shape. Local learning's point
is memory (one block's activations alive at a time), not speed or accuracy on a CPU: the auxiliary
heads cost extra compute here, and the nature torso (3 conv layers) is the shallowest case.
{"".join(compare_section(p, docs, args) for p in args.compare)}"""
    (docs / "study_local.md").write_text(text)
    return table


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out = Path(args.out).resolve()
    args.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    summary = collect_data(args, data_dir)

    if REFERENCE in args.arms:
        ref_seeds = list(dict.fromkeys(args.seeds + list(args.yardstick_seeds)))
    else:
        ref_seeds = []
    plan = [(arm, s) for s in args.seeds for arm in args.arms]
    plan += [(REFERENCE, s) for s in ref_seeds if s not in args.seeds]

    from replay import DQNReplayDataset

    # decompress both checkpoints into the memmap cache now, so no run's wall time includes it
    DQNReplayDataset(data_dir, checkpoints=[TRAIN_CKPT, HELDOUT_CKPT], cache_dir=out / "cache")
    walls = {}
    for arm, s in plan:
        walls[(arm, s)] = pretrain_run(args, arm, s, data_dir, out / "runs" / f"{arm}_s{s}")

    ds_eval = DQNReplayDataset(data_dir, checkpoints=[HELDOUT_CKPT], cache_dir=out / "cache")
    batch = heldout_transitions(ds_eval, args.eval_transitions)
    results: dict[str, dict[int, dict]] = {arm: {} for arm in dict.fromkeys(args.arms)}
    for arm, s in plan:
        log(f"evaluate local={arm} seed {s}")
        results[arm][s] = evaluate_run(
            args, out / "runs" / f"{arm}_s{s}", ds_eval, batch, walls[(arm, s)]
        )
    log("probe floor: the common initial torso")
    t0 = time.perf_counter()
    floor = init_probe(args, out / "runs" / f"{plan[0][0]}_s{plan[0][1]}", ds_eval, batch)
    evs = [results[a][s] for a, s in plan]
    timing: dict[str, Any] = {
        "invocation_s": 0.0,
        "collect_s": float(summary["wall_s"]),
        "pretrain_s": float(sum(e["wall_s"] for e in evs)),
        "evaluate_s": float(sum(e["eval_s"] for e in evs) + time.perf_counter() - t0),
        "control_s": 0.0,
    }

    if args.control_steps > 0:
        for arm, s in plan:
            c = control_run(
                args, str(out / "runs" / f"{arm}_s{s}"), s, out / "control" / f"{arm}_s{s}"
            )
            results[arm][s]["control"] = c
            timing["control_s"] += c["wall_s"]
        c = control_run(args, "random", args.seeds[0], out / "control" / f"random_s{args.seeds[0]}")
        timing["control_random"] = c
        timing["control_s"] += c["wall_s"]

    arms = list(args.arms)
    plot_td_curves(results, arms, args.seeds, ref_seeds, docs / "study_local_td_curves.png")
    big = (
        args.block_method
        if args.block_method in arms
        else next((a for a in arms if a != "none"), None)
    )
    if big is not None:
        plot_block_losses(results, arms, args.seeds[0], big, docs / "study_local_block_losses.png")
    argv_txt = shlex.join(sys.argv[1:] if argv is None else argv)
    command = f"OMP_NUM_THREADS=1 .venv/bin/python scripts/study_local.py {argv_txt}".strip()
    total = timing["invocation_s"] = time.perf_counter() - t_start
    twin = man_twins(out, results, args.seeds[0])
    table = write_doc(args, summary, results, floor, arms, ref_seeds, command, timing, docs, twin)
    (out / "results.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "command": command,
                "data": summary,
                "probe_floor": floor,
                "man_twins": twin,
                "results": {a: {str(s): e for s, e in r.items()} for a, r in results.items()},
                "timing": timing,
            },
            indent=1,
        )
    )
    print(table)
    print()
    print(block_table(results, arms, args.seeds))
    print(
        f"\nprobe floor (initial torso): R² return {floor['return_r2']:.3f}, "
        f"R² reward {floor['reward_r2']:.3f}"
    )
    log(f"done in {total / 60:.1f} min; doc: {docs / 'study_local.md'}")


if __name__ == "__main__":
    main()
