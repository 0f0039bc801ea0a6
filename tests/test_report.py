"""Score normalisation, aggregate metrics and ``pvn report`` against hand computations."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from agents.scores import (
    human_normalized,
    iqm,
    mean_of_means,
    median_of_means,
    reference_scores,
    stratified_bootstrap_ci,
)
from pvn.cli import main


def test_reference_table_and_normalisation():
    table = reference_scores()
    assert len(table) == 57 and table["Pong"] == (-20.7, 14.6) and table["Breakout"] == (1.7, 30.5)
    assert human_normalized("Pong", -20.7) == 0.0
    assert human_normalized("Pong", 14.6) == pytest.approx(1.0)
    assert human_normalized("Breakout", 16.1) == pytest.approx(14.4 / 28.8)
    assert np.isnan(human_normalized("NotAGame", 3.0))


def test_aggregates_by_hand():
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])  # (runs, games)
    assert iqm(scores) == 4.5  # 8 scores, 2 cut from each end: mean(3, 4, 5, 6)
    assert iqm(np.arange(10.0)) == 4.5  # int(2.5) = 2 cut each end: mean(2..7)
    assert median_of_means(scores) == 4.5  # per-game means 3, 4, 5, 6
    assert mean_of_means(scores) == 4.5
    assert median_of_means(np.array([[0.0, 10.0, 1.0]])) == 1.0


def test_stratified_bootstrap_ci():
    # no spread between runs: every replicate equals the point estimate
    same = np.tile([[0.2, 0.9, 0.4]], (4, 1))
    assert stratified_bootstrap_ci(same, mean_of_means, reps=200) == pytest.approx((0.5, 0.5))
    # one game, two runs a < b: replicate means are a, (a+b)/2, b with odds 1:2:1, so the
    # 2.5th and 97.5th percentiles are a and b
    lo, hi = stratified_bootstrap_ci(np.array([[1.0], [3.0]]), mean_of_means, reps=4000)
    assert (lo, hi) == (1.0, 3.0)
    # resampling stays within each game: a game's column never borrows another's values
    two = np.array([[0.0, 100.0], [0.0, 100.0]])
    assert stratified_bootstrap_ci(two, lambda m: float(m[:, 0].max()), reps=100) == (0.0, 0.0)


def _write_run(path, game, method, seed, returns):
    path.mkdir(parents=True)
    eps = [{"return": r, "step": 100 * (i + 1)} for i, r in enumerate(returns)]
    (path / "results.json").write_text(
        json.dumps(
            {
                "game": game,
                "seed": seed,
                "steps": 100 * len(returns),
                "encoder": "random" if method == "random" else "x",
                "method": method,
                "episodes": eps,
            }
        )
    )
    return str(path)


def test_report_end_to_end(tmp_path, capsys):
    runs = []
    for seed in range(3):
        runs.append(_write_run(tmp_path / f"p{seed}", "Pong", "pvn", seed, [-21, -20, -19 + seed]))
        runs.append(_write_run(tmp_path / f"r{seed}", "Pong", "random", seed, [-21, -21, -21]))
        runs.append(_write_run(tmp_path / f"b{seed}", "Breakout", "pvn", seed, [1, 2, 3 + seed]))
        runs.append(_write_run(tmp_path / f"c{seed}", "Breakout", "random", seed, [1, 1, 1]))
    out = tmp_path / "rep"
    assert main(["report", *runs, "--out", str(out), "--window", "2"]) == 0
    with open(out / "report.csv") as f:
        rows = {(r["game"], r["method"]): r for r in csv.DictReader(f)}
    # pvn on Pong: seeds' last-2 means are -19.5, -19, -18.5 -> final -19.0; best = final here
    assert float(rows[("Pong", "pvn")]["final_return"]) == pytest.approx(-19.0)
    assert float(rows[("Pong", "pvn")]["final_hns"]) == pytest.approx((-19.0 + 20.7) / 35.3)
    assert float(rows[("Breakout", "random")]["best_return"]) == 1.0
    text = (out / "report.md").read_text()
    assert "| Pong | pvn | 3 |" in text and "IQM [95% CI]" in text
    # pvn's IQM over the (3 seeds x 2 games) HNS matrix, by hand
    pong = [(f + 20.7) / 35.3 for f in (-19.5, -19.0, -18.5)]
    brk = [(f - 1.7) / 28.8 for f in (2.5, 3.0, 3.5)]
    hand = float(np.sort(pong + brk)[1:5].mean())  # 6 scores, int(1.5) = 1 cut each end
    assert f"| pvn | 2 x 3 | {hand:.3f} [" in text
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "final return" in capsys.readouterr().out


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json: missing" in capsys.readouterr().err
