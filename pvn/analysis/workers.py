"""A multi-worker pretraining run (``distributed=<rule>``) measured: what coupling its workers
cost, what the coupling protected them from, and how far apart their data pulled them.

- :func:`team_measures`, from the run's logs: the rule's traffic per worker and update, a
  worker's mean distance to the honest workers' mean model within a round (local drift, what
  FedAvg-style rules trade for fewer rounds; Karimireddy et al. 2020), and how many Byzantine
  vectors a robust rule let through (MoNNA's nearest-neighbour averaging, Allouah et al. 2023).
- :func:`deflection`: how far a Byzantine worker moved the honest workers' mean model, against
  the same rule's run without the attack, over how far that run travelled from initialisation
  (0: the attack changed nothing; 1: as far off as the whole training moved).
- :func:`torso_gradient_cosine`: in a team whose workers learn different games on one torso
  (``distributed.partition=games``), the cosine between the games' torso gradients on their
  held-out transitions (negative: the games' objectives pull the shared torso apart).
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from pvn.analysis.heldout import batch_targets, trained_learner
from pvn.checkpoint import load_checkpoint, resolve_checkpoint
from pvn.pretraining import PretrainConfig, build
from pvn.replay import TorchBatch
from pvn.settings import section


def team_measures(cfg: Any, records: list[dict[str, Any]], worker: int = 0
                  ) -> dict[str, Any] | None:  # fmt: skip
    """A multi-worker run's rule as its logs record it (None for a one-worker run).

    Args:
        cfg: the run's config (its ``config.yaml``).
        records: its metrics (:func:`pvn.metrics.read_metrics`).
        worker: whose drift to read.

    Returns:
        ``rule``, ``workers`` (how many logged a loss), ``drift``: the mean of the worker's
        logged distance to the honest mean model over the logs where it is not 0 (mid-round;
        0 at round ends and always under ddp), ``mb_per_update``: the rule's megabytes sent
        per worker and update over the run, ``byzantine_kept``: the Byzantine vectors kept per
        honest worker and update (mean of the last 5 logs; NaN where the rule logs none).
    """
    rule = str(cfg.distributed.name)
    if rule == "none":
        return None
    keys = {k for r in records for k in r if k.startswith("workers/td_loss_")}
    drift_key = f"workers/dist_to_honest_mean_{worker}"
    drift = [float(r[drift_key]) for r in records if r.get(drift_key, 0.0) > 0]
    sent = [float(r["comm_bytes_per_worker"]) for r in records if "comm_bytes_per_worker" in r]
    steps = max((int(r["step"]) for r in records if "comm_bytes_per_worker" in r), default=0)
    kept = [float(r["byzantine_kept"]) for r in records if "byzantine_kept" in r]
    return {
        "rule": rule,
        "workers": len(keys),
        "drift": float(np.mean(drift)) if drift else 0.0,
        "mb_per_update": sent[-1] / steps / 1e6 if sent and steps else math.nan,
        "byzantine_kept": float(np.mean(kept[-5:])) if kept else math.nan,
    }


def _vector(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.detach().reshape(-1).double() for v in state.values()])


def byzantine_ids(run_dir: str | Path) -> set[int]:
    """The workers a run made Byzantine (``distributed.byzantine``)."""
    cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
    return set(cfg.distributed.get("byzantine") or [])


def honest_mean(state: dict[str, Any], byzantine: set[int]) -> torch.Tensor:
    """The mean online network (every entry of its state, flattened) of the workers not in
    ``byzantine`` in a run's checkpoint ``state`` (a one-worker run: its own)."""
    workers = state.get("workers", [{"id": 0, "learner": state["learner"]}])
    vecs = [_vector(w["learner"]["online"]) for w in workers if w["id"] not in byzantine]
    return torch.stack(vecs).mean(0)


def deflection(run_dir: str | Path, baseline_dir: str | Path) -> float:
    """``|m - m0| / |m0 - x0|``: the honest workers' mean model ``m`` of ``run_dir`` against
    ``m0``, the same workers' mean in ``baseline_dir`` (the same rule, data and seed without
    the attack), over how far ``m0`` moved from the common initialisation ``x0`` (rebuilt from
    the baseline's config and seed).

    Args:
        run_dir: the run whose honest workers are read (its ``distributed.byzantine`` names
            the workers left out of both means).
        baseline_dir: the run it is compared with.

    Returns:
        The ratio; NaN when either run's parameters are not finite.
    """
    cfg = OmegaConf.load(Path(baseline_dir) / "config.yaml")
    base = load_checkpoint(resolve_checkpoint(baseline_dir))
    x0 = _vector(build(section(PretrainConfig, cfg), int(base["meta"]["num_actions"]))
                 .online.state_dict())  # fmt: skip
    byzantine = byzantine_ids(run_dir)  # the same workers in both (MoNNA's models differ)
    m = honest_mean(load_checkpoint(resolve_checkpoint(run_dir)), byzantine)
    m0 = honest_mean(base, byzantine)
    value = float((m - m0).norm() / (m0 - x0).norm())
    return value if math.isfinite(value) else math.nan


def _torso_gradient(learner: Any, batch: TorchBatch, n: int) -> torch.Tensor:
    """The torso's gradient of the learner's TD loss on the first ``n`` transitions of
    ``batch`` (its own tasks' rewards and target network's bootstrap)."""
    part = TorchBatch(*(t[:n] for t in batch[:5]))
    with torch.no_grad():  # targets as training computes them: no gradient into the tasks
        _, y = next(batch_targets(learner, part, n))
    learner.online.zero_grad(set_to_none=True)
    q, _ = learner.online(part.observation)
    learner.td_loss(q, part.action, y).backward()
    return torch.cat([p.grad.reshape(-1) for p in learner.online.torso.parameters()])


def torso_gradient_cosine(run_dir: str | Path, batches: list[TorchBatch], n: int = 256) -> float:
    """The mean pairwise cosine between the torso gradients of a ``partition=games`` run's
    games.

    Args:
        run_dir: the run (its last checkpoint).
        batches: per game, in ``data.path``'s order, held-out transitions: worker ``i`` (game
            ``i``, with its own tasks and head) is differentiated on ``batches[i]``.
        n: transitions per game.

    Returns:
        The mean over pairs of games (one pair for two) of the cosine of their gradients.
    """
    grads = [_torso_gradient(trained_learner(run_dir, i)[1], b, n) for i, b in enumerate(batches)]
    cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0))
               for a, b in combinations(grads, 2)]  # fmt: skip
    return float(np.mean(cosines))
