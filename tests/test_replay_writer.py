"""The writer: it reproduces Dopamine's own files, and what it writes reads back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from pvn.replay import DQNReplayDataset, DQNReplayWriter
from tests.reference import is_valid, load_raw, transition


def _fixture_stream(log_dir):
    """Every slot Dopamine added to the fixture, in order, recovered from its checkpoints."""
    raws = [load_raw(log_dir, c) for c in range(4)]
    cap = len(raws[0]["action"])
    counts = [int(r["add_count"]) for r in raws]
    slots = []
    for a in range(counts[-1]):
        k = next(k for k, n in enumerate(counts) if n > a)
        assert a >= counts[k] - cap  # still in that buffer
        slots.append((raws[k], a % cap))
    return slots, cap


def _episodes_from_slots(slots, stack=4):
    """Split Dopamine's slot stream into episodes, checking the zero padding before each."""
    episodes, i = [], 0
    while i < len(slots):
        for raw, s in slots[i : i + stack - 1]:  # padding
            assert not raw["observation"][s].any() and raw["action"][s] == 0
            assert raw["reward"][s] == 0 and raw["terminal"][s] == 0
        i += stack - 1
        frames, actions, rewards = [], [], []
        terminated = False
        while i < len(slots):
            raw, s = slots[i]
            frames.append(raw["observation"][s])
            actions.append(raw["action"][s])
            rewards.append(raw["reward"][s])
            i += 1
            if raw["terminal"][s]:
                terminated = True
                break
        episodes.append((np.stack(frames), np.array(actions), np.array(rewards), terminated))
    return episodes


def test_writer_reproduces_dopamine_files(dopamine_fixture, tmp_path):
    """Fed the same play, the writer writes the same arrays, add_count and invalid_range that
    Dopamine's logged buffer wrote (checkpoint ids and cut points included)."""
    slots, cap = _fixture_stream(dopamine_fixture / "replay_logs")
    episodes = _episodes_from_slots(slots)
    assert len(episodes) > 40 and not episodes[-1][3]
    out = tmp_path / "replay_logs"
    with DQNReplayWriter(out, capacity=cap) as w:
        for ep in episodes:
            w.add_episode(*ep)
    assert w.checkpoints_written == [0, 1, 2, 3]
    for c in range(4):
        ours, theirs = load_raw(out, c), load_raw(dopamine_fixture / "replay_logs", c)
        for kind in theirs:
            assert ours[kind].dtype == theirs[kind].dtype, (c, kind)
            np.testing.assert_array_equal(ours[kind], theirs[kind], err_msg=f"ckpt {c} {kind}")
    assert not list(out.glob(".pvn-writer*")), "scratch file removed on close"


def _episode_reference(episodes, stack, n, gamma):
    """Transitions computed from the episodes themselves (not from any buffer)."""
    out = []
    for frames, actions, rewards, terminated in episodes:
        T = len(frames)

        def stack_at(t, frames=frames, T=T):
            # frames before the episode are its zero padding; past its end, the next padding
            return np.stack(
                [
                    frames[u] if 0 <= u < T else np.zeros_like(frames[0])
                    for u in range(t - stack + 1, t + 1)
                ]
            )

        for t in range(T):
            window = range(t, min(t + n, T))
            length, term = n, False
            if terminated and T - 1 in window:
                length, term = T - t, True
            elif t + n >= T:
                continue  # its next frame (t + n) of an unfinished episode was never logged
            r = np.float32(0)
            for k in range(length):
                r = np.float32(r + np.float32(gamma**k) * np.float32(rewards[t + k]))
            out.append((stack_at(t), int(actions[t]), r, stack_at(t + length), term))
    return out


@pytest.mark.parametrize("n", [1, 3])
def test_round_trip_real_play(ale_episodes, tmp_path, n):
    """Real Breakout episodes, written and read back in one big checkpoint: every valid
    transition equals the one computed from the episodes directly, and they are all there."""
    out = tmp_path / "replay_logs"
    with DQNReplayWriter(out, capacity=10_000) as w:
        for ep in ale_episodes:
            w.add_episode(*ep)
    ds = DQNReplayDataset(out, n_step=n, cache_dir=tmp_path / "cache")
    idx = np.flatnonzero(ds.valid_mask(0))
    b = ds.gather(0, idx)
    expected = _episode_reference(ale_episodes, 4, n, 0.99)
    assert len(idx) == len(expected)
    for j, (obs, a, r, nxt, term) in enumerate(expected):
        np.testing.assert_array_equal(b.observation[j], obs)
        np.testing.assert_array_equal(b.next_observation[j], nxt)
        assert (b.action[j], b.reward[j], b.terminal[j]) == (a, r, term), j


def _synthetic_frames(T, start):
    """Frames whose every pixel is the frame's id (1-based, so none is all-zero padding)."""
    return np.repeat(np.arange(start, start + T, dtype=np.uint8)[:, None, None], 84, 1).repeat(
        84, 2
    )


def _write(path, episodes, capacity):
    with DQNReplayWriter(path, capacity=capacity) as w:
        for ep in episodes:
            w.add_episode(*ep)
    return w


def _check_against_loop(path, stack, n, gamma=0.99, guard=False):
    ds = DQNReplayDataset(
        path,
        n_step=n,
        stack_size=stack,
        cache_dir=path.parent / "cache",
        guard_cursor=guard,
        keep_stale=True,  # the per-index loop is Dopamine's reading
    )
    for c in ds.checkpoints:
        raw = load_raw(path, c)
        cap = len(raw["action"])
        ref = np.array([is_valid(raw, stack, n, i) for i in range(cap)])
        np.testing.assert_array_equal(ds.valid_mask(c), ref, err_msg=f"ckpt {c}")
        idx = np.arange(cap)  # gather is defined for every slot, valid or not
        b = ds.gather(c, idx)
        for i in idx:
            obs, a, r, nxt, term = transition(raw, stack, n, gamma, int(i))
            np.testing.assert_array_equal(b.observation[i], obs)
            np.testing.assert_array_equal(b.next_observation[i], nxt)
            assert (b.action[i], b.reward[i], b.terminal[i]) == (a, r, term), (c, i)
    return ds


@pytest.mark.parametrize("n", [1, 3])
def test_edge_cases_against_per_index_loop(tmp_path, n):
    """Hand-built: episodes shorter than the stack (1 and 2 steps), a terminal on the last slot
    of a checkpoint, the cursor wrapping round a tiny buffer, and a partial final checkpoint."""
    rng = np.random.default_rng(1)
    lengths = [1, 2, 7, 3, 1, 9, 4]
    episodes, start = [], 1
    for T in lengths:
        rewards = rng.choice([-1.0, 0.0, 1.0], size=T).astype(np.float32)
        episodes.append((_synthetic_frames(T, start), rng.integers(0, 4, T), rewards, True))
        start += T
    episodes.append(
        (_synthetic_frames(5, start), rng.integers(0, 4, 5), np.ones(5, np.float32), False)
    )
    path = tmp_path / "replay_logs"
    w = _write(path, episodes, capacity=13)
    # 7 episodes * 3 padding + 27 + 5 frames = 53 slots: checkpoints at 12, 25, 38, 51, final 53
    assert w.checkpoints_written == [0, 1, 2, 3, 4]
    ds = _check_against_loop(path, 4, n)
    assert len(ds) > 0


def test_terminal_on_last_slot(tmp_path):
    """An episode ending exactly on the checkpoint's last written slot (cursor - 1)."""
    ep = (_synthetic_frames(6, 1), np.arange(6) % 4, np.ones(6, np.float32), True)
    path = tmp_path / "replay_logs"
    _write(path, [ep], capacity=10)  # 3 padding + 6 = 9 slots = capacity - 1: one checkpoint
    raw = load_raw(path, 0)
    assert int(raw["add_count"]) == 9 and raw["terminal"][8] == 1
    for n in (1, 3):
        _check_against_loop(path, 4, n)


def test_writer_refuses_existing_log(tmp_path):
    from pvn.replay import ReplayError

    ep = (_synthetic_frames(6, 1), np.zeros(6), np.zeros(6, np.float32), True)
    path = tmp_path / "replay_logs"
    _write(path, [ep], capacity=10)
    with pytest.raises(ReplayError, match="already holds checkpoints"):
        DQNReplayWriter(path, capacity=10)


def test_writer_rejects_bad_episode(tmp_path):
    from pvn.replay import ReplayError

    w = DQNReplayWriter(tmp_path / "replay_logs", capacity=10)
    with pytest.raises(ReplayError, match="uint8"):
        w.add_episode(np.zeros((3, 84, 84), np.float32), np.zeros(3), np.zeros(3), True)
    with pytest.raises(ReplayError, match="equal"):
        w.add_episode(np.zeros((3, 84, 84), np.uint8), np.zeros(2), np.zeros(3), True)
