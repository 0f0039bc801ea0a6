"""Independent references for the replay tests: Dopamine's rules as plain per-index loops.

Written from Dopamine's rules as `circular_replay_buffer.py` states them, reading the checkpoint
files directly with numpy; nothing here calls the library's replay code.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

KINDS = ("observation", "action", "reward", "terminal", "add_count", "invalid_range")


def load_raw(log_dir: Path, ckpt: int) -> dict[str, np.ndarray]:
    """The six arrays of a checkpoint, read with plain np.load."""
    out = {}
    for kind in KINDS:
        name = f"$store$_{kind}_ckpt.{ckpt}.gz" if kind in KINDS[:4] else f"{kind}_ckpt.{ckpt}.gz"
        with gzip.open(Path(log_dir) / name) as f:
            out[kind] = np.load(f, allow_pickle=False)
    return out


def is_valid(raw: dict, stack: int, n: int, i: int) -> bool:
    cap = len(raw["action"])
    add_count = int(raw["add_count"])
    cursor = add_count % cap
    if not 0 <= i < cap:
        return False
    if add_count < cap:  # not full
        if i >= cursor - n:
            return False
        if i < stack - 1:
            return False
    if i in set(int(x) for x in raw["invalid_range"]):
        return False
    return all(not raw["terminal"][(i - k) % cap] for k in range(1, stack))


def transition(raw: dict, stack: int, n: int, gamma: float, i: int):
    """(obs (stack,84,84), action, reward, next_obs, terminal) for slot i, one slot at a time."""
    cap = len(raw["action"])
    length, terminal = n, False
    for k in range(n):
        if raw["terminal"][(i + k) % cap]:
            length, terminal = k + 1, True
            break
    reward = np.float32(0.0)
    for k in range(length):
        reward = np.float32(reward + np.float32(gamma**k) * raw["reward"][(i + k) % cap])
    obs = np.stack([raw["observation"][(i - stack + 1 + k) % cap] for k in range(stack)])
    j = i + length
    nxt = np.stack([raw["observation"][(j - stack + 1 + k) % cap] for k in range(stack)])
    return obs, int(raw["action"][i]), reward, nxt, terminal
