"""``preset=paper`` and ``eval_preset=paper`` against NumPy transcriptions of the official rules.

The transcriptions are written from the rules of the PVN code (google-research ``pvn/``:
``offline.py``'s ``train_step``, ``state.py``'s soft target update, ``networks.py``) and of the
Acme DQN learner its ``online.py`` runs (``losses.PrioritizedDoubleQLearning`` with
``max_abs_reward=1``, ``optax.adam``, ``periodic_update``), as the README's "where pvn differs"
section states them; nothing here calls pvn's loss or optimizer code. The networks' forward passes
(torso features, random task nets) come from torch: the update rule is what is under test.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pvn.builders import tasks_option
from pvn.commands.evaluate import agent_for
from pvn.config import load_config
from pvn.networks.torsos import SamePool
from pvn.pretraining import PretrainConfig, build
from pvn.replay import TorchBatch
from pvn.replay.feature_replay import FeatureBatch
from pvn.settings import section


class NumpyAdam:
    """optax.adam (eps_root 0): the count is incremented before the bias correction."""

    def __init__(self, lr: float, b1: float, b2: float, eps: float) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.t = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for k, g in grads.items():
            m = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * g
            v = self.b2 * self.v.get(k, 0.0) + (1 - self.b2) * g * g
            self.m[k], self.v[k] = m, v
            m_hat, v_hat = m / (1 - self.b1**self.t), v / (1 - self.b2**self.t)
            params[k] = params[k] - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy().copy()  # float64 tensors would share memory


def _batch(ale_episodes, size: int = 6) -> TorchBatch:
    frames = ale_episodes[0][0]
    starts = np.arange(size) * 9 + 3
    stacks = np.stack([frames[s - 3 : s + 1] for s in starts])
    nexts = np.stack([frames[s - 2 : s + 2] for s in starts])
    gen = torch.Generator().manual_seed(1)
    return TorchBatch(
        torch.from_numpy(stacks),
        torch.randint(0, 4, (size,), generator=gen),
        torch.zeros(size),
        torch.from_numpy(nexts),
        torch.tensor([False, True, False, False, False, False][:size]),
    )


# --- pretraining: preset=paper -------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_learner():
    """``preset=paper`` on an IMPALA x1 torso with 32 features (the rule does not depend on the
    width) and the TD loss masked for 2 updates instead of 62,501."""
    cfg = load_config(
        "pretrain",
        [
            "preset=paper",
            "data.path=unused",
            "run_dir=unused",
            "torso.width=1",
            "torso.feature_dim=32",
            "td.warmup_steps=2",
        ],
    )
    return cfg, build(section(PretrainConfig, cfg), num_actions=4)


def test_paper_preset_runs_the_official_update(paper_learner, ale_episodes):
    """Three updates (two masked, one with TD) equal the official rule step by step:
    L = 1[s >= warmup] * mean_{b,t} 1/2 (y - Q(s, a))^2 + mean_{b,t} pinball(f + bias),
    y = 1[f(s) + bias > 0] + (1 - terminal) * 0.99 * mean_a' Q_target(s', a'); one Adam over the
    network (stepping on zero gradients while masked) and one over the biases; the target moves
    to 0.99 target + 0.01 online with the online weights from before the update."""
    cfg, learner = paper_learner
    assert cfg.td.warmup_mode == "zero_td" and cfg.tasks.calibration_reduce == "mean"
    batch = _batch(ale_episodes)
    net, tasks, head = learner.online, learner.tasks, learner.online.head
    B, T, A = len(batch.action), tasks.num_tasks, head.num_actions
    p, gamma, tau = cfg.tasks.target_proportion, cfg.data.gamma, cfg.td.target_tau
    o = cfg.optimizer
    net_adam = NumpyAdam(o.lr, *o.betas, o.eps)
    bias_adam = NumpyAdam(o.lr, *o.betas, o.eps)
    online = {k: _np(v) for k, v in net.named_parameters()}
    target = {k: _np(v) for k, v in learner.target.named_parameters()}
    bias = _np(tasks.bias)
    with torch.no_grad():
        f = _np(tasks.frozen(batch.observation))  # the random nets' outputs (B, T)
    act = batch.action.numpy()
    live = 1.0 - batch.terminal.numpy()
    for step in range(3):
        # the transcription's losses and gradients for this step
        pre = f + bias
        r = (pre > 0).astype(np.float64)
        g_bias = ((1 - p) - (pre < 0)).sum(0) / (B * T)
        with torch.no_grad():
            phi = _np(net.torso(batch.observation))
            phi_next = _np(learner.target.torso(batch.next_observation))
        q_next = (phi_next @ target["head.weight"].T + target["head.bias"]).reshape(B, T, A)
        y = r + live[:, None] * gamma * q_next.mean(2)
        q = (phi @ online["head.weight"].T + online["head.bias"]).reshape(B, T, A)
        q_sa = q[np.arange(B), :, act]  # (B, T)
        td_on = step >= cfg.td.warmup_steps
        d = (q_sa - y) / (B * T) * td_on  # dL/dQ(s, a)
        g_w, g_b = np.zeros_like(online["head.weight"]), np.zeros_like(online["head.bias"])
        rows = np.arange(T)[None, :] * A + act[:, None]  # (B, T) row of head t, action a_b
        np.add.at(g_w, rows.ravel(), (d[:, :, None] * phi[:, None, :]).reshape(B * T, -1))
        np.add.at(g_b, rows.ravel(), d.ravel())
        cal = (pre * ((1 - p) - (pre < 0))).mean()
        td = 0.5 * ((y - q_sa) ** 2).mean()

        out = learner.backward(batch, step)
        np.testing.assert_allclose(float(out["calibration_loss"]), cal, rtol=1e-5)
        if td_on:
            np.testing.assert_allclose(float(out["td_loss"]), td, rtol=1e-5)
        np.testing.assert_allclose(_np(tasks.bias.grad), g_bias, rtol=1e-5, atol=1e-9)
        grads = {k: np.zeros_like(v) for k, v in online.items()}
        if td_on:
            np.testing.assert_allclose(_np(head.weight.grad), g_w, rtol=1e-4, atol=1e-8)
            np.testing.assert_allclose(_np(head.bias.grad), g_b, rtol=1e-4, atol=1e-8)
            # the torso's gradient is backprop through its own layers: taken from autograd
            grads = {k: _np(v.grad) for k, v in net.named_parameters()}
            grads["head.weight"], grads["head.bias"] = g_w, g_b
        else:  # masked: no TD graph at all, yet the main Adam steps (on zeros) below
            assert all(v.grad is None for v in net.parameters())
        learner.apply(step, out)

        # the transcription's update: Polyak from the pre-update weights, then both Adams
        target = {k: (1 - tau) * target[k] + tau * online[k] for k in target}
        net_adam.step(online, grads)
        biases = {"bias": bias}
        bias_adam.step(biases, {"bias": g_bias})
        bias = biases["bias"]

        assert learner.optimizer.state[head.weight]["step"] == step + 1  # stepped when masked
        for k, v in net.named_parameters():
            np.testing.assert_allclose(_np(v), online[k], rtol=1e-5, atol=2e-7, err_msg=k)
        for k, v in learner.target.named_parameters():
            np.testing.assert_allclose(_np(v), target[k], rtol=1e-5, atol=2e-7, err_msg=k)
        np.testing.assert_allclose(_np(tasks.bias), bias, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("size,pads", [(84, (0, 1)), (42, (0, 1)), (21, (1, 1))])
def test_impala_max_pool_pads_as_flax_same(size, pads):
    """The IMPALA stacks' 3x3/2 max-pool, as Flax's ``padding='SAME'`` pads (values read from
    ``jax.lax.padtype_to_pads``: 84 and 42 pad 0 before and 1 after, 21 pads 1 and 1), with
    -inf: a NumPy window maximum over the padded map."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    got = SamePool(size)(x).numpy()
    before, after = pads
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (before, after), (before, after)), "constant",
                    constant_values=-np.inf)  # fmt: skip
    out = -(-size // 2)
    want = np.empty((2, 3, out, out), np.float32)
    for i in range(out):
        for j in range(out):
            want[:, :, i, j] = padded[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(2, 3))
    np.testing.assert_array_equal(got, want)


def test_official_hash_matches_the_pvn_codes_integer_rule(ale_episodes):
    """The official rule, transcribed with Python integers: pixels in (height, width, frame)
    order, each uint8 x uint16 product wrapped to 16 bits and folded once by the Mersenne shift,
    the folded sum plus a_0 folded once more (not reduced mod P), fires when that is 0 mod m."""
    gen = torch.Generator().manual_seed(5)
    fam = tasks_option("indicator_hash", gen, num_tasks=3, target_proportion=0.01)
    assert fam.variant == "official" and fam.bins == 100
    x = _batch(ale_episodes, 5).observation
    got = fam(x, torch.zeros(len(x))).rewards
    h_seen = []
    for b in range(len(x)):
        pixels = x[b].permute(1, 2, 0).reshape(-1).tolist()  # HWC, as the official code reads
        for i in range(3):
            a0, a = fam.coefficients[i, 0].item(), fam.coefficients[i, 1:].tolist()
            total = 0
            for aj, xj in zip(a, pixels, strict=True):
                v = (aj * xj) % 2**16
                total += (v & 8191) + (v >> 13)
            u = a0 + total
            h = (u & 8191) + (u >> 13)
            h_seen.append(h)
            assert got[b, i] == float(h % 100 == 0)
    assert max(h_seen) > 8191  # the single fold leaves h above P: the official rule, not mod P


def test_bf16_leaves_task_rewards_unchanged(paper_learner, ale_episodes):
    """Under bf16 autocast the frozen task outputs are computed and thresholded in float32:
    the rewards and calibration loss equal the float32 ones exactly."""
    _, learner = paper_learner
    batch = _batch(ale_episodes)
    ref = learner.tasks(batch.observation, batch.reward)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = learner.task_output(batch)
    assert got.rewards.dtype == torch.float32
    torch.testing.assert_close(got.rewards, ref.rewards, rtol=0, atol=0)
    torch.testing.assert_close(got.calibration_loss, ref.calibration_loss, rtol=0, atol=0)


# --- evaluation: eval_preset=paper ---------------------------------------------------------


def test_paper_evaluation_agent_runs_acmes_double_dqn_update():
    """The linear head under ``eval_preset=paper`` equals Acme's DQN learner as the PVN code ran
    it, update for update: y = clip(R^(5), -1, 1) + discount * Q_target(s', argmax Q(s', .)),
    loss = mean Huber_1(y - Q(s, a)), no gradient clip, Adam(6.25e-5, eps 1.5e-4), the target
    copied after every 2,000th update."""
    cfg = load_config("evaluate", ["eval_preset=paper", "encoder=random", "run_dir=unused"])
    D, A, B = 8, 4, 32
    agent = agent_for(cfg, SimpleNamespace(feature_dim=D), A, torch.device("cpu"))
    agent.network.double(), agent.target.double()  # float64: 2,001 steps without float32 drift
    gen = torch.Generator().manual_seed(0)
    f64 = torch.float64
    batch = FeatureBatch(
        features=30 * torch.randn(B, D, generator=gen, dtype=f64),
        action=torch.randint(0, A, (B,), generator=gen),
        ret=3 * torch.randn(B, generator=gen, dtype=f64),  # raw n-step returns, mostly |R| > 1
        discount=torch.where(torch.rand(B, generator=gen) < 0.2, 0.0, 0.99**5).to(f64),
        next_features=30 * torch.randn(B, D, generator=gen, dtype=f64),
        env=np.zeros(B, np.int64),
        slot=np.arange(B),
    )
    phi, phi_next = _np(batch.features), _np(batch.next_features)
    act, ret, disc = batch.action.numpy(), _np(batch.ret), _np(batch.discount)
    assert (np.abs(ret) > 1).mean() > 0.5
    a = cfg.agent
    adam = NumpyAdam(a.lr, 0.9, 0.999, a.adam_eps)
    online = {"weight": _np(agent.network.weight), "bias": _np(agent.network.bias)}
    target = dict(online)
    period = a.target_period
    for update in range(1, period + 2):
        q_next = phi_next @ online["weight"].T + online["bias"]
        q_next_target = phi_next @ target["weight"].T + target["bias"]
        best = q_next.argmax(1)
        y = np.clip(ret, -1, 1) + disc * q_next_target[np.arange(B), best]
        q = (phi @ online["weight"].T + online["bias"])[np.arange(B), act]
        delta = y - q
        huber = np.where(np.abs(delta) <= 1, 0.5 * delta**2, np.abs(delta) - 0.5)
        dq = -np.clip(delta, -1, 1) / B
        g_w, g_b = np.zeros_like(online["weight"]), np.zeros_like(online["bias"])
        np.add.at(g_w, act, dq[:, None] * phi)
        np.add.at(g_b, act, dq)
        out = agent.update(batch)
        adam.step(online, {"weight": g_w, "bias": g_b})
        if update % period == 0:
            target = dict(online)
        if update in (1, period - 1, period, period + 1):
            np.testing.assert_allclose(float(out["loss"]), huber.mean(), rtol=1e-10)
            norm = np.sqrt((g_w**2).sum() + (g_b**2).sum())
            np.testing.assert_allclose(float(out["grad_norm"]), norm, rtol=1e-10)
            if update == 1:
                assert norm > 10  # a clip at the config's 10 would have changed this step
            for k, v in agent.network.named_parameters():
                np.testing.assert_allclose(_np(v), online[k], rtol=1e-10, atol=1e-12)
            for k, v in agent.target.named_parameters():
                np.testing.assert_allclose(_np(v), target[k], rtol=1e-10, atol=1e-12)


# --- scoring: rliable as the oracle ----------------------------------------------------------


def _score_matrices() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.normal(0.5, 0.4, size=(5, 3)),  # 5 runs x 3 games
        rng.gamma(1.5, 0.6, size=(10, 7)),  # skewed, as human-normalised scores are
        np.round(rng.normal(0, 1, size=(3, 4)), 1),  # ties
    ]


@pytest.mark.parametrize("which", range(3))
@pytest.mark.slow
def test_aggregates_equal_rliables(which):
    """IQM, median and mean equal ``rliable.metrics``; their stratified-bootstrap percentile
    CIs equal ``rliable.library.get_interval_estimates``' up to the Monte Carlo error of 50,000
    replicates each (the two draw different indices)."""
    from rliable import library, metrics

    from pvn.analysis.scores import aggregate

    scores = _score_matrices()[which]
    ours = aggregate(scores, reps=50_000, seed=0)
    funcs = {
        "IQM": metrics.aggregate_iqm,
        "median": metrics.aggregate_median,
        "mean": metrics.aggregate_mean,
    }
    np.random.seed(0)  # noqa: NPY002 (rliable's bootstrap draws from the global generator)
    point, interval = library.get_interval_estimates(
        {"m": scores},
        lambda x: np.array([f(x) for f in funcs.values()]),
        reps=50_000,
    )
    spread = scores.max() - scores.min()
    for i, name in enumerate(funcs):
        assert ours[name]["value"] == pytest.approx(point["m"][i], abs=1e-12)
        lo, hi = interval["m"][:, i]
        assert ours[name]["ci_low"] == pytest.approx(lo, abs=0.01 * spread)
        assert ours[name]["ci_high"] == pytest.approx(hi, abs=0.01 * spread)


def test_probability_of_improvement_equals_rliables():
    from rliable import metrics

    from pvn.analysis.scores import probability_of_improvement

    a, _, c = _score_matrices()
    rng = np.random.default_rng(1)
    for x, y in ((a, a + rng.normal(0, 0.3, a.shape)), (c, c[::-1]), (a[:4], a[1:] + 0.1)):
        assert probability_of_improvement(x, y) == pytest.approx(
            metrics.probability_of_improvement(x, y), abs=1e-12
        )
    assert probability_of_improvement(c, c) == 0.5
