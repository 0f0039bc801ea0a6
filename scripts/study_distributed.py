"""Multi-worker pretraining studies: the numbers go to ``docs/study_distributed_results.json``
(all of them) and ``docs/study_distributed_tables.md`` (plain tables), the figures to
``docs/study_distributed_{noniid,robust}.png``; ``docs/study_distributed.md`` is written by hand
from them.

A. **Non-IID (workers on different games).** 4 simulated workers, two on Pong and two on
   Breakout (``distributed.partition=games``: one shared torso, each game its own head and task
   nets), trained on checkpoint 0 of each game's log with ddp (plain SGD, no momentum, on the
   averaged gradient), fedavg (``fedavg_m`` with beta = 1), fedavg_m, scaffold_m and their VR
   versions.
   Measured: each game's training TD loss (last logs), its held-out TD loss on checkpoint 1, the
   offline linear probes of the shared torso on each game's checkpoint 1, bytes sent per worker.
B. **Robustness.** 5 workers on Pong (IID shards), worker 4 Byzantine, f = 1: every attack x
   every aggregation rule, plus each rule without attack. Measured: the honest workers' final TD
   loss relative to the same rule's attack-free run, and how many Byzantine vectors the honest
   workers' averaging kept.

Every run is ``python -m pvn pretrain ...`` with one torch thread, two at a time; finished runs
are reused when the script is re-run with the same --out (``--force`` redoes them). The default
budget takes about 30 minutes on 2 CPU cores.

    python scripts/study_distributed.py [--out /tmp/pvn_study_distributed] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study import (
    HELDOUT_CKPT,
    REPO,
    TRAIN_CKPT,
    collect_data,
    env,
    fmt,
    log,
    pyplot,
    save_figure,
    table,
    write_results,
)

from pvn.analysis.heldout import heldout_batch, heldout_losses
from pvn.metrics import read_metrics

GAMES = ["Pong", "Breakout"]
NONIID = {  # arm: overrides
    "ddp": ["distributed=ddp", "optimizer=sgd", "optimizer.momentum=0.0"],
    "fedavg": ["distributed=fedavg_m", "distributed.beta=1.0"],
    "fedavg_m": ["distributed=fedavg_m"],
    "scaffold_m": ["distributed=scaffold_m"],
    "fedavg_m_vr": ["distributed=fedavg_m_vr"],
    "scaffold_m_vr": ["distributed=scaffold_m_vr"],
}
AGGREGATORS = ["dsgd", "monna", "trimmed_mean", "median"]
ATTACKS = ["none", "sign_flip", "alie", "foe", "gaussian", "reward_flip"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/pvn_study_distributed"))
    ap.add_argument(
        "--docs",
        type=Path,
        default=REPO / "docs",
        help="where study_distributed_tables.md, study_distributed_results.json and the PNGs go",
    )
    ap.add_argument("--collect-steps", type=int, default=12_000, help="agent steps per game log")
    ap.add_argument("--steps", type=int, default=1500, help="updates per non-IID run")
    ap.add_argument("--local-steps", type=int, default=8, help="K of the fedavg-style rules")
    ap.add_argument("--robust-steps", type=int, default=200, help="updates per robustness run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.5, help="local SGD step size of every rule")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--heldout", type=int, default=1024, help="held-out transitions per game")
    ap.add_argument("--probe-states", type=int, default=2000)
    ap.add_argument("--force", action="store_true")
    return ap.parse_args(argv)


def run(run_dir: Path, overrides: list[str], force: bool) -> Path:
    """``pvn pretrain`` into ``run_dir`` (skipped when a finished run is there)."""
    done = run_dir / "study_done.json"
    if done.is_file() and not force:
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "pvn", "pretrain", f"run_dir={run_dir}", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    failed = proc.stderr.decode().strip().splitlines()[-1:] if proc.returncode else []
    wall = time.perf_counter() - t0
    done.write_text(json.dumps({"wall_s": wall, "overrides": overrides, "failed": failed}))
    log(f"done {run_dir.name} ({wall:.0f} s){' FAILED: ' + failed[0] if failed else ''}")
    return run_dir


def last_mean(recs: list[dict], key: str, n: int = 3) -> float:
    vals = [r[key] for r in recs if key in r]
    return float(np.mean(vals[-n:])) if vals else float("nan")


def torso_grad(learner, batch, n: int = 256) -> torch.Tensor:
    """The shared torso's TD-loss gradient on ``n`` held-out transitions of one game."""
    b = type(batch)(*(t[:n] for t in batch[:5]))
    learner.online.zero_grad(set_to_none=True)
    with torch.no_grad():
        tasks = learner.tasks(b.observation, b.reward)
        y = learner.td_targets(tasks.rewards, b.next_observation, b.terminal)
    q, _ = learner.online(b.observation)
    learner.td_loss(q, b.action, y).backward()
    return torch.cat([p.grad.reshape(-1) for p in learner.online.torso.parameters()])


def worker_learner(run_dir: Path, wid: int, games: int):
    """Worker ``wid``'s learner at the run's final checkpoint (its game's head and tasks)."""
    from omegaconf import OmegaConf

    from pvn.checkpoint import load_checkpoint, resolve_checkpoint
    from pvn.pretraining import PretrainConfig, build
    from pvn.settings import section

    cfg = OmegaConf.load(run_dir / "config.yaml")
    state = load_checkpoint(resolve_checkpoint(run_dir))
    mine = next(s["learner"] for s in state["workers"] if s["id"] == wid)
    num_actions = mine["online"]["head.weight"].shape[0] // int(cfg.tasks.num_tasks)
    learner = build(
        section(PretrainConfig, cfg),
        num_actions,
        task_seed=int(cfg.seed) + 7919 * (wid % games + 1),
    )
    learner.load_state_dict(mine)
    learner.online.eval()
    return learner


def common(args, steps: int) -> list[str]:
    """Overrides every run of the study shares."""
    return [
        f"data.checkpoints=[{TRAIN_CKPT}]",
        f"data.cache_dir={args.out / 'cache'}",
        f"steps={steps}",
        f"batch_size={args.batch_size}",
        "log_every=20",
        f"checkpoint_every={max(steps // 4, 1)}",
        "progress=false",
    ]


def run_all(args, root: Path, arms: dict) -> dict:
    """Every arm's run (``args.jobs`` at a time): arm -> run directory."""
    names = list(arms)
    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = pool.map(lambda a: run(root / a.replace("|", "-"), arms[a], args.force), names)
        return dict(zip(names, dirs, strict=True))


def study_noniid(args, logs: dict[str, Path]) -> dict:
    from pvn import load_encoder
    from pvn.analysis.probes import linear_probes
    from pvn.replay import DQNReplayDataset

    base = [
        f"data.path=[{','.join(str(logs[g]) for g in GAMES)}]",
        *common(args, args.steps),
        "distributed.workers=2",
        "distributed.partition=games",
        f"optimizer.lr={args.lr}",
    ]
    fed = [f"optimizer.lr={args.lr}", f"distributed.local_steps={args.local_steps}"]
    fed.append(f"distributed.server_lr={args.lr * args.local_steps}")  # FedAvg's average
    arms = {a: base + o + ([] if a == "ddp" else fed) for a, o in NONIID.items()}
    dirs = run_all(args, args.out / "noniid", arms)
    held = {}
    for g in GAMES:
        cache = args.out / "cache"
        ds = DQNReplayDataset(logs[g], checkpoints=[HELDOUT_CKPT], cache_dir=cache)
        both = DQNReplayDataset(logs[g], cache_dir=cache)
        held[g] = (ds, heldout_batch(both, HELDOUT_CKPT, args.heldout))
    results = {}
    for arm, run_dir in dirs.items():
        recs = read_metrics(run_dir)
        res = {"curves": {}, "train_td": {}, "heldout_td": {}, "probes": {}, "grads": {}}
        res["failed"] = json.loads((run_dir / "study_done.json").read_text())["failed"]
        drift = [r.get("workers/dist_to_honest_mean_0", 0.0) for r in recs]
        drift = [d for d in drift if d > 0]  # logs mid-round (0 at round ends and for ddp)
        res["drift"] = float(np.mean(drift)) if drift else 0.0
        for gi, g in enumerate(GAMES):
            keys = [f"workers/td_loss_{gi}"]
            steps = [r["step"] for r in recs if keys[0] in r]
            curve = np.nanmean([[r.get(k, np.nan) for r in recs if keys[0] in r] for k in keys], 0)
            res["curves"][g] = {"step": steps, "td": curve.tolist()}
            res["train_td"][g] = float(np.mean(curve[-3:]))
            learner = worker_learner(run_dir, gi, 2)
            losses = heldout_losses(learner, held[g][1])
            res["heldout_td"][g] = losses["td"]
            res.setdefault("floor", {})[g] = losses["const"]
            res["grads"][g] = torso_grad(learner, held[g][1])
            res["probes"][g] = linear_probes(
                load_encoder(run_dir), held[g][0], max_states=args.probe_states
            )
        a, b = (res["grads"].pop(g) for g in GAMES)
        res["grad_cos"] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        res["bytes_per_update"] = last_mean(recs, "comm_bytes_per_worker", 1) / args.steps
        results[arm] = res
        log(f"{arm}: {json.dumps({k: res[k] for k in ('train_td', 'heldout_td')})}")
    return results


def study_robust(args, logs: dict[str, Path]) -> dict:
    base = [
        f"data.path={logs['Pong']}",
        *common(args, args.robust_steps),
        "distributed.workers=5",
        f"optimizer.lr={args.lr}",
    ]
    arms = {}
    for rule in AGGREGATORS:
        for attack in ATTACKS:
            o = [f"distributed={rule}", "distributed.f=1"]
            if attack != "none":
                o += ["distributed.byzantine=[4]", f"distributed.attack={attack}"]
            arms[f"{rule}|{attack}"] = base + o
    dirs = run_all(args, args.out / "robust", arms)
    honest = {arm: honest_mean(run_dir) for arm, run_dir in dirs.items()}
    out = {}
    for arm, run_dir in dirs.items():
        recs = read_metrics(run_dir)
        clean = honest[arm.split("|")[0] + "|none"]
        x0 = honest_mean(run_dir, initial=True)
        out[arm] = {
            "td": last_mean(recs, "td_loss"),
            "kept": last_mean(recs, "byzantine_kept", 5),
            "deflection": float((honest[arm] - clean).norm() / (clean - x0).norm()),
            "failed": json.loads((run_dir / "study_done.json").read_text())["failed"],
        }
    return out


def honest_mean(run_dir: Path, initial: bool = False, honest=(0, 1, 2, 3)) -> torch.Tensor:
    """Workers 0-3's mean parameter vector at the end (or the common one at initialisation)."""
    from omegaconf import OmegaConf

    from pvn.checkpoint import load_checkpoint, resolve_checkpoint
    from pvn.pretraining import PretrainConfig, build
    from pvn.settings import section

    state = load_checkpoint(resolve_checkpoint(run_dir))
    if initial:
        cfg = OmegaConf.load(run_dir / "config.yaml")
        net = build(section(PretrainConfig, cfg), int(state["meta"]["num_actions"])).online
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    vecs = []
    for s in state["workers"]:
        if s["id"] in honest:
            vecs.append(torch.cat([v.reshape(-1) for v in s["learner"]["online"].values()]))
    return torch.stack(vecs).mean(0)


def noniid_table(noniid: dict) -> str:
    g0, g1 = GAMES
    header = ["rule"]
    for g in GAMES:
        header += [f"{g} TD train", f"{g} TD held out", f"{g} best constant"]
    for g in GAMES:
        header += [f"{g} probe R² return", f"{g} probe R² reward"]
    header += ["drift", "grad cos", "MB sent / worker / update", "failed"]
    rows = []
    for arm, r in noniid.items():
        row = [arm]
        for g in GAMES:
            row += [fmt(r["train_td"][g], 4), fmt(r["heldout_td"][g], 4), fmt(r["floor"][g], 4)]
        for g in GAMES:
            row += [fmt(r["probes"][g]["return_r2"], 2), fmt(r["probes"][g]["reward_r2"], 2)]
        row += [fmt(r["drift"], 3), fmt(r["grad_cos"], 3), fmt(r["bytes_per_update"] / 1e6, 2)]
        rows.append([*row, "; ".join(r.get("failed") or []) or "—"])
    caption = (
        f"A. Per rule (workers 0: {g0}, 1: {g1}): each game's TD loss, training (last 3 logs) and "
        "held out, the best per-task constant's held-out loss, probe R² of the shared torso, "
        "worker 0's mid-round drift, the games' torso-gradient cosine, traffic."
    )
    return table(caption, header, rows)


def robust_table(robust: dict) -> str:
    header = ["rule", "attack", "TD (last 3 logs)", "÷ attack-free TD", "deflection"]
    header += ["Byzantine kept", "failed"]
    rows = []
    for rule in AGGREGATORS:
        clean = robust[f"{rule}|none"]["td"]
        for a in ATTACKS:
            r = robust[f"{rule}|{a}"]
            row = [rule, a, fmt(r["td"], 4), fmt(r["td"] / clean, 2), fmt(r["deflection"], 2)]
            rows.append([*row, fmt(r["kept"], 1), "; ".join(r.get("failed") or []) or "—"])
    caption = (
        "B. Per rule and attack (worker 4 of 5 Byzantine): the honest workers' TD loss, that ÷ "
        "the rule's attack-free run, deflection of their mean model (÷ the attack-free run's "
        "travel), Byzantine vectors kept per honest worker and update (MoNNA); —: not finite."
    )
    return table(caption, header, rows)


def setup_table(args, data: dict) -> str:
    header = ["game", "logged steps", "episodes", "checkpoint capacity", "collect s"]
    rows = [
        [g, d["steps"], d["episodes"], d["capacity"], fmt(d["wall_s"], 0)] for g, d in data.items()
    ]
    caption = (
        f"Logs (`{data[GAMES[0]]['command']}`, the same per game); A: {args.steps} updates, "
        f"K = {args.local_steps}; B: {args.robust_steps} updates; batch {args.batch_size}, "
        f"local SGD step {args.lr}, {args.heldout} held-out transitions per game."
    )
    return table(caption, header, rows)


def plots(noniid: dict, robust: dict, docs: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    for ax, g in zip(axes, GAMES, strict=True):
        for arm, r in noniid.items():
            c = r["curves"][g]
            ax.plot(c["step"], c["td"], label=arm)
        ax.set(title=f"{g} workers: training TD loss", xlabel="update", yscale="log")
    axes[0].legend(fontsize=8)
    save_figure(fig, docs / "study_distributed_noniid.png")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    grid = np.array([[robust[f"{r}|{a}"]["deflection"] for a in ATTACKS[1:]] for r in AGGREGATORS])
    im = ax.imshow(np.log10(grid + 1e-3), cmap="RdYlGn_r", vmin=-2, vmax=1)
    ax.set_xticks(range(len(ATTACKS) - 1), ATTACKS[1:])
    ax.set_yticks(range(len(AGGREGATORS)), AGGREGATORS)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            label = "diverged" if grid[i, j] != grid[i, j] else f"{grid[i, j]:.2f}"
            ax.text(j, i, label, ha="center", va="center", fontsize=8)
    fig.colorbar(im, label="log10 deflection")
    ax.set_title("Deflection of the honest models by one Byzantine worker of five")
    save_figure(fig, docs / "study_distributed_robust.png")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    data, logs = {}, {}
    for g in GAMES:
        ns = SimpleNamespace(game=g, collect_steps=args.collect_steps)
        data[g] = collect_data(ns, args.out / f"data_{g}")
        logs[g] = args.out / f"data_{g}" / "replay_logs"
    noniid = study_noniid(args, logs)
    robust = study_robust(args, logs)
    args.docs.mkdir(parents=True, exist_ok=True)
    plots(noniid, robust, args.docs)
    tables = [setup_table(args, data), noniid_table(noniid), robust_table(robust)]
    res = {"args": vars(args), "data": data, "noniid": noniid, "robust": robust}
    title = "Multi-worker pretraining: non-IID games and Byzantine workers"
    path = write_results(
        args.docs, "study_distributed", "study_distributed.py", title, tables, res, args.out
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
