"""Auxiliary task families: ``family(obs, reward) -> TaskOutput(rewards (B, T), calibration)``."""

from __future__ import annotations

import torch

from pvn.auxiliary.base import TaskFamily, TaskOutput
from pvn.auxiliary.indicator_hash import IndicatorHash
from pvn.auxiliary.indicator_rnd import IndicatorRND
from pvn.auxiliary.random_cumulants import RandomCumulants
from pvn.auxiliary.reward import LoggedReward

FAMILIES: dict[str, type[TaskFamily]] = {
    "indicator_rnd": IndicatorRND,
    "indicator_hash": IndicatorHash,
    "random_cumulants": RandomCumulants,
    "reward": LoggedReward,
}


def build_tasks(name: str, gen: torch.Generator, **kwargs) -> TaskFamily:
    """A task family by registry name, its random parts drawn from ``gen``."""
    if name not in FAMILIES:
        raise ValueError(f"tasks={name!r}: unknown; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name](gen=gen, **kwargs)


__all__ = ["FAMILIES", "TaskFamily", "TaskOutput", "build_tasks"]
