"""``pvn quickstart`` (what ``make demo`` runs), with tiny budgets."""

from __future__ import annotations

from pvn.checkpoint import list_checkpoints
from pvn.cli import main


def test_quickstart_runs_collect_then_pretrain(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PVN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "qs"
    args = [
        "quickstart",
        "game=Breakout",
        "steps=800",
        "pretrain_steps=120",
        "eval_steps=300",
        "num_envs=2",
        f"out={out}",
        "progress=false",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "[1/4] collecting" in text and "[2/4] pretraining" in text
    assert "[3/4] linear control" in text and "R^2 return-to-go" in text
    assert (out / "report" / "report.md").exists() and (
        out / "eval_random" / "results.json"
    ).exists()
    assert "indicators fire on" in text and "srank" in text
    assert list_checkpoints(out / "pvn")[-1].name == "ckpt_000000120.pt"
    assert main(args) == 0  # re-runnable: the previous demo output is replaced
