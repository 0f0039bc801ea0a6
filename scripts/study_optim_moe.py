"""Study (issue 6): PVN pretraining with Adam vs Adan, and a dense feature block vs SMoE,
MomentumSMoE, AdamSMoE and Soft MoE -- loss curves, offline probes and robustness to pixel noise.

What it does, top to bottom:
  1. collects one log of random play (``pvn collect``) with a checkpoint capacity of 45% of the
     steps, so it writes two full, disjoint replay checkpoints (plus a small partial third one,
     unused): checkpoint 0 trains every arm, checkpoint 1 is held out for evaluation and probes;
  2. pretrains each arm on checkpoint 0 (same data, seed(s), updates and batch; nature torso,
     the default tasks: 20 random-network indicators at p = 0.05), through ``pvn.pretrain``;
     the reference arm (adam+dense) also runs ``--yardstick-seeds`` extra seeds, whose spread is
     the yardstick for "within noise";
  3. per run: the TD-loss curve (``metrics.jsonl``) and the final training TD loss (mean of the
     last ``--final-logs`` logs); offline ridge probes (``pvn.analysis.probes.linear_probes``, the
     function ``pvn report --data`` uses) of the frozen torso on the held-out checkpoint; and
     robustness: the TD loss of the final online network (eval mode: no routing noise) on
     ``--eval-transitions`` held-out transitions whose observation ``s`` (all 4 stacked frames) is
     corrupted by Gaussian pixel noise of std sigma in uint8 units (rounded, clipped to [0, 255]).
     The targets stay clean: task rewards from the clean ``s``, bootstrap from the target network
     on the clean ``s'``. Reported as the ratio to sigma = 0 (same transitions, same noise draws
     for every arm) with a bootstrap 95% CI over transitions, plus the relative feature drift
     ``|phi(s_noisy) - phi(s)| / |phi(s)|``;
  4. writes ``docs/study_optim_moe.md`` (setup, tables, plots, a reading generated from the
     numbers) and ``docs/study_optim_moe_{td_curves,robustness}.png``; prints the table.

Runs use one torch thread. Finished runs are reused when the script is re-run with the same
--out (delete the folder or pass --force to redo them). The default budget (Pong, 24k steps,
1,000 updates of batch 32, seed 0, two yardstick seeds) takes about 20-25 minutes on one CPU
thread; scale up with --steps, --seeds, --game, --collect-steps.

    .venv/bin/python scripts/study_optim_moe.py
    .venv/bin/python scripts/study_optim_moe.py --steps 20000 --seeds 0 1 2 --out runs/study_big
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import json
import shlex
import shutil
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
    heldout_transitions,
    load_learner,
    log,
    machine,
)

sys.path.insert(0, str(REPO / "scripts"))

#: arm name -> (optimizer group option, moe group option)
ARMS: dict[str, tuple[str, str]] = {
    "adam+dense": ("adam", "none"),
    "adan+dense": ("adan", "none"),
    "adam+smoe": ("adam", "smoe"),
    "adam+momentum_smoe": ("adam", "momentum_smoe"),
    "adam+adam_smoe": ("adam", "adam_smoe"),
    "adam+soft_moe": ("adam", "soft_moe"),
    "adan+momentum_smoe": ("adan", "momentum_smoe"),
}
REFERENCE = "adam+dense"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--game", default="Pong", help="ALE game to log (default: Pong)")
    ap.add_argument(
        "--collect-steps",
        type=int,
        default=24_000,
        help="agent steps of random play to log; checkpoint capacity is 45%% of it, so two full "
        "disjoint checkpoints (train, held out) are written (default: 24000)",
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
        help=f"extra seeds of the reference arm ({REFERENCE}) whose spread is the noise "
        "yardstick (default: 1 2; none: pass the flag alone)",
    )
    ap.add_argument(
        "--arms",
        nargs="+",
        default=list(ARMS),
        choices=list(ARMS),
        metavar="ARM",
        help=f"arms to run, from {', '.join(ARMS)} (default: all seven)",
    )
    ap.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=[0.0, 8.0, 16.0, 32.0],
        help="Gaussian pixel-noise stds in uint8 units; the first must be 0 (default: 0 8 16 32)",
    )
    ap.add_argument(
        "--eval-transitions",
        type=int,
        default=2048,
        help="held-out transitions for the noisy TD loss (default: 2048)",
    )
    ap.add_argument(
        "--probe-states", type=int, default=4000, help="states per probe fit (default: 4000)"
    )
    ap.add_argument("--log-every", type=int, default=50, help="updates between logs (default: 50)")
    ap.add_argument(
        "--final-logs",
        type=int,
        default=4,
        help="logs averaged into the final training TD loss (default: 4, i.e. the last 200 "
        "updates at log-every 50)",
    )
    ap.add_argument(
        "--out",
        default=str(REPO / "runs" / "study_optim_moe"),
        help="work folder: data/, cache/, runs/, results.json (default: runs/study_optim_moe)",
    )
    ap.add_argument(
        "--docs",
        default=str(REPO / "docs"),
        help="where study_optim_moe.md and its PNGs go (default: docs/)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument("--force", action="store_true", help="redo runs found finished in --out")
    args = ap.parse_args(argv)
    if args.sigmas[0] != 0:
        ap.error("--sigmas: the first must be 0 (the ratios are to the clean loss)")
    if args.steps <= 100:
        ap.error("--steps: must exceed the 100 warm-up updates of the default config")
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
    opt, moe = ARMS[arm]
    return [
        f"data.path={data_dir}",
        f"data.checkpoints=[{TRAIN_CKPT}]",
        f"data.cache_dir={Path(args.out) / 'cache'}",
        f"run_dir={run_dir}",
        f"steps={args.steps}",
        f"batch_size={args.batch_size}",
        f"seed={seed}",
        "torso=nature",
        f"optimizer={opt}",
        f"moe={moe}",
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
    ov = overrides_for(args, arm, seed, data_dir, run_dir)
    finished = (
        timing.is_file()
        and json.loads(timing.read_text()).get("overrides") == ov
        and any(p.name == f"ckpt_{args.steps:09d}.pt" for p in list_checkpoints(run_dir))
    )
    if finished and not args.force:
        return json.loads(timing.read_text())
    if run_dir.exists():  # interrupted, other settings, or forced: start clean (whole wall time)
        shutil.rmtree(run_dir)
    cfg = load_config("pretrain", ov)
    log(f"pretrain {arm} seed {seed}: {args.steps} updates")
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


def noisy(obs: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """uint8 observations plus N(0, sigma^2) per pixel, rounded and clipped to [0, 255]. The
    noise depends only on (sigma, seed, shape), so every arm sees the same corruption."""
    if sigma == 0:
        return obs
    g = torch.Generator().manual_seed(seed + round(sigma * 1000))
    eps = torch.randn(obs.shape, generator=g)
    return (obs.float() + sigma * eps).round_().clamp_(0, 255).to(torch.uint8)


@torch.no_grad()
def robustness(learner, batch, sigmas: list[float], chunk: int = 256) -> dict[str, Any]:
    """Per sigma: held-out TD loss of the online net on noisy ``s`` against clean targets
    (``learner.td_loss`` per transition, so the run's loss type is used), feature drift, and
    bootstrap 95% CIs of the ratio to sigma = 0."""
    obs, action, reward, next_obs, terminal = batch[:5]
    per: dict[float, np.ndarray] = {}
    drift: dict[float, float] = {}
    clean_feats = []
    targets = []
    for s in range(0, len(obs), chunk):
        sl = slice(s, s + chunk)
        tasks = learner.tasks(obs[sl], reward[sl])  # rewards of the clean state
        targets.append(learner.td_targets(tasks.rewards, next_obs[sl], terminal[sl]))
    for sigma in sigmas:
        losses, drifts = [], []
        x = noisy(obs, sigma, seed=7)
        for j, s in enumerate(range(0, len(obs), chunk)):
            sl = slice(s, s + chunk)
            q, f = learner.online(x[sl])
            y = targets[j]
            losses += [
                float(learner.td_loss(q[i : i + 1], action[sl][i : i + 1], y[i : i + 1]))
                for i in range(len(q))
            ]
            if sigma == 0:
                clean_feats.append(f)
            else:
                f0 = clean_feats[j]
                drifts.append(((f - f0).norm(dim=1) / f0.norm(dim=1).clamp_min(1e-8)).numpy())
        per[sigma] = np.asarray(losses)
        drift[sigma] = float(np.concatenate(drifts).mean()) if drifts else 0.0
    rng = np.random.default_rng(0)
    n = len(per[sigmas[0]])
    boots = rng.integers(0, n, size=(1000, n))
    base = per[sigmas[0]]
    out = {"td": {}, "ratio": {}, "ratio_ci": {}, "drift": drift}
    out["feat_norm"] = float(torch.cat(clean_feats).norm(dim=1).mean())
    for sigma in sigmas:
        out["td"][sigma] = float(per[sigma].mean())
        out["ratio"][sigma] = float(per[sigma].mean() / base.mean())
        r = per[sigma][boots].mean(1) / base[boots].mean(1)
        out["ratio_ci"][sigma] = [float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))]
    out["td_heldout_ci"] = [float(np.quantile(base[boots].mean(1), q_)) for q_ in (0.025, 0.975)]
    return out


@torch.no_grad()
def routing_diagnostic(learner, batch, sigma: float, chunk: int = 256) -> dict[str, Any] | None:
    """Top-k MoE arms only: the held-out TD loss (clean and at ``sigma``) and the fraction of
    dropped expert assignments in three settings -- ``eval`` (what the tables report and what a
    frozen ``pvn.load_encoder`` torso computes: no router noise, configured capacity),
    ``train`` (router noise on, as during pretraining) and ``eval_nocap`` (no router noise,
    capacity raised to T so nothing is dropped). A big gap between ``eval`` and ``eval_nocap``
    means capacity drops, not the learned function, drive the eval-mode numbers."""
    from pvn.networks.moe import TopKMoE, moe_layers, moe_stats

    layers = [m for _, m in moe_layers(learner.online) if isinstance(m, TopKMoE)]
    if not layers:
        return None
    obs, action, reward, next_obs, terminal = batch[:5]
    ys = []
    for s0 in range(0, len(obs), chunk):
        sl = slice(s0, s0 + chunk)
        tasks = learner.tasks(obs[sl], reward[sl])
        ys.append(learner.td_targets(tasks.rewards, next_obs[sl], terminal[sl]))
    saved = [m.capacity_factor for m in layers]
    out: dict[str, Any] = {}
    for setting in ("eval", "train", "eval_nocap"):
        learner.online.train(setting == "train")
        if setting == "eval_nocap":
            for m in layers:
                m.capacity_factor = m.num_experts / m.k  # capacity = T: no token is dropped
        res = {}
        for sig in (0.0, sigma):
            x = noisy(obs, sig, seed=7)
            losses, drops = [], []
            for j, s0 in enumerate(range(0, len(obs), chunk)):
                sl = slice(s0, s0 + chunk)
                q, _ = learner.online(x[sl])
                losses.append(float(learner.td_loss(q, action[sl], ys[j])) * len(q))
                drops.append(float(moe_stats(learner.online)["dropped_frac"]) * len(q))
            res[str(sig)] = {"td": sum(losses) / len(obs), "dropped": sum(drops) / len(obs)}
        out[setting] = res
        for m, cf in zip(layers, saved, strict=True):
            m.capacity_factor = cf
    learner.online.eval()
    clean = out["eval"]["0.0"]["td"]
    out["artefact"] = bool(clean > 1.25 * out["eval_nocap"]["0.0"]["td"])
    return out


def curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    steps, td = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "td_loss" in rec:
            steps.append(rec["step"])
            td.append(rec["td_loss"])
    return np.asarray(steps), np.asarray(td)


def last_metrics(run_dir: Path) -> dict[str, Any]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def param_counts(learner) -> tuple[int, int]:
    """(total, active) parameters of the online network; active counts what one token passes
    through in the MoE feature block (``scripts/bench_moe.py``'s rule)."""
    from bench_moe import active_params

    net = learner.online
    total = sum(p.numel() for p in net.parameters())
    block = net.torso.blocks["features"]
    return total, total - sum(p.numel() for p in block.parameters()) + active_params(block)


def evaluate_run(
    args: argparse.Namespace, run_dir: Path, ds_eval, batch, wall: dict
) -> dict[str, Any]:
    from pvn import load_encoder
    from pvn.analysis.probes import linear_probes

    cache = run_dir / "study_eval.json"
    if cache.is_file() and not args.force:
        ev = json.loads(cache.read_text())
        if ev.get("eval_key") == eval_key(args):
            return ev
    cfg, learner, _ = load_learner(run_dir)
    t0 = time.perf_counter()
    rob = robustness(learner, batch, args.sigmas)
    probe = linear_probes(
        load_encoder(run_dir), ds_eval, gamma=float(cfg.data.gamma), max_states=args.probe_states
    )
    steps, td = curve(run_dir)
    total, active = param_counts(learner)
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ups = [r["updates_per_s"] for r in recs if "td_loss" in r and "updates_per_s" in r]
    ev = {
        "eval_key": eval_key(args),
        "params": total,
        "active_params": active,
        "td_final": float(td[-args.final_logs :].mean()),
        "td_first": float(td[0]),
        "init": init_scale(cfg, learner, batch),
        "routing": routing_diagnostic(learner, batch, args.sigmas[-1]),
        "curve": {"step": steps.tolist(), "td_loss": td.tolist()},
        "probe": probe,
        "robustness": {
            k: {str(s): v for s, v in d.items()} if isinstance(d, dict) else d
            for k, d in rob.items()
        },
        "last_log": last_metrics(run_dir),
        "eval_s": 0.0,
        **wall,
        # median logged rate of the TD phase: excludes start-up (config, data, checkpoint)
        "updates_per_s": float(np.median(ups)) if ups else wall["updates_per_s"],
    }
    ev["eval_s"] = time.perf_counter() - t0
    cache.write_text(json.dumps(ev, indent=1))
    return ev


@torch.no_grad()
def init_scale(cfg, learner, batch, n: int = 256) -> dict[str, float]:
    """Feature norm and |Q| of the run's network at initialisation (rebuilt from the seed) on
    the first ``n`` held-out states: how differently scaled the arms start."""
    from pvn.pretrain import build

    fresh = build(cfg, learner.online.head.num_actions).online.eval()
    q, f = fresh(batch.observation[:n])
    return {"feat_norm": float(f.norm(dim=1).mean()), "q_abs": float(q.abs().mean())}


def eval_key(args: argparse.Namespace) -> str:
    return f"v3|{args.sigmas}|{args.eval_transitions}|{args.probe_states}|{args.final_logs}"


@torch.no_grad()
def random_probe(args: argparse.Namespace, ds_eval) -> dict[str, Any]:
    """The probe floor: the dense nature torso at its random init (no pretraining)."""
    from pvn.analysis.probes import linear_probes
    from pvn.networks import build_torso

    torso = build_torso("nature", torch.Generator().manual_seed(0)).eval()
    return linear_probes(torso, ds_eval, max_states=args.probe_states)


# ---------------------------------------------------------------------------------------------
# 4. tables, plots, doc
# ---------------------------------------------------------------------------------------------


def fmt(values: list[float], digits: int = 3, sci: bool = False) -> str:
    """A value, or mean +- sd over seeds."""
    f = (lambda v: f"{v:.{digits}g}") if sci else (lambda v: f"{v:.{digits}f}")
    if len(values) == 1:
        return f(values[0])
    return f"{f(float(np.mean(values)))} ± {f(float(np.std(values, ddof=1)))}"


def metric(ev: dict, key: str, sigma: float | None = None) -> float:
    r = ev["robustness"]
    return {
        "td_final": lambda: ev["td_final"],
        "td_heldout": lambda: r["td"]["0.0"],
        "ret_r2": lambda: ev["probe"]["return_r2"],
        "rew_r2": lambda: ev["probe"]["reward_r2"],
        "ratio": lambda: r["ratio"][str(sigma)],
        "drift": lambda: r["drift"][str(sigma)],
        "wall": lambda: ev["wall_s"],
        "ups": lambda: ev["updates_per_s"],
    }[key]()


def main_table(results: dict, arms: list[str], seeds: list[int], sigmas: list[float]) -> str:
    noisy_sigmas = sigmas[1:]
    head = (
        "| arm | params (active) | TD loss, train (final) | TD loss, held out | "
        "probe R² return | probe R² reward | "
        + " | ".join(f"TD ratio σ={s:g}" for s in noisy_sigmas)
        + " | wall s (upd/s) |"
    )
    lines = [head, "|" + "---|" * (8 + len(noisy_sigmas) - 1)]
    for arm in arms:
        evs = [results[arm][s] for s in seeds]
        e0 = evs[0]
        cells = [
            arm,
            f"{e0['params'] / 1e6:.2f}M ({e0['active_params'] / 1e6:.2f}M)",
            fmt([metric(e, "td_final") for e in evs], 3, sci=True),
            fmt([metric(e, "td_heldout") for e in evs], 3, sci=True),
            fmt([metric(e, "ret_r2") for e in evs]),
            fmt([metric(e, "rew_r2") for e in evs]),
            *(fmt([metric(e, "ratio", s) for e in evs], 2) for s in noisy_sigmas),
            f"{np.mean([metric(e, 'wall') for e in evs]):.0f} "
            f"({np.mean([metric(e, 'ups') for e in evs]):.1f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def robustness_table(results: dict, arms: list[str], seed: int, sigmas: list[float]) -> str:
    noisy_sigmas = sigmas[1:]
    lines = [
        "| arm | held-out TD σ=0 [95% CI] | "
        + " | ".join(f"ratio σ={s:g} [95% CI] | drift σ={s:g}" for s in noisy_sigmas)
        + " |",
        "|" + "---|" * (2 + 2 * len(noisy_sigmas)),
    ]
    for arm in arms:
        r = results[arm][seed]["robustness"]
        lo, hi = r["td_heldout_ci"]
        cells = [arm, f"{r['td']['0.0']:.3g} [{lo:.3g}, {hi:.3g}]"]
        for s in noisy_sigmas:
            a, b = r["ratio_ci"][str(s)]
            cells += [f"{r['ratio'][str(s)]:.2f} [{a:.2f}, {b:.2f}]", f"{r['drift'][str(s)]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def routing_table(results: dict, arms: list[str], seed: int, sigma: float) -> str | None:
    rows = [a for a in arms if results[a][seed].get("routing")]
    if not rows:
        return None
    lines = [
        "| arm | setting | dropped assignments (clean) | held-out TD σ=0 | "
        f"held-out TD σ={sigma:g} | ratio σ={sigma:g} |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "eval": "eval mode (reported above)",
        "train": "router noise on",
        "eval_nocap": "eval mode, no capacity limit",
    }
    for arm in rows:
        r = results[arm][seed]["routing"]
        for k, name in names.items():
            c, n = r[k]["0.0"], r[k][str(sigma)]
            lines.append(
                f"| {arm} | {name} | {c['dropped']:.3f} | {c['td']:.3g} | {n['td']:.3g} | "
                f"{n['td'] / c['td']:.2f} |"
            )
    return "\n".join(lines)


def scale_table(results: dict, arms: list[str], seed: int, gamma: float) -> str:
    fire = [results[a][seed]["last_log"].get("fire_mean") for a in arms]
    fire = [f for f in fire if f is not None]
    fixed = f"{np.mean(fire) / (1 - gamma):.2f}" if fire else "n/a"
    lines = [
        "| arm | mean abs(Q) at init | feature norm at init | feature norm, final | "
        f"mean Q(s,a), final (fixed point ≈ f/(1−γ) = {fixed}) | TD loss, first log | "
        "TD loss, final |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        e = results[arm][seed]
        q = e["last_log"].get("q_mean", float("nan"))
        lines.append(
            f"| {arm} | {e['init']['q_abs']:.3f} | {e['init']['feat_norm']:.2f} | "
            f"{e['robustness']['feat_norm']:.2f} | {q:.2f} | {e['td_first']:.3g} | "
            f"{e['td_final']:.3g} |"
        )
    return "\n".join(lines)


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}–{hi:.3g}"


def yardstick_rows(results: dict, ref_seeds: list[int], sigmas: list[float]) -> str:
    top = sigmas[-1]
    lines = [
        f"| {REFERENCE} seed | TD train (final) | TD held out | probe R² return | "
        f"probe R² reward | TD ratio σ={top:g} | drift σ={top:g} |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in ref_seeds:
        e = results[REFERENCE][s]
        lines.append(
            f"| {s} | {metric(e, 'td_final'):.3g} | {metric(e, 'td_heldout'):.3g} | "
            f"{metric(e, 'ret_r2'):.3f} | {metric(e, 'rew_r2'):.3f} | "
            f"{metric(e, 'ratio', top):.2f} | {metric(e, 'drift', top):.3f} |"
        )
    return "\n".join(lines)


COLORS = {
    "adam+dense": "black",
    "adan+dense": "tab:brown",
    "adam+smoe": "tab:blue",
    "adam+momentum_smoe": "tab:red",
    "adam+adam_smoe": "tab:green",
    "adam+soft_moe": "tab:purple",
    "adan+momentum_smoe": "tab:orange",
}


def plot_curves(results: dict, arms: list[str], seeds: list[int], ref_seeds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for arm in arms:
        arm_seeds = ref_seeds if arm == REFERENCE else seeds
        for i, s in enumerate(arm_seeds):
            c = results[arm][s]["curve"]
            main = s in seeds
            ax.plot(
                c["step"],
                c["td_loss"],
                color=COLORS[arm],
                lw=1.6 if main else 0.8,
                ls="-" if main else "--",
                alpha=1.0 if main else 0.7,
                label=arm if i == 0 else (f"{arm}, other seeds" if i == len(seeds) else None),
            )
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("training TD loss (mean over each log window)")
    ax.set_title("PVN pretraining: TD loss (dashed: extra seeds of adam+dense)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_robustness(results: dict, arms: list[str], seed: int, ref_seeds, sigmas, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for arm in arms:
        r = results[arm][seed]["robustness"]
        flagged = (results[arm][seed].get("routing") or {}).get("artefact")
        label = arm + (" (capacity artefact, see text)" if flagged else "")
        y = [r["ratio"][str(s)] for s in sigmas]
        ci = np.array([r["ratio_ci"][str(s)] for s in sigmas]).T
        a1.errorbar(
            sigmas,
            y,
            yerr=[np.subtract(y, ci[0]), np.subtract(ci[1], y)],
            color=COLORS[arm],
            marker="o",
            ms=3,
            capsize=2,
            lw=1.3,
            label=label,
        )
        a2.plot(
            sigmas,
            [r["drift"][str(s)] for s in sigmas],
            color=COLORS[arm],
            marker="o",
            ms=3,
            lw=1.3,
            label=label,
        )
    for s in ref_seeds:
        if s == seed:
            continue
        r = results[REFERENCE][s]["robustness"]
        a1.plot(sigmas, [r["ratio"][str(x)] for x in sigmas], color="black", ls="--", lw=0.8)
        a2.plot(sigmas, [r["drift"][str(x)] for x in sigmas], color="black", ls="--", lw=0.8)
    a1.set_xlabel("pixel-noise σ (uint8 units) on s")
    a1.set_ylabel("held-out TD loss / TD loss at σ=0")
    a1.set_title("TD loss under noise (bars: bootstrap 95% CI)")
    a2.set_xlabel("pixel-noise σ (uint8 units) on s")
    a2.set_ylabel("|φ(noisy s) − φ(s)| / |φ(s)|")
    a2.set_title("feature drift (dashed: other seeds of adam+dense)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    a1.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reading(
    results: dict,
    arms: list[str],
    seed: int,
    ref_seeds: list[int],
    sigmas,
    rand_probe: dict,
    gamma: float,
) -> str:
    """Statements generated from the numbers: each arm against the reference arm's seed range.

    An arm is "inside" the range of the reference seeds, "just outside" (beyond it by less than
    the range's own width) or "well outside" (by more). With a handful of seeds the range
    understates the true spread, so only "well outside" is worth a sentence."""
    top = sigmas[-1]
    keys = [
        ("td_final", "final training TD loss", None, True),
        ("td_heldout", "held-out TD loss (σ=0)", None, True),
        ("ret_r2", "probe R² (return-to-go)", None, False),
        ("rew_r2", "probe R² (next reward)", None, False),
        ("ratio", f"TD ratio at σ={top:g}", top, True),
        ("drift", f"feature drift at σ={top:g}", top, True),
    ]
    out = []
    artefact = [a for a in arms if (results[a][seed].get("routing") or {}).get("artefact")]
    fire = [results[a][seed]["last_log"].get("fire_mean") for a in arms]
    fire = [f for f in fire if f is not None]
    if fire:
        f = float(np.mean(fire))
        floor = 0.5 * f * (1 - f)
        tds = [metric(results[a][seed], "td_final") for a in arms]
        lo_r, hi_r = min(tds) / floor, max(tds) / floor
        qs = [results[a][seed]["last_log"].get("q_mean") for a in arms]
        qs = [q for q in qs if q is not None]
        out.append(
            f"- **TD loss against an input-blind network.** The indicators fire on a fraction "
            f"f ≈ {f:.3f} of states; a network whose Q ignores its input can at best reach "
            f"≈ ½·f(1−f) = {floor:.4f} (the task reward's variance; exact when every task fires "
            f"at rate f). The arms end at {min(tds):.4f}–{max(tds):.4f}, "
            f"{lo_r:.2f}–{hi_r:.2f}x that floor"
            + (
                f", and their mean Q(s,a) is {_span(qs)} against the ≈{f / (1 - gamma):.1f} "
                "(f/(1−γ)) the successor measures converge to"
                if qs
                else ""
            )
            + (
                ": at this budget the heads are still far even from the tasks' mean values, "
                "so TD-loss differences of a few percent between arms say little about the "
                "representations."
                if hi_r < 1.1
                else "."
            )
        )
    ref = [results[REFERENCE][s] for s in ref_seeds]
    if len(ref) >= 2:
        out.append(
            f"- **Seed yardstick.** {len(ref)} seeds of {REFERENCE} span: "
            + "; ".join(
                f"{name} {min(metric(e, k, s) for e in ref):.3g}–"
                f"{max(metric(e, k, s) for e in ref):.3g}"
                for k, name, s, _ in keys
            )
            + ". Other arms ran one seed. Below, an arm is *well outside* when it lies beyond "
            "this range by more than the range's width; values just outside it are not "
            f"evidence with {len(ref)} seeds."
        )
        for k, name, s, lower_better in keys:
            lo = min(metric(e, k, s) for e in ref)
            hi = max(metric(e, k, s) for e in ref)
            w = max(hi - lo, 1e-12)
            better, worse, near = [], [], []
            for arm in arms:
                if arm == REFERENCE:
                    continue
                v = metric(results[arm][seed], k, s)
                if not np.isfinite(v) or not np.isfinite(lo) or not np.isfinite(hi):
                    continue
                tag = f"{arm} {v:.3g}" + (" (capacity artefact)" if arm in artefact else "")
                if lo - w <= v <= hi + w:
                    if not lo <= v <= hi:
                        near.append(tag)
                    continue
                (better if (v < lo) == lower_better else worse).append(tag)
            parts = []
            if better:
                parts.append("better: " + ", ".join(better))
            if worse:
                parts.append("worse: " + ", ".join(worse))
            msg = "; ".join(parts) if parts else "none"
            if near:
                msg += "; just outside: " + ", ".join(near)
            out.append(f"  - {name}, well outside the {REFERENCE} range: {msg}.")
    if np.isfinite(rand_probe["reward_r2"]):
        rr, rg = rand_probe["reward_r2"], rand_probe["return_r2"]
        above = [a for a in arms if metric(results[a][seed], "rew_r2") > rr]
        verdict = (
            "No arm's features predict the next reward better than an untrained torso's"
            if not above
            else "Above the floor on next reward: " + ", ".join(above)
        )
        rets = [metric(results[a][seed], "ret_r2") for a in arms] + [rg]
        if max(abs(v) for v in rets) < 0.1:
            verdict += (
                "; return-to-go of random play is barely predictable from one state by any of "
                "them. These probes say the pretraining has not yet produced value-relevant "
                "features, not which arm will"
            )
        out.append(
            f"- **Probes against the random-init floor** (R² next reward {rr:.3f}, "
            f"return-to-go {rg:.3f}): next reward "
            + ", ".join(f"{a} {metric(results[a][seed], 'rew_r2'):.3f}" for a in arms)
            + "; return-to-go "
            + ", ".join(f"{a} {metric(results[a][seed], 'ret_r2'):.3f}" for a in arms)
            + f". {verdict}."
        )
    for arm in artefact:
        r = results[arm][seed]["routing"]
        out.append(
            f"- **{arm}: its eval-mode numbers are a capacity artefact.** Without router noise, "
            f"{r['eval']['0.0']['dropped']:.0%} of its expert assignments on clean held-out "
            f"frames are dropped (with router noise, as in training: "
            f"{r['train']['0.0']['dropped']:.1%}), and its held-out TD loss is "
            f"{r['eval']['0.0']['td']:.3g} against {r['eval_nocap']['0.0']['td']:.3g} with the "
            f"capacity limit lifted. With pixel noise (σ={top:g}) only "
            f"{r['eval'][str(top)]['dropped']:.0%} are dropped — noise makes the tokens of "
            "uniform screen regions differ, so fewer pile onto the same experts — and the loss "
            "*falls*: its TD ratios below 1 are not robustness. Its probes use the same "
            "eval-mode torso. (Its first MoE layer's step, m/sqrt(v + eps) = "
            "(1−β1)/sqrt(1−β2)·sign(f) ≈ 3.2·sign(f) per channel, turns a dropped token's 0 "
            "into a large jump; the plain residual arms barely notice the same drops.)"
        )
    r_top = {a: metric(results[a][seed], "ratio", top) for a in arms if a not in artefact}
    if r_top:
        best = min(r_top, key=r_top.get)
        ci = results[best][seed]["robustness"]["ratio_ci"][str(top)]
        out.append(
            f"- **Robustness.** Lowest TD ratio at σ={top:g} (artefacts excluded): {best} "
            f"({r_top[best]:.2f}, 95% CI {ci[0]:.2f}–{ci[1]:.2f} over held-out transitions; "
            "the CI covers evaluation sampling, not training seeds). "
            + ", ".join(f"{a} {v:.2f}" for a, v in sorted(r_top.items(), key=lambda t: t[1]))
            + ". A network that has learned little input dependence is trivially insensitive "
            "to its input, so a ratio near 1 at this budget is weak praise."
        )
    if "adam+momentum_smoe" in r_top and "adam+smoe" in r_top:
        m, sm = r_top["adam+momentum_smoe"], r_top["adam+smoe"]
        rm = results["adam+momentum_smoe"][seed].get("routing")
        rs = results["adam+smoe"][seed].get("routing")
        nocap = ""
        if rm and rs:

            def nc(r):
                return r["eval_nocap"][str(top)]["td"] / r["eval_nocap"]["0.0"]["td"]

            nocap = f"; with no capacity limit {nc(rm):.2f} vs {nc(rs):.2f}"
        out.append(
            f"- **MomentumSMoE's robustness claim.** TD ratio at σ={top:g}: adam+momentum_smoe "
            f"{m:.2f} vs adam+smoe {sm:.2f}{nocap}; feature drift "
            f"{metric(results['adam+momentum_smoe'][seed], 'drift', top):.3f} vs "
            f"{metric(results['adam+smoe'][seed], 'drift', top):.3f}. "
            + (
                "Momentum does not make the layer more robust here"
                if m >= sm
                else "Momentum is slightly more robust here"
            )
            + "; one seed each, so a gap of this size is not established either way."
        )
    dense = [a for a in arms if a.endswith("+dense")]
    moe = [a for a in arms if not a.endswith("+dense")]
    if dense and moe:
        fn = {a: results[a][seed]["init"]["feat_norm"] for a in arms}
        first = {a: results[a][seed]["td_first"] for a in arms}
        out.append(
            "- **Start-up scale.** At initialisation the MoE arms' features have norm "
            f"{_span([fn[a] for a in moe])} against {_span([fn[a] for a in dense])} for the dense "
            "block (their tokens pass LayerNorm, the dense block sees raw conv activations), "
            f"and their first logged TD loss is {_span([first[a] for a in moe])} against "
            f"{_span([first[a] for a in dense])}. Part of any gap at this budget is this "
            "start-up transient, not what the block can learn."
        )
    ups = {arm: metric(results[arm][seed], "ups", None) for arm in arms}
    if REFERENCE in ups:
        out.append(
            "- **Cost.** Updates/s relative to adam+dense: "
            + ", ".join(f"{a} {ups[a] / ups[REFERENCE]:.2f}x" for a in arms if a != REFERENCE)
            + " (shared 2-core machine, one measurement each, not interleaved)."
        )
    return "\n".join(out)


def write_doc(
    args, summary, results, rand_probe, arms, ref_seeds, command, timing, docs: Path
) -> str:
    seed = args.seeds[0]
    table = main_table(results, arms, args.seeds, args.sigmas)
    mean_ret = summary["return_mean"]
    ds_rows = (
        f"{summary['steps']:,} agent steps of uniform-random {args.game} play "
        f"({summary['episodes']} finished episodes, mean return "
        f"{'n/a' if mean_ret is None else f'{mean_ret:.1f}'}), "
        f"checkpoint capacity {summary['capacity']:,}"
    )
    ex = overrides_for(args, REFERENCE, seed, Path("DATA"), Path("RUN"))
    seeds_txt = ", ".join(map(str, args.seeds))
    ref_cfg = Path(args.out) / "runs" / f"{arms[0]}_s{seed}" / "config.yaml"
    gamma = 0.99
    if ref_cfg.is_file():
        from omegaconf import OmegaConf

        gamma = float(OmegaConf.load(ref_cfg).data.gamma)
    work = timing["collect_s"] + timing["pretrain_s"] + timing["evaluate_s"]
    results_runs = [(a, s) for a in results for s in results[a]]
    title = "Adam vs Adan, dense vs SMoE / MomentumSMoE / AdamSMoE / Soft MoE in PVN pretraining"
    extra = ", ".join(map(str, [s for s in ref_seeds if s not in args.seeds])) or "—"
    text = f"""# Study: {title}

Generated by `scripts/study_optim_moe.py` from measured runs (issue 6). Every number below comes
from the run recorded here; re-running the command regenerates this page.

## Setup

- **Command:** `{command}`. The work reported took {work / 60:.1f} min: data collection
  {timing["collect_s"]:.0f} s, {len(results_runs)} pretraining runs {timing["pretrain_s"]:.0f} s,
  probes and robustness evaluation {timing["evaluate_s"]:.0f} s (the invocation that wrote this
  page: {timing["invocation_s"] / 60:.1f} min; finished runs are reused on re-runs).
- **Machine:** {machine()}. Another engineer's work shared the machine, so wall times are
  indicative only.
- **Data:** `{summary["command"]}` — {ds_rows}. Replay checkpoint {TRAIN_CKPT} (training) and
  checkpoint {HELDOUT_CKPT} (held out: evaluation and probes) hold disjoint slots of the same
  log: checkpoint 1 is the circular buffer after one full overwrite.
- **Pretraining:** each arm runs `pvn pretrain` (through `pvn.pretrain.pretrain`) with
  `{" ".join(ex[1:2] + ex[4:13])}`; everything else is the default config: nature torso,
  {"20 random-network indicator tasks at p = 0.05 (`tasks=indicator_rnd`)"}, L2 TD loss to the
  uniform-policy successor measure, Polyak τ = 0.01, 100 warm-up updates of task calibration
  only, lr 1e-4 for both optimizers (`configs/optimizer/{{adam,adan}}.yaml`), the MoE groups'
  laptop sizes (`configs/moe/*.yaml`: 2 layers of 4 experts, hidden 128, per-pixel tokens,
  top-2 for the sparse ones). Arms share seed(s) {seeds_txt}, data and update count;
  {REFERENCE} also ran seeds {extra}
  as a yardstick of seed-to-seed noise.
- **Metrics.** *TD loss, train (final):* mean of the last {args.final_logs} logged windows
  ({args.log_every} updates each) of the training TD loss (MoE top-k arms: with router noise on).
  *TD loss, held out:* the final online network (eval mode, no router noise) on
  {args.eval_transitions} transitions of checkpoint {HELDOUT_CKPT}, targets from the run's
  target network and calibrated tasks. *Probes:* `pvn.analysis.probes.linear_probes` (what
  `pvn report --data` runs) on checkpoint {HELDOUT_CKPT}: ridge regression from the frozen
  torso's features to discounted return-to-go and next reward, fit on the earlier 80% of its
  episodes, R² on the later 20% (up to {args.probe_states} states). *Robustness:* Gaussian
  pixel noise of std σ (uint8 units, rounded, clipped to [0, 255]) added to the observation `s`
  only (all 4 stacked frames); the targets stay clean (task rewards of the clean `s`,
  bootstrap from the target network on the clean `s'`), so the ratio measures how much the
  online network's prediction degrades when its input is corrupted. Same transitions and the
  same noise draws for every arm; ratio = noisy TD loss / clean TD loss. *Drift:*
  mean `|φ(noisy s) − φ(s)| / |φ(s)|` of the torso's features. *Params:* the online network
  (torso + 20-task head); *active:* what one token passes through in the MoE block (the MoE
  blocks keep the dense `Dense(3136, 512)` after their token layers, so they are strictly
  larger and slower than the dense block, not parameter-matched).

## Results

{table}

Values are for seed {seeds_txt}{" (mean ± sd over seeds)" if len(args.seeds) > 1 else ""}.
Probe floor, the same nature torso at random init (no pretraining): R² return-to-go
{rand_probe["return_r2"]:.3f}, R² next reward {rand_probe["reward_r2"]:.3f}
({rand_probe["states"]} states).

![TD-loss curves](study_optim_moe_td_curves.png)

![Robustness to pixel noise](study_optim_moe_robustness.png)

### Robustness detail (seed {seed})

{robustness_table(results, arms, seed, args.sigmas)}

### Routing diagnostic: top-k MoE arms (seed {seed})

The tables above evaluate every network in eval mode, as `pvn.load_encoder` returns it (no
router noise). This checks how much the top-k layers' expert capacity
(`ceil(1.25 · T · k / E)` places per expert) shapes those numbers:

{routing_table(results, arms, seed, args.sigmas[-1]) or "(no top-k MoE arm run)"}

### Scale at initialisation and after training (seed {seed})

{scale_table(results, arms, seed, gamma)}

### Seed yardstick ({REFERENCE})

{yardstick_rows(results, ref_seeds, args.sigmas) if len(ref_seeds) > 1 else "(no extra seeds run)"}

## Reading

Generated from the numbers above (each arm against the range of the {REFERENCE} seeds):

{reading(results, arms, seed, ref_seeds, args.sigmas, rand_probe, gamma)}

Caveats that hold whatever the numbers: this is {args.steps:,} updates of batch
{args.batch_size} ({args.steps * args.batch_size:,} samples, about
{args.steps * args.batch_size / summary["capacity"]:.1f} passes over the training checkpoint) on
random-policy {args.game} data — {100 * args.steps / 1_562_500:.2g}% of the paper's 1.56M
updates — with {len(args.seeds)} seed(s) per arm; the networks are far from converged and the
ranking of arms at this stage need not hold later. The MoE blocks add parameters and compute on
top of the dense block, so a difference between them and the dense arm confounds routing with
capacity. The optimizers share lr 1e-4 and were not tuned per arm. The probes' test split is the
last ~20% of the held-out checkpoint's episodes (a few episodes), so their R² carries sizeable
sampling noise; the probe floor of random features shows how much any pretraining adds.
"""
    (docs / "study_optim_moe.md").write_text(text)
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

    ref_seeds = list(dict.fromkeys(args.seeds + list(args.yardstick_seeds)))
    plan = [(arm, s) for s in args.seeds for arm in args.arms]
    if REFERENCE in args.arms:
        plan += [(REFERENCE, s) for s in ref_seeds if s not in args.seeds]
    else:
        ref_seeds = args.seeds
    from replay import DQNReplayDataset

    # decompress both checkpoints into the memmap cache now, so no run's wall time includes it
    DQNReplayDataset(data_dir, checkpoints=[TRAIN_CKPT, HELDOUT_CKPT], cache_dir=out / "cache")
    walls = {}
    for arm, s in plan:
        run_dir = out / "runs" / f"{arm}_s{s}"
        walls[(arm, s)] = pretrain_run(args, arm, s, data_dir, run_dir)

    ds_eval = DQNReplayDataset(data_dir, checkpoints=[HELDOUT_CKPT], cache_dir=out / "cache")
    batch = heldout_transitions(ds_eval, args.eval_transitions)
    results: dict[str, dict[int, dict]] = {arm: {} for arm in args.arms}
    for arm, s in plan:
        log(f"evaluate {arm} seed {s}")
        results[arm][s] = evaluate_run(
            args, out / "runs" / f"{arm}_s{s}", ds_eval, batch, walls[(arm, s)]
        )
    log("probe floor: random-init torso")
    t0 = time.perf_counter()
    rand_probe = random_probe(args, ds_eval)
    evs = [results[a][s] for a, s in plan]
    timing = {
        "invocation_s": 0.0,
        "collect_s": float(summary["wall_s"]),
        "pretrain_s": float(sum(e["wall_s"] for e in evs)),
        "evaluate_s": float(sum(e["eval_s"] for e in evs) + time.perf_counter() - t0),
    }

    arms = args.arms
    plot_curves(results, arms, args.seeds, ref_seeds, docs / "study_optim_moe_td_curves.png")
    plot_robustness(
        results,
        arms,
        args.seeds[0],
        ref_seeds,
        args.sigmas,
        docs / "study_optim_moe_robustness.png",
    )
    argv_txt = shlex.join(sys.argv[1:] if argv is None else argv)
    command = f"OMP_NUM_THREADS=1 .venv/bin/python scripts/study_optim_moe.py {argv_txt}".strip()
    total = timing["invocation_s"] = time.perf_counter() - t_start
    table = write_doc(args, summary, results, rand_probe, arms, ref_seeds, command, timing, docs)
    (out / "results.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "data": summary,
                "random_probe": rand_probe,
                "results": {a: {str(s): e for s, e in r.items()} for a, r in results.items()},
                "timing": timing,
            },
            indent=1,
        )
    )
    print(table)
    print(
        f"\nrandom-init probe floor: R² return {rand_probe['return_r2']:.3f}, "
        f"R² reward {rand_probe['reward_r2']:.3f}"
    )
    log(f"done in {total / 60:.1f} min; doc: {docs / 'study_optim_moe.md'}")


if __name__ == "__main__":
    main()
