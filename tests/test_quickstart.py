"""``pvn quickstart`` (what ``make demo`` runs), with tiny budgets."""

from __future__ import annotations

import json

import pytest
import torch

from pvn.checkpoint import list_checkpoints, load_checkpoint
from pvn.cli import main
from pvn.commands.quickstart import verdict


@pytest.mark.slow
def test_quickstart_runs_collect_pretrain_evaluate_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PVN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "qs"
    args = [
        "quickstart",
        "game=Breakout",
        "steps=800",
        "pretrain_steps=120",
        "eval_steps=300",
        "eval_seeds=[0,1]",
        "eval_episodes=2",
        "eval_max_steps=200",
        "num_envs=2",
        f"out={out}",
        "progress=false",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "[1/4] collecting" in text and "[2/4] pretraining" in text
    assert "[3/4] linear control" in text and "R^2 return-to-go" in text
    assert "final evaluation (2 episodes)" in text  # scored by greedy episodes, as the paper
    assert "feature srank" in text and "PVN vs random features" in text
    assert (out / "report" / "report.md").exists()
    for m in ("pvn", "random"):
        for s in (0, 1):
            assert (out / f"eval_{m}_s{s}" / "results.json").exists()
    assert "| Breakout | pvn | 2 |" in (out / "report" / "report.md").read_text()
    assert "indicators fire on" in text and "srank" in text
    assert list_checkpoints(out / "pvn")[-1].name == "ckpt_000000120.pt"
    # the runs play side by side in worker processes; each equals the same run made alone
    alone = tmp_path / "alone"
    same = ["game=Breakout", "steps=300", "num_envs=2", "seed=1", "eval_preset=short",
            "protocol=dopamine", "eval_episodes=2", "eval_max_steps=200", "eval_first=false",
            "agent.lr=0.001", "agent.feature_norm=true", "checkpoint_every=0", "progress=false",
            "threads.intra_op=1", "threads.envpool=1"]  # fmt: skip
    assert main(["evaluate", f"encoder={out / 'pvn'}", f"run_dir={alone}", *same]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (alone, out / "eval_pvn_s1"))
    assert a["episodes"] == b["episodes"] and a["evaluations"] == b["evaluations"]
    nets = [load_checkpoint(list_checkpoints(d)[-1])["agent"] for d in (alone, out / "eval_pvn_s1")]
    for k, v in nets[0]["network"].items():
        assert torch.equal(v, nets[1]["network"][k]), k
    assert main([*args[:-3], "eval_seeds=[3]", *args[-3:]]) == 0  # previous output replaced
    assert sorted(p.name for p in out.glob("eval_*")) == ["eval_pvn_s3", "eval_random_s3"]


def test_a_stopped_quickstart_says_it_starts_over(tmp_path, stop_after_first_log):
    """SIGTERM during the demo's pretraining: exit 75, and the line says that running it again
    starts the demo over (it does: it clears its output first), not that it resumes."""
    out = tmp_path / "qs"
    args = ["quickstart", "game=Breakout", "steps=800", "pretrain_steps=5000", "num_envs=2",
            f"out={out}", "progress=false"]  # fmt: skip
    rc, err = stop_after_first_log(args, out / "pvn")
    assert rc == 75, err
    assert err.strip().splitlines()[-1] == (
        "pvn: quickstart stopped by a signal; run again to start it over"
    )


def test_quickstart_refuses_a_bad_preset_before_writing(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "eval_preset=fast", f"out={out}", "progress=false"]) == 2
    assert "eval_preset" in capsys.readouterr().err
    assert not out.exists()


def test_verdict_pairs_seeds_by_hand():
    final = {("pvn", 0): 2.0, ("random", 0): -4.0, ("pvn", 1): -1.0, ("random", 1): 0.0}
    line = verdict(final, [0, 1])
    assert "seed 0: +2.0 vs -4.0" in line and "seed 1: -1.0 vs +0.0" in line
    assert "PVN ahead in 1 of 2 seeds, mean gap +2.5" in line  # ((2+4) + (-1-0)) / 2
    assert "(per seed -1.0 to +6.0)" in line and "does not separate" in line
    final[("pvn", 1)] = 0.5
    # two of two seeds one way: chance alone does that half the time (2 * 0.5^2)
    assert verdict(final, [0, 1]).endswith("PVN ahead in every seed (sign test p = 0.5 at 2 seeds)")
    final[("pvn", 2)], final[("random", 2)] = -3.0, -1.0
    assert "ahead in 2 of 3 seeds" in verdict(final, [0, 1, 2])
    final[("pvn", 2)] = 3.0
    assert verdict(final, [0, 1, 2]).endswith("(sign test p = 0.25 at 3 seeds)")
    final = {("pvn", 0): -2.0, ("random", 0): -1.0}
    assert verdict(final, [0]).endswith(
        "one seed is not a comparison (run more: eval_seeds=[0,1,2,3,4])"
    )
    assert "no finished episodes" in verdict({("pvn", 0): None, ("random", 0): 1.0}, [0])
    final = {("pvn", 0): 1.0, ("random", 0): 0.0, ("pvn", 1): 2.0, ("random", 1): None}
    assert "(seeds [1] left out: a run with no finished episode)" in verdict(final, [0, 1])
