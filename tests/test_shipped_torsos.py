"""The pretrained torsos an experiment's results ship (``torsos: true``): each opens with
``pvn.load_encoder``, is what its ``torsos.md`` says (the digest), gives finite features of the
torso's width on real frames, and runs a linear arm through ``pvn evaluate encoder=<file>``."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

import pvn
from pvn.checkpoint import load_checkpoint
from pvn.cli import main
from pvn.encoder import ENCODER_FORMAT

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
SHIPPED = sorted(RESULTS.glob("*/torsos/*.pt"))


@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.parent.name}/{p.stem}" for p in SHIPPED])
def test_a_shipped_torso_loads_and_evaluates(path, ale_episodes, tmp_path):
    state = load_checkpoint(path)
    assert state["format"] == ENCODER_FORMAT and state["game"] == path.stem
    guide = (path.parent.parent / "torsos.md").read_text()
    digest = re.search(rf"`{path.name}` \(sha256 ([0-9a-f]{{16}})…\)", guide).group(1)
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(digest)
    encoder = pvn.load_encoder(path)
    frames = torch.from_numpy(ale_episodes[0][0][:20])  # real Breakout frames, stacked by hand
    obs = torch.stack([frames[i : i + 4] for i in range(16)])
    features = encoder(obs)
    assert features.shape == (16, encoder.feature_dim) and torch.isfinite(features).all()
    assert features.std(dim=0).max() > 0  # not a constant (e.g. all-dead) representation
    run = tmp_path / "run"
    argv = ["evaluate", f"encoder={path}", f"game={path.stem}", f"run_dir={run}", "steps=300",
            "num_envs=2", "agent.min_replay=100", "eval_episodes=1", "eval_max_steps=50",
            "agent.feature_norm=true", "progress=false"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["evaluations"][-1]["step"] == 300
