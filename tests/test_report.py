"""Score normalisation, aggregate metrics and ``pvn report`` against hand computations."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pvn.analysis.scores import (
    human_normalized,
    iqm,
    mean_of_means,
    median_of_means,
    reference_scores,
    stratified_bootstrap_ci,
)
from pvn.cli import main
from tests.test_pretrain import log_dir  # noqa: F401 (fixture)


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
    assert stratified_bootstrap_ci(two, lambda m: m[..., 0].max(-1), reps=100) == (0.0, 0.0)


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
    assert "final score" in capsys.readouterr().out
    assert "| last 2 training episodes |" in text


def test_report_scores_by_the_final_evaluation(tmp_path):
    """A run with a greedy evaluation after its last step is scored by that evaluation's mean
    return, not by its training episodes, and the report says which rule scored each row."""
    run = tmp_path / "e"
    _write_run(run, "Pong", "pvn", 0, [-21, -21, -21])
    res = json.loads((run / "results.json").read_text())
    res["evaluations"] = [
        {"step": 0, "returns": [-21.0, -21.0]},
        {"step": res["steps"], "returns": [-10.0, -12.0, -14.0]},
    ]
    (run / "results.json").write_text(json.dumps(res))
    plain = _write_run(tmp_path / "t", "Pong", "random", 0, [-20, -19, -18])
    out = tmp_path / "rep"
    assert main(["report", str(run), plain, "--out", str(out)]) == 0
    with open(out / "report.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(rows["pvn"]["final_return"]) == -12.0
    assert rows["pvn"]["scored_by"] == "final evaluation (3 episodes)"
    assert float(rows["random"]["final_return"]) == -19.0
    assert rows["random"]["scored_by"] == "last 10 training episodes"
    assert "| final evaluation (3 episodes) |" in (out / "report.md").read_text()


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json: missing" in capsys.readouterr().err


def test_run_curve_of_training_episodes_is_a_running_mean_without_gaps():
    from pvn import plots

    run = {"steps": 400, "episodes": [{"step": s, "return": r} for s, r in
                                      [(50, 1.0), (120, 3.0), (130, 5.0), (390, 7.0)]]}  # fmt: skip
    x, y = plots.run_curve(run, window=2)
    assert len(x) == plots.GRID and x[-1] == 400
    at = dict(zip(x.tolist(), y.tolist(), strict=True))
    assert np.isnan(at[10.0])  # before the first episode
    assert at[50.0] == 1.0 and at[120.0] == 2.0  # mean of (1, 3)
    assert at[380.0] == 4.0 and at[390.0] == 6.0  # last two: (3, 5), then (5, 7)
    evals = {**run, "evaluations": [{"step": 0, "returns": [0, 2]}, {"step": 400, "returns": [4]}]}
    x, y = plots.run_curve(evals)
    assert x.tolist() == [0, 400] and y.tolist() == [1.0, 4.0]


def test_performance_profile_by_hand():
    from pvn.plots import performance_profile

    scores = np.array([[0.1, 0.5], [0.3, 0.9]])  # 2 runs x 2 games
    frac, lo, hi = performance_profile(scores, np.array([0.0, 0.2, 0.6, 1.0]), reps=500)
    assert frac.tolist() == [1.0, 0.75, 0.25, 0.0]
    assert (lo <= frac + 1e-12).all() and (hi >= frac - 1e-12).all()


def test_report_draws_profiles_and_probability_of_improvement(tmp_path):
    runs = []
    for seed in range(3):
        for game, lo in (("Pong", -21), ("Breakout", 1)):
            runs.append(_write_run(tmp_path / f"p{game}{seed}", game, "pvn", seed,
                                   [lo + 5, lo + 6 + seed]))  # fmt: skip
            runs.append(_write_run(tmp_path / f"r{game}{seed}", game, "random", seed, [lo, lo]))
    out = tmp_path / "rep"
    assert main(["report", *runs, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| P(pvn > random) | 1.00 [1.00, 1.00] |" in text  # pvn beats random in every pair
    for png in ("curves", "iqm_curve", "performance_profile", "probability_of_improvement"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_probes_skip_end_to_end_runs(tmp_path, log_dir):  # noqa: F811
    """An experiment's report probes each arm's frozen encoder; an end-to-end DQN run has none
    (its torso trains with the agent) and is left out rather than crashing the report."""
    from pvn.commands.report import probes
    from pvn.config import load_config
    from pvn.run_dir import save_config

    dirs = []
    for enc in ("e2e", "random"):
        run = tmp_path / enc
        _write_run(run, "Breakout", "dqn" if enc == "e2e" else "random", 0, [1, 2])
        save_config(load_config("evaluate", [f"encoder={enc}", f"run_dir={run}"]), run)
        dirs.append(str(run))
    table = probes(dirs, log_dir)
    assert list(table) == ["random"] and table["random"]["states"] > 0


def test_runs_are_reported_under_the_labels_given(tmp_path):
    """An experiment labels each run by its arm: two PVN arms pretrained differently (a knob)
    are two rows and two methods in the aggregate, not one pooled 'pvn'."""
    from pvn.commands.report import report

    runs, labels = [], []
    for seed in range(2):
        for arm, last in (("pvn", 5), ("pvn_tasks100", 9), ("random", 1)):
            method = "random" if arm == "random" else "pvn"
            runs.append(_write_run(tmp_path / f"{arm}{seed}", "Breakout", method, seed, [1, last]))
            labels.append(arm)
    text = report(runs, tmp_path / "rep", methods=labels)
    rows = [line for line in text.splitlines() if line.startswith("| Breakout |")]
    assert [r.split("|")[2].strip() for r in rows] == ["pvn", "pvn_tasks100", "random"]
    # means of the last 10 (here both) training episodes: (1 + 5) / 2, (1 + 9) / 2, 1
    assert [float(r.split("|")[4]) for r in rows] == [3.0, 5.0, 1.0]
    assert "| P(pvn > pvn_tasks100) | 0.00 [0.00, 0.00] |" in text
    with pytest.raises(ValueError):
        report(runs, tmp_path / "rep2", methods=labels[:-1])


def test_report_help_names_every_option_and_output_and_bad_flags_are_one_line(capsys):
    from pvn.cli import main

    assert main(["report", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("--out", "--window", "--data", "report.md", "report.csv", "curves.png",
                 "iqm_curve.png", "performance_profile.png", "probability_of_improvement.png",
                 "probes.json"):  # fmt: skip
        assert word in text, word
    for args, needle in ((["r", "--window", "abc"], "--window 'abc'"),
                         (["r", "--bogus"], "unknown option --bogus"),
                         (["r", "--out"], "--out needs a value")):  # fmt: skip
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_an_arm_without_a_finished_episode_is_shown_and_warned(tmp_path, capsys):
    """A run that never finished an episode has no score: its row says so, the terminal and
    report.md warn, and the arm is named as left out of the aggregates, never dropped."""
    runs = [_write_run(tmp_path / f"p{s}", "Pong", "pvn", s, [-21, -20, -19]) for s in (0, 1)]
    runs += [_write_run(tmp_path / f"r{s}", "Pong", "random", s, []) for s in (0, 1)]
    runs += [_write_run(tmp_path / "d0", "Pong", "dqn", 0, [-20, -20]),
             _write_run(tmp_path / "d1", "Pong", "dqn", 1, [])]  # fmt: skip
    out = tmp_path / "rep"
    assert main(["report", *runs, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    text = (out / "report.md").read_text()
    for where in (err, text):
        assert "Pong / random: 2 of 2 runs have no finished episode" in where
        assert "random: left out of the aggregates" in where
        assert (
            "Pong / dqn: 1 of 2 runs have no finished episode (seeds [1]); scored by the" in where
        )
    assert "| Pong | random | 2 | — | no finished episode | — | — |" in text
    assert "| Pong | dqn | 2 | -20.0 | last 10 training episodes; seeds [1] left out" in text
    with open(out / "report.csv") as f:
        methods = [r["method"] for r in csv.DictReader(f)]
    assert sorted(methods) == ["dqn", "pvn", "random"]


def test_one_seed_prints_no_interval_and_many_seeds_do(tmp_path):
    one = [_write_run(tmp_path / f"{m}{g}", g, m, 0, [1, 2, 3 + i])
           for i, (m, g) in enumerate([("pvn", "Pong"), ("pvn", "Breakout"), ("random", "Pong"),
                                       ("random", "Breakout")])]  # fmt: skip
    assert main(["report", *one, "--out", str(tmp_path / "one")]) == 0
    text = (tmp_path / "one" / "report.md").read_text()
    agg = [
        line for line in text.splitlines() if line.startswith(("| pvn | 2 x 1", "| random | 2 x 1"))
    ]
    assert len(agg) == 2 and all(line.count("(n=1: no interval)") == 3 for line in agg)
    assert not any("[" in line for line in agg)
    assert "| P(pvn > random) | 0.00 (n=1: no interval) |" in text  # random higher on both
    for fig in ("curves.png", "performance_profile.png", "iqm_curve.png",
                "probability_of_improvement.png"):  # fmt: skip
        assert f"]({fig})" in text and (tmp_path / "one" / fig).exists()
    many = [_write_run(tmp_path / f"m{m}{s}", "Pong", m, s, [-21, -20, -19 + s + (m == "pvn")])
            for m in ("pvn", "random") for s in range(3)]  # fmt: skip
    assert main(["report", *many, "--out", str(tmp_path / "many")]) == 0
    text = (tmp_path / "many" / "report.md").read_text()
    assert "no interval" not in text and "| pvn | 1 x 3 | " in text


def test_profile_thresholds_follow_the_scores():
    from pvn.plots import profile_taus

    taus = profile_taus({"a": np.array([[0.010, 0.030]]), "b": np.array([[0.020, 0.025]])})
    assert taus[0] == pytest.approx(0.009) and taus[-1] == pytest.approx(0.031)
