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
    print(
        f"\n[3/4] linear control for {cfg.eval_steps} steps on frozen PVN and random features, "
        f"seeds {seeds} (eval_preset={cfg.eval_preset}, head lr {cfg.lr}, features "
        f"{'scaled to unit mean norm' if cfg.feature_norm else 'unscaled'}, protocol "
        f"{cfg.protocol}), each scored by {cfg.eval_episodes} greedy episodes after its last step"
    )
    final: dict[tuple[str, int], float] = {}
    for (name, seed), run in evals.items():
        r = evaluate(
            _planned(
                "evaluate",
                encoder=str(encoders[name]),
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
                progress=cfg.progress,
            )
        )
        score, scored_by = final_score(load_results(run))
        final[name, seed] = None if math.isnan(score) else score
        print(
            f"      {name} seed {seed}: {r['episodes']} training episodes; {scored_by}: {score:.1f}"
        )
    print("\n[4/4] report (and offline linear probes on the collected log)\n")
    print(report([str(d) for d in evals.values()], out / "report", data=data_dir))
    print("\n" + verdict(final, seeds))
    print(f"\nfiles: {out / 'report'} (report.md, report.csv, curves.png, probes.json)")
    save_config(cfg, out)


def _planned(command: str, **values) -> DictConfig:
    """``command``'s config with its thread plan decided and applied (:func:`pvn.threads.settle`),
    as the CLI does for a command run on its own: each step gets its own plan (the emulators'
    threads while collecting, the learner's while pretraining) and subnormal floats flushed."""
    sub = configure(command, **values)
    settle(sub, command)
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
