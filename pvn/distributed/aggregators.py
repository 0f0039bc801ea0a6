"""Aggregation rules over workers' parameter vectors, and Byzantine attacks on them.

Rules (each honest worker applies one to the n vectors it received, its own included):

* ``dsgd`` -- the plain average (decentralised SGD's gossip with a complete graph);
* ``monna`` -- nearest-neighbour averaging (Farhadkhani et al., ICML 2023): the average of the
  ``n - f`` vectors closest to the worker's own (Euclidean), which drops the ``f`` farthest;
* ``trimmed_mean`` -- coordinate-wise: drop the ``f`` largest and ``f`` smallest values (BRIDGE);
* ``median`` -- coordinate-wise median (the mean of the two middle values when n is even).

Attacks (an omniscient adversary: it sees the honest vectors ``V`` of this step and their mean
``r`` at the previous step, and sends ``r + u`` with a crafted update ``u``; ``U = V - r``):

* ``sign_flip`` -- ``u = -mean(U)``;
* ``alie`` -- "a little is enough" (Baruch et al. 2019): ``u = mean(U) - z std(U)`` with
  ``z = Phi^-1((n - s) / n)``, ``s = floor(n/2 + 1) - f``;
* ``foe`` -- "fall of empires" (Xie et al. 2020): ``u = -eps mean(U)`` (eps = ``scale``, 0.1);
* ``gaussian`` -- ``u ~ N(0, scale^2)`` per coordinate;
* ``reward_flip`` -- data poisoning, not a crafted vector: the Byzantine worker trains honestly
  on flipped task rewards (indicators ``1 - r``, other cumulants ``-r``) and sends its parameters
  (:func:`flip_rewards`; the RL counterpart of label flipping).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def mean(vectors: torch.Tensor, own: int = 0, f: int = 0) -> torch.Tensor:
    return vectors.mean(0)


def nearest(vectors: torch.Tensor, own: int, f: int) -> torch.Tensor:
    """Indices of the ``n - f`` rows of ``vectors`` (n, d) closest to row ``own`` (Euclidean)."""
    dist = (vectors - vectors[own]).pow(2).sum(1)
    return torch.argsort(dist, stable=True)[: vectors.shape[0] - f]


def nearest_neighbour_average(vectors: torch.Tensor, own: int, f: int) -> torch.Tensor:
    """The mean of the ``n - f`` rows of ``vectors`` closest to row ``own``."""
    return vectors[nearest(vectors, own, f)].mean(0)


def trimmed_mean(vectors: torch.Tensor, own: int = 0, f: int = 0) -> torch.Tensor:
    n = vectors.shape[0]
    return vectors.sort(0).values[f : n - f].mean(0)


def median(vectors: torch.Tensor, own: int = 0, f: int = 0) -> torch.Tensor:
    s, n = vectors.sort(0).values, vectors.shape[0]
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


AGGREGATORS = {
    "dsgd": mean,
    "monna": nearest_neighbour_average,
    "trimmed_mean": trimmed_mean,
    "median": median,
}


ATTACKS = ("sign_flip", "alie", "foe", "gaussian", "reward_flip")


def flip_rewards(tasks: torch.nn.Module) -> None:
    """Make a task family return flipped rewards from now on (a forward hook; state unchanged)."""

    def hook(module, inputs, out):
        out.rewards = 1.0 - out.rewards if module.indicator else -out.rewards
        return out

    tasks.register_forward_hook(hook)


def alie_z(n: int, f: int) -> float:
    s = math.floor(n / 2 + 1) - f
    return NormalDist().inv_cdf((n - s) / n)


def craft(
    attack: str,
    honest: torch.Tensor,
    reference: torch.Tensor,
    n: int,
    f: int,
    scale: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """The vector a Byzantine worker sends, from the honest vectors (h, d) of this step."""
    u = honest - reference
    if attack == "sign_flip":
        crafted = -u.mean(0)
    elif attack == "alie":
        crafted = u.mean(0) - alie_z(n, f) * u.std(0, unbiased=honest.shape[0] > 1)
    elif attack == "foe":
        crafted = -scale * u.mean(0)
    elif attack == "gaussian":
        noise = torch.randn(u.shape[1], generator=gen, dtype=u.dtype)
        crafted = scale * noise.to(u.device)
    else:
        raise ValueError(
            f"distributed.attack={attack!r}: choose sign_flip, alie, foe, gaussian or reward_flip"
        )
    return reference + crafted
