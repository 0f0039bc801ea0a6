"""Local learning of the torso (DGL, MAN, MAN++, AugLocal): gradient isolation, the EMA rule,
AugLocal's index and depth formulas, saved-for-backward memory below end-to-end, exact resume with
aux nets and EMA copies, and every ``local=`` option with every torso."""

from __future__ import annotations

import json

import pytest
import torch

from pvn.checkpoint import list_checkpoints, load_checkpoint
from pvn.cli import main
from pvn.config import load_config
from pvn.local import auglocal_depths, auglocal_indices, torso_units
from pvn.memory import SavedTensorMeter
from pvn.pretraining import PretrainConfig, build
from pvn.replay import DQNReplayDataset, Prefetcher, TorchBatch
from pvn.settings import section
from tests.test_pretrain import _args, _assert_same, log_dir  # noqa: F401 (fixture)

LOCALS = ["dgl", "man", "man_pp", "auglocal"]


def _learner(torso="nature", local="dgl", *extra):
    overrides = [f"torso={torso}", f"local={local}", "data.path=x", "run_dir=x"]
    overrides += ["tasks.num_tasks=10", "td.warmup_steps=0", *extra]
    return build(section(PretrainConfig, load_config("pretrain", overrides)), num_actions=4)


def _batch(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (2, B, 4, 84, 84), generator=g, dtype=torch.uint8)
    action = torch.randint(0, 4, (B,), generator=g)
    return TorchBatch(obs[0], action, torch.zeros(B), obs[1], torch.zeros(B, dtype=torch.bool))


@pytest.mark.parametrize("local", LOCALS)
def test_block_loss_reaches_only_its_block_and_aux(local):
    learner = _learner("impala", local)
    blocks, aux = learner.local.blocks, learner.local.aux
    obs, action, *_ = _batch()
    y = torch.rand(4, 10)
    x = learner.online.torso.prepare(obs)
    h0 = blocks[0](x)
    h1 = blocks[1](h0.detach())
    learner.td_loss(learner.local(1, h1), action, y).backward()
    assert all(p.grad is None for p in blocks[0].parameters())  # nothing crosses the cut
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks[1].parameters())
    assert all(p.grad is not None for p in aux[1].parameters() if p.requires_grad)
    for k in (2, 3):  # later blocks -- and, for MAN, the live layer copied by aux 1 -- get none
        assert all(p.grad is None for p in blocks[k].parameters())
    if local.startswith("man"):
        assert all(not p.requires_grad and p.grad is None for p in aux[1].ema.parameters())
        assert all(p.grad is not None for p in aux[1].lb.parameters())


@pytest.mark.parametrize("local", ["man", "man_pp"])
def test_ema_copy_starts_at_the_live_layer_and_follows_the_rule(local):
    learner = _learner("nature", local, "local.decay=0.9")
    aux = learner.local.aux[0]  # copies the first layer of block 1 (conv2)
    live = list(aux.live[0].parameters())
    assert live[0] is learner.online.torso.blocks["conv2"][0].weight
    for e, lv, lb in zip(aux.ema.parameters(), live, aux.lb.parameters(), strict=True):
        assert torch.equal(e, lv) and torch.equal(lb, lv) and e.data_ptr() != lv.data_ptr()
    ema0 = [p.detach().clone() for p in aux.ema.parameters()]
    learner.update(_batch(), step=0)
    for e, e0, lv in zip(aux.ema.parameters(), ema0, live, strict=True):
        assert not torch.equal(lv, e0)  # the live layer moved
        torch.testing.assert_close(e, 0.9 * e0 + 0.1 * lv, rtol=0, atol=1e-7)
    if local == "man_pp":  # s starts at 1 and has no gradient while LB == EMA (first step)
        assert float(aux.s.detach()) == 1.0
        learner.update(_batch(seed=1), step=1)
        assert float(aux.s.detach()) != 1.0


def test_auglocal_formulas_by_hand():
    # d_i = max(1, round(d (1 - i tau / (K-2)) + i tau / (K-2))), Python round (half to even)
    assert auglocal_depths(3, 4, 0.5) == [3, 2, 2]  # 3, 2.5 -> 2, 2
    assert auglocal_depths(4, 6, 0.5) == [4, 4, 3, 3, 2]  # 4, 3.625, 3.25, 2.875, 2.5
    assert auglocal_depths(2, 5, 1.0) == [2, 2, 1, 1]  # 2, 1.67, 1.33, 1
    assert auglocal_depths(1, 6, 0.5) == [1, 1, 1, 1, 1]
    # indices round(l + (L - l - 1) / d * j), j = 1..d; all later layers when d >= L - 1 - l
    assert auglocal_indices(0, 10, 2) == [4, 9]  # 4.5 -> 4, 9
    assert auglocal_indices(3, 10, 3) == [5, 7, 9]
    assert auglocal_indices(1, 10, 3) == [4, 6, 9]  # 3.67 -> 4, 6.33 -> 6, 9
    assert auglocal_indices(7, 10, 3) == [8, 9]
    assert auglocal_indices(8, 10, 1) == [9]


def test_auglocal_aux_is_built_from_the_sampled_units():
    learner = _learner("impala", "auglocal", "local.depth=2")
    names = [n for n, _ in torso_units(learner.online.torso)]
    assert names[0] == "stack1.0" and names[-1] == "features" and len(names) == 10
    # block 0 ends at unit 0, depth 2: units 4 (stack2.2, a residual block) and 9 (features)
    kinds = [type(m).__name__ for m in learner.local.aux[0].modules()]
    assert "ResidualBlock" in kinds and type(learner.local.aux[0][-1]).__name__ == "QOutput"


@pytest.mark.parametrize("torso", ["nature", "impala"])
def test_local_step_holds_less_for_backward_than_end_to_end(torso):
    peaks = {}
    for local in ["none", *LOCALS]:
        learner = _learner(torso, local)
        learner.update(_batch(), 0)
        with SavedTensorMeter() as meter:
            learner.update(_batch(seed=1), 1)
        assert meter.live == 0  # every graph was freed
        peaks[local] = meter.peak
    if torso == "impala":
        assert all(peaks[m] < 0.8 * peaks["none"] for m in LOCALS), peaks
        assert peaks["dgl"] < 0.6 * peaks["none"] and peaks["auglocal"] < 0.6 * peaks["none"]
    else:  # nature is shallow: only the small DGL heads save memory
        assert peaks["dgl"] < peaks["none"], peaks


def test_local_run_logs_blocks_and_resumes_exactly(log_dir, tmp_path):  # noqa: F811
    extra = ["local=man_pp", "steps=20", "checkpoint_every=10"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(_args(log_dir, full, *extra)) == 0
    records = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert {"local_loss/conv1", "local_loss/conv2", "local_loss/conv3"} <= set(records[-1])
    assert main(_args(log_dir, split, "local=man_pp", "steps=10", "checkpoint_every=10")) == 0
    assert main(_args(log_dir, split, *extra)) == 0
    a = load_checkpoint(list_checkpoints(full)[-1])["learner"]
    b = load_checkpoint(list_checkpoints(split)[-1])["learner"]
    assert any(k.startswith("aux.0.ema") for k in a["local"])
    _assert_same(a, b)


@pytest.mark.parametrize("torso", ["nature", "impala", "impala_x8"])
def test_every_local_option_trains_every_torso(log_dir, torso):  # noqa: F811
    ds = DQNReplayDataset(log_dir, cache_dir=log_dir.parent / "cache")
    small = ["torso.feature_dim=64"] if torso == "impala_x8" else []
    with Prefetcher(ds, 2) as batches:
        for local in LOCALS:
            learner = _learner(torso, local, *small)
            torso_before = [p.detach().clone() for p in learner.online.torso.parameters()]
            m = learner.update(next(batches), 0)
            assert torch.isfinite(m["loss"]) and sum(k.startswith("local_loss/") for k in m) == 3
            moved = [
                not torch.equal(b, p)
                for b, p in zip(torso_before, learner.online.torso.parameters(), strict=True)
            ]
            assert all(moved), (torso, local)


def test_local_composes_with_moe_and_rejects_bad_cuts(log_dir, tmp_path, capsys):  # noqa: F811
    learner = _learner("nature", "man", "moe=smoe")
    m = learner.update(_batch(), 0)
    assert "moe_aux_loss" in m and torch.isfinite(m["loss"])
    assert main(_args(log_dir, tmp_path / "r", "local=dgl", "local.cuts=[conv9]")) == 2
    assert "conv9" in capsys.readouterr().err
    assert main(_args(log_dir, tmp_path / "r", "local=man", "local.decay=1.0")) == 2
    assert "freezes" in capsys.readouterr().err
