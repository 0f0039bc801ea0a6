"""Data that is never silently lost: incomplete checkpoints, ``pvn data verify``, the stale slots
of a final partial checkpoint, the writer's compression level."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from pvn.cli import main
from pvn.replay import DQNReplayDataset, DQNReplayWriter, ReplayError
from pvn.replay.dopamine_format import read_small


def _open(path, tmp_path, **kw):
    return DQNReplayDataset(path, cache_dir=tmp_path / "cache", **kw)


def test_an_incomplete_checkpoint_is_an_error_not_a_gap(dopamine_copy, tmp_path, capsys):
    """The issue's case: add_count_ckpt.2.gz gone from a four-checkpoint log. Once, checkpoints
    [0, 1, 3] opened without a word."""
    (dopamine_copy / "add_count_ckpt.2.gz").unlink()
    with pytest.raises(ReplayError, match=r"checkpoint 2 is incomplete: add_count_ckpt\.2\.gz"):
        _open(dopamine_copy, tmp_path)
    assert main(["data", "info", str(dopamine_copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint 2 is incomplete" in err[0]
    ds = _open(dopamine_copy, tmp_path, skip_incomplete=True)
    assert ds.checkpoints == [0, 1, 3] and ds.skipped == {2: ["add_count_ckpt.2.gz"]}
    assert main(["data", "info", str(dopamine_copy), "--skip-incomplete"]) == 0
    assert "skipped incomplete checkpoint 2: missing add_count_ckpt.2.gz" in capsys.readouterr().out
    for skip in (False, True):  # asking for it by name is always an error
        with pytest.raises(ReplayError, match="checkpoint 2 is incomplete"):
            _open(dopamine_copy, tmp_path, checkpoints=[1, 2], skip_incomplete=skip)
    assert _open(dopamine_copy, tmp_path, checkpoints=[0, 1]).checkpoints == [0, 1]


def test_pretraining_refuses_or_skips_an_incomplete_checkpoint(dopamine_copy, tmp_path, capsys):
    (dopamine_copy / "$store$_observation_ckpt.1.gz").unlink()
    base = ["pretrain", f"data.path={dopamine_copy}", f"data.cache_dir={tmp_path / 'c'}",
            "steps=2", "batch_size=4", "torso.feature_dim=16", "tasks.num_tasks=10",
            "td.warmup_steps=0", "progress=false"]  # fmt: skip
    assert main([*base, f"run_dir={tmp_path / 'a'}"]) == 2
    assert "observation_ckpt.1.gz is missing" in capsys.readouterr().err
    assert main([*base, f"run_dir={tmp_path / 'b'}", "data.skip_incomplete=true"]) == 0
    assert "skipping incomplete checkpoint 1" in capsys.readouterr().err


def test_verify_passes_dopamines_own_log(dopamine_fixture, capsys):
    assert main(["data", "verify", str(dopamine_fixture)]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 checkpoints ok" in out


def _rewrite(path, array=None, raw: bytes | None = None):
    with gzip.open(path, "wb") as f:
        if raw is not None:
            f.write(raw)
        else:
            np.save(f, array, allow_pickle=False)


def _damage(log, how: str) -> str:
    """Damage checkpoint 1 of a copy of the Dopamine log; returns what verify must name."""
    obs, term = log / "$store$_observation_ckpt.1.gz", log / "$store$_terminal_ckpt.1.gz"
    if how == "truncated":
        obs.write_bytes(obs.read_bytes()[: obs.stat().st_size // 2])
        return "observation_ckpt.1.gz"
    if how == "not_gzip":
        obs.write_bytes(b"not gzip")
        return "observation_ckpt.1.gz"
    if how == "missing":
        (log / "invalid_range_ckpt.1.gz").unlink()
        return "missing invalid_range_ckpt.1.gz"
    if how == "wrong_dtype":
        _rewrite(log / "$store$_reward_ckpt.1.gz", np.zeros(3000, np.float64))
        return "dtype float64"
    if how == "wrong_length":
        _rewrite(obs, np.zeros((2999, 84, 84), np.uint8))
        return "2999 slots, the other arrays 3000"
    if how == "invalid_range":
        _rewrite(log / "invalid_range_ckpt.1.gz", np.arange(5, dtype=np.int64))
        return "does not match add_count"
    if how == "rewards":
        r = read_small(log / "$store$_reward_ckpt.1.gz", "reward").copy()
        r[10] = 4.0
        _rewrite(log / "$store$_reward_ckpt.1.gz", r)
        return "rewards outside [-1, 1]"
    if how == "padding":  # a terminal in mid-episode: the next slots are not padding
        t = read_small(term, "terminal").copy()
        live = np.flatnonzero(read_small(log / "$store$_action_ckpt.1.gz", "action") != 0)
        t[live[len(live) // 2]] = 1
        _rewrite(term, t)
        return "padding slots with data"
    raise ValueError(how)


HOW = ["truncated", "not_gzip", "missing", "wrong_dtype", "wrong_length", "invalid_range",
       "rewards", "padding"]  # fmt: skip


@pytest.mark.parametrize("how", HOW)
def test_verify_names_what_is_wrong_and_exits_2(dopamine_copy, capsys, how):
    want = _damage(dopamine_copy, how)
    assert main(["data", "verify", str(dopamine_copy)]) == 2
    out = capsys.readouterr().out
    rows = {int(line.split()[0]): line for line in out.splitlines() if line[:5].strip().isdigit()}
    assert want in rows[1], out
    assert all(rows[c].split()[1] == "ok" for c in (0, 2, 3)), out
    assert "3 of 4 checkpoints ok" in out


def test_verify_of_chosen_checkpoints(dopamine_copy, capsys):
    _damage(dopamine_copy, "truncated")
    assert main(["data", "verify", str(dopamine_copy), "--checkpoints", "0", "2"]) == 0
    assert main(["data", "verify", "--checkpoints", "0", "2", str(dopamine_copy)]) == 0
    assert main(["data", "verify", str(dopamine_copy), "--checkpoints", "9"]) == 2
    assert "checkpoint(s) [9] not found" in capsys.readouterr().err


def test_each_logged_transition_is_sampled_from_one_checkpoint(dopamine_fixture, tmp_path):
    """The fixture's last checkpoint is the final partial buffer of a run logged by batch_rl's
    rule: its slots not written since checkpoint 2 equal checkpoint 2's. By default they start
    no transition (each is sampled once, from checkpoint 2); keep_stale=True is Dopamine's
    reading, which samples them from both."""
    stale = _open(dopamine_fixture, tmp_path, keep_stale=True)
    fresh = _open(dopamine_fixture, tmp_path)
    ck2, ck3 = stale.checkpoint(2), stale.checkpoint(3)
    new = ck3.add_count - ck2.add_count
    assert 0 < new < ck3.capacity
    new_slots = (ck3.cursor - new + np.arange(new)) % ck3.capacity
    old = np.setdiff1d(np.arange(ck3.capacity), new_slots)
    # the stale slots really are checkpoint 2's data
    np.testing.assert_array_equal(
        np.asarray(ck3.observation)[old], np.asarray(ck2.observation)[old]
    )
    assert not fresh.valid_mask(3)[old].any()
    np.testing.assert_array_equal(fresh.valid_mask(3)[new_slots], stale.valid_mask(3)[new_slots])
    for c in (0, 1, 2):  # full checkpoints are all new
        np.testing.assert_array_equal(fresh.valid_mask(c), stale.valid_mask(c))
    assert len(fresh) == len(stale) - int(stale.valid_mask(3)[old].sum())


@pytest.mark.parametrize("level,xfl", [(1, 4), (9, 2)])
def test_writer_honours_compresslevel(tmp_path, ale_episodes, level, xfl):
    """gzip's XFL header byte says which level wrote it (RFC 1952: 2 = slowest, 4 = fastest)."""
    path = tmp_path / f"l{level}"
    with DQNReplayWriter(path, capacity=500, compresslevel=level) as w:
        w.add_episode(*ale_episodes[0])
    data = (path / "$store$_observation_ckpt.0.gz").read_bytes()
    assert data[8] == xfl
    with pytest.raises(ReplayError, match="compresslevel=0"):
        DQNReplayWriter(tmp_path / "bad", capacity=500, compresslevel=0)
