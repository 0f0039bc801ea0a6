"""Environment and collection throughput (prints JSON), measured side by side.

  * envpool: ``envs.make_atari`` stepping with random actions, nothing else;
  * pvn_collect: ``pvn collect``'s loop (per-env episode buffers, the DQN Replay writer with
    its checkpoint files) on the same envs: the logging overhead is 1 - pvn_collect/envpool;
  * gymnasium_async: gymnasium's AsyncVectorEnv over ale-py, one process per env, with
    AtariPreprocessing (frame-skip 4, max-pool, 84x84 grayscale, sticky 0.25): the usual
    alternative (needs opencv-python-headless, in the ``bench`` extra).
All at the same number of envs, dopamine protocol, Pong, in interleaved rounds.

    python scripts/bench_envs.py [--num-envs 8] [--steps 8000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import emit

from agents.policies import RandomPolicy
from envs import make_atari
from pvn.collect import run_collection
from replay import DQNReplayWriter


def envpool_alone(game: str, num_envs: int, steps: int) -> float:
    with make_atari(game, num_envs, "dopamine", seed=0) as env:
        rng = np.random.default_rng(0)
        env.reset()
        start = time.perf_counter()
        for _ in range(steps // num_envs):
            env.step(rng.integers(0, env.num_actions, num_envs))
        return steps / (time.perf_counter() - start)


def pvn_collect(game: str, num_envs: int, steps: int, tmp: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=tmp)) / "replay_logs"
    with make_atari(game, num_envs, "dopamine", seed=0) as env:
        writer = DQNReplayWriter(out, capacity=steps // 2, compresslevel=1)
        s = run_collection(env, RandomPolicy(env.num_actions, 0), writer, steps, progress=False)
    return s["steps"] / s["seconds"]


def gymnasium_async(game: str, num_envs: int, steps: int) -> float | None:
    try:
        import cv2  # noqa: F401  (AtariPreprocessing resizes with OpenCV)
    except ImportError:
        return None
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing

    gym.register_envs(ale_py)

    def make():
        env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.25)
        return AtariPreprocessing(env, frame_skip=4, screen_size=84, noop_max=0)

    envs = gym.vector.AsyncVectorEnv([make for _ in range(num_envs)])
    try:
        envs.reset(seed=0)
        rng = np.random.default_rng(0)
        n = envs.single_action_space.n
        start = time.perf_counter()
        for _ in range(steps // num_envs):
            envs.step(rng.integers(0, n, num_envs))
        return steps / (time.perf_counter() - start)
    finally:
        envs.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--game", default="Pong")
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8000, help="agent steps per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            rows.append(
                (
                    envpool_alone(args.game, args.num_envs, args.steps),
                    pvn_collect(args.game, args.num_envs, args.steps, Path(tmp)),
                    gymnasium_async(args.game, args.num_envs, args.steps),
                )
            )
    ep, col, gy = (np.array([r[i] for r in rows], dtype=float) for i in range(3))
    result = {
        "game": args.game,
        "num_envs": args.num_envs,
        "steps_per_measurement": args.steps,
        "envpool_steps_per_s": round(float(np.median(ep))),
        "pvn_collect_steps_per_s": round(float(np.median(col))),
        "collect_overhead_vs_envpool": round(float(np.median(1 - col / ep)), 3),
    }
    if rows[0][2] is not None:
        result["gymnasium_async_steps_per_s"] = round(float(np.median(gy)))
        result["pvn_collect_vs_gymnasium_async"] = round(float(np.median(col / gy)), 2)
        result["envpool_vs_gymnasium_async"] = round(float(np.median(ep / gy)), 2)
    else:
        result["gymnasium_async"] = "skipped: pip install opencv-python-headless"
    emit(result)


if __name__ == "__main__":
    main()
