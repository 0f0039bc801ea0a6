"""Mixture-of-experts layers: routing rules, losses and stacks checked against hand computations
and the rules as the papers state them (Shazeer 2017, Switch, Soft MoE, MomentumSMoE)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from pvn.errors import ConfigError
from pvn.networks.moe import (
    AdamSMoE,
    MomentumSMoE,
    SMoEStack,
    SoftMoE,
    TopKMoE,
    moe_aux_loss,
    moe_features_block,
    moe_load_rng_state,
    moe_rng_state,
    moe_stats,
    tokenize,
)
from pvn.networks.torsos import impala, nature

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs" / "moe").glob("*.yaml"))
MOE_CONFIGS = [p for p in CONFIGS if p.stem != "none"]
SMOE = Path(__file__).parents[1] / "configs" / "moe" / "smoe.yaml"
NATURE_OUT, IMPALA_OUT = (64, 7, 7), (32, 11, 11)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed))


def expert_by_hand(layer, e: int, x: torch.Tensor) -> torch.Tensor:
    ex = layer.experts
    h = torch.relu(x @ ex.w1[e] + ex.b1[e, 0])
    return h @ ex.w2[e] + ex.b2[e, 0]


def priority_keep(experts: np.ndarray, capacity: int) -> np.ndarray:
    """The capacity rule as stated: all first choices in token order, then all second
    choices, ...; an expert takes the first ``capacity`` assignments it is offered."""
    T, k = experts.shape
    keep = np.zeros((T, k), bool)
    taken: dict[int, int] = {}
    for j in range(k):
        for t in range(T):
            e = int(experts[t, j])
            if taken.get(e, 0) < capacity:
                keep[t, j] = True
                taken[e] = taken.get(e, 0) + 1
    return keep


# ------------------------------------------------------------------------------------------
# top-k routing
# ------------------------------------------------------------------------------------------


def test_capacity_is_ceil_of_factor_tokens_k_over_experts():
    layer = TopKMoE(8, 4, 2, 16, 1.25)
    assert layer.capacity(49) == math.ceil(1.25 * 49 * 2 / 4) == 31
    assert TopKMoE(8, 3, 2, 16, 0.75).capacity(4) == 2
    assert TopKMoE(8, 4, 1, 16, 1.0).capacity(1) == 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_routing_respects_k_and_capacity(k):
    B, T, d, E = 3, 49, 16, 4
    layer = TopKMoE(d, E, k, 32, capacity_factor=0.6, noisy=False, gen=gen())
    x = rand(B, T, d)
    r = layer.route(x)
    C = layer.capacity(T)
    assert r.capacity == min(C, T)
    dispatch, combine = layer.dispatch_combine(r)
    per_slot = dispatch.view(B, T, E, r.capacity)
    # each buffer place holds at most one token; each expert at most C tokens per sample
    assert per_slot.sum(1).max() <= 1
    assert per_slot.sum((1, 3)).max() <= C
    # a token goes to at most k experts, and to its k largest logits
    assert per_slot.sum(3).amax(2).max() <= 1
    assert per_slot.sum((2, 3)).max() <= k
    best = r.logits.argsort(-1, descending=True)[..., :k]
    assert torch.equal(best, r.experts)
    # which assignments are kept follows the priority rule
    for b in range(B):
        keep = priority_keep(r.experts[b].numpy(), C)
        assert np.array_equal(keep, r.keep[b].numpy())
    assert (~r.keep).any(), "capacity_factor 0.6 should drop something"
    # stats: dropped assignments, utilisation
    layer(x)
    kept = dispatch.sum()
    assert torch.allclose(layer.stats["dropped_frac"], 1 - kept / (B * T * k))
    assert torch.allclose(layer.stats["utilisation"], kept / (B * C * E))
    # combine weights are the top-k softmax gates of the kept choices
    gates = torch.softmax(r.logits.topk(k, -1).values, -1) * r.keep
    assert torch.allclose(combine.sum(-1), gates.sum(-1))


def test_dropped_tokens_counted_and_passed_through_by_hand():
    """Router W = I on 3-dim tokens, so each token's logits are the token itself."""
    layer = TopKMoE(3, 3, 2, 8, capacity_factor=0.75, noisy=False, gen=gen())
    with torch.no_grad():
        layer.router.copy_(torch.eye(3))
    x = torch.tensor([[[3.0, 2, 0], [3, 2, 0], [3, 0, 2], [0, 3, 2]]])
    # C = ceil(0.75 * 4 * 2 / 3) = 2. First choices: e0 <- t0, t1, (t2 dropped); e1 <- t3.
    # Second choices: e1 <- t0, (t1 dropped); e2 <- t2, t3.
    assert layer.capacity(4) == 2
    r = layer.route(x)
    assert r.experts[0].tolist() == [[0, 1], [0, 1], [0, 2], [1, 2]]
    assert r.keep[0].tolist() == [[True, True], [True, False], [False, True], [True, True]]
    y = layer(x)
    assert torch.allclose(layer.stats["dropped_frac"], torch.tensor(2 / 8))
    g = torch.softmax(torch.tensor([3.0, 2.0]), 0)  # gates of [3, 2, .] tokens
    with torch.no_grad():
        expected = torch.stack(
            [
                g[0] * expert_by_hand(layer, 0, x[0, 0]) + g[1] * expert_by_hand(layer, 1, x[0, 0]),
                g[0] * expert_by_hand(layer, 0, x[0, 1]),  # second choice dropped
                g[1] * expert_by_hand(layer, 2, x[0, 2]),  # first choice dropped
                g[0] * expert_by_hand(layer, 1, x[0, 3]) + g[1] * expert_by_hand(layer, 2, x[0, 3]),
            ]
        )
    assert torch.allclose(y[0], expected, atol=1e-6)

    # every choice of a token dropped: zero output, so a residual stack passes it through
    one = TopKMoE(2, 2, 1, 8, capacity_factor=1.0, noisy=False, gen=gen())
    with torch.no_grad():
        one.router.copy_(torch.eye(2))
    x = torch.tensor([[[1.0, 0]] * 5 + [[0.0, 1]]])  # 5 tokens want e0, capacity ceil(6/2) = 3
    y = one(x)
    assert torch.allclose(one.stats["dropped_frac"], torch.tensor(2 / 6))
    assert torch.equal(y[0, 3:5], torch.zeros(2, 2))
    assert (y[0, :3].abs().sum(-1) > 0).all()
    stack = SMoEStack([one], 2)
    assert torch.allclose(stack(x)[0, 3:5], stack.norms[0](x[0, 3:5]))


def test_gate_gradients_flow():
    layer = TopKMoE(8, 4, 2, 16, 1.25, noisy=True, gen=gen())
    layer.train()
    layer(rand(2, 10, 8)).sum().backward()
    assert layer.router.grad is not None and layer.router.grad.abs().sum() > 0
    assert layer.noise.grad is not None and layer.noise.grad.abs().sum() > 0
    assert layer.experts.w1.grad.abs().sum() > 0


def test_load_balancing_loss_by_hand():
    B, T, d, E, k = 2, 20, 6, 5, 2
    layer = TopKMoE(d, E, k, 8, 1.0, noisy=False, load_balance_coef=0.3, gen=gen())
    x = rand(B, T, d)
    layer(x)
    logits = (x.reshape(-1, d) @ layer.router.detach().T).numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    top = np.argsort(-logits, axis=1)[:, :k]
    f = np.array([(top == i).sum() for i in range(E)]) / (B * T * k)
    P = probs.mean(0)
    expected = E * float((f * P).sum())
    assert layer.stats["balance_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert layer.aux_loss.item() == pytest.approx(0.3 * expected, rel=1e-5)
    assert torch.allclose(layer.stats["load"].double(), torch.from_numpy(E * f))
    layer.aux_loss.backward()
    assert layer.router.grad.abs().sum() > 0  # through P
    assert moe_aux_loss(layer).item() == pytest.approx(0.3 * expected, rel=1e-5)


def test_noise_only_while_training_and_from_the_given_generator():
    layer = TopKMoE(8, 4, 1, 16, 4.0, noisy=True, gen=gen())
    x = rand(2, 10, 8)
    layer.eval()
    clean = layer.route(x).logits
    assert torch.allclose(clean, x @ layer.router.detach().T)
    layer.train()
    a = layer.route(x, gen(5)).logits
    b = layer.route(x, gen(5)).logits
    c = layer.route(x, gen(6)).logits
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the noise is N(0, 1) * softplus(x W_noise)
    eps = torch.randn(a.shape, generator=gen(5))
    std = torch.nn.functional.softplus(x @ layer.noise.detach().T)
    assert torch.allclose(a, clean + eps * std, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Soft MoE
# ------------------------------------------------------------------------------------------


def test_soft_moe_weights_normalised_and_output_by_hand():
    B, T, d, E, S = 2, 9, 5, 3, 2
    layer = SoftMoE(d, E, S, 7, gen=gen())
    x = rand(B, T, d)
    dispatch, combine = layer.weights(x)
    assert torch.allclose(dispatch.sum(1), torch.ones(B, E * S))  # over tokens, per slot
    assert torch.allclose(combine.sum(2), torch.ones(B, T))  # over slots, per token
    y = layer(x)
    with torch.no_grad():
        logits = x @ layer.phi
        expected = torch.zeros(B, T, d)
        for b in range(B):
            D = torch.softmax(logits[b], 0)
            Cw = torch.softmax(logits[b], 1)
            for e in range(E):
                for s in range(S):
                    j = e * S + s
                    slot_in = (D[:, j : j + 1] * x[b]).sum(0)
                    expected[b] += Cw[:, j : j + 1] * expert_by_hand(layer, e, slot_in)
    assert torch.allclose(y, expected, atol=1e-5)
    assert moe_aux_loss(layer).item() == 0.0
    assert moe_stats(layer)["dropped_frac"].item() == 0.0


# ------------------------------------------------------------------------------------------
# stacks
# ------------------------------------------------------------------------------------------


def topk_layers(n: int, d: int = 8, noisy: bool = False, seed: int = 0) -> list[TopKMoE]:
    g = gen(seed)
    return [TopKMoE(d, 4, 2, 16, 1.25, noisy=noisy, gen=g) for _ in range(n)]


def perturb_norms_(stack) -> None:
    with torch.no_grad():
        for i, norm in enumerate(stack.norms):
            norm.weight.add_(0.1 * (i + 1))
            norm.bias.sub_(0.05 * (i + 1))


@pytest.mark.parametrize("train", [False, True])
def test_momentum_with_mu_zero_is_the_plain_residual_stack(train):
    stack = MomentumSMoE(topk_layers(3, noisy=True), 8, mu=0.0, gamma=1.0)
    perturb_norms_(stack)
    stack.train(train)
    x = rand(4, 12, 8)
    state = moe_rng_state(stack)
    y = stack(x)
    moe_load_rng_state(stack, state)  # same noise draws for the reference
    ref = x
    for f, norm in zip(stack.layers, stack.norms, strict=True):
        ref = norm(ref + f(ref))
    assert torch.equal(y, ref)
    plain = SMoEStack([], 8)
    plain.layers, plain.norms = stack.layers, stack.norms
    moe_load_rng_state(stack, state)
    assert torch.equal(plain(x), y)


def test_momentum_follows_the_papers_heavy_ball_rule():
    """Paper: p <- mu p + gamma g(x), x <- norm(x - p) with g the 'gradient'; our f = -g."""
    mu, gamma = 0.7, 0.5
    stack = MomentumSMoE(topk_layers(3), 8, mu=mu, gamma=gamma).eval()
    perturb_norms_(stack)
    x = rand(4, 12, 8)
    p, ref = torch.zeros_like(x), x
    for f, norm in zip(stack.layers, stack.norms, strict=True):
        p = mu * p + gamma * (-f(ref))
        ref = norm(ref - p)
    assert torch.allclose(stack(x), ref, atol=1e-6)
    plain = SMoEStack([], 8)
    plain.layers, plain.norms = stack.layers, stack.norms
    assert not torch.allclose(stack(x), plain(x), atol=1e-3)  # the momentum matters


def test_adam_smoe_first_layer_adam_step_then_heavy_ball():
    mu, gamma, gamma1, b1, b2 = 0.7, 0.8, 0.5, 0.9, 0.999
    stack = AdamSMoE(topk_layers(3), 8, mu=mu, gamma=gamma, gamma1=gamma1, beta1=b1, beta2=b2)
    stack.eval()
    perturb_norms_(stack)
    x = rand(4, 12, 8)
    g = -stack.layers[0](x)  # the paper's gradient
    m, v = (1 - b1) * g, (1 - b2) * g**2
    ref = stack.norms[0](x - gamma1 * m / torch.sqrt(v + 1e-8))
    p = gamma * g
    for f, norm in zip(stack.layers[1:], stack.norms[1:], strict=True):
        p = mu * p + gamma * (-f(ref))
        ref = norm(ref - p)
    assert torch.allclose(stack(x), ref, atol=1e-5)


# ------------------------------------------------------------------------------------------
# tokens, equivariance, batch independence
# ------------------------------------------------------------------------------------------


def test_token_modes():
    x = rand(2, 3, 4, 5)
    px = tokenize(x, "per_pixel")
    assert px.shape == (2, 20, 3) and torch.equal(px[1, 2 * 5 + 3], x[1, :, 2, 3])
    fm = tokenize(x, "per_feature_map")
    assert fm.shape == (2, 3, 20) and torch.equal(fm[1, 2], x[1, 2].flatten())
    ps = tokenize(x, "per_sample")
    assert ps.shape == (2, 1, 60) and torch.equal(ps[1, 0], x[1].flatten())


def equivariance_cases():
    C = 6
    yield "topk", TopKMoE(C, 4, 2, 16, capacity_factor=2.0, noisy=True, gen=gen())
    yield "soft", SoftMoE(C, 4, 3, 16, gen=gen())
    layers = [TopKMoE(C, 4, 2, 16, 2.0, noisy=True, gen=gen(i)) for i in range(2)]
    yield "momentum", MomentumSMoE(layers, C)
    layers = [TopKMoE(C, 4, 2, 16, 2.0, noisy=True, gen=gen(i)) for i in range(2)]
    yield "adam", AdamSMoE(layers, C)


@pytest.mark.parametrize("case", list(equivariance_cases()), ids=lambda c: c[0])
def test_permuting_pixels_permutes_outputs(case):
    """capacity_factor E/k = 2 gives C >= T (nothing dropped); eval mode turns noise off."""
    _, module = case
    module.eval()
    x = rand(3, 6, 5, 5)
    perm = torch.randperm(25, generator=gen(3))
    x_perm = x.flatten(2)[:, :, perm].view_as(x)
    tokens, tokens_perm = tokenize(x, "per_pixel"), tokenize(x_perm, "per_pixel")
    assert torch.equal(tokens[:, perm], tokens_perm)
    assert torch.allclose(module(tokens)[:, perm], module(tokens_perm), atol=1e-5)


def test_a_samples_output_does_not_depend_on_the_batch():
    """Routing groups are single samples, so capacity is not shared across the batch."""
    block = moe_features_block(load(SMOE), NATURE_OUT, 32, gen()).eval()
    x = rand(5, *NATURE_OUT).relu()
    together = block(x)
    alone = torch.cat([block(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-5)


# ------------------------------------------------------------------------------------------
# builder
# ------------------------------------------------------------------------------------------


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_config_file_is_tested():
    assert {p.stem for p in MOE_CONFIGS} == {"smoe", "momentum_smoe", "adam_smoe", "soft_moe"}


@pytest.mark.parametrize("path", MOE_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("in_shape", [NATURE_OUT, IMPALA_OUT], ids=["nature", "impala"])
def test_block_builds_from_config(path, in_shape):
    cfg = load(path)
    block = moe_features_block(cfg, in_shape, 512, gen(), relu_first=in_shape == IMPALA_OUT)
    x = rand(3, *in_shape)
    y = block(x)
    assert y.shape == (3, 512) and (y >= 0).all()
    loss = y.square().mean() + moe_aux_loss(block)
    loss.backward()
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)
    stats = moe_stats(block)
    assert set(stats) == {
        "load_max",
        "load_min",
        "utilisation",
        "dropped_frac",
        "router_entropy",
        "balance_loss",
    }
    assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in stats.values())
    assert 1.0 - 1e-5 <= stats["load_max"].item() <= cfg["experts"] + 1e-5
    assert 0.0 <= stats["router_entropy"].item() <= math.log(cfg["experts"]) + 1e-5


@pytest.mark.parametrize("mode", ["per_sample", "per_pixel", "per_feature_map"])
@pytest.mark.parametrize("name", ["smoe", "soft_moe"])
def test_token_modes_build(mode, name):
    block = moe_features_block(
        {"name": name, "token_mode": mode, "hidden": 16}, NATURE_OUT, 64, gen()
    )
    assert block(rand(2, *NATURE_OUT)).shape == (2, 64)


@pytest.mark.parametrize("path", MOE_CONFIGS, ids=lambda p: p.stem)
def test_building_and_noise_are_deterministic(path):
    cfg = load(path)
    a = moe_features_block(cfg, NATURE_OUT, 64, gen(7)).train()
    b = moe_features_block(OmegaConf.load(path), NATURE_OUT, 64, gen(7)).train()  # a DictConfig
    c = moe_features_block(cfg, NATURE_OUT, 64, gen(8))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    x = rand(2, *NATURE_OUT)
    for _ in range(2):  # the noise stream advances identically
        assert torch.equal(a(x), b(x))


def test_block_replaces_a_torso_features_block():
    for make, out in ((nature, NATURE_OUT), (impala, IMPALA_OUT)):
        torso = make()
        cfg = load(SMOE)
        torso.blocks["features"] = moe_features_block(
            cfg, out, torso.feature_dim, gen(), relu_first=make is impala
        )
        obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8, generator=gen())
        assert torso(obs).shape == (2, 512)
        target = copy.deepcopy(torso)  # after a forward pass (the learner's target network)
        assert target(obs).shape == (2, 512)


@pytest.mark.parametrize(
    "cfg,key",
    [
        ({"name": "momentum_smoe", "layers": 1}, "layers"),
        ({"name": "adam_smoe", "layers": 1}, "layers"),
        ({"name": "smoe", "layers": 0}, "layers"),
        ({"name": "smoe", "k": 5, "experts": 4}, "k"),
        ({"name": "smoe", "token_mode": "per_patch"}, "token_mode"),
        ({"name": "smoe", "capacity_factor": 0}, "capacity_factor"),
        ({"name": "momentum_smoe", "mu": 1.0}, "mu"),
        ({"name": "smoe", "experts_": 4}, "experts_"),
        ({"name": "smoe", "mu": 0.5}, "mu"),  # momentum_smoe's key, not smoe's
        ({"name": "dense"}, "name"),
    ],
)
def test_bad_config_values_are_refused(cfg, key):
    with pytest.raises(ValueError, match=f"moe.{key}") as err:
        moe_features_block(cfg, NATURE_OUT, 64, gen())
    assert isinstance(err.value, ConfigError)


def test_missing_keys_take_the_options_yaml_defaults():
    """A Python caller's partial config is completed from configs/moe/<name>.yaml, the one home
    of the defaults (smoe.yaml: k 2, capacity factor 1.25, 4 experts, 2 layers)."""
    want = load(SMOE)
    block = moe_features_block({"name": "smoe"}, NATURE_OUT, 64, gen())
    layers = [m for m in block.modules() if hasattr(m, "capacity_factor")]
    assert len(layers) == want["layers"] == 2
    for m in layers:
        assert (m.k, m.capacity_factor, m.num_experts) == (want["k"], want["capacity_factor"], 4)


def test_rng_state_round_trip():
    block = moe_features_block(load(SMOE), NATURE_OUT, 64, gen()).train()
    x = rand(2, *NATURE_OUT)
    state = moe_rng_state(block)
    assert state
    first = block(x)
    assert not torch.equal(first, block(x))
    moe_load_rng_state(block, state)
    assert torch.equal(first, block(x))


def test_eval_mode_drops_nothing():
    """Capacity is a training-time budget: a frozen encoder (eval mode) computes every token's
    chosen experts, so its features match the network's undropped function."""
    gen = torch.Generator().manual_seed(0)
    layer = TopKMoE(8, 4, 2, 16, capacity_factor=0.5, gen=gen)
    x = torch.randn(3, 20, 8, generator=gen)
    assert layer.route(x).keep.all().item() is False  # training: over capacity, some dropped
    layer.eval()
    assert layer.route(x).keep.all()
