"""End-to-end DQN throughput (Dopamine's DQN, the agent that makes DQN Replay data), side by side
in interleaved rounds (prints JSON):

  * pvn: ``agents.control.run_control`` with ``eval_preset=dopamine_dqn``'s agent (Nature
    torso trained from frames, TF1 RMSProp, max target) and, with ``--log``, every transition
    logged as a DQN Replay dataset;
  * limit: the same work bare -- envpool stepping, one batched action forward per step, and one
    update (forward, backward, RMSProp step on a fixed batch of 32 stacks) every 4 agent steps --
    with no replay, sampling, logging or bookkeeping.
Goal: pvn / limit >= 0.8 on CPU. Both learn from step ``--min-replay`` on.

    python scripts/bench_dqn.py [--steps 3000] [--num-envs 8] [--device cpu] [--log]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import emit, significant

from agents.control import EvalConfig, run_control
from agents.dqn import DQNConfig, end_to_end_dqn
from agents.policies import epsilon_greedy
from envs import FrameStack, make_atari
from pvn.networks import build_torso
from replay import DQNReplayWriter
from replay.episode_log import EpisodeLog
from replay.feature_replay import FeatureBatch

DOPAMINE = DQNConfig(
    lr=2.5e-4, max_grad_norm=None, target_period=2000, double_q=False, optimizer="rmsprop_tf"
)


def _agent(num_actions: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    return end_to_end_dqn(build_torso("nature", gen), num_actions, DOPAMINE, gen).to(device)


def pvn(game: str, n: int, steps: int, min_replay: int, device, log: bool) -> float:
    with make_atari(game, n, "dopamine") as env, tempfile.TemporaryDirectory() as tmp:
        agent = _agent(env.num_actions, device)
        cfg = EvalConfig(steps=steps, n_step=1, min_replay=min_replay, capacity=100_000)
        episode_log = EpisodeLog(DQNReplayWriter(Path(tmp), 50_000), n) if log else None
        t = time.perf_counter()
        run_control(env, None, agent, cfg, device, 0, replay_log=episode_log)
        rate = steps / (time.perf_counter() - t)
        if episode_log is not None:
            episode_log.close()
        return rate


def limit(game: str, n: int, steps: int, min_replay: int, device, log: bool) -> float:
    rng = np.random.default_rng(0)
    with make_atari(game, n, "dopamine") as env:
        agent = _agent(env.num_actions, device)
        b = 32
        stacks = torch.randint(0, 255, (2 * b, 4, 84, 84), dtype=torch.uint8, device=device)
        batch = FeatureBatch(
            stacks[:b],
            torch.zeros(b, dtype=torch.int64, device=device),
            torch.zeros(b, device=device),
            torch.full((b,), 0.99, device=device),
            stacks[b:],
            np.zeros(b, np.int64),
            np.zeros(b, np.int64),
        )
        stack = FrameStack(n)
        obs = stack.push(env.reset()[:, -1], np.ones(n, bool))
        t, done, owed = time.perf_counter(), 0, 0
        while done < steps:
            q = agent.q_values(torch.from_numpy(obs).to(device))
            res = env.step(epsilon_greedy(q, 0.01, rng))
            obs = stack.push(res.obs[:, -1])
            done += n
            if done >= min_replay:
                owed += n
                while owed >= 4:
                    agent.update(batch)
                    owed -= 4
        return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--game", default="Breakout")
    ap.add_argument("--steps", type=int, default=3000, help="agent steps per measurement")
    ap.add_argument("--min-replay", type=int, default=500, help="agent steps before learning")
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--log", action="store_true", help="pvn also logs a DQN Replay dataset")
    args = ap.parse_args()
    device = torch.device(args.device)
    fns = {"pvn": pvn, "limit": limit}
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            rates[k].append(
                fn(args.game, args.num_envs, args.steps, args.min_replay, device, args.log)
            )
    ratio = np.median(np.array(rates["pvn"]) / np.array(rates["limit"]))
    emit(
        {
            "game": args.game,
            "num_envs": args.num_envs,
            "device": args.device,
            "log": args.log,
            "threads": torch.get_num_threads(),
            "agent_steps_per_s": {k: significant(float(np.median(v))) for k, v in rates.items()},
            "pvn_vs_limit": significant(float(ratio)),
        }
    )


if __name__ == "__main__":
    main()
