"""Score reporting: human normalisation and aggregate metrics with stratified bootstrap CIs.

Follows Agarwal et al. (2021), "Deep RL at the Edge of the Statistical Precipice" (the
``rliable`` package), for a score matrix of shape ``(runs, games)``:

* IQM: the mean of the middle 50% of all run-game scores (``scipy.stats.trim_mean`` with
  proportion 0.25 on the flattened matrix: ``int(0.25 n)`` scores cut from each end);
* median and mean: of the per-game mean scores;
* 95% CIs: percentile intervals over stratified bootstrap replicates, each resampling the runs
  of every game with replacement independently.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from functools import cache
from importlib.resources import files

import numpy as np


@cache
def reference_scores() -> dict[str, tuple[float, float]]:
    """``{game: (random, human)}`` for the 57 ALE games (see ``data/atari57_scores.csv``)."""
    text = files("agents").joinpath("data/atari57_scores.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {r["game"]: (float(r["random"]), float(r["human"])) for r in rows}


def human_normalized(game: str, score: float) -> float:
    """``(score - random) / (human - random)``; NaN for a game outside the table."""
    ref = reference_scores().get(game)
    if ref is None:
        return float("nan")
    random, human = ref
    return (score - random) / (human - random)


def iqm(scores: np.ndarray) -> float:
    x = np.sort(np.asarray(scores, np.float64).ravel())
    cut = int(0.25 * len(x))
    return float(x[cut : len(x) - cut].mean())


def median_of_means(scores: np.ndarray) -> float:
    return float(np.median(np.asarray(scores).mean(axis=0)))


def mean_of_means(scores: np.ndarray) -> float:
    return float(np.asarray(scores).mean(axis=0).mean())


AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "IQM": iqm,
    "median": median_of_means,
    "mean": mean_of_means,
}


def stratified_bootstrap_ci(
    scores: np.ndarray,
    fn: Callable[[np.ndarray], float],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of ``fn`` over bootstrap replicates that resample runs within each game."""
    scores = np.asarray(scores, np.float64)
    runs, games = scores.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    cols = np.arange(games)
    for b in range(reps):
        idx = rng.integers(0, runs, size=(runs, games))
        stats[b] = fn(scores[idx, cols])
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def aggregate(scores: np.ndarray, reps: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """IQM, median and mean of a ``(runs, games)`` matrix, each with its 95% CI."""
    out = {}
    for name, fn in AGGREGATES.items():
        lo, hi = stratified_bootstrap_ci(scores, fn, reps, seed=seed)
        out[name] = {"value": fn(scores), "ci_low": lo, "ci_high": hi}
    return out
