"""Bad replay data fails with one ReplayError naming the file, and leaves no cache entry behind."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from pvn.cli import main
from pvn.replay import DQNReplayDataset, ReplayError


def _rewrite(path, array, raw_bytes: bytes | None = None):
    path.unlink()
    with gzip.open(path, "wb") as f:
        if raw_bytes is not None:
            f.write(raw_bytes)
        else:
            np.save(f, array, allow_pickle=True)


def _open(log_dir, tmp_path, **kw):
    return DQNReplayDataset(log_dir, cache_dir=tmp_path / "cache", **kw)


def test_missing_directory(tmp_path):
    with pytest.raises(ReplayError, match="no such replay directory"):
        _open(tmp_path / "nope", tmp_path)


def test_directory_without_checkpoints(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReplayError, match="no Dopamine checkpoints"):
        _open(tmp_path / "empty", tmp_path)


def test_missing_checkpoint_id(dopamine_copy, tmp_path):
    with pytest.raises(
        ReplayError, match=r"checkpoint\(s\) \[7\] not found; available: \[0, 1, 2, 3\]"
    ):
        _open(dopamine_copy, tmp_path, checkpoints=[0, 7])


def test_missing_file(dopamine_copy, tmp_path):
    (dopamine_copy / "$store$_reward_ckpt.1.gz").unlink()
    with pytest.raises(
        ReplayError, match=r"checkpoint 1 is incomplete: \$store\$_reward_ckpt\.1\.gz"
    ):
        _open(dopamine_copy, tmp_path)


def test_truncated_gzip(dopamine_copy, tmp_path):
    f = dopamine_copy / "$store$_observation_ckpt.2.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ReplayError, match=r"observation_ckpt\.2\.gz: truncated"):
        _open(dopamine_copy, tmp_path)
    _assert_no_cache_entry_for(tmp_path, 2)


def _assert_no_cache_entry_for(tmp_path, ckpt):
    entries = list((tmp_path / "cache").rglob(f"ckpt.{ckpt}*"))
    assert [p.name for p in entries if p.is_dir()] == []


def test_not_gzip(dopamine_copy, tmp_path):
    (dopamine_copy / "$store$_action_ckpt.0.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(ReplayError, match=r"action_ckpt\.0\.gz: not a gzip-compressed \.npy"):
        _open(dopamine_copy, tmp_path)


def test_gzip_but_not_npy(dopamine_copy, tmp_path):
    _rewrite(dopamine_copy / "$store$_action_ckpt.0.gz", None, raw_bytes=b"plain text")
    with pytest.raises(ReplayError, match=r"action_ckpt\.0\.gz: not a gzip-compressed \.npy"):
        _open(dopamine_copy, tmp_path)


def test_wrong_dtype(dopamine_copy, tmp_path):
    _rewrite(dopamine_copy / "$store$_reward_ckpt.0.gz", np.zeros(3000, np.float64))
    with pytest.raises(ReplayError, match=r"reward_ckpt\.0\.gz: dtype float64, expected float32"):
        _open(dopamine_copy, tmp_path)


def test_wrong_shape(dopamine_copy, tmp_path):
    _rewrite(dopamine_copy / "$store$_observation_ckpt.0.gz", np.zeros((10, 84, 80), np.uint8))
    with pytest.raises(ReplayError, match=r"observation_ckpt\.0\.gz: shape \(10, 84, 80\)"):
        _open(dopamine_copy, tmp_path)


def test_length_mismatch(dopamine_copy, tmp_path):
    _rewrite(dopamine_copy / "$store$_terminal_ckpt.0.gz", np.zeros(2999, np.uint8))
    with pytest.raises(ReplayError, match=r"terminal_ckpt\.0\.gz: 2999 entries, but"):
        _open(dopamine_copy, tmp_path)
    _assert_no_cache_entry_for(tmp_path, 0)


def test_inconsistent_add_count(dopamine_copy, tmp_path):
    _rewrite(dopamine_copy / "add_count_ckpt.1.gz", np.array(5000, np.int64))
    with pytest.raises(ReplayError, match=r"add_count_ckpt\.1\.gz: add_count 5000 .* inconsistent"):
        _open(dopamine_copy, tmp_path)


def test_pickled_object_array_is_refused(dopamine_copy, tmp_path):
    evil = np.array([{"a": 1}] * 3000, dtype=object)
    _rewrite(dopamine_copy / "$store$_action_ckpt.0.gz", evil)
    with pytest.raises(ReplayError, match=r"action_ckpt\.0\.gz: holds a pickled object array"):
        _open(dopamine_copy, tmp_path)


def test_no_valid_transition(tmp_path):
    from pvn.replay import DQNReplayWriter

    path = tmp_path / "replay_logs"
    with DQNReplayWriter(path, capacity=100) as w:  # one 1-step episode: its slot is cursor - 1
        w.add_episode(np.ones((1, 84, 84), np.uint8), [0], [0.0], True)
    with pytest.raises(ReplayError, match="no valid transition"):
        _open(path, tmp_path)
    with pytest.raises(ReplayError, match="capacity 100, less than stack_size"):
        _open(path, tmp_path, stack_size=100)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"n_step": 0}, "n_step=0"),
        ({"stack_size": 0}, "stack_size=0"),
        ({"gamma": 1.5}, "gamma=1.5"),
    ],
)
def test_bad_arguments(dopamine_fixture, tmp_path, kw, msg):
    with pytest.raises(ReplayError, match=msg):
        _open(dopamine_fixture, tmp_path, **kw)


def test_cli_prints_one_line_and_exits_2(dopamine_copy, capsys):
    (dopamine_copy / "$store$_reward_ckpt.1.gz").write_bytes(b"junk")
    assert main(["data", "info", str(dopamine_copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reward_ckpt.1.gz" in err[0] and err[0].startswith("pvn: error:")
