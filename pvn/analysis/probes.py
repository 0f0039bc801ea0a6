"""Offline linear probes of a frozen representation on logged data (beyond the PVN code).

Ridge regression from ``phi(s_t)`` to (a) the discounted return-to-go
``G_t = sum_k gamma^k r_{t+k}`` of the logging policy and (b) the next reward ``r_t``, fit on
the earlier episodes of the log (the penalty chosen by blocked cross-validation over them) and
scored by R^2 on the later, held-out ones. A cheap signal (seconds on a CPU) of how much
value-relevant information the features carry linearly, when an online evaluation would take
hours. On the same states it reports the features' effective rank
and dormant fraction (:mod:`pvn.diagnostics`): a collapsed representation shows there first.
"""

from __future__ import annotations

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
    """Ridge weights ``(a^T a + l2 n I)^-1 a^T y`` for every ``l2`` at once, from one SVD."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    uty = u.T @ y
    shrink = s[None, :] / (s[None, :] ** 2 + np.asarray(l2s)[:, None] * len(a))
    return (shrink * uty[None, :]) @ vt  # (len(l2s), features)


def choose_l2(x: np.ndarray, y: np.ndarray, folds: int = 5, grid=L2_GRID) -> float:
    """The penalty of ``grid`` with the least squared error over ``folds`` contiguous blocks of
    the (chronological) training states, each held out in turn: blocks, not shuffled rows, so
    that states of one episode do not sit on both sides of a split."""
    sse = np.zeros(len(grid))
    for held in np.array_split(np.arange(len(x)), folds):
        fit = np.ones(len(x), bool)
        fit[held] = False
        (a, b), ym = _standardise(x[fit], x[held]), y[fit].mean()
        w = ridge_weights(a, y[fit] - ym, grid)
        sse += (((b @ w.T) + ym - y[held, None]) ** 2).sum(0)
    return float(grid[int(np.argmin(sse))])


def ridge_r2(x_train, y_train, x_test, y_test, l2: float | None = None) -> tuple[float, float]:
    """(R^2 on the test set, the penalty used) of ridge regression on standardised features,
    bias unpenalised. ``l2=None`` chooses the penalty by blocked cross-validation on the
    training set (:func:`choose_l2`): a fixed small penalty overfits 512 features on a few
    thousand correlated states, and its held-out R^2 goes below 0."""
    l2 = choose_l2(x_train, y_train) if l2 is None else l2
    (a, b), ym = _standardise(x_train, x_test), y_train.mean()
    pred = b @ ridge_weights(a, y_train - ym, [l2])[0] + ym
    ss_res = float(((y_test - pred) ** 2).sum())
    ss_tot = float(((y_test - y_test.mean()) ** 2).sum())
    return (1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")), l2


@torch.no_grad()
def linear_probes(
    encoder: nn.Module,
    ds: LoggedData,
    gamma: float = 0.99,
    max_states: int = 4000,
    test_fraction: float = 0.2,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """R^2 of linear probes to return-to-go and next reward, on held-out later episodes (with
    the ridge penalties chosen on the earlier ones); the effective rank (``srank``) and
    ``dormant`` fraction of the features on the training states."""
    keys, g, r = episode_targets(ds, gamma)
    if len(keys) < 20:
        nan = float("nan")
        return {
            "states": len(keys),
            **dict.fromkeys(("return_r2", "reward_r2", "return_l2", "reward_l2", "dormant"), nan),
            "srank": 0,
        }
    split = int(len(keys) * (1 - test_fraction))  # earlier episodes train, later ones test
    rng = np.random.default_rng(seed)
    take = [
        np.sort(rng.choice(np.arange(lo, hi), min(hi - lo, n), replace=False))
        for lo, hi, n in (
            (0, split, int(max_states * (1 - test_fraction))),
            (split, len(keys), int(max_states * test_fraction)),
        )
    ]
    feats = []
    for idx in take:
        rows = []
        for start in range(0, len(idx), 256):
            part = idx[start : start + 256]
            obs = np.stack([ds.gather(keys[i][0], [keys[i][1]]).observation[0] for i in part])
            rows.append(encoder(torch.from_numpy(obs).to(device)).float().cpu().numpy())
        feats.append(np.concatenate(rows).astype(np.float64))
    (tr, te), (xtr, xte) = take, feats
    phi = torch.from_numpy(xtr)
    return_r2, return_l2 = ridge_r2(xtr, g[tr], xte, g[te])
    reward_r2, reward_l2 = ridge_r2(xtr, r[tr], xte, r[te])
    return {
        "states": int(len(tr) + len(te)),
        "return_r2": return_r2,
        "reward_r2": reward_r2,
        "return_l2": return_l2,
        "reward_l2": reward_l2,
        "srank": int(srank(phi)),
        "dormant": float(dormant_fraction(phi, DiagnosticsConfig.dormant_tau)),
    }
