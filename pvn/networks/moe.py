"""Sparse mixture-of-experts layers over tokens of the torso's conv output.

Obando-Ceron et al. (ICML 2024, "Mixtures of Experts Unlock Parameter Scaling for Deep RL";
dopamine ``labs/moes``) replace the penultimate ``Dense(512)`` of a value network with an MoE over
*tokens* of the last conv output; Sokar et al. (ICLR 2025) find much of the gain comes from
tokenising instead of flattening. :func:`moe_features_block` builds such a block as a drop-in
replacement for a torso's ``"features"`` block: conv output ``(B, C, H, W)`` in, ``(B, D)`` out.

Layers (each maps tokens ``(B, T, d)`` to ``(B, T, d)``):

* :class:`TopKMoE` -- noisy top-k gating (Shazeer et al. 2017, eq. 3-5:
  ``H(x) = x W_g + N(0, 1) * softplus(x W_noise)``, softmax over the k largest), per-expert
  capacity ``ceil(capacity_factor * T * k / E)`` with dropped tokens (Switch, Fedus et al. 2022,
  sec. 2.2) and the Switch load-balancing loss ``E * sum_i f_i P_i`` (eq. 4).
* :class:`SoftMoE` -- Puigcerver et al. (ICLR 2024): every slot is a softmax-over-tokens mixture
  of the tokens (dispatch), every token a softmax-over-slots mixture of the slot outputs (combine);
  nothing is dropped and there is no balancing loss.

Stacks of ``L`` layers (each layer followed by its own ``LayerNorm``):

* :class:`SMoEStack` -- the plain residual stack ``x <- norm(x + f(x))``.
* :class:`MomentumSMoE` -- Teo & Nguyen (NeurIPS 2024): heavy-ball momentum carried across layers.
* :class:`AdamSMoE` -- same paper: an Adam-like first layer, heavy ball after it.

Routing groups are single samples: the ``T`` tokens of one observation compete for the capacity
of the experts (as in dopamine, which vmaps the MoE over the batch). A sample's output therefore
does not depend on the rest of the batch, so acting (B = 1) and learning (B = 32) see the same
network.

Every layer stores, after each forward pass, ``aux_loss`` (a tensor to add to the training loss)
and ``stats`` (detached device tensors); :func:`moe_aux_loss` and :func:`moe_stats` collect them.
Nothing here synchronises with the host (no ``.item()``, no data-dependent shapes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from pvn.auxiliary.init import xavier_
from pvn.errors import ConfigError

TOKEN_MODES = ("per_sample", "per_pixel", "per_feature_map")
MOE_TYPES = ("smoe", "momentum_smoe", "adam_smoe", "soft_moe")
_MOMENTUM_TYPES = ("momentum_smoe", "adam_smoe")


class MoEConfigError(ConfigError, ValueError):
    """A bad ``moe`` config value; a :class:`~pvn.errors.ConfigError` and a ``ValueError``."""


# --------------------------------------------------------------------------------------------
# Experts
# --------------------------------------------------------------------------------------------


class Experts(nn.Module):
    """``E`` independent MLPs ``d -> h -> d`` (ReLU), weights stacked as ``(E, d, h)`` and
    ``(E, h, d)`` so all experts run as one batched matmul over their token buffers.

    The expert of Obando-Ceron et al. (dopamine ``ExpertModel``): ``Dense(h) + ReLU + Dense``
    back to the token size.
    """

    def __init__(self, num_experts: int, dim: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_experts, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, 1, dim))
        xavier_(self.w1, dim, hidden, gen)
        xavier_(self.w2, hidden, dim, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(E, N, d)`` -- ``N`` buffered tokens per expert; returns ``(E, N, d)``."""
        h = torch.baddbmm(self.b1, x, self.w1).relu()
        return torch.baddbmm(self.b2, h, self.w2)


def _run_experts(experts: Experts, slots: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Slot inputs ``(B, E*S, d)`` -> slot outputs ``(B, E*S, d)`` (expert ``e`` owns slots
    ``e*S .. e*S+S-1``)."""
    B, ES, d = slots.shape
    S = ES // num_experts
    xin = slots.reshape(B, num_experts, S, d).transpose(0, 1).reshape(num_experts, B * S, d)
    y = experts(xin)
    return y.reshape(num_experts, B, S, d).transpose(0, 1).reshape(B, ES, d)


class _MoELayer(nn.Module):
    """Shared bookkeeping: the last forward's ``aux_loss`` and ``stats``."""

    def __init__(self) -> None:
        super().__init__()
        self.aux_loss: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The last forward's loss may be a non-leaf tensor, which ``copy.deepcopy`` refuses
        # (the learner deep-copies the online network into the target network).
        state = self.__dict__.copy()
        state["aux_loss"], state["stats"] = None, {}
        return state


# --------------------------------------------------------------------------------------------
# Top-k routing
# --------------------------------------------------------------------------------------------


class Routing(NamedTuple):
    """One forward pass's top-k routing decisions (per routing group = sample)."""

    logits: torch.Tensor  # (B, T, E) router logits (with noise while training), float32
    probs: torch.Tensor  # (B, T, E) softmax over all experts
    experts: torch.Tensor  # (B, T, k) chosen experts, best first
    gates: torch.Tensor  # (B, T, k) softmax over the k chosen logits
    position: torch.Tensor  # (B, T, k) place in the chosen expert's buffer
    keep: torch.Tensor  # (B, T, k) bool: the place is within the expert's capacity
    capacity: int  # buffer places per expert and sample


class TopKMoE(_MoELayer):
    """Sparse MoE with noisy top-k gating, expert capacity and the Switch balancing loss.

    Gating (Shazeer et al. 2017, eq. 3-5): ``H(x) = x W_g + eps * softplus(x W_noise)`` with
    ``eps ~ N(0, 1)`` while training (no noise in eval mode or with ``noisy=False``);
    ``G(x) = softmax(KeepTopK(H(x), k))``. Routing runs in float32 even under autocast
    (Switch's "selective precision").

    Capacity (Switch, sec. 2.2): each expert holds ``ceil(capacity_factor * T * k / E)`` tokens
    per sample. Places are given choice by choice, in token order: all first choices in turn,
    then all second choices, ... (GShard's priority for top-2). An assignment past the capacity
    is dropped: that choice contributes nothing, and a token with every choice dropped comes out
    as zero, i.e. the residual connection of the stack passes it through unchanged.

    Load balancing (Switch, eq. 4-6): ``aux_loss = load_balance_coef * E * sum_i f_i P_i`` with
    ``f_i`` the fraction of the ``B*T*k`` assignments that chose expert ``i`` (before capacity;
    for k = 1 the paper's fraction of tokens) and ``P_i`` the mean router probability of ``i``
    (from the same, possibly noisy, logits). It is 1 for a perfectly balanced router.

    Noise draws use ``gen`` passed to :meth:`forward`, else the module's own generator
    ``noise_gen`` (a CPU generator; for another device a generator there is seeded from it on
    first use). Library code never draws from the global RNG. Checkpoint the generator states
    with :func:`moe_rng_state` / :func:`moe_load_rng_state`.

    Expert computation is vectorised: a ``(B, T, E*C)`` dispatch tensor gathers the buffers
    with one bmm, all experts run as one bmm, and a combine tensor scatters the outputs back.
    """

    # (each parameter is a setting of the layer in configs/moe/*.yaml, as the papers name them)
    def __init__(
        self,
        dim: int,
        num_experts: int,
        k: int,
        hidden: int,
        capacity_factor: float,
        noisy: bool = True,
        load_balance_coef: float = 0.0,
        gen: torch.Generator | None = None,
        noise_gen: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k}: need 1 <= k <= num_experts={num_experts}")
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor={capacity_factor}: must be > 0")
        gen = gen if gen is not None else torch.Generator().manual_seed(0)
        self.dim, self.num_experts, self.k, self.hidden = dim, num_experts, k, hidden
        self.capacity_factor, self.noisy = float(capacity_factor), noisy
        self.load_balance_coef = float(load_balance_coef)
        self.router = nn.Parameter(torch.empty(num_experts, dim))
        xavier_(self.router, dim, num_experts, gen)
        self.noise: nn.Parameter | None = None
        if noisy:
            self.noise = nn.Parameter(torch.empty(num_experts, dim))
            xavier_(self.noise, dim, num_experts, gen)
        self.experts = Experts(num_experts, dim, hidden, gen)
        if noise_gen is None:
            seed = int(torch.randint(0, 2**62, (), generator=gen))
            noise_gen = torch.Generator().manual_seed(seed)
        self.noise_gen = noise_gen
        self._device_gens: dict[str, torch.Generator] = {}

    def capacity(self, num_tokens: int) -> int:
        """``ceil(capacity_factor * T * k / E)`` buffer places per expert and sample."""
        c = self.capacity_factor * num_tokens * self.k / self.num_experts
        return max(1, math.ceil(round(c, 9)))

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.noise_gen.device == device:
            return self.noise_gen
        key = str(device)
        if key not in self._device_gens:
            seed = int(torch.randint(0, 2**62, (), generator=self.noise_gen))
            self._device_gens[key] = torch.Generator(device).manual_seed(seed)
        return self._device_gens[key]

    def route(self, x: torch.Tensor, gen: torch.Generator | None = None) -> Routing:
        """Routing decisions for tokens ``x`` ``(B, T, d)``."""
        B, T, _ = x.shape
        E, k = self.num_experts, self.k
        with torch.autocast(x.device.type, enabled=False):
            xf = x.float()
            logits = xf @ self.router.float().T
            if self.noisy and self.training:
                g = gen if gen is not None else self._generator(x.device)
                std = F.softplus(xf @ self.noise.float().T)
                eps = torch.randn(logits.shape, generator=g, device=x.device)
                logits = logits + eps * std
            probs = logits.softmax(-1)
            top, experts = logits.topk(k, dim=-1)
            gates = top.softmax(-1)
        # a token picks an expert at most once, so no expert ever needs more than T places. In
        # eval mode (a frozen encoder, the target network) nothing is dropped: capacity is a
        # training-time budget (Switch evaluates with a larger one), and dropping there makes
        # the frozen features differ from the ones the network learned.
        capacity = min(self.capacity(T), T) if self.training else T
        chosen = F.one_hot(experts, E)  # (B, T, k, E)
        order = chosen.transpose(1, 2).reshape(B, k * T, E)  # choice-major, then token order
        place = (order.cumsum(1) - 1).mul_(order).sum(-1)  # (B, k*T)
        position = place.view(B, k, T).transpose(1, 2)
        return Routing(logits, probs, experts, gates, position, position < capacity, capacity)

    def dispatch_combine(self, r: Routing) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, E*C)`` dispatch (0/1) and combine (gate) tensors; slot ``e*C + c`` is place
        ``c`` of expert ``e``."""
        B, T, _ = r.experts.shape
        C = r.capacity
        slot = r.experts * C + r.position.clamp(max=C - 1)
        keep = r.keep.to(r.gates.dtype)
        shape = (B, T, self.num_experts * C)
        dispatch = r.gates.new_zeros(shape).scatter_add_(2, slot, keep)
        combine = r.gates.new_zeros(shape).scatter_add_(2, slot, r.gates * keep)
        return dispatch, combine

    def forward(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Tokens ``(B, T, d)`` -> ``sum_j G_j(x) E_j(x)`` over the kept choices, ``(B, T, d)``."""
        r = self.route(x, gen)
        dispatch, combine = self.dispatch_combine(r)
        slots = dispatch.transpose(1, 2).to(x.dtype) @ x  # (B, E*C, d)
        y = _run_experts(self.experts, slots, self.num_experts)
        out = combine.to(y.dtype) @ y
        self._record(r)
        return out

    def _record(self, r: Routing) -> None:
        B, T, k = r.experts.shape
        E = self.num_experts
        chosen = F.one_hot(r.experts, E).float()  # (B, T, k, E)
        f = chosen.sum((0, 1, 2)) / (B * T * k)
        P = r.probs.mean((0, 1))
        balance = E * (f * P).sum()
        self.aux_loss = self.load_balance_coef * balance
        kept = (chosen * r.keep.unsqueeze(-1)).sum((0, 1, 2))
        entropy = -(r.probs * r.logits.log_softmax(-1)).sum(-1).mean()
        self.stats = {
            "load": (E * f).detach(),
            "utilisation": (kept / (B * self.capacity(T))).mean().detach(),
            "dropped_frac": 1.0 - r.keep.float().mean().detach(),
            "router_entropy": entropy.detach(),
            "balance_loss": balance.detach(),
        }


# --------------------------------------------------------------------------------------------
# Soft MoE
# --------------------------------------------------------------------------------------------


class SoftMoE(_MoELayer):
    """Soft MoE (Puigcerver et al., ICLR 2024, Algorithm 1).

    Logits ``X Phi`` ``(B, T, E*S)`` over ``S`` slots per expert. Dispatch weights are a softmax
    over the tokens (each slot input is a convex combination of the tokens); combine weights a
    softmax over the ``E*S`` slots (each output token is a convex combination of slot outputs).
    With ``normalize`` the tokens and the columns of ``Phi`` are L2-normalised and ``Phi`` scaled
    by a learned scalar (the paper's fix for large token dims; off in dopamine).
    ``aux_loss`` is zero: every slot is always full and nothing is dropped. For :func:`moe_stats`
    a token's "routing" is its combine mass per expert (summed over the expert's slots).
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        slots_per_expert: int,
        hidden: int,
        gen: torch.Generator | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        gen = gen if gen is not None else torch.Generator().manual_seed(0)
        self.dim, self.num_experts, self.slots_per_expert = dim, num_experts, slots_per_expert
        self.phi = nn.Parameter(torch.empty(dim, num_experts * slots_per_expert))
        xavier_(self.phi, dim, num_experts * slots_per_expert, gen)
        self.scale = nn.Parameter(torch.ones(())) if normalize else None
        self.experts = Experts(num_experts, dim, hidden, gen)

    def weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dispatch (softmax over tokens, dim 1) and combine (softmax over slots, dim 2)
        weights, both ``(B, T, E*S)``, float32."""
        with torch.autocast(x.device.type, enabled=False):
            xf, phi = x.float(), self.phi.float()
            if self.scale is not None:
                xf = F.normalize(xf, dim=-1)
                phi = self.scale * F.normalize(phi, dim=0)
            logits = xf @ phi
            return logits.softmax(1), logits.softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, T, d)`` -> ``(B, T, d)``."""
        dispatch, combine = self.weights(x)
        slots = dispatch.transpose(1, 2).to(x.dtype) @ x  # (B, E*S, d)
        y = _run_experts(self.experts, slots, self.num_experts)
        out = combine.to(y.dtype) @ y
        B, T, _ = x.shape
        E = self.num_experts
        with torch.no_grad():
            q = combine.view(B, T, E, -1).sum(-1)  # each token's combine mass per expert
            entropy = -(q * q.clamp_min(1e-30).log()).sum(-1).mean()
            self.stats = {
                "load": E * q.mean((0, 1)),
                "utilisation": torch.ones((), device=x.device),
                "dropped_frac": torch.zeros((), device=x.device),
                "router_entropy": entropy,
                "balance_loss": torch.zeros((), device=x.device),
            }
        self.aux_loss = torch.zeros((), device=x.device)
        return out


# --------------------------------------------------------------------------------------------
# Stacks
# --------------------------------------------------------------------------------------------


class SMoEStack(nn.Module):
    """``L`` MoE layers, each a residual step followed by its LayerNorm: ``x <- norm(x + f(x))``
    (the post-norm transformer layer of the MomentumSMoE code, attention left out)."""

    def __init__(self, layers: Sequence[nn.Module], dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for f, norm in zip(self.layers, self.norms, strict=True):
            x = norm(x + f(x))
        return x


class MomentumSMoE(SMoEStack):
    """Heavy-ball momentum across stacked SMoE layers (Teo & Nguyen, NeurIPS 2024).

    The paper reads an SMoE layer as a gradient step ``x <- x - gamma * g(x)`` and adds heavy-ball
    momentum: ``p <- mu * p + gamma * g(x)``, ``x <- norm(x - p)``, with ``p = 0`` at the start of
    each forward pass and carried from layer to layer. We write the layer's output as
    ``f = -g`` (an expert can learn either sign), so that

        p <- mu * p + gamma * f(x),    x <- norm(x + p)

    and ``mu = 0, gamma = 1`` is exactly the plain residual stack ``x <- norm(x + f(x))``
    (:class:`SMoEStack`). Our ``p`` is the paper's ``-p``. Defaults are the paper code's
    ``mu = 0.7, gamma = 1.0``.
    """

    def __init__(
        self, layers: Sequence[nn.Module], dim: int, mu: float = 0.7, gamma: float = 1.0
    ) -> None:
        super().__init__(layers, dim)
        self.mu, self.gamma = float(mu), float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p: torch.Tensor | None = None
        for f, norm in zip(self.layers, self.norms, strict=True):
            u = self.gamma * f(x)
            p = u if p is None else self.mu * p + u
            x = norm(x + p)
        return x


class AdamSMoE(MomentumSMoE):
    """AdamSMoE (Teo & Nguyen, NeurIPS 2024): the first layer takes an Adam-like step,
    the rest heavy-ball steps as in :class:`MomentumSMoE`.

    With ``u = f(x)`` at the first layer (``m`` and ``v`` start at 0, one Adam update):
    ``m = (1 - beta1) u``, ``v = (1 - beta2) u^2``, ``x <- norm(x + gamma1 * m / sqrt(v + eps))``
    (same sign convention as :class:`MomentumSMoE`: ``f = -grad``). The heavy-ball buffer is
    started there too, ``p = gamma * u``, and later layers do ``p <- mu p + gamma f(x)``,
    ``x <- norm(x + p)``.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        dim: int,
        mu: float = 0.7,
        gamma: float = 1.0,
        gamma1: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(layers, dim, mu, gamma)
        self.gamma1, self.beta1, self.beta2, self.eps = gamma1, beta1, beta2, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0, norm0 = self.layers[0], self.norms[0]
        u = f0(x)
        m = (1.0 - self.beta1) * u
        v = (1.0 - self.beta2) * u.square()
        x = norm0(x + self.gamma1 * m / torch.sqrt(v + self.eps))
        p = self.gamma * u
        for f, norm in zip(self.layers[1:], self.norms[1:], strict=True):
            p = self.mu * p + self.gamma * f(x)
            x = norm(x + p)
        return x


# --------------------------------------------------------------------------------------------
# Feature block
# --------------------------------------------------------------------------------------------


def token_shape(in_shape: tuple[int, int, int], token_mode: str) -> tuple[int, int]:
    """``(T, d)`` of the tokens of a ``(C, H, W)`` conv output."""
    C, H, W = in_shape
    if token_mode == "per_sample":
        return 1, C * H * W
    if token_mode == "per_pixel":
        return H * W, C
    if token_mode == "per_feature_map":
        return C, H * W
    raise ValueError(f"token_mode={token_mode!r}: choose one of {TOKEN_MODES}")


def tokenize(x: torch.Tensor, token_mode: str) -> torch.Tensor:
    """Conv output ``(B, C, H, W)`` -> tokens ``(B, T, d)`` (dopamine's routing types):
    ``per_sample`` one token of ``C*H*W``; ``per_pixel`` ``H*W`` tokens of ``C`` channels;
    ``per_feature_map`` ``C`` tokens of ``H*W`` pixels."""
    if token_mode == "per_sample":
        return x.flatten(1).unsqueeze(1)
    if token_mode == "per_pixel":
        return x.flatten(2).transpose(1, 2)
    if token_mode == "per_feature_map":
        return x.flatten(2)
    raise ValueError(f"token_mode={token_mode!r}: choose one of {TOKEN_MODES}")


class MoEFeatures(nn.Module):
    """Drop-in for a torso's ``"features"`` block: ``(B, C, H, W)`` -> tokens -> MoE stack ->
    flatten -> ``Dense(feature_dim)`` -> ReLU (with a leading ReLU for the IMPALA torso)."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        token_mode: str,
        stack: nn.Module,
        feature_dim: int,
        gen: torch.Generator,
        relu_first: bool = False,
    ) -> None:
        super().__init__()
        self.in_shape, self.token_mode, self.relu_first = tuple(in_shape), token_mode, relu_first
        self.num_tokens, self.token_dim = token_shape(self.in_shape, token_mode)
        self.stack = stack
        self.dense = nn.Linear(self.num_tokens * self.token_dim, feature_dim)
        xavier_(self.dense.weight, self.dense.in_features, feature_dim, gen)
        nn.init.zeros_(self.dense.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu_first:
            x = torch.relu(x)
        tokens = self.stack(tokenize(x, self.token_mode))
        return torch.relu(self.dense(tokens.flatten(1)))


# --------------------------------------------------------------------------------------------
# Builder and collectors
# --------------------------------------------------------------------------------------------


def _check(cond: bool, key: str, value: Any, why: str) -> None:
    if not cond:
        raise MoEConfigError(f"moe.{key}={value!r}: {why}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_RULES: dict[str, tuple[Any, str]] = {
    "experts": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
    "k": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
    "hidden": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
    "capacity_factor": (lambda v: _is_num(v) and v > 0, "must be > 0"),
    "token_mode": (lambda v: v in TOKEN_MODES, f"one of {TOKEN_MODES}"),
    "mu": (lambda v: _is_num(v) and 0 <= v < 1, "must be in [0, 1)"),
    "gamma": (lambda v: _is_num(v) and v > 0, "must be > 0"),
    "gamma1": (lambda v: _is_num(v) and v > 0, "must be > 0"),
    "beta1": (lambda v: _is_num(v) and 0 <= v < 1, "must be in [0, 1)"),
    "beta2": (lambda v: _is_num(v) and 0 <= v < 1, "must be in [0, 1)"),
    "load_balance_coef": (lambda v: _is_num(v) and v >= 0, "must be >= 0"),
    "slots_per_expert": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "noisy": (lambda v: isinstance(v, bool), "must be true or false"),
    "normalize": (lambda v: isinstance(v, bool), "must be true or false"),
}


def _validated(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` over its option's defaults (``configs/moe/<name>.yaml``, their one home), checked
    key by key."""
    from pvn.settings import option_defaults

    c = dict(cfg)
    name = c.pop("name", None)
    _check(name in MOE_TYPES, "name", name, f"choose one of {', '.join(MOE_TYPES)}")
    defaults = option_defaults("moe", name)
    unknown = sorted(set(c) - set(defaults))
    if unknown:
        raise MoEConfigError(
            f"moe.{unknown[0]}: unknown key for moe={name}; known keys: {', '.join(defaults)}"
        )
    c = {**defaults, **c, "name": name}
    min_layers = 2 if name in _MOMENTUM_TYPES else 1
    _check(
        _is_int(c["layers"]) and c["layers"] >= min_layers,
        "layers",
        c["layers"],
        f"{name} needs >= {min_layers} layers"
        + (" (momentum is carried across layers)" if min_layers == 2 else ""),
    )
    for key, value in c.items():  # each key the option has, by the rule for its kind
        if key in _RULES:
            ok, why = _RULES[key]
            _check(ok(value), key, value, why)
    if "k" in c:
        _check(c["k"] <= c["experts"], "k", c["k"], f"must be <= moe.experts={c['experts']}")
    return c


def moe_features_block(
    cfg: Mapping[str, Any],
    in_shape: tuple[int, int, int],
    feature_dim: int,
    gen: torch.Generator,
    *,
    relu_first: bool = False,
) -> MoEFeatures:
    """An MoE feature block for a ``(C, H, W)`` conv output, Xavier-initialised from ``gen``.

    ``cfg`` is a ``configs/moe/*.yaml`` mapping: ``name`` (smoe | momentum_smoe | adam_smoe |
    soft_moe), ``layers``, ``experts``, ``k``, ``capacity_factor``, ``hidden``, ``token_mode``,
    ``noisy``, ``load_balance_coef``, ``mu``, ``gamma``, ``gamma1``, ``beta1``, ``beta2``,
    ``slots_per_expert`` (null: ``ceil(capacity_factor * T / E)``, as dopamine), ``normalize``.
    Missing keys take the option's defaults (``configs/moe/<name>.yaml``); unknown keys and bad
    values raise :class:`MoEConfigError`.
    ``relu_first=True`` for the IMPALA torso, whose features block starts with a ReLU.
    """
    c = _validated(cfg)
    T, d = token_shape(tuple(in_shape), c["token_mode"])
    E = c["experts"]
    layers: list[nn.Module]
    if c["name"] == "soft_moe":
        S = c["slots_per_expert"] or max(1, math.ceil(round(c["capacity_factor"] * T / E, 9)))
        layers = [
            SoftMoE(d, E, S, c["hidden"], gen=gen, normalize=c["normalize"])
            for _ in range(c["layers"])
        ]
    else:
        layers = [
            TopKMoE(
                d,
                E,
                c["k"],
                c["hidden"],
                c["capacity_factor"],
                noisy=c["noisy"],
                load_balance_coef=c["load_balance_coef"],
                gen=gen,
            )
            for _ in range(c["layers"])
        ]
    stack: nn.Module
    if c["name"] == "momentum_smoe":
        stack = MomentumSMoE(layers, d, mu=c["mu"], gamma=c["gamma"])
    elif c["name"] == "adam_smoe":
        stack = AdamSMoE(
            layers,
            d,
            mu=c["mu"],
            gamma=c["gamma"],
            gamma1=c["gamma1"],
            beta1=c["beta1"],
            beta2=c["beta2"],
        )
    else:
        stack = SMoEStack(layers, d)
    return MoEFeatures(in_shape, c["token_mode"], stack, feature_dim, gen, relu_first=relu_first)


def moe_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (qualified name, layer) pairs of every MoE layer in ``module``."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, _MoELayer)]


def moe_aux_loss(module: nn.Module) -> torch.Tensor:
    """Sum of the auxiliary (load-balancing) losses of the MoE layers' last forward passes.

    Call it right after the forward pass whose loss you are building (each layer keeps only its
    latest ``aux_loss``). A scalar zero when there are no MoE layers or none has run yet.
    """
    losses = [m.aux_loss for _, m in moe_layers(module) if m.aux_loss is not None]
    if not losses:
        p = next(module.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack([loss.float() for loss in losses]).sum()


#: Keys of the metrics a learner logs for MoE layers (``moe_aux_loss`` and :func:`moe_stats`).
MOE_KEYS = (
    "moe_aux_loss",
    "moe_load_max",
    "moe_load_min",
    "moe_utilisation",
    "moe_dropped_frac",
    "moe_router_entropy",
)


def moe_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    """Routing statistics of the MoE layers' last forward passes, as detached device tensors:

    * ``load_max`` / ``load_min``: max / min over experts (and layers) of ``E * f_i``, the
      normalised share of routed assignments (1 balanced; ``E`` all to one expert; 0 an idle
      expert). Its mean is 1 by construction, so the mean load is reported as
    * ``utilisation``: mean over experts and layers of kept tokens / capacity;
    * ``dropped_frac``: mean fraction of top-k assignments dropped over capacity;
    * ``router_entropy``: mean entropy (nats) of the router distribution per token;
    * ``balance_loss``: mean unscaled Switch loss ``E * sum_i f_i P_i``.

    Empty when there are no MoE layers or none has run yet.
    """
    stats = [m.stats for _, m in moe_layers(module) if m.stats]
    if not stats:
        return {}
    loads = torch.stack([s["load"] for s in stats])
    out = {"load_max": loads.amax(), "load_min": loads.amin()}
    for key in ("utilisation", "dropped_frac", "router_entropy", "balance_loss"):
        out[key] = torch.stack([s[key] for s in stats]).mean()
    return out


def active_params(module: nn.Module) -> int:
    """Parameters one token passes through ``module``: all of them, except that a top-k layer
    counts its router (and noise weights) and ``k`` experts, and a soft layer its slot weights
    and one expert (each slot is one expert's input). The count that compares a sparse layer
    with a dense one at equal compute (Shazeer et al. 2017; Puigcerver et al. 2024)."""
    n = sum(p.numel() for p in module.parameters())
    for _, layer in moe_layers(module):
        per_expert = sum(p[0].numel() for p in layer.experts.parameters())
        if isinstance(layer, TopKMoE):
            active = layer.router.numel() + layer.k * per_expert
            active += layer.noise.numel() if layer.noise is not None else 0
        else:  # SoftMoE
            active = layer.phi.numel() + per_expert
        n += active - sum(p.numel() for p in layer.parameters())
    return n


def moe_rng_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """States of the routing-noise generators of ``module``'s noisy layers, by layer name,
    for a checkpoint."""
    out: dict[str, torch.Tensor] = {}
    for name, m in moe_layers(module):
        if isinstance(m, TopKMoE):
            out[name] = m.noise_gen.get_state()
            for dev, g in m._device_gens.items():
                out[f"{name}@{dev}"] = g.get_state()
    return out


def moe_load_rng_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Restore what :func:`moe_rng_state` saved."""
    for name, m in moe_layers(module):
        if isinstance(m, TopKMoE) and name in state:
            m.noise_gen.set_state(state[name])
            m._device_gens = {}
            prefix = f"{name}@"
            for key, s in state.items():
                if key.startswith(prefix):
                    dev = key[len(prefix) :]
                    g = torch.Generator(dev)
                    g.set_state(s)
                    m._device_gens[dev] = g
