"""Offline linear probes: return-to-go targets by hand, ridge R^2 on known signals, a real run."""

from __future__ import annotations

import numpy as np
import torch

from pvn.analysis.probes import (
    L2_GRID,
    choose_l2,
    episode_targets,
    linear_probes,
    ridge_r2,
    ridge_weights,
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
