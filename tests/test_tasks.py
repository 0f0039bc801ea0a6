"""Auxiliary task families against independent references, on real ALE frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pvn.auxiliary import build_tasks
from pvn.auxiliary.init import same_pad
from pvn.auxiliary.random_nets import RandomConvNets
from pvn.builders import tasks_option


@pytest.fixture(scope="module")
def stacks(ale_episodes) -> torch.Tensor:
    """Every 4-frame stack of consecutive frames in the real Breakout episodes."""
    frames = np.concatenate([e[0] for e in ale_episodes])
    idx = np.arange(3, len(frames))[:, None] + np.arange(-3, 1)
    return torch.from_numpy(frames[idx])


def test_grouped_random_nets_equal_separate_nets(stacks):
    """The grouped implementation computes M independent Nature-DQN nets (SAME padding)."""
    gen = torch.Generator().manual_seed(0)
    nets = RandomConvNets(3, 2, gen)
    x = stacks[:5].float() / 255
    got = nets(stacks[:5])
    convs = [m for m in nets.convs if isinstance(m, torch.nn.Conv2d)]
    for m in range(3):
        h, size = x, 84
        for conv, c_out in zip(convs, (32, 64, 64), strict=True):
            w = conv.weight[m * c_out : (m + 1) * c_out]
            b = conv.bias[m * c_out : (m + 1) * c_out]
            k, s = conv.kernel_size[0], conv.stride[0]
            lo, hi = same_pad(size, k, s)
            h = F.relu(F.conv2d(F.pad(h, (lo, hi, lo, hi)), w, b, stride=s))
            size = -(-size // s)
        out = F.relu(h.flatten(1) @ nets.dense_w[m] + nets.dense_b[m])
        torch.testing.assert_close(got[:, 2 * m : 2 * m + 2], out, rtol=1e-5, atol=1e-5)
    assert size == 11  # SAME padding keeps 84 -> 21 -> 11 -> 11


def test_rnd_indicators_calibrate_to_the_target_proportion(stacks):
    """Only the biases learn (quantile loss); each indicator's firing rate reaches p.

    (With the PVN code's final relu some tasks cannot calibrate; see IndicatorRND's docstring
    and the test below.)"""
    p = 0.1
    gen = torch.Generator().manual_seed(0)
    fam = tasks_option("indicator_rnd", gen, num_tasks=20, tasks_per_module=10, target_proportion=p)
    assert [n for n, q in fam.named_parameters() if q.requires_grad] == ["bias"]
    frozen = {k: v.clone() for k, v in fam.state_dict().items() if k != "bias"}
    opt = torch.optim.SGD([fam.bias], lr=0.02)
    # Robbins-Monro step sizes (sum diverges, squares converge): lr_t = 0.02 / (1 + t / 50)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t / 50))
    rng = np.random.default_rng(0)
    for _ in range(600):
        batch = stacks[rng.integers(0, len(stacks), 32)]
        out = fam(batch, torch.zeros(32))
        opt.zero_grad()
        out.calibration_loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        rate = fam(stacks, torch.zeros(len(stacks))).rewards.mean(0)
    assert abs(float(rate.mean()) - p) < 0.01, rate
    assert float((rate - p).abs().max()) < 0.04, rate
    for k, v in fam.state_dict().items():  # the random networks never moved
        if k != "bias":
            assert torch.equal(v, frozen[k])


def test_final_relu_makes_some_indicators_uncalibratable(stacks):
    """Why ``final_relu`` is off by default: with it, outputs that are 0 on more than a fraction
    1 - p of the states leave no bias with firing rate p."""
    gen = torch.Generator().manual_seed(0)
    nets = RandomConvNets(2, 10, gen, final_relu=True)
    zero_frac = (nets(stacks) == 0).float().mean(0)
    assert (zero_frac > 0.9).sum() >= 3


def test_exact_hash_matches_integer_arithmetic(stacks):
    """h_i(x) = ((a_i0 + sum_j a_ij x_j) mod P) mod m, checked with Python's exact integers."""
    gen = torch.Generator().manual_seed(3)
    fam = tasks_option("indicator_hash", gen, num_tasks=4, target_proportion=0.2, variant="exact")
    x = stacks[::50][:6]
    got = fam(x, torch.zeros(len(x))).rewards
    coef = fam.coefficients.tolist()
    P, m = 2**13 - 1, 5
    for b, obs in enumerate(x.reshape(len(x), -1).tolist()):
        for i in range(4):
            a0, a = coef[i][0], coef[i][1:]
            h = ((a0 + sum(aj * xj for aj, xj in zip(a, obs, strict=True))) % P) % m
            assert got[b, i] == float(h == 0)


@pytest.mark.slow
def test_hash_fires_at_about_p(stacks):
    gen = torch.Generator().manual_seed(4)
    fam = tasks_option("indicator_hash", gen, num_tasks=50, target_proportion=0.1)
    rate = fam(stacks, torch.zeros(len(stacks))).rewards.mean()
    # 50 tasks x ~1000 stacks (correlated frames): a loose binomial bound around p
    assert abs(float(rate) - 0.1) < 0.02
    assert fam.base_rate == 0.1  # what td.center subtracts: 1 / m, m = 10 bins


def test_only_indicator_families_have_a_base_rate():
    gen = torch.Generator().manual_seed(0)
    assert (
        tasks_option("indicator_rnd", gen, num_tasks=10, target_proportion=0.05).base_rate == 0.05
    )
    assert tasks_option("random_cumulants", gen, num_tasks=10).base_rate is None
    assert tasks_option("reward", gen).base_rate is None


def test_random_cumulants_and_reward():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 255, (4, 4, 84, 84), dtype=torch.uint8)
    cum = tasks_option("random_cumulants", gen, num_tasks=10)(obs, torch.zeros(4)).rewards
    assert cum.shape == (4, 10) and cum.abs().max() < 1 and cum.std() > 0
    rew = tasks_option("reward", gen)(obs, torch.tensor([1.0, 0.0, -1.0, 0.5])).rewards
    assert rew[:, 0].tolist() == [1.0, 0.0, -1.0, 0.5]


def test_bad_family_arguments():
    gen = torch.Generator()
    with pytest.raises(ValueError, match="multiple of"):
        tasks_option("indicator_rnd", gen, num_tasks=15, tasks_per_module=10)
    with pytest.raises(ValueError, match="exactly 1 task"):
        tasks_option("reward", gen, num_tasks=3)
    with pytest.raises(ValueError, match="unknown"):
        build_tasks("nope", gen, num_tasks=3)


def test_a_task_familys_defaults_live_in_its_option_file_alone():
    """Every value a ``tasks=`` option sets is a required argument of its family (no second
    default in Python), and the option's file builds the family as it stands."""
    import inspect

    from pvn.auxiliary import CALIBRATION_KEYS, FAMILIES
    from pvn.settings import option_defaults

    for name, cls in FAMILIES.items():
        params = inspect.signature(cls).parameters
        for key in set(option_defaults("tasks", name)) - {"name", *CALIBRATION_KEYS}:
            assert params[key].default is inspect.Parameter.empty, f"{name}.{key}"
        assert tasks_option(name, torch.Generator()).num_tasks >= 1
