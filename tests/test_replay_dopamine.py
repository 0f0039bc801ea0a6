"""The reader against Dopamine's own answers on checkpoints Dopamine wrote from real Breakout."""

from __future__ import annotations

import numpy as np
import pytest

from pvn.replay import DQNReplayDataset
from pvn.replay.transitions import cursor_range


@pytest.fixture(scope="module")
def reference(dopamine_fixture):
    return np.load(dopamine_fixture / "reference.npz", allow_pickle=False)


@pytest.mark.parametrize("n", [1, 3])
def test_validity_matches_dopamine_exactly(dopamine_fixture, reference, tmp_path, n):
    ds = DQNReplayDataset(
        dopamine_fixture, n_step=n, cache_dir=tmp_path, guard_cursor=False, keep_stale=True
    )
    assert ds.checkpoints == list(range(int(reference["n_ckpt"])))
    for c in ds.checkpoints:
        np.testing.assert_array_equal(ds.valid_mask(c), reference[f"valid_h{n}_c{c}"])
    assert len(ds) == sum(int(reference[f"valid_h{n}_c{c}"].sum()) for c in ds.checkpoints)


@pytest.mark.parametrize("n", [1, 3])
def test_transitions_match_dopamine_exactly(dopamine_fixture, reference, tmp_path, n):
    ds = DQNReplayDataset(dopamine_fixture, n_step=n, cache_dir=tmp_path)
    for c in ds.checkpoints:
        key = f"h{n}_c{c}"
        b = ds.gather(c, reference[f"idx_{key}"])
        # Dopamine returns channels-last stacks; pvn returns channels-first.
        np.testing.assert_array_equal(
            b.observation, reference[f"state_{key}"].transpose(0, 3, 1, 2)
        )
        np.testing.assert_array_equal(
            b.next_observation, reference[f"next_state_{key}"].transpose(0, 3, 1, 2)
        )
        np.testing.assert_array_equal(b.action, reference[f"action_{key}"])
        assert b.reward.dtype == np.float32
        np.testing.assert_array_equal(b.reward, reference[f"reward_{key}"])  # bit for bit
        np.testing.assert_array_equal(b.terminal, reference[f"terminal_{key}"].astype(bool))
        assert b.terminal.any(), "the fixture picks transitions with terminals in the window"


def test_cursor_guard_removes_exactly_the_straddling_slots(dopamine_fixture, reference, tmp_path):
    """With n=3, Dopamine keeps 2 slots whose next stack reaches the cursor (stale frames)."""
    ds = DQNReplayDataset(
        dopamine_fixture, n_step=3, cache_dir=tmp_path, guard_cursor=True, keep_stale=True
    )
    for c in ds.checkpoints:
        ck = ds.checkpoint(c)
        dropped = np.flatnonzero(reference[f"valid_h3_c{c}"] & ~ds.valid_mask(c))
        assert not (ds.valid_mask(c) & ~reference[f"valid_h3_c{c}"]).any()
        if ck.is_full:
            expected = sorted(
                set(cursor_range(ck.cursor, ck.capacity, 4, 3)) - set(ck.invalid_range)
            )
            expected = [i for i in expected if reference[f"valid_h3_c{c}"][i]]
            np.testing.assert_array_equal(dropped, expected)
            # each dropped slot's 3-step window runs into the cursor slot (an older round's frame)
            assert all(ck.cursor in {(i + k) % ck.capacity for k in (1, 2, 3)} for i in dropped)
        else:
            assert len(dropped) == 0  # before the buffer is full, i < cursor - n already guards


def test_episode_end_indices_file_is_never_unpickled(dopamine_fixture, tmp_path, monkeypatch):
    import pickle

    assert any(dopamine_fixture.glob("replay_logs/episode_end_indices_ckpt.*.gz"))

    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    ds = DQNReplayDataset(dopamine_fixture, cache_dir=tmp_path)
    assert len(ds) > 0
