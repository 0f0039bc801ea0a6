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


#: keys of a ``tasks=`` option that configure the pretraining's calibration, not the family
CALIBRATION_KEYS = ("calibration_optimizer", "calibration_lr", "calibration_decay")


def build_tasks(name: str, gen: torch.Generator, **values) -> TaskFamily:
    """A task family by registry name, its random parts drawn from ``gen``.

    Args:
        name: the family (the ``tasks=`` option: indicator_rnd, indicator_hash, ...).
        gen: the generator its random networks or hash keys are drawn from.
        **values: every value of the family (the ``tasks:`` section); the defaults live in
            ``configs/tasks/<name>.yaml`` alone (:func:`pvn.builders.tasks_option` fills them
            in for Python callers); the calibration's keys are ignored here.

    Returns:
        The :class:`TaskFamily`; an unknown name or value raises ``ValueError``, a missing or
        unknown key ``TypeError``.
    """
    if name not in FAMILIES:
        raise ValueError(f"tasks={name!r}: unknown; choose one of {sorted(FAMILIES)}")
    for key in ("name", *CALIBRATION_KEYS):
        values.pop(key, None)
    return FAMILIES[name](gen, **values)


__all__ = ["CALIBRATION_KEYS", "FAMILIES", "TaskFamily", "TaskOutput", "build_tasks"]
