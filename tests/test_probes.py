"""Offline linear probes: return-to-go targets by hand, ridge R^2 on known signals, a real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pvn.analysis.probes import (
    L2_GRID,
    choose_l2,
    episode_targets,
    linear_probes,
    probe_targets,
    ridge_r2,
    ridge_weights,
    successor_to_go,
)
from pvn.networks import build_torso
from pvn.replay import DQNReplayDataset, DQNReplayWriter


def test_return_to_go_by_hand(tmp_path, ale_episodes):
    rng = np.random.default_rng(0)
    episodes = []
    for frames, actions, _, terminated in ale_episodes:
        rewards = rng.choice([0.0, 1.0], len(frames)).astype(np.float32)
        episodes.append((frames, actions, rewards, terminated))
    with DQNReplayWriter(tmp_path / "replay_logs", capacity=5000) as w:
        for ep in episodes:
            w.add_episode(*ep)
    ds = DQNReplayDataset(tmp_path, cache_dir=tmp_path / "cache")
    keys, g, r = episode_targets(ds, gamma=0.9)
    expected = []
    for frames, _, rewards, terminated in episodes:
        if not terminated:
            continue  # the unfinished last episode has no return-to-go
        for t in range(len(frames)):
            ret = sum(0.9**k * float(rewards[t + k]) for k in range(len(frames) - t))
            expected.append((ret, rewards[t]))
    assert len(keys) == len(expected)  # every step of a complete episode is a valid transition
    np.testing.assert_allclose(g, [e[0] for e in expected], rtol=1e-9)
    np.testing.assert_allclose(r, [e[1] for e in expected])


def _every_third_and_logged(shard, slots, logged):
    """Two tasks along a log: an indicator of every third slot, and the logged reward."""
    return np.stack([(np.asarray(slots) % 3 == 0).astype(np.float32), logged], 1)


def test_successor_measures_to_go_by_hand(tmp_path, ale_episodes):
    """Each task's discounted future occupancy along the log, summed by hand per episode."""
    with DQNReplayWriter(tmp_path / "replay_logs", capacity=5000) as w:  # one shard, no wrap
        for ep in ale_episodes:
            w.add_episode(*ep)
    ds = DQNReplayDataset(tmp_path, cache_dir=tmp_path / "cache")
    keys, g, _ = episode_targets(ds, gamma=0.9)
    sm = successor_to_go(ds, keys, 0.9, _every_third_and_logged)
    start, expected, slots = 0, [], []
    for frames, _, _, terminated in ale_episodes:
        start += 3  # the writer's blank frames before each episode (Dopamine's stack padding)
        end = start + len(frames)
        if terminated:
            expected += [sum(0.9 ** (u - t) * (u % 3 == 0) for u in range(t, end))
                         for t in range(start, end)]  # fmt: skip
            slots += range(start, end)
        start = end
    assert [k[1] for k in keys] == slots
    np.testing.assert_allclose(sm[:, 0], expected, rtol=1e-9)
    np.testing.assert_allclose(sm[:, 1], g, rtol=1e-9)  # the logged reward's: the return


def test_many_targets_fit_as_each_alone():
    """Ridge over K targets at once (one SVD per fold) gives each target the penalty and the
    held-out R^2 it gets alone, a constant test target NaN."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 40))
    y = np.stack([x @ rng.standard_normal(40), rng.standard_normal(300),
                  x[:, 0] + rng.standard_normal(300), np.ones(300)], 1)  # fmt: skip
    r2, l2 = ridge_r2(x[:240], y[:240], x[240:], y[240:])
    assert np.array_equal(l2, [choose_l2(x[:240], y[:240, k]) for k in range(4)])
    alone = [ridge_r2(x[:240], y[:240, k], x[240:], y[240:, k])[0] for k in range(3)]
    np.testing.assert_allclose(r2[:3], alone, rtol=1e-9, atol=1e-12)
    assert np.isnan(r2[3])
    fixed = ridge_r2(x[:240], y[:240, :3], x[240:], y[240:, :3], l2=1e-2)[0]  # one penalty
    each = [ridge_r2(x[:240], y[:240, k], x[240:], y[240:, k], l2=1e-2)[0] for k in range(3)]
    np.testing.assert_allclose(fixed, each, rtol=1e-9)


def test_ridge_weights_match_the_normal_equations():
    rng = np.random.default_rng(0)
    a, y = rng.standard_normal((50, 6)), rng.standard_normal(50)
    for l2, w in zip((1e-3, 1.0), ridge_weights(a, y, [1e-3, 1.0]), strict=True):
        expected = np.linalg.solve(a.T @ a + l2 * 50 * np.eye(6), a.T @ y)
        np.testing.assert_allclose(w, expected, rtol=1e-8, atol=1e-12)


def test_ridge_r2_on_known_signals():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 8))
    y = x @ rng.standard_normal(8) + 0.1 * rng.standard_normal(600)
    r2, l2 = ridge_r2(x[:400], y[:400], x[400:], y[400:])
    assert r2 > 0.95 and l2 <= 1e-2  # a clean signal keeps a small penalty
    noise = rng.standard_normal(600)
    assert ridge_r2(x[:400], noise[:400], x[400:], noise[400:])[0] < 0.05


def test_chosen_penalty_keeps_many_features_from_overfitting_noise():
    # 300 features on 400 states, a target of pure noise: a small fixed penalty (the old 1e-2)
    # fits the noise and scores far below 0 on held-out states; the cross-validated one shrinks
    # the fit to the mean.
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((500, 300)), rng.standard_normal(500)
    assert ridge_r2(x[:400], y[:400], x[400:], y[400:], l2=1e-2)[0] < -1
    r2, l2 = ridge_r2(x[:400], y[:400], x[400:], y[400:])
    assert l2 >= 10 and -0.05 < r2 < 0.05
    assert choose_l2(x[:400], y[:400]) == l2


def test_linear_probes_run_on_real_play(tmp_path, ale_episodes):
    with DQNReplayWriter(tmp_path / "replay_logs", capacity=5000) as w:
        for ep in ale_episodes:
            w.add_episode(*ep)
    ds = DQNReplayDataset(tmp_path, cache_dir=tmp_path / "cache")
    enc = build_torso("nature", torch.Generator().manual_seed(0), feature_dim=16).eval()
    out = linear_probes(enc, ds, max_states=500)
    assert out["states"] > 100
    assert np.isfinite(out["return_r2"]) and out["return_r2"] <= 1
    assert out["return_l2"] in L2_GRID and out["reward_l2"] in L2_GRID
    assert 1 <= out["srank"] <= 16 and 0 <= out["dormant"] <= 1
    assert out["l1"] > 0 and "successor_r2" not in out
    # with tasks: the logged reward's successor measure is the return, probed on the same
    # states: the same R^2; with a second task, the R^2s pooled by the tasks' test variance
    sole = linear_probes(enc, ds, max_states=500,
                         task_rewards=lambda c, slots, logged: logged[:, None])  # fmt: skip
    assert sole["successor_tasks"] == 1
    assert sole["successor_r2"] == pytest.approx(out["return_r2"], rel=1e-9)
    both = linear_probes(enc, ds, max_states=500, task_rewards=_every_third_and_logged)
    assert both["successor_tasks"] == 2 and both["return_r2"] == out["return_r2"]
    keys, g, _ = episode_targets(ds, 0.99)  # the indicator's R^2 alone, by ridge_r2
    rng = np.random.default_rng(0)  # the probes' draw of states (seed 0)
    split = int(len(keys) * 0.8)
    take = [np.sort(rng.choice(np.arange(lo, hi), min(hi - lo, n), replace=False))
            for lo, hi, n in ((0, split, 400), (split, len(keys), 100))]  # fmt: skip
    sm = successor_to_go(ds, [keys[i] for i in np.concatenate(take)], 0.99,
                         _every_third_and_logged)[:, 0]  # fmt: skip
    with torch.no_grad():
        feats = [enc(torch.from_numpy(np.stack([ds.gather(keys[i][0], [keys[i][1]])
                                                .observation[0] for i in t]))).double().numpy()
                 for t in take]  # fmt: skip
    r2_ind = ridge_r2(feats[0], sm[:400], feats[1], sm[400:])[0]
    tot = [((y - y.mean()) ** 2).sum() for y in (sm[400:], g[take[1]])]
    pooled = 1 - ((1 - r2_ind) * tot[0] + (1 - out["return_r2"]) * tot[1]) / sum(tot)
    assert both["successor_r2"] == pytest.approx(pooled, rel=1e-6)
    # the targets drawn once serve several torsos: the same numbers, the tasks run once
    calls = []
    counted = lambda c, slots, logged: calls.append(c) or _every_third_and_logged(c, slots, logged)  # noqa: E731
    targets = probe_targets(ds, max_states=500, task_rewards=counted)
    ran = len(calls)
    assert linear_probes(enc, ds, targets=targets) == both
    other = build_torso("nature", torch.Generator().manual_seed(1), feature_dim=16).eval()
    assert linear_probes(other, ds, targets=targets)["states"] == both["states"]
    assert len(calls) == ran > 0
