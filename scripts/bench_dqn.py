"""End-to-end DQN throughput (Dopamine's DQN, the agent that makes DQN Replay data), side by side
in interleaved rounds (prints JSON):

  * pvn: ``agents.control.run_control`` with ``eval_preset=dopamine_dqn``'s agent (Nature
    torso trained from frames, TF1 RMSProp, max target) and, with ``--log``, every transition
    logged as a DQN Replay dataset;
  * limit: the same work bare -- envpool stepping, one batched action forward per step, and one
    update (forward, backward, RMSProp step on a fixed batch of 32 stacks) every 4 agent steps --
    with no replay, sampling, logging or bookkeeping.
Goal: pvn / limit >= 0.8 on CPU. Both learn from step ``--min-replay`` on.

``--long`` asks instead whether a long run keeps its speed (goal: long / short >= 0.9). It times
``run_control`` side by side in interleaved rounds from two states: ``short``, a fresh run (an
empty replay, learning from ``--min-replay``), and ``long``, a run resumed where a 1M-step run
is late (a replay holding ``--fill`` transitions of real frames, Dopamine's 1M by default, and
the step counter past it); both log every transition (100k-slot log checkpoints) and log
metrics. A long run also writes a run checkpoint (the whole replay) and a log checkpoint every
100k agent steps: each is timed once at the full replay and its cost spread over those steps::

    long rate = 1 / (1 / stepping rate at --fill + (run checkpoint + log checkpoint) / 100k)

``--decompose`` adds two late runs that each keep one of the two differences from a fresh run:
``long_fresh_learner`` (the full replay, a fresh learner) and ``long_small_replay`` (the late
learner and its near-greedy policy, a 20k-transition replay).

A late run's learner is a fresh one unless ``--agent`` names a checkpoint of a long
``eval_preset=dopamine_dqn`` run (a run checkpoint's ``loop.agent`` or a final checkpoint's
``agent``: learned weights and RMSProp state; ``--game`` must be the run's). Subnormal floats
are flushed to zero, as pvn's thread plan does (``threads.flush_denormal``); the mode is a
thread's and its pool's, so flushed and IEEE runs are compared in separate processes
(docs/benchmarks.md).

``--subnormals CKPT`` times one update's phases (forward, backward, RMSProp step; batch 32 of
the checkpoint's own frames when it holds its replay) on that late learner, with subnormal
floats flushed and computed as IEEE says, on 1 and 2 threads, each in its own process.

    python scripts/bench_dqn.py [--steps 3000] [--num-envs 8] [--device cpu] [--log]
    python scripts/bench_dqn.py --long [--fill 1000000] [--steps 3000] [--agent CKPT]
    python scripts/bench_dqn.py --subnormals CKPT
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import emit, significant

from pvn.agents.control import STACK_SIZE, EvalConfig, Logs, ReplayLog, run_control
from pvn.agents.dqn import DQNConfig, end_to_end_dqn
from pvn.agents.policies import epsilon_greedy
from pvn.checkpoint import save_checkpoint
from pvn.envs import FrameStack, make_atari
from pvn.networks import build_torso
from pvn.replay import DQNReplayWriter
from pvn.replay.episode_log import EpisodeLog
from pvn.replay.feature_replay import FeatureBatch, FeatureReplay

DOPAMINE = DQNConfig(
    lr=2.5e-4, max_grad_norm=None, target_period=2000, double_q=False, optimizer="rmsprop_tf"
)


def _agent(num_actions: int, device: torch.device, **replay):
    """Dopamine's DQN end to end, its replay and exploration settings from ``replay``."""
    gen = torch.Generator().manual_seed(0)
    cfg = dataclasses.replace(DOPAMINE, n_step=1, **replay)
    return end_to_end_dqn(build_torso("nature", gen), num_actions, cfg, gen).to(device)


def pvn(game: str, n: int, steps: int, min_replay: int, device, log: bool) -> float:
    with make_atari(game, n, "dopamine") as env, tempfile.TemporaryDirectory() as tmp:
        agent = _agent(env.num_actions, device, min_replay=min_replay, capacity=100_000)
        cfg = EvalConfig(steps=steps)
        episode_log = EpisodeLog(DQNReplayWriter(Path(tmp), 50_000), n) if log else None
        t = time.perf_counter()
        run_control(env, None, agent, cfg, device, 0, [ReplayLog(episode_log)] if log else [])
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


CHECKPOINT_EVERY = 100_000  # agent steps between a long run's checkpoints (evidence_1m's)


def _filled_state(env, agent, fill: int, seed: int) -> dict:
    """A :func:`run_control` checkpoint state late in a long run: the replay holds ``fill``
    transitions, real frames of random play tiled over the slots, with an episode end every
    ~1,000 steps per env; the step counter is past them."""
    n = env.num_envs
    rng = np.random.default_rng(seed)
    frames = []
    obs = env.reset()
    for _ in range(256):
        frames.append(obs[:, -1].copy())
        obs = env.step(rng.integers(env.num_actions, size=n)).obs
    tiles = torch.from_numpy(np.concatenate(frames))  # (256 n, 84, 84)
    a = agent.cfg
    replay = FeatureReplay(a.capacity, n, (84, 84), a.n_step, a.gamma, "cpu", torch.uint8, seed,
                           STACK_SIZE)  # fmt: skip
    envs = np.arange(n)
    for t in range(fill // n):
        ends = np.full(n, t % 1000 == 999)
        rows = (np.arange(n) + t * n) % len(tiles)
        replay.add(envs, tiles[rows], rng.integers(env.num_actions, size=n), np.zeros(n), ends,
                   np.zeros(n, bool))  # fmt: skip
    step = fill // n * n
    return {"agent": agent.state_dict(), "replay": replay.state_dict(),
            "rng": np.random.default_rng(1).bit_generator.state,
            "episodes": [],
            "evaluations": [], "step": step, "since_update": 0, "next_eval": 0,
            "resumed_at": []}  # fmt: skip


def _stepping_rate(env, agent, cfg: EvalConfig, device, log_dir: Path, resume) -> float:
    """Agent steps per second of ``run_control`` between its first and last metric log (the
    replay's allocation and a resume's copy are not timed), logging every transition."""
    stamps: list[tuple[int, float]] = []
    episode_log = EpisodeLog(DQNReplayWriter(log_dir, 100_000), env.num_envs)
    stamp = Logs(lambda step, _: stamps.append((step, time.perf_counter())), cfg.log_every)
    run_control(env, None, agent, cfg, device, 0, [stamp, ReplayLog(episode_log)], resume)
    episode_log.close(write_in_flight=False)
    (s0, t0), (s1, t1) = stamps[0], stamps[-1]
    return (s1 - s0) / (t1 - t0)


def long_run(args, device) -> dict:
    """Stepping rates of a fresh and a late run side by side, and a late run's checkpoints;
    with ``--decompose``, also a late run with a fresh learner (the replay's size alone) and one
    with the late learner on a small replay (the learner and its policy alone)."""
    n, tmp = args.num_envs, Path(tempfile.mkdtemp())
    with make_atari(args.game, n, "dopamine") as env:
        replay = {"min_replay": args.min_replay, "capacity": 1_000_000}
        base = EvalConfig(log_every=500)
        late = _filled_state(env, _agent(env.num_actions, device, **replay), args.fill, 0)
        fresh_weights = late["agent"]
        if args.agent:
            saved = torch.load(args.agent, weights_only=True, mmap=True)  # a run's or its final
            late["agent"] = saved["loop"]["agent"] if "loop" in saved else saved["agent"]
        states = {"short": None, "long": late}
        if args.decompose:
            states["long_fresh_learner"] = {**late, "agent": fresh_weights}
            small = _filled_state(env, _agent(env.num_actions, device, **replay), 20_000, 0)
            states["long_small_replay"] = {**small, "agent": late["agent"], "step": late["step"]}
        rates: dict[str, list[float]] = {k: [] for k in states}
        for r in range(args.rounds):
            for mode, resume in states.items():
                start = resume["step"] if resume else 0
                cfg = EvalConfig(**{**vars(base), "steps": start + args.steps})
                agent = _agent(env.num_actions, device, **replay)
                rates[mode].append(_stepping_rate(env, agent, cfg,
                                                  device, tmp / f"{mode}{r}", resume))  # fmt: skip
        t = time.perf_counter()
        save_checkpoint(tmp / "run", late["step"], {"loop": late}, keep=1)
        run_ckpt = time.perf_counter() - t
        frames = late["replay"]["features"][0][:CHECKPOINT_EVERY].numpy()
        writer = DQNReplayWriter(tmp / "log", CHECKPOINT_EVERY)
        t = time.perf_counter()
        writer.add_episode(
            frames, np.zeros(len(frames), np.int32), np.zeros(len(frames), np.float32), False
        )
        writer.close()
        log_ckpt = time.perf_counter() - t
    shutil.rmtree(tmp)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    short, stepping = med.pop("short"), med.pop("long")
    overhead = (run_ckpt + log_ckpt) / CHECKPOINT_EVERY  # checkpoint seconds per agent step
    long = 1 / (1 / stepping + overhead)
    # per round, the late run against the fresh run timed next to it (the host's speed drifts
    # between rounds by more than the effect), then the median
    ratios = [
        1 / (1 / late + overhead) / fresh
        for late, fresh in zip(rates["long"], rates["short"], strict=True)
    ]
    return {
        "game": args.game, "num_envs": n, "device": args.device, "fill": args.fill,
        "threads": torch.get_num_threads(), "agent": args.agent,
        "agent_steps_per_s": {"short": significant(short), "long_stepping": significant(stepping),
                              "long_with_checkpoints": significant(long),
                              **{k: significant(v) for k, v in med.items()}},
        "per_round": {k: [significant(x) for x in v] for k, v in rates.items()},
        "seconds_per_100k_steps": {"run_checkpoint": significant(run_ckpt),
                                   "log_checkpoint": significant(log_ckpt)},
        "long_vs_short": significant(float(np.median(ratios))),
        "long_vs_short_per_round": [significant(r) for r in ratios],
    }  # fmt: skip


def _phases(ckpt: str, flush: bool, threads: int, updates: int = 40) -> dict[str, float]:
    """Mean ms of each phase of ``updates`` updates on the learner saved in ``ckpt``."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush)
    saved = torch.load(ckpt, weights_only=True, mmap=True)
    loop = saved.get("loop", saved)
    actions = loop["agent"]["network"]["head.weight"].shape[0]
    agent = _agent(actions, torch.device("cpu"))
    agent.load_state_dict(loop["agent"])
    gen = torch.Generator().manual_seed(0)
    frames = loop["replay"]["features"][0] if "replay" in loop else None
    batches = []
    for _ in range(updates):
        if frames is None:
            shape = (32, STACK_SIZE + 1, 84, 84)
            s = torch.randint(0, 255, shape, dtype=torch.uint8, generator=gen)
        else:
            at = torch.randint(STACK_SIZE, len(frames) - 2, (32,), generator=gen).tolist()
            s = torch.stack([frames[i - STACK_SIZE + 1 : i + 2] for i in at])  # (32, 5, 84, 84)
        batches.append(
            (s[:, :STACK_SIZE], s[:, 1:], torch.randint(0, actions, (32,), generator=gen))
        )
    total = {"forward": 0.0, "backward": 0.0, "step": 0.0}
    for obs, nxt, act in batches:
        t0 = time.perf_counter()
        q = agent.network(obs).gather(1, act.view(-1, 1)).squeeze(1)
        with torch.no_grad():
            y = 0.99 * agent.target(nxt).amax(1)
        loss = torch.nn.functional.huber_loss(q, y)
        t1 = time.perf_counter()
        agent.optimizer.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        agent.optimizer.step()
        t3 = time.perf_counter()
        for k, dt in zip(total, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            total[k] += dt
    return {k: significant(v / updates * 1e3) for k, v in total.items()}


def subnormals(ckpt: str, rounds: int) -> dict:
    """Each (threads, flush) setting in its own process: the mode belongs to a thread and to
    the pool it starts, so one process cannot time both honestly."""
    out: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for threads in (1, 2):
            for flush in (True, False):
                cmd = [sys.executable, __file__, "--phase", ckpt, str(int(flush)), str(threads)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                key = f"threads_{threads}_{'flushed' if flush else 'ieee'}"
                out.setdefault(key, []).append(json.loads(res.stdout))
    return {"agent": ckpt, "ms_per_update": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--game", default="Breakout")
    ap.add_argument("--steps", type=int, default=3000, help="agent steps per measurement")
    ap.add_argument("--min-replay", type=int, default=500, help="agent steps before learning")
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--log", action="store_true", help="pvn also logs a DQN Replay dataset")
    ap.add_argument("--long", action="store_true", help="a late 1M-step run against a fresh one")
    ap.add_argument("--fill", type=int, default=1_000_000, help="--long: transitions replayed")
    ap.add_argument("--agent", help="--long: a run checkpoint whose learner the late run resumes")
    ap.add_argument(
        "--decompose",
        action="store_true",
        help="--long: add a late run with a fresh learner and one on a small replay",
    )
    ap.add_argument("--subnormals", metavar="CKPT", help="time an update's phases, flushed/IEEE")
    ap.add_argument("--phase", nargs=3, help=argparse.SUPPRESS)  # one --subnormals setting
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(_phases(args.phase[0], args.phase[1] == "1", int(args.phase[2]))))
        return
    if args.subnormals:
        emit(subnormals(args.subnormals, args.rounds))
        return
    torch.set_flush_denormal(True)  # as pvn's thread plan (threads.flush_denormal)
    device = torch.device(args.device)
    if args.long:
        emit(long_run(args, device))
        return
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
