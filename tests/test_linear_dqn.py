"""Linear control pieces: the feature replay against a per-slot reference, the double-DQN target
by hand, and convergence of the linear head to Q* on a small MDP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pvn.agents.dqn import DQNConfig, double_dqn_target
from pvn.agents.linear_dqn import LinearDQN
from pvn.replay.feature_replay import FeatureReplay


def test_double_dqn_target_by_hand():
    ret = torch.tensor([1.0, 0.5])
    discount = torch.tensor([0.9, 0.0])
    online = torch.tensor([[1.0, 3.0, 2.0], [9.0, 0.0, 0.0]])  # argmax: 1, 0
    target = torch.tensor([[10.0, 20.0, 30.0], [7.0, 7.0, 7.0]])
    # row 0: 1 + 0.9 * target[1] = 1 + 18 = 19; row 1 terminal: 0.5
    torch.testing.assert_close(
        double_dqn_target(ret, discount, online, target), torch.tensor([19.0, 0.5])
    )


def _fill(replay, T, seed):
    """Random streams with terminations and truncations; returns the per-env step lists."""
    rng = np.random.default_rng(seed)
    D = replay.features.shape[2]
    streams = [[] for _ in range(replay.num_envs)]
    for _ in range(T):
        e = np.arange(replay.num_envs)
        f = torch.from_numpy(rng.standard_normal((len(e), D)).astype(np.float32))
        a = rng.integers(0, 3, len(e))
        r = rng.choice([-1.0, 0.0, 1.0], len(e)).astype(np.float32)
        term = rng.random(len(e)) < 0.08
        trunc = ~term & (rng.random(len(e)) < 0.04)
        replay.add(e, f, a, r, term, trunc)
        for i in e:
            streams[i].append((f[i].half().float(), a[i], r[i], term[i], term[i] or trunc[i]))
    return streams


def _reference(stream, k, n, gamma, slots):
    """The n-step transition at absolute slot k of one env's stream, one step at a time."""
    w = len(stream)
    if k < w - slots:
        return None
    ret = 0.0
    for i in range(n):
        if k + i >= w:
            return None
        _, _, r, term, end = stream[k + i]
        ret += gamma**i * r
        if end:
            return (ret, 0.0, None) if term else None  # truncation: not sampled
    if k + n >= w:
        return None
    return ret, gamma**n, stream[k + n][0]


@pytest.mark.parametrize("n", [1, 3])
def test_feature_replay_matches_per_slot_reference(n):
    replay = FeatureReplay(capacity=3 * 40, num_envs=3, feature_dim=5, n_step=n, gamma=0.9, seed=1)
    streams = _fill(replay, 100, seed=n)  # 100 steps into 40 slots per env: wraps twice
    expected = {}
    for e, stream in enumerate(streams):
        slots, valid = replay.valid_mask(e)
        for k, v in zip(slots.tolist(), valid.tolist(), strict=True):
            ref = _reference(stream, k, n, 0.9, 40)
            assert v == (ref is not None), (e, k)
            if ref is not None:
                expected[(e, k)] = ref
    seen = set()
    for i in range(60):
        parts = replay.sample(64).split(1 + i % 2)  # one sample split for several updates
        assert [len(b.env) for b in parts] == [64 // len(parts)] * len(parts)
        for b in parts:
            for j, (e, k) in enumerate(zip(b.env.tolist(), b.slot.tolist(), strict=True)):
                ret, disc, nxt = expected[(e, k)]  # KeyError: an invalid transition was sampled
                seen.add((e, k))
                assert abs(float(b.ret[j]) - ret) < 1e-5
                assert abs(float(b.discount[j]) - disc) < 1e-6
                torch.testing.assert_close(b.features[j], streams[e][k][0])
                assert int(b.action[j]) == streams[e][k][1]
                if nxt is not None:
                    torch.testing.assert_close(b.next_features[j], nxt)
    assert seen == set(expected)


def test_feature_replay_state_round_trip():
    a = FeatureReplay(60, 2, 4, 2, 0.99, seed=3)
    _fill(a, 20, seed=0)
    b = FeatureReplay(60, 2, 4, 2, 0.99, seed=9)
    b.load_state_dict(a.state_dict())
    x, y = a.sample(16), b.sample(16)
    assert np.array_equal(x.slot, y.slot) and torch.equal(x.features, y.features)


def test_linear_dqn_converges_to_q_star_on_a_chain():
    """4-state chain, actions left/right, +1 for reaching the terminal right end; one-hot
    features, uniform behaviour, n = 1: double Q-learning's fixed point is Q*."""
    S, A, gamma = 4, 2, 0.9
    nxt = np.array([[max(s - 1, 0), s + 1] for s in range(S - 1)])
    Q = np.zeros((S - 1, A))
    for _ in range(200):  # value iteration
        for s in range(S - 1):
            for a in range(A):
                s2 = nxt[s, a]
                Q[s, a] = 1.0 if s2 == S - 1 else gamma * Q[s2].max()
    eye = torch.eye(S)
    replay = FeatureReplay(2000, 2, S, n_step=1, gamma=gamma, dtype=torch.float32, seed=0)
    rng = np.random.default_rng(0)
    state = np.zeros(2, np.int64)
    for _ in range(800):
        a = rng.integers(0, A, 2)
        s2 = nxt[state, a]
        term = s2 == S - 1
        replay.add(np.arange(2), eye[state], a, term.astype(np.float32), term, np.zeros(2, bool))
        state = np.where(term, 0, s2)
    agent = LinearDQN(S, A, DQNConfig(lr=0.02, target_period=25), torch.Generator().manual_seed(0))
    for _ in range(1500):
        agent.update(replay.sample(32))
    learned = agent.q_values(eye[: S - 1]).numpy()
    assert np.abs(learned - Q).max() < 0.03, (learned, Q)


def test_frame_replay_restacks_what_the_agent_saw(ale_episodes):
    """End-to-end DQN's replay keeps single frames; each sampled stack (and next stack) equals the
    stack :class:`envs.FrameStack` built while acting, on real Breakout frames, across episode
    boundaries (zero padding) and after the circular buffer wrapped (overwritten slots)."""
    from pvn.envs import FrameStack

    frames = np.concatenate([ep[0] for ep in ale_episodes])
    ends = np.concatenate([np.arange(len(ep[0])) == len(ep[0]) - 1 for ep in ale_episodes])
    T, slots, n = len(frames), 150, 3
    replay = FeatureReplay(slots, 1, (84, 84), n, 0.99, dtype=torch.uint8, seed=0, stack_size=4)
    stack, acted = FrameStack(1), []
    new = np.ones(1, bool)
    for t in range(T):
        obs = stack.push(frames[t : t + 1], new)
        acted.append(obs[0].copy())
        replay.add([0], torch.from_numpy(obs[:, -1]), [0], [0.0], [ends[t]], [False])
        new = ends[t : t + 1]
    assert 2 * slots < T  # wrapped: the oldest stored slots lost their predecessors
    checked = 0
    for _ in range(20):
        b = replay.sample(32)
        for j, k in enumerate(b.slot.tolist()):
            want = acted[k].copy()
            oldest = T - slots
            want[: max(0, oldest - (k - 3))] = 0  # predecessors overwritten in the ring
            np.testing.assert_array_equal(b.features[j].numpy(), want)
            if float(b.discount[j]) > 0:
                nxt = acted[k + n].copy()
                assert k + n - 3 >= oldest
                np.testing.assert_array_equal(b.next_features[j].numpy(), nxt)
            checked += 1
    assert checked == 640 and b.features.dtype == torch.uint8


def _chain_replay(scale: float, seed: int = 0) -> FeatureReplay:
    """A replay of random non-negative features (times ``scale``) with rewards and ends."""
    rng = np.random.default_rng(seed)
    replay = FeatureReplay(600, 2, 8, n_step=3, gamma=0.9, dtype=torch.float32, seed=seed)
    for _ in range(300):
        f = torch.from_numpy(rng.random((2, 8)).astype(np.float32)) * scale
        term = rng.random(2) < 0.05
        replay.add(np.arange(2), f, rng.integers(0, 3, 2), rng.random(2).astype(np.float32),
                   term, np.zeros(2, bool))  # fmt: skip
    return replay


def test_feature_norm_scale_is_the_inverse_mean_norm_and_survives_a_checkpoint():
    feats = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])  # norms 5 and 1: mean 3
    agent = LinearDQN(3, 2, DQNConfig(feature_norm=True), torch.Generator().manual_seed(0))
    assert agent.feature_scale == 1.0  # until learning starts
    agent.calibrate(feats)
    assert agent.feature_scale == pytest.approx(1 / 3)
    x = torch.tensor([[6.0, 0.0, 3.0]])
    w, b = agent.head.weight, agent.head.bias
    torch.testing.assert_close(agent.q_values(x), (x / 3) @ w.T + b)  # Q = W (phi / c) + b
    torch.testing.assert_close(agent.target(x), agent.q_values(x))  # the target reads the same
    fresh = LinearDQN(3, 2, DQNConfig(feature_norm=True), torch.Generator().manual_seed(1))
    fresh.load_state_dict(agent.state_dict())
    torch.testing.assert_close(fresh.q_values(x), agent.q_values(x))
    old = {k: v for k, v in agent.state_dict().items() if k != "feature_scale"}
    fresh.load_state_dict(old)  # a head saved before feature_norm existed: unscaled
    assert fresh.feature_scale == 1.0
    plain = LinearDQN(3, 2, DQNConfig(), torch.Generator().manual_seed(0))
    plain.calibrate(feats)  # without feature_norm: nothing changes
    assert plain.feature_scale == 1.0


@pytest.mark.parametrize("norm", [True, False])
def test_feature_norm_makes_the_head_blind_to_the_features_scale(norm):
    """Adam's step is about lr per weight whatever the gradient's size, so a head on 50x larger
    features moves its Q-values 50x as fast; with feature_norm the two heads learn the same
    Q-function (the same trajectory, up to rounding), without it they do not."""
    qs = []
    for scale in (1.0, 50.0):
        replay = _chain_replay(scale)
        agent = LinearDQN(8, 3, DQNConfig(lr=1e-2, target_period=20, feature_norm=norm),
                          torch.Generator().manual_seed(0))  # fmt: skip
        agent.calibrate(replay.stored())
        for _ in range(100):
            agent.update(replay.sample(32))
        qs.append(agent.q_values(replay.stored()[:50]))
    close = torch.allclose(qs[0], qs[1], rtol=1e-3, atol=1e-4)
    assert close == norm, (qs[0][:2], qs[1][:2])


def test_replay_stored_holds_every_written_item_once():
    replay = FeatureReplay(10, 2, 1, n_step=1, gamma=0.9, dtype=torch.float32, seed=0)
    for t in range(7):  # env 0 wraps (capacity 5 slots per env); env 1 writes 3
        replay.add(np.array([0]), torch.tensor([[float(t)]]), [0], [0.0], [False], [False])
        if t < 3:
            replay.add(np.array([1]), torch.tensor([[100.0 + t]]), [0], [0.0], [False], [False])
    got = sorted(replay.stored().view(-1).tolist())
    assert got == [2.0, 3.0, 4.0, 5.0, 6.0, 100.0, 101.0, 102.0]
