"""``pvn report RUN_DIR...``: tables, CSV and curves from ``pvn evaluate`` runs.

Per game and method: the final score, averaged over seeds, and its human-normalised value; the
best (highest rolling mean over ``window`` training episodes). A run is scored as the paper
scores it, by the mean return of its final greedy evaluation (``eval_episodes`` episodes after
the last step), when it has one; otherwise by the mean of its last ``window`` training episodes.
The report says which. Across games: IQM, median and mean of human-normalised final scores
with stratified-bootstrap 95% CIs (:mod:`pvn.analysis.scores`), per method.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pvn import plots
from pvn.analysis.scores import aggregate, human_normalized
from pvn.errors import ConfigError


def load_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    try:
        res = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (is {run_dir} a `pvn evaluate` run dir?)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    for key in ("game", "seed", "episodes"):
        if key not in res:
            raise ConfigError(f"{path}: no '{key}' entry")
    from pvn.builders import method_of

    res.setdefault("method", method_of(str(res.get("encoder"))))
    return res


def final_and_best(returns: list[float], window: int) -> tuple[float, float]:
    r = np.asarray(returns, np.float64)
    if len(r) == 0:
        return float("nan"), float("nan")
    w = min(window, len(r))
    rolling = np.convolve(r, np.ones(w) / w, mode="valid")
    return float(r[-w:].mean()), float(rolling.max())


def final_score(run: dict[str, Any], window: int = 10) -> tuple[float, str]:
    """A run's score and what it is: the mean return of its final evaluation (one run after
    the last step), else the mean of its last ``window`` training episodes."""
    final = [e for e in run.get("evaluations") or [] if e["step"] >= run.get("steps", math.inf)]
    if final and final[-1]["returns"]:
        returns = final[-1]["returns"]
        return float(np.mean(returns)), f"final evaluation ({len(returns)} episodes)"
    score, _ = final_and_best([e["return"] for e in run["episodes"]], window)
    return score, f"last {window} training episodes"


def summarize(runs: list[dict[str, Any]], window: int = 10) -> list[dict[str, Any]]:
    """One row per (game, method): seeds, final score (and what it is), best training return,
    final HNS. A run with no finished episode has no score: it is listed in ``unscored`` and
    left out of the row's means (the row says so; with no scored run, the scores are NaN)."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in runs:
        groups[(r["game"], r["method"])].append(r)
    rows = []
    for (game, method), rs in sorted(groups.items()):
        scored = [(r, *final_score(r, window)) for r in rs]
        ok = [(r, f, src) for r, f, src in scored if not np.isnan(f)]
        unscored = sorted(int(r["seed"]) for r, f, _ in scored if np.isnan(f))
        sources = sorted({src for _, _, src in ok})
        by = sources[0] if len(sources) == 1 else "mixed: " + "; ".join(sources)
        if not ok:
            by = "no finished episode"
        elif unscored:
            by += f"; seeds {unscored} left out: no finished episode"
        final = float(np.mean([f for _, f, _ in ok])) if ok else float("nan")
        best = [final_and_best([e["return"] for e in r["episodes"]], window)[1] for r, _, _ in ok]
        rows.append(
            {
                "game": game,
                "method": method,
                "seeds": sorted(int(r["seed"]) for r in rs),
                "unscored": unscored,
                "final_return": final,
                "scored_by": by,
                "best_return": float(np.mean(best)) if ok else float("nan"),
                "final_hns": human_normalized(game, final),
                "per_seed_final_hns": {int(r["seed"]): human_normalized(game, f) for r, f, _ in ok},
            }
        )
    return rows


def warnings(rows: list[dict[str, Any]], matrices: dict[str, np.ndarray]) -> list[str]:
    """What the tables cannot show by themselves: runs without a score, and arms (or games of
    an arm) missing from the aggregates, each with why."""
    out = []
    for r in rows:
        if r["unscored"]:
            k, n = len(r["unscored"]), len(r["seeds"])
            what = "the arm has no score here" if k == n else "scored by the others"
            out.append(f"{r['game']} / {r['method']}: {k} of {n} runs have no finished episode "
                       f"(seeds {r['unscored']}); {what}")  # fmt: skip
    for method in sorted({r["method"] for r in rows}):
        games = sorted({r["game"] for r in rows if r["method"] == method})
        if method not in matrices:
            out.append(f"{method}: left out of the aggregates: no seed has a score on every "
                       f"game ({', '.join(games)})")  # fmt: skip
        elif matrices[method].shape[1] < len(games):
            out.append(f"{method}: aggregates over {matrices[method].shape[1]} of {len(games)} "
                       "games (the others have no score)")  # fmt: skip
    return out


def hns_matrices(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per method: the ``(seeds, games)`` matrix of final human-normalised scores, over the
    seeds present in every game of that method (games outside the table are left out)."""
    out = {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method and not np.isnan(r["final_hns"])]
        if not mine:
            continue
        seeds = sorted(set.intersection(*(set(r["per_seed_final_hns"]) for r in mine)))
        if seeds:
            out[method] = np.array([[r["per_seed_final_hns"][s] for r in mine] for s in seeds])
    return out


def aggregates(rows: list[dict[str, Any]], reps: int = 50_000) -> dict[str, dict]:
    """Per method: IQM/median/mean of final HNS over its (seeds x games) matrix with CIs."""
    return {
        m: {"games": x.shape[1], "seeds": x.shape[0], **aggregate(x, reps)}
        for m, x in hns_matrices(rows).items()
    }


def improvements(
    matrices: dict[str, np.ndarray],
) -> list[tuple[str, float, float, float, int]]:
    """P(X > Y) with its 95% CI for every ordered pair of methods on the same games (PVN
    first when present), and the fewer seeds of the two."""
    from pvn.plots import probability_of_improvement_ci

    order = sorted(matrices, key=lambda m: (m != "pvn", m))
    rows = []
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            if matrices[a].shape[1] == matrices[b].shape[1]:
                p, lo, hi = probability_of_improvement_ci(matrices[a], matrices[b])
                n = min(len(matrices[a]), len(matrices[b]))
                rows.append((f"P({a} > {b})", p, lo, hi, n))
    return rows


def _num(x: float, digits: int) -> str:
    return "—" if np.isnan(x) else f"{x:.{digits}f}"


def _interval(value: float, lo: float, hi: float, n: int, digits: int = 3) -> str:
    """``value [lo, hi]``, or ``value (n=1: no interval)``: a bootstrap over one run per game
    resamples nothing, and a zero-width interval would overstate."""
    if n < 2:
        return f"{value:.{digits}f} (n={n}: no interval)"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(rows: list[dict[str, Any]], aggs: dict[str, dict]) -> str:
    lines = [
        "| game | method | seeds | final score | scored by | best training return | final HNS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['game']} | {r['method']} | {len(r['seeds'])} | {_num(r['final_return'], 1)} | "
            f"{r['scored_by']} | {_num(r['best_return'], 1)} | {_num(r['final_hns'], 3)} |"
        )
    if aggs:
        lines += [
            "",
            "| method | games x seeds | IQM [95% CI] | median [95% CI] | mean [95% CI] |",
            "|---|---|---|---|---|",
        ]
        for m, a in aggs.items():
            cells = [
                _interval(a[k]["value"], a[k]["ci_low"], a[k]["ci_high"], a["seeds"])
                for k in ("IQM", "median", "mean")
            ]
            lines.append(f"| {m} | {a['games']} x {a['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probes(
    run_dirs: list[str], data: str | Path, methods: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Offline linear probes of each method's frozen encoder (its first run's) on the log
    ``data``; end-to-end runs have no frozen encoder (their torso trains with the agent) and are
    not probed. ``methods``: each run's label (default: its results' method)."""
    import torch
    from omegaconf import OmegaConf

    from pvn.analysis.probes import linear_probes, probe_targets
    from pvn.builders import encoder_for
    from pvn.replay import DQNReplayDataset

    ds = DQNReplayDataset(data)
    targets = probe_targets(ds)  # the same states for every method
    out: dict[str, dict[str, Any]] = {}
    methods = methods or [load_results(d)["method"] for d in run_dirs]
    for d, method in zip(run_dirs, methods, strict=True):
        if method not in out:
            cfg = OmegaConf.load(Path(d) / "config.yaml")
            encoder = encoder_for(cfg, torch.device("cpu"))
            if encoder is not None:
                out[method] = linear_probes(encoder, ds, targets=targets)
    return out


def probes_markdown(table: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| method | probe states | R^2 return-to-go | R^2 next reward | feature srank | dormant |",
        "|---|---|---|---|---|---|",
    ]
    for m, p in table.items():
        lines.append(
            f"| {m} | {p['states']} | {p['return_r2']:.3f} | {p['reward_r2']:.3f} "
            f"| {p['srank']} | {p['dormant']:.2f} |"
        )
    return "\n".join(lines)


def report(
    run_dirs: list[str],
    out_dir: str | Path = "report",
    window: int = 10,
    data: str | Path | None = None,
    methods: list[str] | None = None,
) -> str:
    """Write ``report.md``, ``report.csv`` and ``curves.png`` under ``out_dir`` (and, with a
    dataset, the offline probes); return the Markdown. ``methods``: a label per run, the group
    it is reported in (an experiment's arm: two PVN arms pretrained differently stay apart);
    by default each run's method (pvn, random, dqn)."""
    if not run_dirs:
        raise ConfigError("pvn report: give one or more `pvn evaluate` run dirs")
    runs = [load_results(d) for d in run_dirs]
    if methods is not None:
        for r, m in zip(runs, methods, strict=True):
            r["method"] = m
    rows = summarize(runs, window)
    aggs = aggregates(rows)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out}: could not be created ({e.strerror or e})") from None
    matrices = hns_matrices(rows)
    notes = warnings(rows, matrices)
    for note in notes:
        print(f"pvn report: warning: {note}", file=sys.stderr)
    text = markdown(rows, aggs)
    if notes:
        text = "**Warnings**\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n" + text
    figures = {"curves.png": "returns during training, per game"}
    pairs = improvements(matrices)
    if pairs:
        text += "\n\n| probability of improvement | estimate [95% CI] |\n|---|---|\n"
        text += "\n".join(f"| {k} | {_interval(p, lo, hi, n, 2)} |" for k, p, lo, hi, n in pairs)
        plots.plot_improvement([pair[:4] for pair in pairs], out / "probability_of_improvement.png")
        figures["probability_of_improvement.png"] = "probability of improvement"
    if matrices:
        plots.plot_profiles(matrices, out / "performance_profile.png")
        plots.plot_iqm_curve(runs, out / "iqm_curve.png")
        figures["performance_profile.png"] = "performance profiles (final human-normalised score)"
        figures["iqm_curve.png"] = "IQM human-normalised score during training"
    if data is not None:
        table = probes(run_dirs, data, [r["method"] for r in runs])
        text += "\n\nOffline linear probes on held-out logged episodes:\n\n" + probes_markdown(
            table
        )
        (out / "probes.json").write_text(json.dumps(table, indent=1))
    text += "\n\n" + "\n\n".join(f"![{what}]({name})" for name, what in figures.items())
    (out / "report.md").write_text(text + "\n")
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        keys = ["game", "method", "seeds", "final_return", "scored_by", "best_return", "final_hns"]
        w.writerow(keys)
        for r in rows:
            w.writerow([len(r[k]) if k == "seeds" else r[k] for k in keys])
    plots.plot_curves(runs, out / "curves.png")
    return text
