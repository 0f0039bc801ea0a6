"""Study (issue 5, item 6): pretrain the PVN torso end to end vs with local learning (DGL, MAN,
MAN++, AugLocal) on the same data -- TD-loss curves, per-block local losses, held-out TD loss,
offline linear probes of the frozen torso and, optionally, online linear control.

What it does, top to bottom:
  1. collects one log of uniform-random play (``pvn collect``) with a checkpoint capacity of 45%
     of the steps, so two full, disjoint replay checkpoints are written (plus a small partial
     third one, unused): checkpoint 0 trains every arm, checkpoint 1 is held out;
  2. pretrains each arm on checkpoint 0 through ``pvn.commands.pretrain.pretrain`` (the
     function behind ``pvn pretrain``), ``local=none|dgl|man|man_pp|auglocal``, everything else
     equal: data, seed(s), updates, batch, torso, tasks, optimizer. With the same seed every arm
     starts from the *same* torso and head weights (the torso is drawn first from the seed's
     generator);
  3. per run: the training TD-loss curve of the final head and the ``local_loss/<block>`` curves
     of the auxiliary heads (``metrics.jsonl``); the final values (mean of the last
     ``--final-logs`` logs); the held-out TD loss of the final head and of every block's
     auxiliary head on ``--eval-transitions`` transitions of checkpoint 1 (targets from the run's
     own target network); offline ridge probes of the frozen torso (``pvn.load_encoder`` +
     ``pvn.analysis.probes.linear_probes``, the function ``pvn report --data`` runs) on
     checkpoint 1; wall time; and, with ``--control-steps N``, online linear control
     (``pvn evaluate``, a linear Q head on the frozen torso) for N agent steps;
  4. the probe floor: the arms' common torso at initialisation (no pretraining);
  5. writes the numbers: ``docs/study_local_results.json`` (all of them) and
     ``docs/study_local_tables.md`` (plain tables), and the figures
     ``docs/study_local_{td_curves,block_losses}.png``; prints the tables. ``docs/study_local.md``
     is written by hand from them.

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
    command_line,
    fmt,
    keyed,
    log,
    parse_study_args,
    pyplot,
    records,
    rel,
    run_arms,
    save_figure,
    study_parser,
    table,
    td_rate,
    write_results,
)
from _study import env as _env

from pvn.analysis.heldout import heldout_losses, trained_learner

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
    ap = study_parser(__doc__, "study_local", "end-to-end")
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
        "--control-steps",
        type=int,
        default=0,
        help="agent steps of online linear control (`pvn evaluate`) per run and for the random "
        "torso; 0: skip (default: 0; 20k steps of Pong score about -21 whatever the features, so "
        "use >= 100k for a signal)",
    )
    ap.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="RESULTS_JSON",
        help="results.json of other runs of this script (in their --out; e.g. a longer budget) "
        "to add to the tables, with their own curves in study_local_td_curves_<steps>.png "
        "(default: none)",
    )
    return parse_study_args(ap, argv)


# ---------------------------------------------------------------------------------------------
# evaluation
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


def curves(recs: list[dict]) -> dict[str, dict[str, list]]:
    """``{metric: {"step": [...], "value": [...]}}`` for td_loss and every local_loss/<block>."""
    out: dict[str, dict[str, list]] = {}
    for rec in recs:
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
    cfg, learner, _ = trained_learner(run_dir)
    held = heldout_losses(learner, batch)
    probe = linear_probes(
        load_encoder(run_dir), ds_eval, gamma=float(cfg.data.gamma), max_states=args.probe_states
    )
    recs = records(run_dir)
    cur = curves(recs)
    final = {k: float(np.mean(c["value"][-args.final_logs :])) for k, c in cur.items()}
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
        "updates_per_s_td": td_rate(recs, wall),
    }
    ev["eval_s"] = time.perf_counter() - t0
    cache.write_text(json.dumps(ev, indent=1))
    return ev


@torch.no_grad()
def init_probe(args: argparse.Namespace, run_dir: Path, ds_eval, batch) -> dict[str, Any]:
    """The probe floor: the arms' common torso at initialisation, rebuilt from the seed."""
    from pvn.analysis.probes import linear_probes
    from pvn.pretraining import PretrainConfig, build
    from pvn.settings import section

    cfg, _, num_actions = trained_learner(run_dir)

    torso = build(section(PretrainConfig, cfg), num_actions).online.torso.eval()
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
    from pvn.commands.report import final_and_best

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
# tables and plots
# ---------------------------------------------------------------------------------------------


HEADER = [
    "TD train (final)",
    "TD held out",
    "held out ÷ best constant",
    "probe R² return-to-go",
    "probe R² next reward",
    "srank",
    "dormant",
    "aux params",
    "wall s",
    "upd/s (TD phase)",
]


def cells(evs: list[dict], control: bool) -> list:
    """The main table's numbers for evaluations ``evs`` (one per seed: mean ± sd)."""
    he = [e["heldout"] for e in evs]
    row = [
        fmt([e["final"]["td_loss"] for e in evs], 3, sci=True),
        fmt([h["td"] for h in he], 3, sci=True),
        fmt([h["td"] / h["const"] for h in he if "const" in h]),
        fmt([e["probe"]["return_r2"] for e in evs]),
        fmt([e["probe"]["reward_r2"] for e in evs]),
        fmt([e.get("srank") for e in evs], 0),
        fmt([e.get("dormant") for e in evs], 2),
        evs[0]["params"]["aux"],
        fmt([e["wall_s"] for e in evs], 0),
        fmt([e["updates_per_s_td"] for e in evs], 1),
    ]
    if control:
        row.append(fmt([(e.get("control") or {}).get("final_return") for e in evs], 1))
    return row


def main_table(results: dict, arms: list[str], seeds: list[int], control: bool, tag: str) -> str:
    header = ["arm (`local=`)", *HEADER] + (["control: final return"] if control else [])
    rows = [
        [f"{LABEL[arm]} (`{arm}`)", *cells([results[arm][s] for s in seeds], control)]
        for arm in arms
    ]
    caption = (
        f"{tag}Per arm, seed(s) {', '.join(map(str, seeds))} (mean ± sd when several): the final "
        "head's training TD loss (last logs) and held-out TD loss, that ÷ the best per-task "
        "constant's, probe R² of the frozen torso, its srank and dormant fraction, aux-net "
        "parameters, wall time and median update rate"
        + (", online control's final return." if control else ".")
    )
    return table(caption, header, rows)


def block_table(results: dict, arms: list[str], seeds: list[int], tag: str) -> str:
    """Per local method and block: final training loss and held-out loss of its aux head."""
    names: list[str] = []
    for arm in arms:
        for k in results[arm][seeds[0]]["heldout"]:
            b = k.split("/", 1)[1] if "/" in k else None
            if b and b not in names:
                names.append(b)
    if not names:
        return f"{tag}Per-block losses: no local arm run."
    header = ["arm"]
    for b in [*names, "final head"]:
        header += [f"{b}: train", f"{b}: held out"]
    rows = []
    for arm in arms:
        if arm == REFERENCE:
            continue
        evs = [results[arm][s] for s in seeds]
        row = [LABEL[arm]]
        for tr, he in [*((f"local_loss/{b}", f"local/{b}") for b in names), ("td_loss", "td")]:
            row.append(fmt([e["final"].get(tr) for e in evs], 3, sci=True))
            row.append(fmt([e["heldout"].get(he) for e in evs], 3, sci=True))
        rows.append(row)
    caption = (
        f"{tag}Per local arm and block (block k's aux head reads block k's output; the final head "
        "reads the last block): TD loss, training (last logs) and held out."
    )
    return table(caption, header, rows)


def yardstick_table(results: dict, ref_seeds: list[int], control: bool) -> str:
    header = ["end-to-end seed", *HEADER] + (["control: final return"] if control else [])
    rows = [[s, *cells([results[REFERENCE][s]], control)] for s in ref_seeds]
    caption = "Seed yardstick: the end-to-end arm per seed, the main table's columns."
    return table(caption, header, rows)


def floor_table(floor: dict[str, Any], control_random: dict | None) -> str:
    header = ["probe R² return-to-go", "probe R² next reward", "probe states", "srank", "dormant"]
    row = [
        fmt(floor["return_r2"]),
        fmt(floor["reward_r2"]),
        floor["states"],
        fmt(floor.get("srank"), 0),
        fmt(floor.get("dormant"), 2),
    ]
    if control_random:
        header += ["control: final return", "episodes"]
        row += [fmt(control_random["final_return"], 1), control_random["episodes"]]
    caption = (
        "Floor: the arms' common torso at initialisation, no pretraining (control: "
        "`encoder=random`)."
    )
    return table(caption, header, [row])


def twins_table(twin: dict[str, Any]) -> str:
    header = [
        "weight distance (relative L2)",
        "MAN++ mix s: min",
        "max",
        "held-out TD: relative difference",
        "Δ probe R² return-to-go",
        "Δ probe R² next reward",
    ]
    row = [
        fmt(twin["weight_rel_dist"], 4),
        fmt(twin["s_range"][0]),
        fmt(twin["s_range"][1]),
        fmt(twin["td_rel_diff"], 4),
        fmt(twin["d_return"]),
        fmt(twin["d_reward"]),
    ]
    caption = "MAN vs MAN++ on the same seed (near-identical torsos): how far apart they end."
    return table(caption, header, [row])


def setup_table(res: dict[str, Any], tag: str) -> str:
    a, d, t = res["args"], res["data"], res["timing"]
    header = [
        "updates",
        "batch",
        "logged steps",
        "episodes",
        "mean return",
        "checkpoint capacity",
        "runs",
        "collect s",
        "pretrain s",
        "evaluate s",
        "control s",
    ]
    row = [
        a["steps"],
        a["batch_size"],
        d["steps"],
        d["episodes"],
        fmt(d["return_mean"], 1),
        d["capacity"],
        sum(len(r) for r in res["results"].values()),
        fmt(t["collect_s"], 0),
        fmt(t["pretrain_s"], 0),
        fmt(t["evaluate_s"], 0),
        fmt(t.get("control_s", 0.0), 0),
    ]
    caption = f"{tag}Setup: `{res.get('command', '')}` on the log of `{d['command']}`."
    return table(caption, header, [row])


def tables_of(res: dict[str, Any], tag: str = "") -> list[str]:
    """Every table of one run of this script (its results JSON, ``res``)."""
    a = res["args"]
    results = {arm: {int(s): e for s, e in r.items()} for arm, r in res["results"].items()}
    arms = [x for x in a["arms"] if x in results]
    ref_seeds = sorted(results.get(REFERENCE, {}))
    control = bool(a.get("control_steps"))
    out = [
        setup_table(res, tag),
        main_table(results, arms, a["seeds"], control, tag),
        block_table(results, arms, a["seeds"], tag),
    ]
    if not tag:
        if len(ref_seeds) > 1:
            out.append(yardstick_table(results, ref_seeds, control))
        out.append(floor_table(res["probe_floor"], res["timing"].get("control_random")))
        if res.get("man_twins"):
            out.append(twins_table(res["man_twins"]))
    return out


def plot_td_curves(results, arms, seeds, ref_seeds, path: Path) -> None:
    """Left: the final head's training TD loss per arm. Right: each arm's loss divided by
    end-to-end's on the same seed, log by log (paired: same batches, so the shared batch-to-batch
    noise cancels)."""
    plt = pyplot()
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
    save_figure(fig, path)


def plot_block_losses(results, arms, seed: int, big: str, path: Path) -> None:
    """Per-block local losses and the final head's TD loss: a large panel for ``big`` and a
    small one for every other local method."""
    plt = pyplot()
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
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    st = run_arms(
        args,
        REFERENCE,
        lambda arm: [f"torso={args.torso}", f"local={arm}"],
        lambda run_dir, ds_eval, batch, wall: evaluate_run(args, run_dir, ds_eval, batch, wall),
    )
    results, plan, out = st.results, st.plan, st.out
    log("probe floor: the common initial torso")
    t0 = time.perf_counter()
    floor = init_probe(args, out / "runs" / f"{plan[0][0]}_s{plan[0][1]}", st.ds_eval, st.batch)
    evs = [results[a][s] for a, s in plan]
    timing: dict[str, Any] = {
        "invocation_s": 0.0,
        "collect_s": float(st.summary["wall_s"]),
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

    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    arms = list(args.arms)
    plot_td_curves(results, arms, args.seeds, st.ref_seeds, docs / "study_local_td_curves.png")
    big = (
        args.block_method
        if args.block_method in arms
        else next((a for a in arms if a != "none"), None)
    )
    if big is not None:
        plot_block_losses(results, arms, args.seeds[0], big, docs / "study_local_block_losses.png")
    timing["invocation_s"] = time.perf_counter() - st.t_start
    res = {
        "args": vars(args),
        "command": command_line("study_local.py", argv),
        "data": st.summary,
        "probe_floor": floor,
        "man_twins": man_twins(out, results, args.seeds[0]),
        "results": keyed(results),
        "timing": timing,
    }
    tables = tables_of(res)
    compare = {}
    for path in args.compare:
        other = json.loads(Path(path).read_text())
        a = other["args"]
        res_o = {arm: {int(s): e for s, e in r.items()} for arm, r in other["results"].items()}
        arms_o = [x for x in a["arms"] if x in res_o]
        png = docs / f"study_local_td_curves_{a['steps']}.png"
        plot_td_curves(res_o, arms_o, a["seeds"], sorted(res_o.get(REFERENCE, {})), png)
        tables += tables_of(other, tag=f"[{a['steps']:,} updates, `{rel(Path(path))}`] ")
        compare[rel(Path(path))] = other
    res["compare"] = compare
    title = "End-to-end vs local learning of the PVN torso"
    path = write_results(docs, "study_local", "study_local.py", title, tables, res, out)
    print(path.read_text())
    log(f"done in {(time.perf_counter() - st.t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
