"""The PVN learner: TD targets by hand, and convergence to the closed-form successor measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pvn.builders import tasks_option
from pvn.learner import PVNLearner, TDConfig, td_target
from pvn.networks import MultiTaskHead, PVNNetwork, build_torso
from pvn.optim import build_optimizer
from pvn.replay import TorchBatch
from pvn.settings import option_defaults


def test_td_target_by_hand():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    terminal = torch.tensor([False, True])
    q_next = torch.tensor([[[1.0, 3.0, 2.0], [0.0, -3.0, 0.0]], [[5.0, 5.0, 5.0], [1.0, 2.0, 3.0]]])
    # mean: row 0: 1 + 0.9 * 2 = 2.8, 0 + 0.9 * -1 = -0.9; row 1 terminal: rewards only
    expected_mean = torch.tensor([[2.8, -0.9], [0.0, 1.0]])
    torch.testing.assert_close(td_target(rewards, terminal, q_next, 0.9, "mean"), expected_mean)
    # max: row 0: 1 + 0.9 * 3 = 3.7, 0 + 0.9 * 0 = 0
    expected_max = torch.tensor([[3.7, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(td_target(rewards, terminal, q_next, 0.9, "max"), expected_max)


def _distinct_frames(ale_episodes, k):
    frames = np.concatenate([e[0] for e in ale_episodes])
    picked = [frames[0]]
    for f in frames[1:]:
        if all(np.abs(f.astype(int) - p).sum() > 5000 for p in picked):
            picked.append(f)
        if len(picked) == k:
            return np.stack(picked)
    raise AssertionError("not enough distinct frames")


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.slow
def test_learns_the_closed_form_successor_measure(ale_episodes, center):
    """4 states (real frames), 2 actions, known deterministic transitions, uniform behaviour.
    Each head must approach Q(s, a) = r(s) + gamma * V(T[s, a]), V = (I - gamma P_pi)^-1 r,
    the successor measure of the task's set under the uniform policy. Centred (``td.center``),
    the rewards are r - c with c the family's base rate (1/2 here) and, P being stochastic,
    V_c = V - c / (1 - gamma), so the heads must approach Q - c / (1 - gamma)."""
    gamma, K, A = 0.5, 4, 2
    T = np.array([[1, 2], [2, 0], [3, 3], [0, 1]])  # next state of (s, a)
    frames = torch.from_numpy(_distinct_frames(ale_episodes, K))
    stacks = frames[:, None].expand(K, 4, 84, 84).contiguous()  # a state's stack: its frame x4
    gen = torch.Generator().manual_seed(0)
    tasks = tasks_option("indicator_hash", gen, num_tasks=8, target_proportion=0.5)
    r = tasks(stacks, torch.zeros(K)).rewards.numpy().astype(np.float64)  # (K, tasks)
    assert 0 < r.mean() < 1
    P = np.zeros((K, K))
    for s in range(K):
        for a in range(A):
            P[s, T[s, a]] += 1 / A
    V = np.linalg.solve(np.eye(K) - gamma * P, r)  # (K, tasks)
    Q = r[:, None, :] + gamma * V[T]  # (K, A, tasks)
    if center:
        assert tasks.base_rate == 0.5
        Q = Q - 0.5 / (1 - gamma)

    torso = build_torso("nature", gen, feature_dim=64)
    net = PVNNetwork(torso, MultiTaskHead(64, 8, A, gen))
    opt = build_optimizer({**option_defaults("optimizer", "adam"), "lr": 1e-3}, net.parameters())
    cfg = TDConfig(target_tau=0.05, center=center, warmup_steps=0)
    learner = PVNLearner(net, tasks, opt, None, cfg, gamma, bf16=False)
    rng = np.random.default_rng(0)
    for step in range(600):
        s = rng.integers(0, K, 32)
        a = rng.integers(0, A, 32)
        s2 = T[s, a]
        batch = TorchBatch(
            stacks[s], torch.from_numpy(a), torch.zeros(32), stacks[s2], torch.zeros(32, dtype=bool)
        )
        learner.update(batch, step)
    with torch.no_grad():
        q, _ = net(stacks)  # (K, tasks, A)
    learned = q.permute(0, 2, 1).numpy()  # (K, A, tasks)
    assert np.abs(learned - Q).max() < 0.05, np.abs(learned - Q).max()


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_terminal_transitions_do_not_bootstrap(aggregate):
    """With every transition terminal, each head learns exactly its reward."""
    gen = torch.Generator().manual_seed(1)
    tasks = tasks_option("reward", gen)
    torso = build_torso("nature", gen, feature_dim=32)
    net = PVNNetwork(torso, MultiTaskHead(32, 1, 3, gen))
    opt = build_optimizer(
        {**option_defaults("optimizer", "plain_sgd"), "lr": 0.05}, net.parameters()
    )
    td = TDConfig(aggregate=aggregate, target_tau=None, target_period=10, warmup_steps=0)
    learner = PVNLearner(net, tasks, opt, None, td, 0.99, bf16=False)
    obs = torch.zeros(8, 4, 84, 84, dtype=torch.uint8)
    batch = TorchBatch(
        obs, torch.zeros(8, dtype=torch.long), torch.full((8,), 0.7), obs, torch.ones(8, dtype=bool)
    )
    for step in range(300):
        learner.update(batch, step)
    with torch.no_grad():
        q, _ = net(obs[:1])
    assert abs(float(q[0, 0, 0]) - 0.7) < 1e-3
