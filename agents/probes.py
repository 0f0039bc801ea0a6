"""Offline linear probes of a frozen representation on logged data (beyond the PVN code).

Ridge regression from ``phi(s_t)`` to (a) the discounted return-to-go
``G_t = sum_k gamma^k r_{t+k}`` of the logging policy and (b) the next reward ``r_t``, fit on
the earlier episodes of the log and scored by R^2 on the later, held-out ones. A cheap signal
(seconds on a CPU) of how much value-relevant information the features carry linearly, when an
online evaluation would take hours. On the same states it reports the features' effective rank
and dormant fraction (:mod:`pvn.diagnostics`): a collapsed representation shows there first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pvn.diagnostics import dormant_fraction, srank
from replay import DQNReplayDataset
from replay.summary import chronological


def episode_targets(ds: DQNReplayDataset, gamma: float) -> tuple[list, np.ndarray, np.ndarray]:
    """(checkpoint, slot) of every valid transition inside a complete episode, in the order
    logged, with its discounted return-to-go and its reward."""
    keys, returns, rewards = [], [], []
    for c in ds.checkpoints:
        ck = ds.checkpoint(c)
        order = chronological(ck)
        r = np.asarray(ck.reward, np.float64)[order]
        term = np.asarray(ck.terminal, bool)[order]
        g = np.zeros(len(order))
        complete = np.zeros(len(order), bool)
        acc, inside = 0.0, False
        for i in range(len(order) - 1, -1, -1):  # backwards: G_t = r_t + gamma G_{t+1}
            if term[i]:
                acc, inside = 0.0, True
            acc = r[i] + gamma * acc
            g[i], complete[i] = acc, inside
        valid = ds.valid_mask(c)[order] & complete
        keys += [(c, int(s)) for s in order[valid]]
        returns.append(g[valid])
        rewards.append(r[valid])
    return keys, np.concatenate(returns), np.concatenate(rewards)


def ridge_r2(x_train, y_train, x_test, y_test, l2: float = 1e-2) -> float:
    """R^2 on the test set of ridge regression on standardised features (bias unpenalised)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    ym = y_train.mean()
    w = np.linalg.solve(a.T @ a + l2 * len(a) * np.eye(a.shape[1]), a.T @ (y_train - ym))
    pred = b @ w + ym
    ss_res = float(((y_test - pred) ** 2).sum())
    ss_tot = float(((y_test - y_test.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


@torch.no_grad()
def linear_probes(
    encoder: nn.Module,
    ds: DQNReplayDataset,
    gamma: float = 0.99,
    max_states: int = 4000,
    test_fraction: float = 0.2,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """R^2 of linear probes to return-to-go and next reward, on held-out later episodes; the
    effective rank (``srank``) and ``dormant`` fraction of the features on the training states."""
    keys, g, r = episode_targets(ds, gamma)
    if len(keys) < 20:
        nan = float("nan")
        return {"states": len(keys), "return_r2": nan, "reward_r2": nan, "srank": 0, "dormant": nan}
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
    return {
        "states": int(len(tr) + len(te)),
        "return_r2": ridge_r2(xtr, g[tr], xte, g[te]),
        "reward_r2": ridge_r2(xtr, r[tr], xte, r[te]),
        "srank": int(srank(torch.from_numpy(xtr))),
        "dormant": float(dormant_fraction(torch.from_numpy(xtr))),
    }
