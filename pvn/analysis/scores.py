"""Score reporting: human normalisation and aggregate metrics with stratified bootstrap CIs.

Follows Agarwal et al. (2021), "Deep RL at the Edge of the Statistical Precipice" (the
``rliable`` package), for a score matrix of shape ``(runs, games)``:

* IQM: the mean of the middle 50% of all run-game scores (``scipy.stats.trim_mean`` with
  proportion 0.25 on the flattened matrix: ``int(0.25 n)`` scores cut from each end);
* median and mean: of the per-game mean scores;
* 95% CIs: percentile intervals over stratified bootstrap replicates, each resampling the runs
  of every game with replacement independently;
* the probability of improvement of one method over another (Mann-Whitney per game).

``tests/test_official_parity.py`` checks every one against ``rliable`` on the same matrices.
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
    text = files("pvn.analysis").joinpath("data/atari57_scores.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {r["game"]: (float(r["random"]), float(r["human"])) for r in rows}


def human_normalized(game: str, score: float) -> float:
    """The human-normalised score ``(score - random) / (human - random)``.

    Args:
        game: CamelCase ALE game (the Atari-57 table of random and human scores).
        score: a raw game score.

    Returns:
        The normalised score; NaN for a game outside the table.
    """
    ref = reference_scores().get(game)
    if ref is None:
        return float("nan")
    random, human = ref
    return (score - random) / (human - random)


def iqm(scores: np.ndarray) -> np.ndarray | float:
    """Interquartile mean of the last two axes (runs, games) together; leading axes batch."""
    x = np.asarray(scores, np.float64)
    x = np.sort(x.reshape(*x.shape[:-2], -1) if x.ndim >= 2 else x, axis=-1)
    cut = int(0.25 * x.shape[-1])
    return _scalar(x[..., cut : x.shape[-1] - cut].mean(axis=-1))


def median_of_means(scores: np.ndarray) -> np.ndarray | float:
    """Median over games of the per-game mean over runs."""
    return _scalar(np.median(np.asarray(scores, np.float64).mean(axis=-2), axis=-1))


def mean_of_means(scores: np.ndarray) -> np.ndarray | float:
    """Mean over games of the per-game mean over runs."""
    return _scalar(np.asarray(scores, np.float64).mean(axis=-2).mean(axis=-1))


def _scalar(x: np.ndarray) -> np.ndarray | float:
    return float(x) if np.ndim(x) == 0 else x


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y): per game, the probability that a run of X beats a run of Y (ties count half,
    the Mann-Whitney U statistic over ``n_x n_y``), averaged over games (Agarwal et al. 2021).

    Args:
        x: scores of method X, ``(runs_x, games)``.
        y: scores of method Y, ``(runs_y, games)``.

    Returns:
        The probability of improvement of X over Y, in [0, 1].
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    diff = x[:, None, :] - y[None, :, :]  # (runs_x, runs_y, games)
    per_game = ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(0, 1))
    return float(per_game.mean())


AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray | float]] = {
    "IQM": iqm,
    "median": median_of_means,
    "mean": mean_of_means,
}


def stratified_bootstrap_ci(
    scores: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray | float],
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 5_000,
) -> tuple[float, float]:
    """Percentile CI of ``fn`` over bootstrap replicates that resample runs within each game
    (rliable's ``StratifiedBootstrap`` with its default 50,000 replicates). ``fn`` takes a stack
    of replicates ``(reps, runs, games)`` and returns one value per replicate."""
    scores = np.asarray(scores, np.float64)
    runs, games = scores.shape
    rng = np.random.default_rng(seed)
    cols = np.arange(games)
    stats = []
    for start in range(0, reps, chunk):
        idx = rng.integers(0, runs, size=(min(chunk, reps - start), runs, games))
        stats.append(np.asarray(fn(scores[idx, cols])).reshape(-1))
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(np.concatenate(stats), [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def aggregate(scores: np.ndarray, reps: int = 50_000, seed: int = 0) -> dict[str, dict[str, float]]:
    """IQM, median and mean of a ``(runs, games)`` matrix, each with its 95% CI (stratified
    bootstrap over runs within games, as rliable computes them; Agarwal et al. 2021).

    Args:
        scores: normalised scores, ``(runs, games)``.
        reps: bootstrap resamples.
        seed: the bootstrap's seed.

    Returns:
        ``{"iqm" | "median" | "mean": {"value", "ci_low", "ci_high"}}``.
    """
    out = {}
    for name, fn in AGGREGATES.items():
        lo, hi = stratified_bootstrap_ci(scores, fn, reps, seed=seed)
        out[name] = {"value": fn(scores), "ci_low": lo, "ci_high": hi}
    return out
