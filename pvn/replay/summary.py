"""Statistics of a ``replay_logs`` directory (or a store converted from one) read from its
small arrays only (no frames)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pvn.replay.cache import Checkpoint, chronological, read_checkpoint_meta
from pvn.replay.dataset import (
    checkpoint_listing,
    new_slot_count,
    new_slot_mask,
    previous_add_count,
    resolve_log_dir,
)
from pvn.replay.store import is_store, open_entry
from pvn.replay.transitions import valid_mask


def episode_returns(ck: Checkpoint, new_slots: int) -> np.ndarray:
    """Returns (sums of the stored, clipped rewards) of the episodes that end in the last
    ``new_slots`` slots written to ``ck`` and begin inside it.

    Slots are read in the order they were written (from the cursor round the circular buffer
    when it is full). Counting only episodes that end in new slots counts each episode once over
    a sequence of logged checkpoints, whose buffers overlap.
    """
    order = chronological(ck)
    reward = np.asarray(ck.reward, np.float64)[order]
    ends = np.flatnonzero(np.asarray(ck.terminal)[order])
    csum = np.concatenate([[0.0], np.cumsum(reward)])
    returns = np.diff(np.concatenate([[0.0], csum[ends + 1]]))
    keep = ends >= len(order) - new_slots
    if ck.is_full and len(keep):
        keep[0] = False  # the oldest episode may have begun in an overwritten round
    return returns[keep]


def summarize(
    path: str | Path, stack_size: int = 4, n_step: int = 1, skip_incomplete: bool = False
) -> dict[str, Any]:
    """Per-checkpoint and total counts: slots, valid transitions (those a
    :class:`DQNReplayDataset` samples by default: starting in new slots), episodes, clipped
    returns; and, with ``skip_incomplete``, the incomplete checkpoints skipped."""
    log_dir = resolve_log_dir(path)
    rows, all_returns = [], []
    found, skipped = checkpoint_listing(log_dir, skip_incomplete)
    for c in found:
        ck = open_entry(log_dir, c) if is_store(log_dir) else read_checkpoint_meta(log_dir, c)
        new = (
            new_slot_count(ck, previous_add_count(log_dir, c, found))
            if ck.is_full
            else ck.add_count
        )
        rets = episode_returns(ck, new)
        all_returns.append(rets)
        chrono_terminal = np.asarray(ck.terminal)[chronological(ck)]
        rows.append(
            {
                "checkpoint": c,
                "capacity": ck.capacity,
                "add_count": ck.add_count,
                "full": ck.is_full,
                "new_slots": new,
                "valid": int(
                    (valid_mask(ck, stack_size, n_step, True) & new_slot_mask(ck, new)).sum()
                ),
                "episodes_ended": int(chrono_terminal[len(chrono_terminal) - new :].sum()),
                # the learning curve of the agent that logged the data, checkpoint by checkpoint
                "return_mean": float(rets.mean()) if len(rets) else None,
            }
        )
    rets = np.concatenate(all_returns)
    stats = (
        {"mean": float(rets.mean()), "min": float(rets.min()), "max": float(rets.max())}
        if len(rets)
        else {"mean": None, "min": None, "max": None}
    )
    return {
        "path": str(log_dir),
        "skipped_incomplete": skipped if skip_incomplete else {},
        "checkpoints": rows,
        "slots": sum(r["new_slots"] for r in rows),
        "valid": sum(r["valid"] for r in rows),
        "episodes_ended": sum(r["episodes_ended"] for r in rows),
        "complete_episodes": len(rets),
        "clipped_return": stats,
    }
