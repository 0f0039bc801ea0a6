"""Adan (pvn.optim.adan) against the rule as the paper/official code state it, computed by hand in
float64 scalars; against an independent port (kozistr's pytorch-optimizer); and its own paths
(single-tensor vs foreach), state_dict round-trip, GradScaler, clipping and validation."""

from __future__ import annotations

import inspect
import io
import math
from pathlib import Path

import pytest
import torch
import yaml

from pvn.optim import OPTIMIZERS, Adan, build_optimizer

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- hand computation
def hand_adan(
    theta0: list[list[float]],
    grads: list[list[list[float]]],
    *,
    lr: float,
    betas: tuple[float, float, float],
    eps: float,
    wd: float,
    no_prox: bool,
    max_norm: float,
    restart_before: int | None = None,
) -> list[list[list[float]]]:
    """The update of REFERENCES.md "## Adan" in plain Python floats, one coordinate at a time.

    ``theta0``: parameters as lists of floats; ``grads[t]``: the gradients at step t (same
    shapes). Returns the parameters after every step."""
    b1, b2, b3 = betas
    theta = [list(p) for p in theta0]

    def zeros():
        return [[0.0] * len(p) for p in theta]

    m, v, n, prev, k = zeros(), zeros(), zeros(), None, 0
    out = []
    for t, g in enumerate(grads):
        if t == restart_before:  # restart_opt(): moments, step count and d forgotten
            m, v, n, prev, k = zeros(), zeros(), zeros(), None, 0
        if max_norm > 0:  # one norm over all parameters
            norm = math.sqrt(sum(x * x for p in g for x in p))
            c = min(1.0, max_norm / (norm + eps))
            g = [[c * x for x in p] for p in g]
        k += 1
        for i in range(len(theta)):
            for j in range(len(theta[i])):
                d = 0.0 if prev is None else g[i][j] - prev[i][j]
                m[i][j] = b1 * m[i][j] + (1 - b1) * g[i][j]
                v[i][j] = b2 * v[i][j] + (1 - b2) * d
                n[i][j] = b3 * n[i][j] + (1 - b3) * (g[i][j] + b2 * d) ** 2
                denom = math.sqrt(n[i][j]) / math.sqrt(1 - b3**k) + eps
                x = theta[i][j]
                if no_prox:
                    x = x * (1 - lr * wd)
                x = x - lr / (1 - b1**k) * m[i][j] / denom - lr * b2 / (1 - b2**k) * v[i][j] / denom
                if not no_prox:
                    x = x / (1 + lr * wd)
                theta[i][j] = x
        prev = g
        out.append([list(p) for p in theta])
    return out


# Gradients whose global norm crosses max_norm=1.5 both ways, and change sign (d != 0).
HAND_THETA = [[0.5, -1.0, 2.0], [0.25]]
HAND_GRADS = [
    [[0.3, -0.2, 0.1], [0.4]],  # norm 0.55: not clipped
    [[1.2, 0.5, -0.8], [-1.1]],  # norm 1.91: clipped
    [[-0.1, 0.9, 0.2], [0.05]],
    [[2.0, -1.5, 0.7], [0.3]],  # norm 2.6: clipped
    [[0.2, 0.2, -0.6], [-0.4]],
    [[-0.7, 0.1, 0.3], [0.9]],
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("no_prox", [False, True])
def test_matches_hand_computation_with_restart_and_clipping(no_prox, foreach):
    hp = dict(lr=0.05, betas=(0.9, 0.8, 0.95), eps=1e-3, wd=0.3, no_prox=no_prox, max_norm=1.5)
    expected = hand_adan(HAND_THETA, HAND_GRADS, restart_before=3, **hp)
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in HAND_THETA]
    opt = Adan(
        params,
        lr=hp["lr"],
        betas=hp["betas"],
        eps=hp["eps"],
        weight_decay=hp["wd"],
        no_prox=no_prox,
        max_grad_norm=hp["max_norm"],
        foreach=foreach,
    )
    for t, g in enumerate(HAND_GRADS):
        if t == 3:
            opt.restart_opt()
        for p, gp in zip(params, g, strict=True):
            p.grad = torch.tensor(gp, dtype=torch.float64)
        opt.step()
        for p, e in zip(params, expected[t], strict=True):
            torch.testing.assert_close(
                p.detach(), torch.tensor(e, dtype=torch.float64), rtol=1e-12, atol=1e-14
            )
    assert all(opt.state[p]["step"] == 3 for p in params)


def test_hand_computation_differs_between_decay_modes_and_restart():
    """The hand cases above are not degenerate: each knob changes the trajectory."""
    base = dict(lr=0.05, betas=(0.9, 0.8, 0.95), eps=1e-3, wd=0.3, max_norm=1.5)
    a = hand_adan(HAND_THETA, HAND_GRADS, no_prox=False, **base)[-1]
    b = hand_adan(HAND_THETA, HAND_GRADS, no_prox=True, **base)[-1]
    c = hand_adan(HAND_THETA, HAND_GRADS, no_prox=False, restart_before=3, **base)[-1]
    d = hand_adan(HAND_THETA, HAND_GRADS, no_prox=False, **{**base, "max_norm": 0.0})[-1]
    for other in (b, c, d):
        flat_a = [x for p in a for x in p]
        flat_o = [x for p in other for x in p]
        assert max(abs(x - y) for x, y in zip(flat_a, flat_o, strict=True)) > 1e-6


def test_first_step_is_normalised_gradient_and_d_is_zero():
    """Closed form of step 1: m/(1-b1) = g and sqrt(n/(1-b3)) = |g|, so theta moves by
    -lr * g / (|g| + eps); d_1 = 0 leaves v at zero."""
    p = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor([0.5, 0.25, -4.0], dtype=torch.float64)
    opt = Adan([p], lr=0.1, eps=1e-8)
    opt.step()
    g = torch.tensor([0.5, 0.25, -4.0], dtype=torch.float64)
    expected = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64) - 0.1 * g / (g.abs() + 1e-8)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=1e-15)
    assert torch.count_nonzero(opt.state[p]["exp_avg_diff"]) == 0


# --------------------------------------------------------------------------- independent oracle
def _random_grads(shapes, steps, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    # scale varies so the global norm crosses the clipping threshold both ways
    return [
        [torch.randn(s, generator=g, dtype=dtype) * (0.2 + 0.5 * (t % 4)) for s in shapes]
        for t in range(steps)
    ]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("no_prox", [False, True])
@pytest.mark.parametrize("dtype,max_norm", [(torch.float64, 0.0), (torch.float32, 2.0)])
def test_matches_pytorch_optimizer_adan(no_prox, foreach, dtype, max_norm):
    """kozistr/pytorch-optimizer's Adan uses the same beta convention (b1, b2, b3) =
    (0.98, 0.92, 0.99); its ``weight_decouple=True`` is our ``no_prox=True`` (theta*(1-lr*wd)
    first) and ``weight_decouple=False`` our proximal default (theta/(1+lr*wd) after). Its global
    norm is accumulated in float32, so with clipping the comparison is in float32."""
    po = pytest.importorskip("pytorch_optimizer")
    shapes = [(4, 3), (3,), (2, 2, 2)]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    ours = [t.clone().requires_grad_() for t in init]
    theirs = [t.clone().requires_grad_() for t in init]

    def groups(ps):
        return [
            {"params": ps[:2], "lr": 0.01, "weight_decay": 0.05},
            {"params": ps[2:], "lr": 0.003, "weight_decay": 0.2, "betas": (0.9, 0.85, 0.999)},
        ]

    opt_a = Adan(groups(ours), no_prox=no_prox, max_grad_norm=max_norm, foreach=foreach)
    opt_b = po.Adan(
        groups(theirs), weight_decouple=no_prox, max_grad_norm=max_norm, foreach=foreach
    )
    for grads in _random_grads(shapes, 10, dtype):
        for a, b, g in zip(ours, theirs, grads, strict=True):
            a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
    # and the run actually moved the parameters
    assert all(not torch.allclose(a.detach(), t) for a, t in zip(ours, init, strict=True))


# --------------------------------------------------------------------------- paths agree
def test_foreach_and_single_tensor_paths_agree():
    """Several groups, weight decay in both modes, mixed dtypes (two foreach buckets), clipping
    and a parameter that misses steps (its own step count, so per-parameter bias corrections)."""
    shapes = [(8, 4), (4,), (3, 3), (5,), (2, 6)]
    dtypes = [torch.float32, torch.float32, torch.float64, torch.float32, torch.float64]
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=gen, dtype=dt) for s, dt in zip(shapes, dtypes, strict=True)]
    runs = {}
    for foreach in (False, True):
        ps = [t.clone().requires_grad_() for t in init]
        opt = Adan(
            [
                {"params": ps[:2], "weight_decay": 0.1},
                {"params": ps[2:4], "lr": 0.02, "weight_decay": 0.3, "no_prox": True},
                {"params": ps[4:], "betas": (0.95, 0.9, 0.999)},
            ],
            lr=0.01,
            max_grad_norm=3.0,
            foreach=foreach,
        )
        g = torch.Generator().manual_seed(4)
        for t in range(7):
            for i, p in enumerate(ps):
                grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
                p.grad = None if (i == 3 and t in (0, 1, 4)) else grad
            opt.step()
        assert opt.state[ps[3]]["step"] == 4 and opt.state[ps[0]]["step"] == 7
        runs[foreach] = ps
    for a, b in zip(runs[False], runs[True], strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)


def test_foreach_none_means_single_tensor_on_cpu_and_matches():
    p1 = torch.ones(3, requires_grad=True)
    p2 = torch.ones(3, requires_grad=True)
    opt1, opt2 = Adan([p1], lr=0.1), Adan([p2], lr=0.1, foreach=False)
    for t in range(3):
        p1.grad = torch.full((3,), float(t) - 0.5)
        p2.grad = p1.grad.clone()
        opt1.step()
        opt2.step()
    assert torch.equal(p1, p2)


# --------------------------------------------------------------------------- state_dict
def _train(model, opt, steps, start):
    for t in range(start, start + steps):
        g = torch.Generator().manual_seed(100 + t)
        x = torch.randn(16, 5, generator=g)
        y = torch.randn(16, 2, generator=g)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip_continues_bit_for_bit(foreach):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = Adan(
            [
                {"params": model[0].parameters(), "weight_decay": 0.02},
                {"params": model[2].parameters(), "lr": 3e-3, "no_prox": True, "weight_decay": 0.1},
            ],
            lr=1e-2,
            max_grad_norm=0.5,
            foreach=foreach,
        )
        return model, opt

    model, opt = make()
    _train(model, opt, 9, 0)
    reference = [p.detach().clone() for p in model.parameters()]

    model, opt = make()
    _train(model, opt, 4, 0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    del model, opt
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model, opt = make()  # fresh copy, fresh optimizer
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    assert all(opt.state[p]["step"] == 4 for p in model.parameters())
    _train(model, opt, 5, 4)
    for p, r in zip(model.parameters(), reference, strict=True):
        assert torch.equal(p.detach(), r)


# --------------------------------------------------------------------------- GradScaler, closure
def test_works_with_grad_scaler_on_cpu():
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    except (AttributeError, RuntimeError, TypeError) as e:  # pragma: no cover - old torch
        pytest.skip(f"torch.amp.GradScaler('cpu') unavailable in torch {torch.__version__}: {e}")

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        return model, Adan(model.parameters(), lr=1e-2, weight_decay=0.01)

    plain_model, plain_opt = make()
    model, opt = make()
    for t in range(5):
        g = torch.Generator().manual_seed(t)
        x, y = torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)
        for m_, o_, s_ in ((plain_model, plain_opt, None), (model, opt, scaler)):
            o_.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(m_(x), y)
            if s_ is None:
                loss.backward()
                o_.step()
            else:
                s_.scale(loss).backward()
                s_.step(o_)
                s_.update()
    # power-of-two scaling is exact, so the scaled run is the plain run
    for a, b in zip(model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

    # an overflowing step is skipped: no update, no state change, the scale backs off
    before = [p.detach().clone() for p in model.parameters()]
    steps = [opt.state[p]["step"] for p in model.parameters()]
    opt.zero_grad(set_to_none=True)
    scaler.scale(model(torch.full((1, 4), float("inf"))).sum()).backward()
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert [opt.state[p]["step"] for p in model.parameters()] == steps


def test_step_returns_closure_loss():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = Adan([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 5.0
    assert p.detach().lt(torch.tensor([1.0, 2.0])).all()


# --------------------------------------------------------------------------- clipping
def test_clipping_matches_clip_grad_norm():
    """``max_grad_norm`` leaves in ``p.grad`` what ``clip_grad_norm_`` would, over all groups,
    and a clipped run equals an unclipped run fed ``clip_grad_norm_``-ed gradients."""
    shapes = [(6, 3), (3,), (4,)]
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(s, generator=gen) for s in shapes]
    a = [t.clone().requires_grad_() for t in init]
    b = [t.clone().requires_grad_() for t in init]
    opt_a = Adan([{"params": a[:2]}, {"params": a[2:], "lr": 0.02}], lr=0.01, max_grad_norm=1.0)
    opt_b = Adan([{"params": b[:2]}, {"params": b[2:], "lr": 0.02}], lr=0.01)
    norms = []
    for grads in _random_grads(shapes, 8, torch.float32, seed=6):
        for pa, pb, g in zip(a, b, grads, strict=True):
            pa.grad, pb.grad = g.clone(), g.clone()
        norms.append(float(torch.nn.utils.clip_grad_norm_(b, 1.0)))
        opt_a.step()
        for pa, pb in zip(a, b, strict=True):  # p.grad now holds the clipped gradient
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7)
        opt_b.step()
    assert min(norms) < 1.0 < max(norms)  # both regimes were exercised
    for pa, pb in zip(a, b, strict=True):
        torch.testing.assert_close(pa.detach(), pb.detach(), rtol=1e-5, atol=1e-6)


def test_clipping_never_reads_a_device_value_on_the_host(monkeypatch):
    """No ``.item()``/``bool()``/``float()`` of a tensor in ``step``: on a GPU any of these would
    wait for the device. (The CUDA test below checks the same with torch's sync detector.)"""
    p = torch.randn(10, requires_grad=True)
    q = torch.randn(3, 3, requires_grad=True)
    opt = Adan([{"params": [p]}, {"params": [q], "foreach": True}], max_grad_norm=0.1)

    def forbidden(*_a, **_k):
        raise AssertionError("host read of a tensor value in Adan.step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for _ in range(3):
        p.grad, q.grad = torch.randn(10), torch.randn(3, 3)
        opt.step()
    monkeypatch.undo()
    assert opt.state[p]["step"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (sync debug mode)")
@pytest.mark.parametrize("foreach", [False, True])
def test_cuda_step_with_clipping_does_not_sync(foreach):
    ps = [torch.randn(s, device="cuda", requires_grad=True) for s in [(64, 32), (32,), (7,)]]
    opt = Adan(ps, max_grad_norm=0.5, weight_decay=0.02, foreach=foreach)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()  # state allocation happens on the first step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in ps)


# --------------------------------------------------------------------------- validation, registry
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=-1e-3),
        dict(lr=float("nan")),
        dict(betas=(1.0, 0.92, 0.99)),
        dict(betas=(0.98, -0.1, 0.99)),
        dict(betas=(0.98, 0.92, 1.5)),
        dict(betas=(0.9, 0.999)),
        dict(eps=-1e-8),
        dict(weight_decay=-0.1),
        dict(max_grad_norm=-1.0),
    ],
)
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError):
        Adan([torch.zeros(2, requires_grad=True)], **kwargs)


def test_bad_group_hyperparameters_raise():
    p, q = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="lr"):
        Adan([{"params": [p]}, {"params": [q], "lr": -0.1}])
    with pytest.raises(ValueError, match=r"betas\[2\]"):
        Adan([{"params": [p]}, {"params": [q], "betas": (0.9, 0.9, 1.0)}])
    with pytest.raises(ValueError, match="global"):
        Adan([{"params": [p]}, {"params": [q], "max_grad_norm": 1.0}])


def test_registry_and_config_build_adan():
    assert "adan" in OPTIMIZERS
    cfg = yaml.safe_load((REPO / "configs" / "optimizer" / "adan.yaml").read_text())
    opt = build_optimizer(cfg, [torch.zeros(3, requires_grad=True)])
    assert isinstance(opt, Adan)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (1e-4, (0.98, 0.92, 0.99), 1e-8)
    assert (group["weight_decay"], group["no_prox"], group["max_grad_norm"]) == (0.0, False, 0.0)
    opt = build_optimizer(
        {**cfg, "lr": 1.0, "betas": [0.9, 0.8, 0.7], "no_prox": True, "foreach": True},
        [torch.zeros(3, requires_grad=True)],
        lr=0.5,
    )
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["no_prox"], group["foreach"]) == (
        0.5,
        (0.9, 0.8, 0.7),
        True,
        True,
    )


def test_the_registry_has_no_defaults_of_its_own():
    """Every value comes from the option's file: a key missing from a config is one error
    naming the optimizer, never a second default filled in silently."""
    for name, build in OPTIMIZERS.items():
        params = inspect.signature(build).parameters.values()
        own = [p.name for p in params if p.default is not p.empty and p.name != "foreach"]
        assert own == [], f"{name} has defaults of its own: {own}"  # foreach None: Adan's auto
    cfg = yaml.safe_load((REPO / "configs" / "optimizer" / "adam.yaml").read_text())
    del cfg["eps"]
    with pytest.raises(ValueError, match=r"optimizer=adam: .*'eps'"):
        build_optimizer(cfg, [torch.zeros(3, requires_grad=True)])
