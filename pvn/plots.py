"""The report's pictures, drawn as rliable draws them (Agarwal et al. 2021).

* ``curves.png``: per game, each method's return against agent steps, a line through every
  point with a shaded 95% CI of the mean over seeds. A run's points are its greedy evaluations
  when it has two or more; otherwise its training episodes as a running mean of the last 10
  finished episodes on a fixed grid of steps, so the line has no gaps.
* ``iqm_curve.png``: the human-normalised IQM over all runs and games against the fraction of
  training done, with its stratified-bootstrap 95% CI band.
* ``performance_profile.png``: the fraction of runs (all games) whose final human-normalised
  score exceeds tau, with CI bands.
* ``probability_of_improvement.png``: P(X > Y) for each pair of methods, with 95% CIs.
* ``pretraining_td_<game>.png``: an experiment's pretraining arms' training TD loss.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pvn.analysis.scores import human_normalized, iqm, probability_of_improvement

GRID = 40  # points per curve


def run_curve(run: dict[str, Any], window: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, returns)`` of one run: its evaluations (mean return of each) when it has at
    least two; else the mean of its last ``window`` training episodes at ``GRID`` evenly
    spaced steps (NaN before its first finished episode)."""
    evals = run.get("evaluations") or []
    if len(evals) >= 2:
        steps = np.array([e["step"] for e in evals], np.float64)
        return steps, np.array([np.mean(e["returns"]) for e in evals], np.float64)
    ends = np.array([e["step"] for e in run["episodes"]], np.float64)
    rets = np.array([e["return"] for e in run["episodes"]], np.float64)
    top = float(run.get("steps") or (ends.max() if len(ends) else 1.0))
    grid = np.linspace(0.0, top, GRID + 1)[1:]
    y = np.full(len(grid), np.nan)
    for i, x in enumerate(grid):
        done = rets[ends <= x]
        if len(done):
            y[i] = done[-window:].mean()
    return grid, y


def _on_grid(runs: list[dict[str, Any]], grid: np.ndarray, fraction: bool) -> np.ndarray:
    """Each run's curve interpolated onto ``grid`` (steps, or fractions of each run's steps);
    NaN before its first point."""
    out = np.full((len(runs), len(grid)), np.nan)
    for i, r in enumerate(runs):
        x, y = run_curve(r)
        keep = ~np.isnan(y)
        if keep.sum() == 0:
            continue
        x, y = x[keep], y[keep]
        if fraction:
            x = x / float(r.get("steps") or x.max() or 1.0)
        vals = np.interp(grid, x, y)
        vals[grid < x[0]] = np.nan
        out[i] = vals
    return out


def mean_ci(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Mean over rows (seeds) per column and its 95% percentile-bootstrap CI (rows resampled)."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns before any run's first point
        mean = np.nanmean(values, axis=0)
        boots = np.nanmean(values[rng.integers(0, n, size=(reps, n))], axis=1)
        lo, hi = np.nanpercentile(boots, [2.5, 97.5], axis=0)
    return mean, lo, hi


def _stratified(scores: np.ndarray, rng: np.random.Generator, reps: int) -> np.ndarray:
    """``reps`` stratified-bootstrap replicates of a ``(runs, games)`` matrix."""
    runs, games = scores.shape
    return scores[rng.integers(0, runs, size=(reps, runs, games)), np.arange(games)]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, x, mid, lo, hi, label: str, n: int) -> None:
    """A line and, over ``n >= 2`` runs, its shaded CI in one colour (one run has no interval:
    the line alone, labelled so)."""
    (line,) = ax.plot(x, mid, label=label if n >= 2 else f"{label}, no band: n=1")
    if n >= 2:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)


def _save(fig, ax, path: Path, xlabel: str, ylabel: str | None = None, legend: bool = True):
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(runs: list[dict[str, Any]], path: Path) -> None:
    """Per game: each method's mean curve over seeds with a shaded 95% CI."""
    plt = _plt()
    games = sorted({r["game"] for r in runs})
    fig, axes = plt.subplots(1, len(games), figsize=(4.5 * len(games), 3.4), squeeze=False)
    for ax, game in zip(axes[0], games, strict=True):
        by_method: dict[str, list] = defaultdict(list)
        for r in runs:
            if r["game"] == game:
                by_method[r["method"]].append(r)
        for method, rs in sorted(by_method.items()):
            top = max(float(r.get("steps") or 1) for r in rs)
            grid = np.linspace(0.0, top, GRID + 1)
            if all(len(r.get("evaluations") or []) >= 2 for r in rs):  # the evaluations' steps
                grid = np.unique(np.concatenate([run_curve(r)[0] for r in rs]))
            curve = mean_ci(_on_grid(rs, grid, fraction=False))
            _band(ax, grid, *curve, f"{method} (n={len(rs)})", len(rs))
        if not any(r["episodes"] or r.get("evaluations") for r in runs if r["game"] == game):
            ax.text(0.5, 0.5, "no finished episode", ha="center", transform=ax.transAxes)
        ax.set_title(game)
        ax.set_xlabel("agent steps")
        ax.set_ylabel("return: mean over seeds\n(band: 95% CI, n >= 2)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _arm_bands(ax, curves: dict[str, list[dict[str, list]]], key: str) -> None:
    """Each arm's ``c[key]`` against ``c["step"]``: the mean over its seeds with a shaded 95%
    CI (``curves``: arm -> one curve per seed)."""
    for arm, runs in curves.items():
        grid = np.unique(np.concatenate([np.asarray(c["step"], np.float64) for c in runs]))
        rows = np.array([np.interp(grid, c["step"], c[key], left=np.nan, right=np.nan)
                         for c in runs])  # fmt: skip
        _band(ax, grid, *mean_ci(rows), f"{arm} (n={len(runs)})" if len(runs) > 1 else arm,
              len(runs))  # fmt: skip


def plot_td_curves(curves: dict[str, list[dict[str, list]]], path: Path, title: str) -> None:
    """Each pretraining arm's logged training TD loss against updates: the mean over its seeds
    with a shaded 95% CI (``curves``: arm -> one ``{"step", "td_loss"}`` per seed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    _arm_bands(ax, curves, "td_loss")
    ax.set_yscale("log")
    ax.set_title(title)
    _save(fig, ax, path, "updates", "training TD loss: mean over seeds\n(band: 95% CI, n >= 2)")


def plot_probe_curves(curves: dict[str, list[dict[str, list]]], path: Path, title: str) -> None:
    """Each pretraining arm's linear probes at its kept checkpoints (step 0: the torso at
    initialisation), side by side: the held-out R² of the return-to-go and of the tasks'
    successor measures, mean over seeds with a shaded 95% CI (``curves``: arm -> one
    ``{"step", "return_r2", "successor_r2"}`` per seed). Still rising at the end: train
    longer."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = {"return_r2": "R² return-to-go", "successor_r2": "R² successor measures"}
    for ax, (key, name) in zip(axes, names.items(), strict=True):
        _arm_bands(ax, curves, key)
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel("updates")
    axes[0].set_ylabel("held-out R²: mean over seeds\n(band: 95% CI, n >= 2)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_deflection(grid: dict[str, dict[str, float | str]], path: Path, title: str) -> None:
    """A heat map of the deflections (rows: the baseline arms; columns: what the arms compared
    with each baseline change, e.g. the attack; a cell without a number says why), log colour
    scale: green where the change left the model where the baseline's run went, red where it
    moved it as far as the whole training did."""
    plt = _plt()
    cols = list(dict.fromkeys(c for row in grid.values() for c in row))
    cells = [[row.get(c, "") for c in cols] for row in grid.values()]
    values = np.array([[v if isinstance(v, float) else np.nan for v in r] for r in cells])
    fig, ax = plt.subplots(figsize=(1.4 * len(cols) + 2.5, 0.6 * len(grid) + 1.6))
    im = ax.imshow(np.log10(values + 1e-3), cmap="RdYlGn_r", vmin=-2, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=20)
    ax.set_yticks(range(len(grid)), list(grid))
    for i, row in enumerate(cells):
        for j, v in enumerate(row):
            number = isinstance(v, float)
            label = v if not number else f"{v:.2f}" if np.isfinite(v) else "not finite"
            ax.text(j, i, label, ha="center", va="center", fontsize=8)
    fig.colorbar(im, label="log10 deflection")
    ax.set_title(title)
    _save(fig, ax, path, "what the arm changes against its baseline", legend=False)


def _hns_matrix(runs: list[dict[str, Any]], scores: dict[int, float]) -> np.ndarray | None:
    """``(seeds, games)`` of ``scores`` (keyed by run index), seeds common to every game."""
    by_game: dict[str, dict[int, float]] = defaultdict(dict)
    for i, r in enumerate(runs):
        v = human_normalized(r["game"], scores[i])
        if not np.isnan(v):
            by_game[r["game"]][int(r["seed"])] = v
    if not by_game:
        return None
    seeds = sorted(set.intersection(*(set(d) for d in by_game.values())))
    if not seeds:
        return None
    return np.array([[by_game[g][s] for g in sorted(by_game)] for s in seeds])


def plot_iqm_curve(runs: list[dict[str, Any]], path: Path, reps: int = 2000) -> None:
    """Human-normalised IQM (all runs and games) against the fraction of training done."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    grid = np.linspace(0.0, 1.0, GRID + 1)[1:]
    rng = np.random.default_rng(0)
    for method in sorted({r["method"] for r in runs}):
        rs = [r for r in runs if r["method"] == method]
        curves = _on_grid(rs, grid, fraction=True)
        points, seeds = [], 0
        for j in range(len(grid)):
            m = _hns_matrix(rs, {i: curves[i, j] for i in range(len(rs))})
            if m is None or np.isnan(m).any():
                points.append((np.nan, np.nan, np.nan))
                continue
            boots = iqm(_stratified(m, rng, reps))
            points.append((iqm(m), *np.percentile(boots, [2.5, 97.5])))
            seeds = max(seeds, len(m))
        _band(ax, grid, *(np.array(p) for p in zip(*points, strict=True)), method, seeds)
    _save(fig, ax, path, "fraction of training", "IQM human-normalised score\n(band: 95% CI)")


def performance_profile(
    scores: np.ndarray, taus: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of runs (all games) with score > tau, and its stratified-bootstrap 95% CI."""
    frac = (scores.reshape(-1, 1) > taus).mean(axis=0)
    boots = _stratified(scores, np.random.default_rng(seed), reps)
    b = (boots.reshape(reps, -1, 1) > taus).mean(axis=1)
    lo, hi = np.percentile(b, [2.5, 97.5], axis=0)
    return frac, lo, hi


def probability_of_improvement_ci(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """P(X > Y) and its 95% CI, X's and Y's runs resampled independently within each game."""
    rng = np.random.default_rng(seed)
    boots = [
        probability_of_improvement(_stratified(x, rng, 1)[0], _stratified(y, rng, 1)[0])
        for _ in range(reps)
    ]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return probability_of_improvement(x, y), float(lo), float(hi)


def profile_taus(matrices: dict[str, np.ndarray], points: int = 60) -> np.ndarray:
    """The performance profile's thresholds: the scores' own range with a 5% margin (scores
    near 0.02 would otherwise be squeezed against a fixed [0, 1] axis)."""
    allv = np.concatenate([m.ravel() for m in matrices.values()])
    lo, hi = float(allv.min()), float(allv.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(0.05 * abs(hi), 0.01)
    return np.linspace(lo - pad, hi + pad, points)


def plot_profiles(matrices: dict[str, np.ndarray], path: Path) -> None:
    plt = _plt()
    taus = profile_taus(matrices)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method, m in sorted(matrices.items()):
        _band(ax, taus, *performance_profile(m, taus), method, len(m))
    _save(fig, ax, path, "human-normalised score tau", "fraction of runs with score > tau")


def plot_improvement(rows: list[tuple[str, float, float, float]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.5 * len(rows)))
    for i, (_, p, lo, hi) in enumerate(rows):
        ax.errorbar(p, i, xerr=[[p - lo], [hi - p]], fmt="o", capsize=4)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlim(0, 1)
    _save(fig, ax, path, "probability of improvement (95% CI)", legend=False)
