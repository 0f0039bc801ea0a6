"""Representation diagnostics logged during pretraining.

* ``srank`` -- effective rank (Kumar et al. 2021, "Implicit Under-Parameterization"):
  the smallest k with sum_{i<=k} sigma_i >= (1 - delta) sum_i sigma_i over the singular values of
  the batch's feature matrix, delta = 0.01.
* ``dormant_fraction`` -- Sokar et al. 2023 ("The Dormant Neuron Phenomenon"): unit i of the
  feature layer is tau-dormant when E|h_i| / mean_j E|h_j| <= tau.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DiagnosticsConfig:
    """The ``diagnostics:`` section of ``pvn pretrain``."""

    dormant_tau: float = 0.025  # a feature unit is dormant when its mean |activation| ratio <= tau
    states: int = 1024  # srank and dormancy are measured on the features of the last
    # ceil(states / batch_size) batches (one batch of 32 caps srank at 32)


@torch.no_grad()
def srank(features: torch.Tensor, delta: float = 0.01) -> torch.Tensor:
    sv = torch.linalg.svdvals(features.float())
    cum = torch.cumsum(sv, 0) / sv.sum().clamp_min(1e-12)
    return (cum < 1.0 - delta).sum() + 1


@torch.no_grad()
def dormant_fraction(features: torch.Tensor, tau: float) -> torch.Tensor:
    act = features.float().abs().mean(0)
    score = act / act.mean().clamp_min(1e-12)
    return (score <= tau).float().mean()
