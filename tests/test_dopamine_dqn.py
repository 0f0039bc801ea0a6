"""The agent that made the DQN Replay Dataset: Dopamine's DQN (``eval_preset=dopamine_dqn``),
its TF1 RMSProp, its max-target and its epsilon schedule, against hand transcriptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from pvn.agents.dqn import DQN, DQNConfig
from pvn.agents.policies import linearly_decaying_epsilon
from pvn.agents.rmsprop_tf import RMSPropTF
from pvn.cli import main
from pvn.replay.feature_replay import FeatureBatch


@pytest.mark.parametrize("centered,momentum", [(True, 0.0), (False, 0.0), (True, 0.9)])
def test_rmsprop_tf_follows_tf1s_update(centered, momentum):
    """TF1's ApplyRMSProp / ApplyCenteredRMSProp, transcribed: ms starts at ONE, epsilon inside
    the square root, momentum on the scaled gradient."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    opt = RMSPropTF([w], lr=2.5e-4, decay=0.95, momentum=momentum, eps=1e-5, centered=centered)
    ref = w.detach().numpy().copy()
    ms, mg, mom = np.ones_like(ref), np.zeros_like(ref), np.zeros_like(ref)
    for _ in range(6):
        g = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        g = g.numpy()
        ms = 0.95 * ms + 0.05 * g * g
        mg = 0.95 * mg + 0.05 * g
        denom = ms - (mg * mg if centered else 0.0) + 1e-5
        mom = momentum * mom + 2.5e-4 * g / np.sqrt(denom)
        ref = ref - mom
        np.testing.assert_allclose(w.detach().numpy(), ref, rtol=1e-12, atol=1e-15)


def test_first_rmsprop_tf_step_is_about_lr_times_g():
    """Why the TF1 flavour matters: with ms starting at 1, the first step is ~lr * g, where
    torch's RMSprop (ms from 0, eps outside the root) moves every weight by ~lr / sqrt(0.05)."""
    w = torch.zeros(3, requires_grad=True)
    w.grad = torch.tensor([1e-3, 1e-2, 1e-1])
    RMSPropTF([w], lr=1.0, decay=0.95, eps=1e-5, centered=True).step()
    torch.testing.assert_close(-w.detach(), w.grad / torch.sqrt(0.95 + 0.05 * w.grad**2
                               - (0.05 * w.grad) ** 2 + 1e-5))  # fmt: skip


def test_dqn_max_target_without_double_q():
    """``double_q=False``: y = r + discount * max_a Q_target(s', a), whatever the online values."""
    net = torch.nn.Linear(2, 3)
    agent = DQN(net, DQNConfig(lr=0.0, double_q=False, optimizer="rmsprop_tf"))
    with torch.no_grad():
        agent.target.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        agent.target.bias.zero_()
        net.weight.copy_(-agent.target.weight)  # online argmax != target argmax
        net.bias.zero_()
    batch = FeatureBatch(
        features=torch.tensor([[1.0, 2.0]]),
        action=torch.tensor([0]),
        ret=torch.tensor([0.5]),
        discount=torch.tensor([0.9]),
        next_features=torch.tensor([[2.0, -1.0]]),  # target values 2, -1, 1: max 2
        env=np.zeros(1, np.int64),
        slot=np.zeros(1, np.int64),
    )
    q = float(net(batch.features)[0, 0].detach())  # -1
    out = agent.update(batch)
    y = 0.5 + 0.9 * 2.0
    delta = y - q  # 3.3 > 1: the Huber loss is linear there
    assert float(out["loss"]) == pytest.approx(abs(delta) - 0.5)


def test_linearly_decaying_epsilon_is_dopamines():
    """Dopamine's schedule at its settings (decay 250k, warm-up 20k, final 0.01), by hand."""
    eps = [linearly_decaying_epsilon(s, 0.01, 250_000, 20_000) for s in (0, 20_000, 145_000)]
    assert eps == pytest.approx([1.0, 1.0, 0.01 + 0.99 * 0.5])
    assert linearly_decaying_epsilon(270_000, 0.01, 250_000, 20_000) == pytest.approx(0.01)
    assert linearly_decaying_epsilon(10**7, 0.01, 250_000, 20_000) == pytest.approx(0.01)
    assert linearly_decaying_epsilon(5, 0.05, 0, 0) == 0.05  # no decay: fixed


def test_dopamine_dqn_preset(capsys):
    args = ["evaluate", "eval_preset=dopamine_dqn", "run_dir=x", "--cfg", "job"]
    assert main(args) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["encoder"], cfg["protocol"], cfg["num_envs"]) == ("e2e", "dopamine", 1)
    assert cfg["torso"]["name"] == "nature" and cfg["steps"] == 50_000_000
    a = cfg["agent"]
    assert (a["optimizer"], a["lr"], a["double_q"], a["reward_clip"]) == (
        "rmsprop_tf",
        2.5e-4,
        False,
        "step",
    )
    assert a["rmsprop"] == {"decay": 0.95, "momentum": 0.0, "eps": 1e-5, "centered": True}
    assert (a["n_step"], a["gamma"], a["batch_size"], a["update_every"]) == (1, 0.99, 32, 4)
    assert (a["target_period"], a["min_replay"], a["capacity"]) == (2000, 20_000, 1_000_000)
    assert (a["epsilon_start"], a["epsilon_train"], a["epsilon_decay_steps"]) == (
        1.0,
        0.01,
        250_000,
    )
    assert a["max_grad_norm"] is None and a["epsilon_eval"] == 0.001
