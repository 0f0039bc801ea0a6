"""``pvn collect``: play ALE with batched envs and log the play in the DQN Replay format.

Each env's episode is kept contiguous: steps are buffered per env and an episode is appended to
the log when it ends (a terminal or the 27k-step cap), so episodes of different envs never
interleave, exactly like a single-env Dopamine log. Episodes still running when the step budget is
spent are appended as truncated (no terminal flag).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.policies import POLICIES, EpsilonGreedyPolicy, Policy, RandomPolicy
from envs import FrameStack, make_atari
from pvn.config import require, save_config
from pvn.files import write_text_atomic
from pvn.progress import bar
from replay import DQNReplayWriter, ReplayError


class _Episodes:
    """Per-env buffers of (frame, action, reward) for episodes in progress."""

    def __init__(self, num_envs: int) -> None:
        self.frames: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self.actions: list[list[int]] = [[] for _ in range(num_envs)]
        self.rewards: list[list[float]] = [[] for _ in range(num_envs)]
        self.score = np.zeros(num_envs, np.float64)  # unclipped game score so far

    def pop(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        frames, actions = np.stack(self.frames[i]), np.asarray(self.actions[i], np.int32)
        rewards = np.clip(np.asarray(self.rewards[i], np.float32), -1.0, 1.0)
        score = float(self.score[i])
        self.frames[i], self.actions[i], self.rewards[i] = [], [], []
        self.score[i] = 0.0
        return frames, actions, rewards, score


def run_collection(
    env, policy: Policy, writer: DQNReplayWriter, steps: int, progress: bool = True
) -> dict[str, Any]:
    """Play ``env`` with ``policy`` until ``steps`` transitions are logged by ``writer``.

    Works on envpool's asynchronous batches (``batch_size < num_envs``: results arrive for
    whichever envs finished first, so emulation overlaps logging) and on synchronous ones.
    Envs auto-reset on the step after an episode ends; that step logs nothing.
    """
    n = env.num_envs
    stack = FrameStack(n)
    eps = _Episodes(n)
    returns: list[float] = []
    first = np.ones(n, bool)  # the next result of these envs is an episode's first frame
    done_steps, start = 0, time.perf_counter()
    env.async_reset()
    with bar(steps, "collect", "step", progress) as pbar:
        while done_steps < steps:
            res = env.recv()
            ids = res.env_id
            frames = res.obs[:, -1]
            outcome = ~first[ids]  # results of a logged action (not of a reset)
            ended = outcome & (res.terminated | res.truncated)
            for j in np.flatnonzero(outcome):
                i = ids[j]
                eps.rewards[i].append(float(res.reward[j]))
                eps.score[i] += res.reward[j]
            for j in np.flatnonzero(ended):
                frames_i, acts, rews, score = eps.pop(ids[j])
                writer.add_episode(frames_i, acts, rews, terminated=bool(res.terminated[j]))
                returns.append(score)
            actions = policy.act(stack.push(frames, first[ids], rows=ids))
            for j in np.flatnonzero(~ended):  # an ended env's next step only resets it
                eps.frames[ids[j]].append(frames[j].copy())
                eps.actions[ids[j]].append(int(actions[j]))
            first[ids] = ended
            env.send(actions, ids)
            k = int(outcome.sum())
            done_steps += k
            pbar.update(k)
            if returns and ended.any():
                pbar.set_postfix(episodes=len(returns), ret=f"{np.mean(returns[-20:]):.1f}")
    truncated = 0
    for i in range(n):
        eps.frames[i] = eps.frames[i][: len(eps.rewards[i])]  # drop actions still in flight
        eps.actions[i] = eps.actions[i][: len(eps.rewards[i])]
        if eps.frames[i]:
            frames_i, acts, rews, _ = eps.pop(i)
            writer.add_episode(frames_i, acts, rews, terminated=False)
            truncated += 1
    writer.close()
    seconds = time.perf_counter() - start
    r = np.asarray(returns)
    return {
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
    from omegaconf import OmegaConf

    from pvn.checkpoint import load_checkpoint, resolve_checkpoint
    from pvn.errors import CheckpointError
    from pvn.evaluate import agent_for, encoder_for

    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{config}: missing; checkpoint= must be a `pvn evaluate` run dir")
    cfg = OmegaConf.load(config)
    cpu = torch.device("cpu")
    encoder = encoder_for(cfg, cpu)
    state = load_checkpoint(resolve_checkpoint(run_dir)).get("agent")
    if state is None:
        raise CheckpointError(f"{run_dir}: holds no finished agent (is the evaluation complete?)")
    actions = state["network"]["head.bias" if encoder is None else "bias"].shape[0]
    if actions != num_actions:
        raise CheckpointError(f"{run_dir}: agent has {actions} actions, this game {num_actions}")
    agent = agent_for(cfg, encoder, num_actions, cpu)
    agent.network.load_state_dict(state["network"])
    agent.network.eval()

    def q(obs: torch.Tensor) -> torch.Tensor:
        return agent.q_values(obs if encoder is None else encoder(obs))

    return EpsilonGreedyPolicy(q, num_actions, epsilon, seed)


def collect(cfg) -> dict[str, Any]:
    """Run ``pvn collect`` from a resolved config; returns (and saves) the summary."""
    require(cfg.steps > 0, "steps", cfg.steps, "must be > 0")
    capacity = cfg.capacity or min(1_000_000, cfg.steps + cfg.steps // 10 + 100)
    require(isinstance(capacity, int) and capacity >= 5, "capacity", cfg.capacity, "an int >= 5")
    require(1 <= cfg.compresslevel <= 9, "compresslevel", cfg.compresslevel, "must be in 1..9")
    require(cfg.policy in POLICIES, "policy", cfg.policy, f"choose one of {list(POLICIES)}")
    require(0 <= cfg.epsilon <= 1, "epsilon", cfg.epsilon, "must be in [0, 1]")
    out = Path(cfg.out)
    log_dir = out / "replay_logs"
    if log_dir.is_dir() and any(log_dir.glob("add_count_ckpt.*.gz")):
        raise ReplayError(f"{log_dir}: already holds checkpoints; choose a new out=DIR")
    # make_atari validates game, protocol, backend, num_envs and batch_size itself
    env = make_atari(
        cfg.game, cfg.num_envs, cfg.protocol, cfg.seed, cfg.backend, batch_size=cfg.batch_size
    )
    try:
        if cfg.policy == "random":
            policy: Policy = RandomPolicy(env.num_actions, cfg.seed)
        else:
            require(
                cfg.checkpoint is not None, "checkpoint", None, "policy=epsilon_greedy needs one"
            )
            policy = trained_policy(cfg.checkpoint, env.num_actions, cfg.epsilon, cfg.seed)
        save_config(cfg, out)
        with DQNReplayWriter(log_dir, capacity, compresslevel=cfg.compresslevel) as writer:
            summary = run_collection(env, policy, writer, cfg.steps, cfg.progress)
    finally:
        env.close()
    summary = {"game": cfg.game, "out": str(log_dir), **summary}
    summary["files"] = sorted(os.listdir(log_dir))
    write_text_atomic(out / "collect.json", json.dumps(summary, indent=2))
    return summary
