"""``pvn quickstart``: the embedded default pipeline, runnable on a laptop CPU in minutes.

Collect a small DQN-Replay-format log with a random policy; pretrain a small PVN on it; fit a
linear Q head online on the frozen PVN features and on random features of the same torso, for a
few seeds each; report both, with offline linear probes on the collected log, and say per seed
which came out ahead (the budgets and their evidence: ``docs/study_quickstart_boxing.md``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from omegaconf import DictConfig

from pvn.commands.collect import collect
from pvn.commands.data import format_summary
from pvn.commands.evaluate import evaluate
from pvn.commands.pretrain import pretrain
from pvn.commands.report import final_score, load_results, report
from pvn.config import configure
from pvn.errors import require
from pvn.metrics import read_metrics
from pvn.preemption import Preempted
from pvn.replay.summary import summarize
from pvn.run_dir import save_config
from pvn.threads import settle


def quickstart(cfg) -> None:
    out = Path(cfg.out)
    data_dir, run_dir = out / "data", out / "pvn"
    seeds = [int(s) for s in cfg.eval_seeds]
    require(len(seeds) > 0, "eval_seeds", seeds, "name at least one seed")
    require(len(set(seeds)) == len(seeds), "eval_seeds", seeds, "seeds must differ")
    # the evaluation's preset is checked before anything is written
    configure("evaluate", eval_preset=cfg.eval_preset, encoder="random", run_dir="x")
    encoders = {"pvn": run_dir, "random": "random"}
    evals = {(m, s): out / f"eval_{m}_s{s}" for s in seeds for m in encoders}
    for d in out.glob("eval_*"):
        shutil.rmtree(d)
    for d in (data_dir, run_dir, out / "report"):
        if d.exists():
            shutil.rmtree(d)
    _collect(cfg, data_dir)
    _pretrain(cfg, data_dir, run_dir)
    print(
        f"\n[3/4] linear control for {cfg.eval_steps} steps on frozen PVN and random features, "
        f"seeds {seeds} (eval_preset={cfg.eval_preset}, head lr {cfg.lr}, features "
        f"{'scaled to unit mean norm' if cfg.feature_norm else 'unscaled'}, protocol "
        f"{cfg.protocol}), each scored by {cfg.eval_episodes} greedy episodes after its last step"
    )
    runs = {key: _evaluation(cfg, str(encoders[key[0]]), run, key[1])
            for key, run in evals.items()}  # fmt: skip
    final: dict[tuple[str, int], float] = {}
    for (name, seed), episodes in _linear_control(runs, cfg.progress).items():
        score, scored_by = final_score(load_results(evals[name, seed]))
        final[name, seed] = None if math.isnan(score) else score
        print(f"      {name} seed {seed}: {episodes} training episodes; {scored_by}: {score:.1f}")
    print("\n[4/4] report (and offline linear probes on the collected log)\n")
    print(report([str(d) for d in evals.values()], out / "report", data=data_dir))
    print("\n" + verdict(final, seeds))
    print(f"\nfiles: {out / 'report'} (report.md, report.csv, curves.png, probes.json)")
    save_config(cfg, out)


def _collect(cfg, data_dir: Path) -> None:
    """Step 1: the random-policy log, and its summary."""
    print(f"[1/4] collecting {cfg.steps} random-policy steps of {cfg.game} into {data_dir}")
    summary = collect(
        _planned(
            "collect",
            game=cfg.game,
            steps=cfg.steps,
            out=str(data_dir),
            num_envs=cfg.num_envs,
            seed=cfg.seed,
            progress=cfg.progress,
        )
    )
    print(
        f"      {summary['episodes']} episodes, mean return {summary['return_mean']}, "
        f"{summary['steps_per_second']} steps/s\n"
    )
    print(format_summary(summarize(data_dir)), "\n")


def _pretrain(cfg, data_dir: Path, run_dir: Path) -> None:
    """Step 2: the PVN, and what its last logs say about the tasks and the features."""
    print(f"[2/4] pretraining a PVN for {cfg.pretrain_steps} updates into {run_dir}")
    pcfg = _planned(
        "pretrain",
        data={"path": str(data_dir)},
        run_dir=str(run_dir),
        steps=cfg.pretrain_steps,
        seed=cfg.seed,
        checkpoint_every=cfg.pretrain_steps,
        td={"center": cfg.center},
        progress=cfg.progress,
    )
    try:
        m = pretrain(pcfg)
    except Preempted:  # its pretraining checkpointed, but the demo starts over when run again
        raise Preempted("quickstart stopped by a signal; run again to start it over") from None
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


def _evaluation(cfg, encoder: str, run: Path, seed: int) -> dict:
    """Step 3's ``pvn evaluate`` values for one encoder and seed."""
    return dict(
        encoder=encoder,
        game=cfg.game,
        steps=cfg.eval_steps,
        num_envs=cfg.num_envs,
        run_dir=str(run),
        seed=seed,
        eval_preset=cfg.eval_preset,
        protocol=cfg.protocol,
        eval_episodes=cfg.eval_episodes,
        eval_max_steps=cfg.eval_max_steps,
        eval_first=False,  # scored by the final evaluation alone
        agent={"lr": cfg.lr, "feature_norm": cfg.feature_norm},
        checkpoint_every=0,
    )


def _linear_control(runs: dict[tuple[str, int], dict], progress: bool) -> dict:
    """Run the online evaluations (``pvn evaluate`` configs by (encoder, seed)), side by side in
    worker processes, one per core: a linear-control run keeps about one core busy (its
    encoder's forward pass and the emulators take turns), so on 2 cores two runs at once take
    about the time of one. Each worker's thread plan is the one a run gets on its core share
    (on 2 cores the same as run alone: one learner thread, one emulator thread), so the results
    are those of the runs made one after another. Returns each run's training-episode count,
    in the order of ``runs``."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    from pvn.progress import bar
    from pvn.threads import available_cores

    workers = max(1, min(len(runs), available_cores()))
    share = max(1, available_cores() // workers)
    total = sum(v["steps"] for v in runs.values())
    episodes: dict[tuple[str, int], int] = {}
    # spawn: a forked child of a process that ran OpenMP regions can hang in its first one
    with (
        ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool,
        bar(total, f"linear control ({workers} at once)", "step", progress) as pbar,
    ):
        todo = {pool.submit(_evaluate_one, values, share): key for key, values in runs.items()}
        while todo:
            done, _ = wait(todo, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                episodes[todo.pop(future)] = future.result()
            pbar.update(sum(_steps_done(v["run_dir"]) for v in runs.values()) - pbar.n)
    return {key: episodes[key] for key in runs}


def _evaluate_one(values: dict, cores: int) -> int:
    """One ``pvn evaluate`` run in a worker process, with the thread plan of its core share."""
    return int(evaluate(_planned("evaluate", cores, progress=False, **values))["episodes"])


def _steps_done(run_dir: str) -> int:
    """The agent steps a running evaluation has logged (its ``metrics.jsonl``; 0 before)."""
    try:
        logs = read_metrics(run_dir)
    except (OSError, ValueError):  # not started, or a line being written
        return 0
    return int(logs[-1]["step"]) if logs else 0


def _planned(command: str, cores: int | None = None, **values) -> DictConfig:
    """``command``'s config with its thread plan decided and applied (:func:`pvn.threads.settle`),
    as the CLI does for a command run on its own: each step gets its own plan (the emulators'
    threads while collecting, the learner's while pretraining) and subnormal floats flushed;
    ``cores``: the share of a command run beside others (default: all available)."""
    sub = configure(command, **values)
    settle(sub, command, cores=cores)
    return sub


def verdict(final: dict[tuple[str, int], float | None], seeds: list[int]) -> str:
    """One line per seed pair, a tally and what it establishes: same seed, same envs, same head
    init, the encoder is the only difference (a paired comparison; the bootstrap CIs above are
    over seeds). The encoders count as separated only when every seed's gap has the same sign;
    a mean over a few seeds whose gaps disagree says nothing (the mean of -6 and +8 is +1)."""
    pairs = [(s, final["pvn", s], final["random", s]) for s in seeds]
    pairs = [(s, p, r) for s, p, r in pairs if p is not None and r is not None]
    if not pairs:
        return "PVN vs random features: no finished episodes to compare (raise eval_steps)"
    unpaired = [s for s in seeds if s not in {p[0] for p in pairs}]
    gaps = [p - r for _, p, r in pairs]
    ahead = sum(g > 0 for g in gaps)
    per_seed = ", ".join(f"seed {s}: {p:+.1f} vs {r:+.1f}" for s, p, r in pairs)
    if len(pairs) == 1:
        reading = "one seed is not a comparison (run more: eval_seeds=[0,1,2,3,4])"
    elif all(g > 0 for g in gaps) or all(g < 0 for g in gaps):
        winner = "PVN" if gaps[0] > 0 else "random features"
        # the exact two-sided sign test: how often chance alone orders every pair one way
        p = min(1.0, 2 * 0.5 ** len(gaps))
        reading = f"{winner} ahead in every seed (sign test p = {p:.2g} at {len(gaps)} seeds)"
    else:
        reading = (
            "the gaps differ in sign across seeds, so this budget does not separate the encoders "
            "(README: what `make demo` shows, and how to scale it up)"
        )
    if unpaired:
        reading += f" (seeds {unpaired} left out: a run with no finished episode)"
    return (
        f"PVN vs random features (final score, paired by seed): {per_seed}; PVN ahead in "
        f"{ahead} of {len(pairs)} seeds, mean gap {sum(gaps) / len(gaps):+.1f} (per seed "
        f"{min(gaps):+.1f} to {max(gaps):+.1f}): {reading}"
    )
