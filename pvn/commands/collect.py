"""``pvn collect``: play ALE with batched envs and log the play in the DQN Replay format.

Each env's episode is kept contiguous: steps are buffered per env and an episode is appended to
the log when it ends (a terminal or the 27k-step cap), so episodes of different envs never
interleave, exactly like a single-env Dopamine log. Episodes still running when the step budget is
spent are appended as truncated (no terminal flag).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pvn import preemption
from pvn.agents.policies import POLICIES, EpsilonGreedyPolicy, Policy, RandomPolicy
from pvn.checkpoint import (
    resumed_env_seed,
    save_checkpoint,
)
from pvn.envs import FrameStack, make_atari
from pvn.errors import require
from pvn.progress import bar
from pvn.replay import DQNReplayWriter, ReplayError
from pvn.replay.dopamine_format import FRAME_SHAPE
from pvn.replay.episode_log import EpisodeLog
from pvn.run_dir import RunDir
from pvn.schema import CollectConfig
from pvn.threads import announce, plan_for


# (one loop, as CleanRL's: what it carries between envpool batches -- the frames and actions
# in flight, the scores, the resume state -- is the loop's own, so it stays in one function)
def run_collection(
    env,
    policy: Policy,
    writer: DQNReplayWriter,
    steps: int,
    progress: bool = True,
    resume: dict[str, Any] | None = None,
    checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Play ``env`` with ``policy`` until ``steps`` transitions are logged by ``writer``.

    Works on envpool's asynchronous batches (``batch_size < num_envs``: results arrive for
    whichever envs finished first, so emulation overlaps logging) and on synchronous ones.
    Envs auto-reset on the step after an episode ends; that step logs nothing.

    Each time the writer saves a checkpoint, ``checkpoint(logged, state)`` receives what a
    killed collection needs to continue (the writer's state, the policy's generator, the
    returns so far); ``resume`` is such a state. The episodes in flight at that moment are not
    in the state: a resumed collection starts fresh episodes, as a resumed training run does.
    When ``stop()`` turns true (a signal asked it to stop: :mod:`pvn.preemption`) it passes
    such a state to ``checkpoint`` after the batch in flight, wherever the log stands, and
    returns unfinished (``"stopped"``).
    """
    n = env.num_envs
    stack = FrameStack(n)
    log = EpisodeLog(writer, n)
    rng = getattr(policy, "rng", None)
    acted = np.zeros((n, *FRAME_SHAPE), np.uint8)  # each env's frame and action in flight
    action = np.zeros(n, np.int64)
    score = np.zeros(n)  # unclipped game score of each env's episode so far
    returns: list[float] = []
    first = np.ones(n, bool)  # the next result of these envs is an episode's first frame
    done_steps, start = 0, time.perf_counter()
    if resume is not None:
        returns, log.logged_steps = list(resume["returns"]), int(resume["logged_steps"])
        done_steps = log.logged_steps
        if rng is not None:
            rng.bit_generator.state = resume["policy_rng"]
    saved = len(writer.checkpoints_written)
    env.async_reset()
    stopped = False
    with bar(steps, "collect", "step", progress, initial=done_steps) as pbar:
        while done_steps < steps:
            res = env.recv()
            ids = res.env_id
            frames = res.obs[:, -1]
            outcome = ~first[ids]  # results of a logged action (not of a reset)
            ended = outcome & (res.terminated | res.truncated)
            got = ids[outcome]
            ends = (res.reward[outcome], res.terminated[outcome], res.truncated[outcome])
            log.add(got, acted[got], action[got], *ends)
            score[got] += res.reward[outcome]
            returns += score[ids[ended]].tolist()
            score[ids[ended]] = 0.0
            stopped = stop()
            if checkpoint is not None and (stopped or len(writer.checkpoints_written) > saved):
                saved = len(writer.checkpoints_written)
                state = {
                    "writer": writer.state_dict(),
                    "policy_rng": None if rng is None else rng.bit_generator.state,
                    "returns": returns,
                    "logged_steps": log.logged_steps,
                }
                checkpoint(log.logged_steps, state)
            if stopped:
                break
            actions = policy.act(stack.push(frames, first[ids], rows=ids))
            acted[ids], action[ids] = frames, actions
            first[ids] = ended
            env.send(actions, ids)
            k = int(outcome.sum())
            done_steps += k
            pbar.update(k)
            if returns and ended.any():
                pbar.set_postfix(episodes=len(returns), ret=f"{np.mean(returns[-20:]):.1f}")
    if stopped:  # the state is saved; the writer's unsaved tail is in it
        return {"stopped": True, "steps": log.logged_steps}
    truncated = log.close(write_in_flight=True)  # actions still in flight are not logged
    seconds = time.perf_counter() - start
    r = np.asarray(returns)
    return {
        "stopped": False,
        "steps": done_steps,
        "episodes": len(returns),
        "unfinished_episodes_logged_as_truncated": truncated,
        "return_mean": float(r.mean()) if len(r) else None,
        "return_min": float(r.min()) if len(r) else None,
        "return_max": float(r.max()) if len(r) else None,
        "seconds": round(seconds, 2),
        "steps_per_second": round(done_steps / seconds, 1),
        "checkpoints": writer.checkpoints_written,
    }


def trained_policy(run_dir: str, num_actions: int, epsilon: float, seed: int) -> Policy:
    """Epsilon-greedy on the Q network of a ``pvn evaluate`` run (a linear head on its frozen
    encoder, or an end-to-end DQN)."""
    import torch

    from pvn.builders import trained_agent

    agent, encoder = trained_agent(run_dir, num_actions, torch.device("cpu"))

    def q(obs: torch.Tensor) -> torch.Tensor:
        return agent.q_values(obs if encoder is None else encoder(obs))

    return EpsilonGreedyPolicy(q, num_actions, epsilon, seed)


def collect(cfg) -> dict[str, Any]:
    """Run ``pvn collect`` from a resolved config; returns (and saves) the summary. A killed
    collection re-run with the same command continues from its last logged checkpoint; one
    stopped by a signal, from where it stood (:mod:`pvn.preemption`)."""
    require(cfg.steps > 0, "steps", cfg.steps, "must be > 0")
    capacity = cfg.capacity or min(1_000_000, cfg.steps + cfg.steps // 10 + 100)
    require(isinstance(capacity, int) and capacity >= 5, "capacity", cfg.capacity, "an int >= 5")
    require(1 <= cfg.compresslevel <= 9, "compresslevel", cfg.compresslevel, "must be in 1..9")
    require(cfg.policy in POLICIES, "policy", cfg.policy, f"choose one of {list(POLICIES)}")
    require(0 <= cfg.epsilon <= 1, "epsilon", cfg.epsilon, "must be in [0, 1]")
    out = Path(cfg.out)
    log_dir = out / "replay_logs"
    run = RunDir(out, "collection", "collect.json", ReplayError, CollectConfig)
    run.refuse_finished()
    resume = run.resume(cfg, "collect")
    if resume is None and log_dir.is_dir() and any(log_dir.glob("add_count_ckpt.*.gz")):
        raise ReplayError(f"{log_dir}: already holds checkpoints; choose a new out=DIR")
    env_seed = resumed_env_seed(cfg.seed, int(resume["logged_steps"]) if resume else 0)
    # make_atari validates game, protocol, backend, num_envs and batch_size itself
    env = make_atari(
        cfg.game,
        cfg.num_envs,
        cfg.protocol,
        env_seed,
        cfg.backend,
        batch_size=cfg.batch_size,
        num_threads=plan_for(cfg.threads, "collect").envpool,
    )
    try:
        if cfg.policy == "random":
            policy: Policy = RandomPolicy(env.num_actions, cfg.seed)
        else:
            require(
                cfg.checkpoint is not None, "checkpoint", None, "policy=epsilon_greedy needs one"
            )
            policy = trained_policy(cfg.checkpoint, env.num_actions, cfg.epsilon, cfg.seed)
        writer_state = None if resume is None else resume["writer"]
        writer = DQNReplayWriter(
            log_dir, capacity, compresslevel=cfg.compresslevel, resume=writer_state
        )
        run.save_config(cfg)
        announce(cfg.threads)

        def checkpoint(logged: int, state: dict[str, Any]) -> None:
            save_checkpoint(out, logged, {"collect": state}, keep=1)

        with writer, preemption.stop_on_signals():
            summary = run_collection(env, policy, writer, cfg.steps, cfg.progress, resume,
                                     checkpoint, preemption.requested)  # fmt: skip
            if summary.pop("stopped"):  # the writer keeps its complete checkpoints only
                raise preemption.stopped(f"at step {summary['steps']}")
    finally:
        env.close()
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # finished: nothing to resume
    summary = {"game": cfg.game, "out": str(log_dir), **summary}
    summary["files"] = sorted(os.listdir(log_dir))
    run.finish(summary, indent=2)
    return summary
