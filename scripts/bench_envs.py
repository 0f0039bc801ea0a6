"""Environment and collection throughput (prints JSON), measured side by side.

  * envpool: ``envs.make_atari`` stepping with random actions, nothing else;
  * collect: ``pvn collect``'s loop (per-env episode buffers, the DQN Replay writer with
    its checkpoint files) on the same envs: the logging overhead is 1 - collect/envpool;
  both synchronously (batch = all envs) and asynchronously (batch = num_envs / 2: the emulator
  steps half the envs while the logger handles the other half);
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

from pvn.agents.policies import RandomPolicy
from pvn.commands.collect import run_collection
from pvn.envs import make_atari
from pvn.replay import DQNReplayWriter


def envpool_alone(game: str, num_envs: int, steps: int, batch: int) -> float:
    with make_atari(game, num_envs, "dopamine", seed=0, batch_size=batch) as env:
        rng = np.random.default_rng(0)
        env.async_reset()
        n, start = 0, time.perf_counter()
        while n < steps:
            ids = env.recv().env_id
            env.send(rng.integers(0, env.num_actions, len(ids)), ids)
            n += len(ids)
        return n / (time.perf_counter() - start)


def pvn_collect(game: str, num_envs: int, steps: int, batch: int, tmp: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=tmp)) / "replay_logs"
    with make_atari(game, num_envs, "dopamine", seed=0, batch_size=batch) as env:
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
    n, half = args.num_envs, max(1, args.num_envs // 2)
    runs = {
        "envpool_sync": lambda tmp: envpool_alone(args.game, n, args.steps, n),
        "collect_sync": lambda tmp: pvn_collect(args.game, n, args.steps, n, tmp),
        "envpool_async": lambda tmp: envpool_alone(args.game, n, args.steps, half),
        "collect_async": lambda tmp: pvn_collect(args.game, n, args.steps, half, tmp),
        "gymnasium_async": lambda tmp: gymnasium_async(args.game, n, args.steps),
    }
    rates: dict[str, list] = {k: [] for k in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for k, fn in runs.items():
                rates[k].append(fn(Path(tmp)))
    med = {k: float(np.median(v)) if v[0] is not None else None for k, v in rates.items()}

    def ratio(a: str, b: str) -> float | None:
        if med[a] is None or med[b] is None:
            return None
        return round(float(np.median(np.array(rates[a]) / np.array(rates[b]))), 3)

    emit(
        {
            "game": args.game,
            "num_envs": n,
            "async_batch_size": half,
            "steps_per_measurement": args.steps,
            "steps_per_s": {k: (round(v) if v else v) for k, v in med.items()},
            "collect_overhead_sync": round(1 - ratio("collect_sync", "envpool_sync"), 3),
            "collect_overhead_async": round(1 - ratio("collect_async", "envpool_async"), 3),
            "collect_async_vs_envpool_sync": ratio("collect_async", "envpool_sync"),
            "collect_sync_vs_gymnasium_async": ratio("collect_sync", "gymnasium_async"),
            "collect_async_vs_gymnasium_async": ratio("collect_async", "gymnasium_async"),
            "envpool_sync_vs_gymnasium_async": ratio("envpool_sync", "gymnasium_async"),
        }
    )


if __name__ == "__main__":
    main()
