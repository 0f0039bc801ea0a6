"""Study (issue 6): PVN pretraining with Adam vs Adan, and a dense feature block vs SMoE,
MomentumSMoE, AdamSMoE and Soft MoE -- loss curves, offline probes and robustness to pixel noise.

What it does, top to bottom:
  1. collects one log of random play (``pvn collect``) with a checkpoint capacity of 45% of the
     steps, so it writes two full, disjoint replay checkpoints (plus a small partial third one,
     unused): checkpoint 0 trains every arm, checkpoint 1 is held out for evaluation and probes;
  2. pretrains each arm on checkpoint 0 (same data, seed(s), updates and batch; nature torso,
     the default tasks: 20 random-network indicators at p = 0.05), through
     ``pvn.commands.pretrain``;
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
  4. writes the numbers: ``docs/study_optim_moe_results.json`` (all of them) and
     ``docs/study_optim_moe_tables.md`` (plain tables), and the figures
     ``docs/study_optim_moe_{td_curves,robustness}.png``; prints the tables.
     ``docs/study_optim_moe.md`` is written by hand from them.

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
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study import (
    command_line,
    fmt,
    keyed,
    log,
    parse_study_args,
    pyplot,
    records,
    run_arms,
    save_figure,
    study_parser,
    table,
    td_rate,
    write_results,
)

from pvn.analysis.heldout import noisy, trained_learner

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
COLORS = {
    "adam+dense": "black",
    "adan+dense": "tab:brown",
    "adam+smoe": "tab:blue",
    "adam+momentum_smoe": "tab:red",
    "adam+adam_smoe": "tab:green",
    "adam+soft_moe": "tab:purple",
    "adan+momentum_smoe": "tab:orange",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = study_parser(__doc__, "study_optim_moe", REFERENCE)
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
    args = parse_study_args(ap, argv)
    if args.sigmas[0] != 0:
        ap.error("--sigmas: the first must be 0 (the ratios are to the clean loss)")
    return args


def arm_overrides(arm: str) -> list[str]:
    opt, moe = ARMS[arm]
    return ["torso=nature", f"optimizer={opt}", f"moe={moe}"]


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


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
    cfg, learner, _ = trained_learner(run_dir)
    t0 = time.perf_counter()
    rob = robustness(learner, batch, args.sigmas)
    probe = linear_probes(
        load_encoder(run_dir), ds_eval, gamma=float(cfg.data.gamma), max_states=args.probe_states
    )
    recs = records(run_dir)
    steps = [r["step"] for r in recs if "td_loss" in r]
    td = np.asarray([r["td_loss"] for r in recs if "td_loss" in r])
    total, active = param_counts(learner)
    ev = {
        "eval_key": eval_key(args),
        "params": total,
        "active_params": active,
        "td_final": float(td[-args.final_logs :].mean()),
        "td_first": float(td[0]),
        "init": init_scale(cfg, learner, batch),
        "routing": routing_diagnostic(learner, batch, args.sigmas[-1]),
        "curve": {"step": steps, "td_loss": td.tolist()},
        "probe": probe,
        "robustness": {
            k: {str(s): v for s, v in d.items()} if isinstance(d, dict) else d
            for k, d in rob.items()
        },
        "last_log": recs[-1] if recs else {},
        "eval_s": 0.0,
        **wall,
        "updates_per_s": td_rate(recs, wall),
    }
    ev["eval_s"] = time.perf_counter() - t0
    cache.write_text(json.dumps(ev, indent=1))
    return ev


@torch.no_grad()
def init_scale(cfg, learner, batch, n: int = 256) -> dict[str, float]:
    """Feature norm and |Q| of the run's network at initialisation (rebuilt from the seed) on
    the first ``n`` held-out states: how differently scaled the arms start."""
    from pvn.pretraining import PretrainConfig, build
    from pvn.settings import section

    fresh = build(section(PretrainConfig, cfg), learner.online.head.num_actions).online.eval()
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
# tables and plots
# ---------------------------------------------------------------------------------------------


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
    header = [
        "arm",
        "params",
        "active params",
        "TD train (final)",
        "TD held out",
        "probe R² return",
        "probe R² reward",
        *(f"TD ratio σ={s:g}" for s in noisy_sigmas),
        "wall s",
        "upd/s (TD phase)",
    ]
    rows = []
    for arm in arms:
        evs = [results[arm][s] for s in seeds]
        rows.append(
            [
                arm,
                evs[0]["params"],
                evs[0]["active_params"],
                fmt([metric(e, "td_final") for e in evs], 3, sci=True),
                fmt([metric(e, "td_heldout") for e in evs], 3, sci=True),
                fmt([metric(e, "ret_r2") for e in evs]),
                fmt([metric(e, "rew_r2") for e in evs]),
                *(fmt([metric(e, "ratio", s) for e in evs], 2) for s in noisy_sigmas),
                fmt([metric(e, "wall") for e in evs], 0),
                fmt([metric(e, "ups") for e in evs], 1),
            ]
        )
    caption = (
        f"Per arm, seed(s) {', '.join(map(str, seeds))} (mean ± sd when several): online-network "
        "parameters (all, active per token), training TD loss (last logs), held-out TD loss "
        "(eval mode), probe R² of the frozen torso, held-out TD loss under pixel noise σ ÷ "
        "clean, wall time and median update rate."
    )
    return table(caption, header, rows)


def robustness_table(results: dict, arms: list[str], seed: int, sigmas: list[float]) -> str:
    header = ["arm", "held-out TD σ=0", "95% CI low", "95% CI high"]
    for s in sigmas[1:]:
        header += [f"ratio σ={s:g}", f"σ={s:g} CI low", f"σ={s:g} CI high", f"drift σ={s:g}"]
    rows = []
    for arm in arms:
        r = results[arm][seed]["robustness"]
        row = [arm, fmt(r["td"]["0.0"], 3, sci=True)]
        row += [fmt(v, 3, sci=True) for v in r["td_heldout_ci"]]
        for s in sigmas[1:]:
            row += [fmt(r["ratio"][str(s)], 2), *(fmt(v, 2) for v in r["ratio_ci"][str(s)])]
            row.append(fmt(r["drift"][str(s)]))
        rows.append(row)
    caption = (
        f"Robustness, seed {seed}: clean held-out TD loss, its ratio under pixel noise σ and the "
        "features' relative drift |φ(noisy s) − φ(s)| / |φ(s)|; bootstrap 95% CIs over transitions."
    )
    return table(caption, header, rows)


def routing_table(results: dict, arms: list[str], seed: int, sigma: float) -> str:
    header = [
        "arm",
        "setting",
        "dropped assignments (clean)",
        "held-out TD σ=0",
        f"held-out TD σ={sigma:g}",
        f"ratio σ={sigma:g}",
        "capacity artefact",
    ]
    rows = []
    for arm in arms:
        r = results[arm][seed].get("routing")
        for k in ("eval", "train", "eval_nocap") if r else ():
            c, n = r[k]["0.0"], r[k][str(sigma)]
            tds = [fmt(c["td"], 3, sci=True), fmt(n["td"], 3, sci=True), fmt(n["td"] / c["td"], 2)]
            rows.append([arm, k, fmt(c["dropped"]), *tds, r["artefact"]])
    caption = (
        f"Routing of the top-k MoE arms, seed {seed}: eval mode (as reported), router noise on "
        "(train), eval mode with no capacity limit; artefact: eval TD > 1.25 × no-limit TD."
    )
    return table(caption, header, rows)


def scale_table(results: dict, arms: list[str], seed: int) -> str:
    header = [
        "arm",
        "mean abs(Q) at init",
        "feature norm at init",
        "feature norm, final",
        "mean Q(s,a), final",
        "indicator fire rate, final",
        "TD loss, first log",
        "TD loss, final",
    ]
    rows = []
    for arm in arms:
        e = results[arm][seed]
        rows.append(
            [
                arm,
                fmt(e["init"]["q_abs"]),
                fmt(e["init"]["feat_norm"], 2),
                fmt(e["robustness"]["feat_norm"], 2),
                fmt(e["last_log"].get("q_mean"), 2),
                fmt(e["last_log"].get("fire_mean")),
                fmt(e["td_first"], 3, sci=True),
                fmt(e["td_final"], 3, sci=True),
            ]
        )
    caption = (
        f"Scale, seed {seed}: the network at initialisation (rebuilt from the seed) and after "
        "training (last log; feature norm on held-out states)."
    )
    return table(caption, header, rows)


def yardstick_table(results: dict, ref_seeds: list[int], sigmas: list[float]) -> str:
    top = sigmas[-1]
    header = [
        f"{REFERENCE} seed",
        "TD train (final)",
        "TD held out",
        "probe R² return",
        "probe R² reward",
        f"TD ratio σ={top:g}",
        f"drift σ={top:g}",
    ]
    rows = []
    for s in ref_seeds:
        e = results[REFERENCE][s]
        rows.append(
            [
                s,
                fmt(metric(e, "td_final"), 3, sci=True),
                fmt(metric(e, "td_heldout"), 3, sci=True),
                fmt(metric(e, "ret_r2")),
                fmt(metric(e, "rew_r2")),
                fmt(metric(e, "ratio", top), 2),
                fmt(metric(e, "drift", top)),
            ]
        )
    return table(f"Seed yardstick: {REFERENCE} per seed.", header, rows)


def reference_table(res: dict[str, Any]) -> str:
    d, t, p, f = res["data"], res["timing"], res["random_probe"], res["reference"]
    header = [
        "logged steps",
        "episodes",
        "checkpoint capacity",
        "collect s",
        "pretrain s",
        "evaluate s",
        "floor: probe R² return",
        "floor: probe R² reward",
        "probe states",
        "fire rate f",
        "½f(1−f)",
        "γ",
        "f/(1−γ)",
    ]
    row = [
        d["steps"],
        d["episodes"],
        d["capacity"],
        *(fmt(t[k], 0) for k in ("collect_s", "pretrain_s", "evaluate_s")),
        fmt(p["return_r2"]),
        fmt(p["reward_r2"]),
        p["states"],
        fmt(f["fire_rate"]),
        fmt(f["blind_td"], 4),
        f["gamma"],
        fmt(f["fixed_point"], 2),
    ]
    caption = (
        f"Setup: `{res['command']}` on the log of `{d['command']}`; probe floor: the nature torso "
        "at random init; f: the indicators' mean fire rate over the arms' last logs, ½f(1−f) the "
        "TD loss of an input-blind net, f/(1−γ) the successor measures' fixed point."
    )
    return table(caption, header, [row])


def plot_curves(results: dict, arms: list[str], seeds: list[int], ref_seeds, path: Path) -> None:
    plt = pyplot()
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
    save_figure(fig, path)


def plot_robustness(results: dict, arms: list[str], seed: int, ref_seeds, sigmas, path) -> None:
    plt = pyplot()
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
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    st = run_arms(
        args,
        REFERENCE,
        arm_overrides,
        lambda run_dir, ds_eval, batch, wall: evaluate_run(args, run_dir, ds_eval, batch, wall),
    )
    results, seed, arms = st.results, args.seeds[0], args.arms
    log("probe floor: random-init torso")
    t0 = time.perf_counter()
    rand_probe = random_probe(args, st.ds_eval)
    evs = [results[a][s] for a, s in st.plan]
    timing = {
        "collect_s": float(st.summary["wall_s"]),
        "pretrain_s": float(sum(e["wall_s"] for e in evs)),
        "evaluate_s": float(sum(e["eval_s"] for e in evs) + time.perf_counter() - t0),
    }
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    plot_curves(results, arms, args.seeds, st.ref_seeds, docs / "study_optim_moe_td_curves.png")
    plot_robustness(
        results, arms, seed, st.ref_seeds, args.sigmas, docs / "study_optim_moe_robustness.png"
    )
    gamma = float(OmegaConf.load(st.out / "runs" / f"{arms[0]}_s{seed}" / "config.yaml").data.gamma)
    fire = [results[a][seed]["last_log"].get("fire_mean") for a in arms]
    f = float(np.mean([x for x in fire if x is not None] or [np.nan]))
    timing["invocation_s"] = time.perf_counter() - st.t_start
    res = {
        "args": vars(args),
        "command": command_line("study_optim_moe.py", argv),
        "data": st.summary,
        "random_probe": rand_probe,
        "reference": {
            "fire_rate": f,
            "blind_td": 0.5 * f * (1 - f),
            "gamma": gamma,
            "fixed_point": f / (1 - gamma),
        },
        "results": keyed(results),
        "timing": timing,
    }
    tables = [
        reference_table(res),
        main_table(results, arms, args.seeds, args.sigmas),
        robustness_table(results, arms, seed, args.sigmas),
        routing_table(results, arms, seed, args.sigmas[-1]),
        scale_table(results, arms, seed),
    ]
    if len(st.ref_seeds) > 1:
        tables.append(yardstick_table(results, st.ref_seeds, args.sigmas))
    title = "Adam vs Adan, dense vs SMoE / MomentumSMoE / AdamSMoE / Soft MoE"
    path = write_results(docs, "study_optim_moe", "study_optim_moe.py", title, tables, res, st.out)
    print(path.read_text())
    log(f"done in {timing['invocation_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
