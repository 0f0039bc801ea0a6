"""Linear-control throughput (prints JSON), side by side in interleaved rounds:

  * pvn: ``agents.control.run_control`` -- envpool stepping, one batched encoder
    forward per step, the feature replay and a linear double-DQN update every 4 agent steps;
  * limit: envpool stepping plus one batched encoder forward per step, nothing else (the limit
    for frozen features);
  * naive: a linear DQN that stores frames and re-encodes the sampled batch (states and next
    states) at every update, as a frame replay would.
Goal: pvn / limit >= 0.7; pvn / naive is the gain from storing features.

    python scripts/bench_evaluate.py [--torso nature] [--steps 4000] [--num-envs 8] [--plan]

``--plan`` runs everything under ``pvn evaluate``'s thread plan (pvn/threads.py: the cores split
between PyTorch and envpool, OMP_WAIT_POLICY=PASSIVE) instead of the libraries' defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--plan" in sys.argv:  # before torch loads: OpenMP reads its wait policy once
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import emit, significant

from pvn.agents.control import EvalConfig, run_control
from pvn.agents.dqn import DQNConfig
from pvn.agents.linear_dqn import LinearDQN
from pvn.envs import FrameStack, make_atari
from pvn.networks import build_torso
from pvn.threads import apply, plan_threads

ENV_THREADS = 0  # envpool's emulator threads (0: its default; --plan: the plan's)


def pvn(torso, game, n, steps) -> float:
    a = DQNConfig(min_replay=500, capacity=100_000)
    agent = LinearDQN(torso.feature_dim, 6, a, torch.Generator().manual_seed(0))
    cfg = EvalConfig(steps=steps)
    with make_atari(game, n, "eval", num_threads=ENV_THREADS) as env:
        t = time.perf_counter()
        run_control(env, torso, agent, cfg, torch.device("cpu"), 0)
        return steps / (time.perf_counter() - t)


def limit(torso, game, n, steps) -> float:
    rng = np.random.default_rng(0)
    with make_atari(game, n, "eval", num_threads=ENV_THREADS) as env, torch.no_grad():
        stack = FrameStack(n)
        obs = stack.push(env.reset()[:, -1], np.ones(n, bool))
        t = time.perf_counter()
        for _ in range(steps // n):
            torso(torch.from_numpy(obs))
            res = env.step(rng.integers(0, env.num_actions, n))
            obs = stack.push(res.obs[:, -1])
        return steps / (time.perf_counter() - t)


def naive(torso, game, n, steps) -> float:
    """Frames in the replay; every update re-encodes 32 states and 32 next states."""
    rng = np.random.default_rng(0)
    head = torch.nn.Linear(torso.feature_dim, 6)
    opt = torch.optim.Adam(head.parameters(), lr=6.25e-5, eps=1.5e-4)
    frames = np.zeros((20_000, 4, 84, 84), np.uint8)
    with make_atari(game, n, "eval", num_threads=ENV_THREADS) as env:
        stack = FrameStack(n)
        obs = stack.push(env.reset()[:, -1], np.ones(n, bool))
        t, size, since = time.perf_counter(), 0, 0
        for _ in range(steps // n):
            with torch.no_grad():
                q = head(torso(torch.from_numpy(obs)))
            res = env.step(q.argmax(1).numpy())
            frames[np.arange(size, size + n) % len(frames)] = obs
            size, since = size + n, since + n
            obs = stack.push(res.obs[:, -1])
            while size >= 500 and since >= 4:
                idx = rng.integers(0, min(size, len(frames)) - n, 32)
                with torch.no_grad():
                    nxt = head(torso(torch.from_numpy(frames[idx + n]))).max(1).values
                q_sa = head(torso(torch.from_numpy(frames[idx])))[:, 0]
                loss = torch.nn.functional.huber_loss(q_sa, 0.99 * nxt)
                opt.zero_grad()
                loss.backward()
                opt.step()
                since -= 4
        return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--torso", default="nature")
    ap.add_argument("--game", default="Pong")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--plan", action="store_true", help="pvn evaluate's thread plan")
    args = ap.parse_args()
    if args.plan:
        global ENV_THREADS
        plan = plan_threads("evaluate")
        apply(plan)
        ENV_THREADS = plan.envpool
    torso = build_torso(args.torso, torch.Generator().manual_seed(0)).eval().requires_grad_(False)
    fns = {"pvn": pvn, "limit": limit, "naive": naive}
    rates = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            rates[k].append(fn(torso, args.game, args.num_envs, args.steps))
    med = {k: significant(float(np.median(v))) for k, v in rates.items()}
    ratio = {
        f"pvn_vs_{k}": significant(float(np.median(np.array(rates["pvn"]) / np.array(rates[k]))))
        for k in ("limit", "naive")
    }
    emit(
        {
            "torso": args.torso,
            "game": args.game,
            "num_envs": args.num_envs,
            "threads": "plan" if args.plan else "defaults",
            "agent_steps_per_s": med,
            **ratio,
        }
    )


if __name__ == "__main__":
    main()
