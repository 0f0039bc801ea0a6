"""Shared helpers of the benchmark scripts: timing loops, memory readings and a test log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def rate(fn: Callable[[], int], seconds: float = 2.0, warmup: int = 2) -> float:
    """Items per second of ``fn`` (which returns how many items it processed), after warm-up."""
    for _ in range(warmup):
        fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        n += fn()
    return n / elapsed


def significant(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits (rates span 0.5/s to 200,000/s)."""
    if x == 0:
        return 0.0
    return round(x, digits - 1 - int(np.floor(np.log10(abs(x)))))


def compare(fns: dict[str, Callable[[], int]], rounds: int = 5, seconds: float = 0.4) -> dict:
    """Rates of several functions measured side by side: ``rounds`` interleaved short runs of
    each, so machine noise hits all alike. Returns the median rate of each and, per round,
    ratios to the first function, as medians (``<first>_vs_<other>``)."""
    names = list(fns)
    per = {k: [] for k in names}
    for _ in range(rounds):
        for k in names:
            per[k].append(rate(fns[k], seconds, warmup=1))
    out = {f"{k}_per_s": significant(float(np.median(v))) for k, v in per.items()}
    first = names[0]
    for k in names[1:]:
        ratios = [a / b for a, b in zip(per[first], per[k], strict=True)]
        out[f"{first}_vs_{k}"] = round(float(np.median(ratios)), 2)
    return out


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (e.g. RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def real_frames(game: str = "Pong", steps: int = 4000, seed: int = 0) -> np.ndarray:
    """Single 84x84 frames from real random play (envpool)."""
    from pvn.envs import make_atari

    with make_atari(game, 8, "dopamine", seed=seed) as env:
        rng = np.random.default_rng(seed)
        frames = [env.reset()[:, 0]]
        for _ in range(steps // 8):
            frames.append(env.step(rng.integers(0, env.num_actions, 8)).obs[:, 0])
    return np.concatenate(frames)


def write_log(path: Path, frames: np.ndarray, capacity: int, slots: int, seed: int = 0) -> None:
    """A DQN Replay log of ``slots`` slots cut into episodes of 100-1000 steps, recycling
    ``frames`` (the sampler's speed depends on layout, not on what the pixels show)."""
    from pvn.replay import DQNReplayWriter

    rng = np.random.default_rng(seed)
    with DQNReplayWriter(path, capacity=capacity, compresslevel=1) as w:
        written = 0
        while written < slots:
            T = int(rng.integers(100, 1000))
            start = int(rng.integers(0, len(frames) - T))
            w.add_episode(
                frames[start : start + T],
                rng.integers(0, 6, T),
                rng.choice([-1.0, 0.0, 1.0], T, p=[0.02, 0.96, 0.02]).astype(np.float32),
                True,
            )
            written += T + 3


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2))
