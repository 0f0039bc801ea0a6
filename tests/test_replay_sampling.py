"""Sampling: uniform over valid transitions only, seeded, resumable; the prefetcher streams the
same batches and resumes from the next unconsumed one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pvn.replay import DQNReplayDataset, DQNReplayWriter, Prefetcher


@pytest.fixture
def small_log(tmp_path, ale_episodes):
    """Real Breakout frames, cut into short episodes, over three small checkpoints."""
    frames = np.concatenate([e[0] for e in ale_episodes])[:90]
    rng = np.random.default_rng(0)
    path = tmp_path / "replay_logs"
    with DQNReplayWriter(path, capacity=40) as w:
        start = 0
        for T in (9, 14, 5, 20, 11, 8, 17, 6):
            w.add_episode(
                frames[start : start + T],
                rng.integers(0, 4, T),
                rng.choice([0.0, 1.0], T).astype(np.float32),
                True,
            )
            start += T
    return path


@pytest.mark.parametrize("run, batch", [(1, 1000), (4, 1000), (4, 6)])
def test_uniform_over_valid_transitions(small_log, tmp_path, run, batch):
    """Every valid transition equally likely, also when drawn in windows of ``run``
    consecutive valid slots, and with a batch of one window and a remainder over three shards
    (this log's short episodes put an invalid gap every few slots: windows of ``run`` slots
    started anywhere and cut to the batch over-drew the slots after each gap, up to 1.8x)."""
    ds = DQNReplayDataset(small_log, n_step=3, cache_dir=tmp_path / "c", seed=1)
    ds.sample_run = run
    valid = {(c, int(i)) for c in ds.checkpoints for i in np.flatnonzero(ds.valid_mask(c))}
    assert len(valid) == len(ds)
    draws = 198_000
    counts: dict[tuple[int, int], int] = {}
    neighbours = 0  # drawn slots whose previous valid slot was drawn in the same batch
    previous = {}
    for c in ds.checkpoints:
        v = np.flatnonzero(ds.valid_mask(c))
        previous.update({(c, int(i)): (c, int(j)) for i, j in zip(v, np.roll(v, 1), strict=True)})
    for _ in range(draws // batch):
        b = ds.sample(batch)
        keys = list(zip(b.shard.tolist(), b.index.tolist(), strict=True))
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        drawn = set(keys)
        neighbours += sum(previous[key] in drawn for key in keys)
    assert set(counts) == valid  # every valid transition drawn, no invalid one ever
    expected = draws / len(valid)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    df = len(valid) - 1
    # chi-square with df ~ 100 has sd sqrt(2 df) (sqrt(2 df run) when runs of `run` neighbours
    # are drawn together); 6 sd above the mean is p < 1e-6 (fixed seed)
    assert chi2 < df + 6 * np.sqrt(2 * df * run), (chi2, df)
    if run > 1:  # the batch holds runs: most slots come with their predecessor
        assert neighbours / draws > 0.5 if batch >= run else neighbours == 0


def test_sampled_rows_equal_gather(small_log, tmp_path):
    ds = DQNReplayDataset(small_log, n_step=3, cache_dir=tmp_path / "c", seed=2)
    b = ds.sample(64)
    for c in np.unique(b.shard):
        rows = b.shard == c
        g = ds.gather(int(c), b.index[rows])
        np.testing.assert_array_equal(g.observation, b.observation[rows])
        np.testing.assert_array_equal(g.next_observation, b.next_observation[rows])
        np.testing.assert_array_equal(g.reward, b.reward[rows])
        np.testing.assert_array_equal(g.terminal, b.terminal[rows])


def test_seeded_and_resumable(small_log, tmp_path):
    a = DQNReplayDataset(small_log, cache_dir=tmp_path / "c", seed=5)
    b = DQNReplayDataset(small_log, cache_dir=tmp_path / "c", seed=5)
    c = DQNReplayDataset(small_log, cache_dir=tmp_path / "c", seed=6)
    np.testing.assert_array_equal(a.sample(32).index, b.sample(32).index)
    assert not np.array_equal(a.sample(32).index, c.sample(32).index)
    state = a.state_dict()
    first = a.sample(32)
    a.load_state_dict(state)
    again = a.sample(32)
    np.testing.assert_array_equal(first.index, again.index)
    np.testing.assert_array_equal(first.observation, again.observation)


def test_checkpoint_subset(small_log, tmp_path):
    ds = DQNReplayDataset(small_log, checkpoints=[1], cache_dir=tmp_path / "c")
    assert ds.checkpoints == [1]
    assert set(ds.sample(256).shard.tolist()) == {1}


def test_prefetcher_streams_the_same_batches_and_resumes(small_log, tmp_path):
    cache = tmp_path / "c"
    plain = DQNReplayDataset(small_log, n_step=3, cache_dir=cache, seed=9)
    expected = [plain.sample(16) for _ in range(6)]
    ds = DQNReplayDataset(small_log, n_step=3, cache_dir=cache, seed=9)
    with Prefetcher(ds, 16, depth=2) as pf:
        for e in expected[:5]:  # more batches than the ring holds: buffers are recycled
            g = next(pf)  # valid until the next batch is taken
            assert g.observation.dtype == torch.uint8 and g.observation.shape == (16, 4, 84, 84)
            np.testing.assert_array_equal(g.observation.numpy(), e.observation)
            np.testing.assert_array_equal(g.next_observation.numpy(), e.next_observation)
            np.testing.assert_array_equal(g.reward.numpy(), e.reward)
            np.testing.assert_array_equal(g.action.numpy(), e.action)
            np.testing.assert_array_equal(g.terminal.numpy(), e.terminal)
        state = pf.state_dict()  # after 5 consumed batches, although more were drawn ahead
    resumed = DQNReplayDataset(small_log, n_step=3, cache_dir=cache, seed=0)
    resumed.load_state_dict(state)
    with Prefetcher(resumed, 16) as pf:
        np.testing.assert_array_equal(next(pf).observation.numpy(), expected[5].observation)


def test_prefetcher_surfaces_worker_errors(small_log, tmp_path):
    ds = DQNReplayDataset(small_log, cache_dir=tmp_path / "c")
    with Prefetcher(ds, 0) as pf, pytest.raises(Exception, match="batch_size=0"):
        next(pf)
