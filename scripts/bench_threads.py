"""Throughput under contention, PyTorch's default threading against pvn's thread plan, side by
side in one run (prints JSON).

For each workload -- ``pretrain`` (PVN updates: Nature torso, batch 32, 20 indicator tasks),
``evaluate`` (linear control: 8 envpool envs, one encoder forward per step, a DQN update every
4 agent steps) and ``collect`` (8 envpool envs, random policy) -- each mode runs in a fresh
process (thread settings only take effect before ``import torch``):

  * ``default``: PyTorch's and envpool's defaults (all cores each, OpenMP workers spin);
  * ``plan``: :mod:`pvn.threads` (the process's cores split between the learner and envpool,
    ``OMP_WAIT_POLICY=PASSIVE``);

alone, and beside a competing CPU-bound process (a busy loop on one core), and, for
``evaluate``, as two identical pvn jobs at once. Goals: with a competitor each command keeps
>= 0.4 of its solo throughput; alone the plan is not slower than the defaults.

    python scripts/bench_threads.py [--seconds 12] [--workloads pretrain evaluate collect]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _worker(workload: str, mode: str, seconds: float) -> None:
    """Runs in a fresh process: set the threads, then measure ``workload`` for ``seconds``."""
    plan = None
    if mode == "plan":
        from pvn.threads import plan_threads, set_wait_policy

        set_wait_policy()
        plan = plan_threads(workload)
    import numpy as np
    import torch

    if plan is not None:
        from pvn.threads import apply

        apply(plan)
    env_threads = plan.envpool if plan is not None else 0
    if workload == "pretrain":
        from pvn.config import load_config
        from pvn.pretraining import PretrainConfig, build
        from pvn.replay import TorchBatch
        from pvn.settings import section

        cfg = load_config("pretrain", ["data.path=x", "run_dir=y", "td.warmup_steps=0"])
        learner = build(section(PretrainConfig, cfg), num_actions=6)
        gen = torch.Generator().manual_seed(0)
        obs = torch.randint(0, 255, (64, 4, 84, 84), dtype=torch.uint8, generator=gen)
        batch = TorchBatch(
            obs[:32], torch.zeros(32, dtype=torch.int64), torch.zeros(32), obs[32:],
            torch.zeros(32, dtype=torch.bool),
        )  # fmt: skip

        def work() -> int:
            learner.update(batch, 1)
            return 1
    elif workload == "evaluate":
        from pvn.agents.control import EvalConfig, run_control
        from pvn.agents.dqn import DQNConfig
        from pvn.agents.linear_dqn import LinearDQN
        from pvn.envs import make_atari
        from pvn.networks import build_torso

        torso = build_torso("nature", torch.Generator().manual_seed(0)).requires_grad_(False)
        env = make_atari("Pong", 8, "eval", 0, num_threads=env_threads)
        a = DQNConfig(min_replay=200, capacity=20_000)
        agent = LinearDQN(512, env.num_actions, a, torch.Generator().manual_seed(0))

        def work() -> int:
            cfg = EvalConfig(steps=800)
            run_control(env, torso, agent, cfg, torch.device("cpu"), 0)
            return 800
    else:  # collect
        from pvn.envs import make_atari

        env = make_atari("Pong", 8, "dopamine", 0, num_threads=env_threads)
        rng = np.random.default_rng(0)
        env.reset()

        def work() -> int:
            for _ in range(50):
                env.step(rng.integers(0, env.num_actions, 8))
            return 400

    work()  # warm-up
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        n += work()
    threads = {"torch": torch.get_num_threads(), "envpool": env_threads}
    print(json.dumps({"rate": n / (time.perf_counter() - t), "threads": threads}))


def _measure(workload: str, mode: str, seconds: float, copies: int = 1) -> list[float]:
    cmd = [sys.executable, str(HERE), "--worker", workload, "--mode", mode]
    cmd += ["--seconds", str(seconds)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(copies)
    ]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1])["rate"] for p in procs]


def _competitor() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12.0, help="measurement per run")
    ap.add_argument("--workloads", nargs="+", default=["pretrain", "evaluate", "collect"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args.worker, args.mode, args.seconds)
    from pvn.threads import available_cores

    out: dict = {"cores": available_cores(), "seconds": args.seconds}
    for w in args.workloads:
        row = {}
        for mode in ("default", "plan"):
            alone = _measure(w, mode, args.seconds)[0]
            busy = _competitor()
            try:
                shared = _measure(w, mode, args.seconds)[0]
            finally:
                busy.kill()
                busy.wait()
            row[mode] = {
                "alone_per_s": round(alone, 1),
                "with_competitor_per_s": round(shared, 1),
                "kept": round(shared / alone, 2),
            }
            if w == "evaluate":
                two = _measure(w, mode, args.seconds, copies=2)
                row[mode]["two_jobs_kept"] = [round(r / alone, 2) for r in two]
        row["plan_vs_default_alone"] = round(
            row["plan"]["alone_per_s"] / row["default"]["alone_per_s"], 2
        )
        out[w] = row
        print(json.dumps({w: row}), file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
