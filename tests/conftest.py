"""Shared fixtures: Dopamine-written checkpoints (tests/data) and real ALE frames."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

DOPAMINE_FIXTURE = Path(__file__).resolve().parent / "data" / "dopamine_breakout"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the replay cache of code that uses the default location out of the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PVN_CACHE_DIR", str(tmp_path_factory.mktemp("pvn-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def dopamine_fixture() -> Path:
    """Checkpoints written by Dopamine's own replay code (see tests/data/README.md)."""
    return DOPAMINE_FIXTURE


@pytest.fixture
def stop_after_first_log():
    """``run(args, run_dir)``: run ``pvn *args`` as a process, send it SIGTERM once
    ``run_dir``'s ``metrics.jsonl`` holds a line (its loop is running), and return its exit
    status and stderr."""

    def run(args: list[str], run_dir: Path) -> tuple[int, str]:
        proc = subprocess.Popen([sys.executable, "-m", "pvn", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        metrics, deadline = run_dir / "metrics.jsonl", time.time() + 180
        while not (metrics.is_file() and metrics.read_text()):
            assert proc.poll() is None and time.time() < deadline, "ended before its first log"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err

    return run


@pytest.fixture
def dopamine_copy(tmp_path, dopamine_fixture) -> Path:
    """A writable copy of the Dopamine fixture's replay_logs."""
    dst = tmp_path / "replay_logs"
    shutil.copytree(dopamine_fixture / "replay_logs", dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


@pytest.fixture(scope="session")
def ale_episodes() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
    """Episodes of real Breakout play (random policy, dopamine protocol), straight from envpool.

    Returns (frames uint8 (T, 84, 84), actions, clipped rewards, terminated) per episode; the last
    one is cut short (not terminated). Played here, independently of ``pvn collect``.
    """
    import envpool

    env = envpool.make(
        "Breakout-v5",
        env_type="gymnasium",
        num_envs=1,
        seed=3,
        stack_num=1,
        noop_max=1,
        episodic_life=False,
        reward_clip=False,
        use_fire_reset=False,
        repeat_action_probability=0.25,
    )
    rng = np.random.default_rng(0)
    obs, _ = env.reset()
    episodes, frames, actions, rewards = [], [], [], []
    while len(episodes) < 6:
        a = rng.integers(0, 4, size=1)
        frames.append(obs[0, 0].copy())
        actions.append(int(a[0]))
        obs, r, term, trunc, _ = env.step(a)
        rewards.append(float(np.clip(r[0], -1, 1)))
        if term[0] or trunc[0]:
            episodes.append((np.stack(frames), np.array(actions), np.array(rewards), True))
            frames, actions, rewards = [], [], []
            obs, *_ = env.step(a)  # envpool's auto-reset step
    env.close()
    f, a, r, _ = episodes[-1]
    episodes[-1] = (f[:50], a[:50], r[:50].astype(np.float32), False)
    return [(f, a, r.astype(np.float32), t) for f, a, r, t in episodes]
