"""Offline linear probes of a frozen representation on logged data (beyond the PVN code).

Ridge regression from ``phi(s_t)`` to (a) the discounted return-to-go
``G_t = sum_k gamma^k r_{t+k}`` of the logging policy and (b) the next reward ``r_t``, fit on
the earlier episodes of the log (the penalty chosen by blocked cross-validation over them) and
scored by R^2 on the later, held-out ones; and (c), given a PVN's tasks, each task's discounted
future occupancy under the logging policy (its successor measure, the quantity the PVN's heads
are trained on). A cheap signal (seconds on a CPU) of how much
value-relevant information the features carry linearly, when an online evaluation would take
hours. On the same states it reports the features' effective rank
and dormant fraction (:mod:`pvn.diagnostics`): a collapsed representation shows there first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pvn.diagnostics import DiagnosticsConfig, dormant_fraction, srank
from pvn.replay import LoggedData


def discounted_to_go(r: np.ndarray, terminal: np.ndarray, gamma: float):
    """``G_t = r_t + gamma G_{t+1}`` within episodes, for rewards ``r`` (n,) or (n, K) in the
    order logged; and whether each step lies in an episode that ends in the log (``complete``:
    only those have their true return)."""
    g = np.zeros(r.shape, np.float64)
    complete = np.zeros(len(r), bool)
    acc, inside = np.zeros(r.shape[1:]), False
    for i in range(len(r) - 1, -1, -1):  # backwards
        if terminal[i]:
            acc, inside = np.zeros(r.shape[1:]), True
        acc = r[i] + gamma * acc
        g[i], complete[i] = acc, inside
    return g, complete


def episode_targets(ds: LoggedData, gamma: float) -> tuple[list, np.ndarray, np.ndarray]:
    """(checkpoint, slot) of every valid transition inside a complete episode, in the order
    logged, with its discounted return-to-go and its reward."""
    keys, returns, rewards = [], [], []
    for c in ds.shards:
        log = ds.logged(c)
        r = log.reward.astype(np.float64)
        g, complete = discounted_to_go(r, log.terminal, gamma)
        valid = ds.valid_mask(c)[log.order] & complete
        keys += [(c, int(s)) for s in log.order[valid]]
        returns.append(g[valid])
        rewards.append(r[valid])
    return keys, np.concatenate(returns), np.concatenate(rewards)


#: candidate ridge penalties, per training state (the penalty is ``l2 * n``)
L2_GRID = tuple(10.0**k for k in range(-4, 4))


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    return (x_train - mu) / sd, (x_test - mu) / sd


def ridge_weights(a: np.ndarray, y: np.ndarray, l2s) -> np.ndarray:
    """Ridge weights ``(a^T a + l2 n I)^-1 a^T y`` for every ``l2`` at once, from one SVD:
    ``(len(l2s), features)`` for a target ``y`` (n,), ``(len(l2s), features, K)`` for K targets
    ``y`` (n, K) (the SVD is shared by every target)."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    uty = u.T @ y
    shrink = s[None, :] / (s[None, :] ** 2 + np.asarray(l2s)[:, None] * len(a))
    if y.ndim == 1:
        return (shrink * uty[None, :]) @ vt
    return np.einsum("lk,kc,kf->lfc", shrink, uty, vt)


def _predict(b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Predictions of the weights :func:`ridge_weights` made, ``(len(l2s), m[, K])``."""
    return np.einsum("mf,lf->lm", b, w) if w.ndim == 2 else np.einsum("mf,lfc->lmc", b, w)


def choose_l2(x: np.ndarray, y: np.ndarray, folds: int = 5, grid=L2_GRID) -> float | np.ndarray:
    """The penalty of ``grid`` with the least squared error over ``folds`` contiguous blocks of
    the (chronological) training states, each held out in turn: blocks, not shuffled rows, so
    that states of one episode do not sit on both sides of a split. For K targets ``y`` (n, K),
    each target's penalty, ``(K,)``."""
    sse = np.zeros((len(grid), *y.shape[1:]))
    for held in np.array_split(np.arange(len(x)), folds):
        fit = np.ones(len(x), bool)
        fit[held] = False
        (a, b), ym = _standardise(x[fit], x[held]), y[fit].mean(0)
        pred = _predict(b, ridge_weights(a, y[fit] - ym, grid)) + ym
        sse += ((pred - y[held][None]) ** 2).sum(1)
    best = np.asarray(grid)[np.argmin(sse, axis=0)]
    return float(best) if y.ndim == 1 else best


def ridge_r2(x_train, y_train, x_test, y_test, l2=None):
    """(R^2 on the test set, the penalty used) of ridge regression on standardised features,
    bias unpenalised. ``l2=None`` chooses the penalty by blocked cross-validation on the
    training set (:func:`choose_l2`): a fixed small penalty overfits 512 features on a few
    thousand correlated states, and its held-out R^2 goes below 0. For K targets ``y`` (n, K),
    each target fit with its own penalty: both are ``(K,)`` arrays (R^2 NaN where a target is
    constant on the test set)."""
    l2 = choose_l2(x_train, y_train) if l2 is None else l2
    if y_train.ndim == 2:  # one penalty per target (a scalar: the same for each)
        l2 = np.broadcast_to(np.asarray(l2, float), y_train.shape[1:])
    (a, b), ym = _standardise(x_train, x_test), y_train.mean(0)
    grid, pick = np.unique(np.atleast_1d(l2), return_inverse=True)
    w = ridge_weights(a, y_train - ym, grid)  # every penalty used, then each target's own
    pred = _predict(b, w)[pick, :, np.arange(len(pick))].T if y_train.ndim == 2 else (
        _predict(b, w)[0])  # fmt: skip
    ss_res = ((y_test - (pred + ym)) ** 2).sum(0)
    ss_tot = ((y_test - y_test.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)
    return (float(r2), l2) if y_train.ndim == 1 else (r2, l2)


#: a run's task rewards along a log: ``(shard, slots in the order logged, their logged rewards)
#: -> (len(slots), K)`` (:func:`pvn.task_cache.task_rewards`)
TaskRewards = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def successor_to_go(ds: LoggedData, keys: list, gamma: float, task_rewards: TaskRewards
                    ) -> np.ndarray:  # fmt: skip
    """Each task's discounted future occupancy along the log, ``G_k(t) = sum_j gamma^j
    r_k(s_{t+j})`` to the episode's end, at the (checkpoint, slot) ``keys``: ``(len(keys), K)``.

    It is the logging policy's successor measure of the task's indicator set (Farebrother et
    al. 2023, Eq. 2, with the log's actions in place of the PVN's policy), the quantity a PVN's
    heads are trained to predict, and one the log can check without a model."""
    rows: dict[int, list[int]] = {}
    for i, (c, _) in enumerate(keys):
        rows.setdefault(c, []).append(i)
    out: np.ndarray | None = None
    for c, mine in rows.items():
        log = ds.logged(c)
        g, _ = discounted_to_go(task_rewards(c, log.order, log.reward).astype(np.float64),
                                log.terminal, gamma)  # fmt: skip
        where = np.full(int(log.order.max()) + 1, -1)
        where[log.order] = np.arange(len(log.order))
        if out is None:
            out = np.zeros((len(keys), g.shape[1]))
        out[mine] = g[where[[keys[i][1] for i in mine]]]
    return out if out is not None else np.zeros((0, 0))


@dataclass(frozen=True)
class ProbeTargets:
    """The states a probe fits (the first ``train`` of ``keys``) and scores (the rest), with
    their targets: drawn once per log, so every torso probed on it is fit to the same states,
    and their frames and the tasks' successor measures (running the tasks along the log, the
    costly part) are gathered and computed once for all of them."""

    keys: list  # (checkpoint, slot) of each state, the training ones first
    train: int
    returns: np.ndarray  # the return-to-go of each state
    rewards: np.ndarray  # its next reward
    successor: np.ndarray | None  # (len(keys), K) the tasks' successor measures, or None
    tasks: bool  # whether task rewards were given (a log too short has none computed)
    observations: np.ndarray | None = None  # uint8 (len(keys), 4, 84, 84), gathered once


def probe_targets(
    ds: LoggedData,
    gamma: float = 0.99,
    max_states: int = 4000,
    test_fraction: float = 0.2,
    seed: int = 0,
    task_rewards: TaskRewards | None = None,
) -> ProbeTargets:
    """Draw the probes' states from ``ds``'s complete episodes (the earlier episodes train, the
    later ``test_fraction`` of states score) and compute their targets; arguments as
    :func:`linear_probes`'s. Fewer than 20 states: nothing is drawn (``keys`` holds them all,
    ``train`` is 0)."""
    keys, g, r = episode_targets(ds, gamma)
    if len(keys) < 20:
        return ProbeTargets(keys, 0, g, r, None, task_rewards is not None)
    split = int(len(keys) * (1 - test_fraction))  # earlier episodes train, later ones test
    rng = np.random.default_rng(seed)
    take = np.concatenate([
        np.sort(rng.choice(np.arange(lo, hi), min(hi - lo, n), replace=False))
        for lo, hi, n in (
            (0, split, int(max_states * (1 - test_fraction))),
            (split, len(keys), int(max_states * test_fraction)),
        )
    ])  # fmt: skip
    chosen = [keys[i] for i in take]
    sm = None if task_rewards is None else successor_to_go(ds, chosen, gamma, task_rewards)
    train = int(np.searchsorted(take, split))
    shards = np.array([c for c, _ in chosen])
    slots = np.array([slot for _, slot in chosen])
    obs: np.ndarray | None = None
    for c in np.unique(shards).tolist():  # one gather per shard, rows back in ``chosen``'s order
        mine = np.flatnonzero(shards == c)
        part = ds.gather(c, slots[mine]).observation
        if obs is None:
            obs = np.empty((len(chosen), *part.shape[1:]), part.dtype)
        obs[mine] = part
    return ProbeTargets(chosen, train, g[take], r[take], sm, task_rewards is not None, obs)


@torch.no_grad()
def linear_probes(
    encoder: nn.Module,
    ds: LoggedData,
    gamma: float = 0.99,
    max_states: int = 4000,
    test_fraction: float = 0.2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    task_rewards: TaskRewards | None = None,
    targets: ProbeTargets | None = None,
) -> dict[str, Any]:
    """How much of the logging policy's values the frozen features carry linearly.

    Args:
        encoder: the frozen torso, ``uint8 (B, 4, 84, 84) -> (B, features)``.
        ds: the log; the probes fit on the earlier episodes and score the later ones.
        gamma: the discount of the return-to-go and the successor measures.
        max_states: states sampled for both fits together.
        test_fraction: the later share of the complete episodes' states scored.
        seed: the states' draw (the same for every encoder probed on ``ds``).
        device: where the encoder runs.
        task_rewards: a PVN's tasks along the log (:data:`TaskRewards`); with them, the
            successor-measure probe as well.
        targets: the states and targets drawn by :func:`probe_targets` (then ``gamma``,
            ``max_states``, ``test_fraction``, ``seed`` and ``task_rewards`` are theirs):
            for probing several torsos on one log without computing the targets again.

    Returns:
        ``return_r2``, ``reward_r2``: held-out R^2 of the return-to-go and the next reward
        (penalties ``return_l2``, ``reward_l2`` chosen on the earlier episodes);
        ``successor_r2``: with ``task_rewards``, the held-out R^2 of the tasks'
        :func:`successor_to_go`, each task fit on its own and pooled (``1 - sum_k SS_res,k /
        sum_k SS_tot,k``: the share of the tasks' total variance explained; tasks constant on
        the test states skipped, ``successor_tasks`` how many were scored); ``srank`` and
        ``dormant``: the features' effective rank and dormant fraction on the training states;
        ``l1``: their mean L1 norm, the scale a linear head's Adam steps act at (each weight
        moves about lr per step, so Q moves about lr times ``|phi|_1``); ``states``: how many
        were probed.
    """
    if targets is not None and task_rewards is not None:
        raise ValueError("linear_probes: give task_rewards to probe_targets, not beside targets")
    t = targets if targets is not None else probe_targets(
        ds, gamma, max_states, test_fraction, seed, task_rewards)  # fmt: skip
    if t.train == 0:
        unknown = ("return_r2", "reward_r2", "return_l2", "reward_l2", "dormant", "l1")
        return {
            "states": len(t.keys),
            **dict.fromkeys(unknown, float("nan")),
            **({"successor_r2": float("nan"), "successor_tasks": 0} if t.tasks else {}),
            "srank": 0,
        }
    rows = []
    for start in range(0, len(t.keys), 256):
        obs = torch.from_numpy(t.observations[start : start + 256]).to(device)
        rows.append(encoder(obs).float().cpu().numpy())
    x = np.concatenate(rows).astype(np.float64)
    n, g, r = t.train, t.returns, t.rewards
    xtr, xte = x[:n], x[n:]
    phi = torch.from_numpy(xtr)
    return_r2, return_l2 = ridge_r2(xtr, g[:n], xte, g[n:])
    reward_r2, reward_l2 = ridge_r2(xtr, r[:n], xte, r[n:])
    out = {
        "states": len(t.keys),
        "return_r2": return_r2,
        "reward_r2": reward_r2,
        "return_l2": return_l2,
        "reward_l2": reward_l2,
        "srank": int(srank(phi)),
        "dormant": float(dormant_fraction(phi, DiagnosticsConfig.dormant_tau)),
        "l1": float(phi.abs().sum(1).mean()),
    }
    if t.successor is not None:
        sm = t.successor
        r2 = ridge_r2(xtr, sm[:n], xte, sm[n:])[0]
        tot = ((sm[n:] - sm[n:].mean(0)) ** 2).sum(0)
        scored = np.isfinite(r2)
        # pooled over tasks, each weighted by its test variance: a task that barely varies on
        # the test states (a rarely firing indicator) has an R^2 of any size and says nothing
        res = ((1 - r2[scored]) * tot[scored]).sum()
        out["successor_r2"] = float(1 - res / tot[scored].sum()) if scored.any() else float("nan")
        out["successor_tasks"] = int(scored.sum())
    return out
