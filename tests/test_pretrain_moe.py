"""MoE torsos in pretraining: every ``moe=`` option trains every torso (with ``optimizer=adan``),
routing metrics are logged, resume is exact (routing-noise generators are checkpointed) and
``load_encoder`` rebuilds the MoE block."""

from __future__ import annotations

import json

import pytest
import torch

import pvn
from pvn.checkpoint import list_checkpoints, load_checkpoint
from pvn.cli import main
from pvn.config import load_config
from pvn.networks.moe import MoEFeatures, moe_layers
from pvn.pretraining import PretrainConfig, build
from pvn.replay import DQNReplayDataset, Prefetcher
from pvn.settings import section
from tests.test_pretrain import _args, _assert_same, log_dir  # noqa: F401 (fixture)

MOES = ["smoe", "momentum_smoe", "adam_smoe", "soft_moe"]


@pytest.mark.parametrize("torso", ["nature", "impala"])
def test_every_moe_option_trains_with_adan(log_dir, torso):  # noqa: F811
    ds = DQNReplayDataset(log_dir, cache_dir=log_dir.parent / "cache")
    with Prefetcher(ds, 4) as batches:
        for moe in MOES:
            overrides = [f"torso={torso}", f"moe={moe}", "optimizer=adan", "data.path=x"]
            overrides += ["run_dir=x", "tasks.num_tasks=10", "td.warmup_steps=0"]
            learner = build(
                section(PretrainConfig, load_config("pretrain", overrides)), num_actions=4
            )
            block = learner.online.torso.blocks["features"]
            assert isinstance(block, MoEFeatures)
            experts = [p for n, p in block.named_parameters() if "experts" in n]
            before = [p.detach().clone() for p in experts]
            for step in range(2):
                m = learner.update(next(batches), step)
                assert torch.isfinite(m["loss"]), moe
            assert "moe_router_entropy" in m and "moe_aux_loss" in m
            assert all(not torch.equal(b, p) for b, p in zip(before, experts, strict=True))
            q, feats = learner.online(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))
            assert q.shape == (2, 10, 4) and feats.shape == (2, 512)


def test_moe_run_logs_routing_resumes_exactly_and_loads(log_dir, tmp_path):  # noqa: F811
    extra = ["moe=smoe", "steps=20", "checkpoint_every=10"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(_args(log_dir, full, *extra)) == 0
    records = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert {"moe_load_max", "moe_dropped_frac", "moe_router_entropy"} <= set(records[-1])
    # stop at 10, resume to 20: equal, bit for bit, to the uninterrupted run (noise included)
    assert main(_args(log_dir, split, "moe=smoe", "steps=10", "checkpoint_every=10")) == 0
    assert main(_args(log_dir, split, *extra)) == 0
    a = load_checkpoint(list_checkpoints(full)[-1])
    b = load_checkpoint(list_checkpoints(split)[-1])
    _assert_same(a["learner"], b["learner"])
    encoder = pvn.load_encoder(full)
    assert moe_layers(encoder) and encoder(torch.zeros(1, 4, 84, 84, dtype=torch.uint8)).shape[1]
    online = build(
        section(PretrainConfig, load_config("pretrain", [*_args(log_dir, full, *extra)[1:]])), 4
    ).online
    online.load_state_dict(a["learner"]["online"])
    obs = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    online.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(obs), online(obs)[1])
