"""The online control loop: act with a frozen encoder and learn a linear Q head, or learn
end to end.

Reads top to bottom like a CleanRL script: every step, one batched forward pass of the frozen
encoder over all envs' zero-padded stacks gives ``phi(s_t)``; the linear head acts
epsilon-greedily on it; the features, actions and rewards (clipped here with
``reward_clip=step``) go to the feature replay; every ``update_every`` agent steps the head
takes a double-DQN n-step update, computed while the emulators step (``send``, update,
``recv``); before the first, the agent sees the replay's states once
(:meth:`agents.dqn.DQN.calibrate`: a linear head's ``feature_norm``). Frames are never stored
and the torso never runs in an update. With ``encoder=None`` (end-to-end DQN) the agent's own
network reads the stacks and the replay keeps each state's newest frame instead. Each finished
episode's (unclipped) return is recorded with the agent step at which it ended.

Runs resume from a checkpoint of :func:`run_control`'s state (agent, replay, generators,
episodes, counters). Emulator state cannot be saved through envpool, so, as in Dopamine's runner,
a resumed run starts fresh episodes: the episodes in flight at the checkpoint are dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pvn.agents.dqn import DQN
from pvn.agents.policies import epsilon_greedy, linearly_decaying_epsilon
from pvn.envs import FrameStack
from pvn.replay.episode_log import EpisodeLog
from pvn.replay.feature_replay import FeatureReplay


@dataclass
class EvalConfig:
    steps: int = 20_000
    n_step: int = 5
    gamma: float = 0.99
    batch_size: int = 32
    update_every: int = 4
    min_replay: int = 2_000
    capacity: int = 1_000_000
    epsilon_train: float = 0.01  # the final exploration rate (fixed without a decay)
    epsilon_start: float = 1.0
    epsilon_decay_steps: int = 0  # agent steps of linear decay after min_replay (0: fixed)
    feature_dtype: torch.dtype = torch.float16
    log_every: int = 1_000
    eval_episodes: int = 0  # greedy episodes per evaluation (0: no evaluations; paper: 100)
    eval_every: int = 0  # agent steps between evaluations besides the first and last (0: none)
    epsilon_eval: float = 0.001
    eval_max_steps: int = 27_000  # per evaluation episode (agent steps)
    checkpoint_every: int = 0  # agent steps between checkpoints of the loop state (0: none)
    stack_size: int = 4  # frames per state (end-to-end DQN replays frames and restacks them)


def _states(encoder: nn.Module | None, obs: np.ndarray, device: torch.device) -> torch.Tensor:
    """What the agent's network reads: frozen features, or the uint8 stacks themselves."""
    x = torch.from_numpy(obs).to(device, non_blocking=True)
    if encoder is None:
        return x
    with torch.no_grad():
        return encoder(x)


@torch.no_grad()
def greedy_episodes(
    env,
    encoder: nn.Module | None,
    agent: DQN,
    episodes: int,
    epsilon: float,
    max_steps: int,
    device: torch.device,
    rng: np.random.Generator,
) -> list[float]:
    """The returns of ``episodes`` (almost) greedy episodes, played in rounds of one episode per
    env of ``env`` (each round starts from a reset; the last round keeps its first envs' returns,
    so no episode is chosen by its length).

    Episodes still running after ``max_steps`` agent steps are cut there (their partial return
    counts: the paper's evaluation caps episodes at 108k frames). Envs that finished keep
    stepping (their results are ignored) until all are done.
    """
    n = env.num_envs
    returns: list[float] = []
    while len(returns) < episodes:
        stack = FrameStack(n)
        obs = stack.push(env.reset()[:, -1], np.ones(n, bool))
        score, done = np.zeros(n), np.zeros(n, bool)
        for _ in range(max_steps):
            q = agent.q_values(_states(encoder, obs, device))
            res = env.step(epsilon_greedy(q, epsilon, rng))
            score[~done] += res.reward[~done]
            done |= res.terminated | res.truncated
            if done.all():
                break
            obs = stack.push(res.obs[:, -1])
        returns += score[: episodes - len(returns)].tolist()
    return returns


def run_control(
    env,
    encoder: nn.Module | None,
    agent: DQN,
    cfg: EvalConfig,
    device: torch.device,
    seed: int,
    log=None,
    pbar=None,
    eval_env=None,
    resume: dict[str, Any] | None = None,
    checkpoint=None,
    replay_log: EpisodeLog | None = None,
) -> dict[str, Any]:
    """Run online DQN for ``cfg.steps`` agent steps (counted over all envs).

    ``encoder`` is the frozen torso whose features a linear ``agent`` learns on, or ``None`` for
    end-to-end DQN (the replay then holds frames). With ``eval_env`` and ``cfg.eval_episodes``,
    the agent is scored as the paper scores it: ``eval_episodes`` episodes at ``epsilon_eval``
    (paper: 100 at 0.001) in ``eval_env`` at step 0 and after the last step, and every
    ``eval_every`` agent steps if set; evaluations draw from their own generator, so they never
    change the training run. Every ``cfg.checkpoint_every`` agent steps
    ``checkpoint(step, state)`` receives the loop's state; passing such a state as ``resume``
    continues the run from it.

    ``replay_log`` logs every transition the envs produce as a DQN Replay dataset (each env's
    episodes whole; its writer's state goes into the checkpoints, and the episodes in flight at
    a checkpoint are dropped from the log on resume, as from the agent's replay). The caller
    closes it.
    """
    n = env.num_envs
    rng = np.random.default_rng(seed)
    eval_rng = np.random.default_rng([seed, 1])
    frames = encoder is None
    clip_steps = agent.cfg.reward_clip == "step"
    replay = FeatureReplay(
        cfg.capacity,
        n,
        (84, 84) if frames else encoder.feature_dim,
        cfg.n_step,
        cfg.gamma,
        device,
        torch.uint8 if frames else cfg.feature_dtype,
        seed,
        cfg.stack_size if frames else 1,
    )
    episodes: list[dict[str, float]] = []
    evaluations: list[dict[str, Any]] = []
    evaluating = eval_env is not None and cfg.eval_episodes > 0
    next_eval = cfg.eval_every if evaluating and cfg.eval_every > 0 else None
    step, since_update = 0, 0
    resumed_at: list[int] = []
    if resume is not None:
        agent.load_state_dict(resume["agent"])
        replay.load_state_dict(resume["replay"])
        rng.bit_generator.state = resume["rng"]
        eval_rng.bit_generator.state = resume["eval_rng"]
        episodes, evaluations = resume["episodes"], resume["evaluations"]
        resumed_at = [*resume["resumed_at"], int(resume["step"])]
        step, since_update = int(resume["step"]), int(resume["since_update"])
        if next_eval is not None:
            next_eval = int(resume["next_eval"])
        replay.start_new_episodes()
        if pbar is not None:
            pbar.update(step)

    def evaluate() -> None:
        returns = greedy_episodes(
            eval_env,
            encoder,
            agent,
            cfg.eval_episodes,
            cfg.epsilon_eval,
            cfg.eval_max_steps,
            device,
            eval_rng,
        )
        evaluations.append({"step": step, "returns": returns})
        if log is not None:
            log(step, {"eval_return": float(np.mean(returns))})

    if evaluating and step == 0:
        evaluate()
    next_ckpt = None
    if checkpoint is not None and cfg.checkpoint_every > 0:
        next_ckpt = (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    calibrated = step >= cfg.min_replay  # learning started before the checkpoint
    stack = FrameStack(n)
    all_envs = np.arange(n)
    obs = stack.push(env.reset()[:, -1], np.ones(n, bool))
    resetting = np.zeros(n, bool)  # these envs' next step only resets them (envpool)
    score = np.zeros(n)
    since_log, t0 = 0, time.perf_counter()
    metrics: dict[str, torch.Tensor] = {}
    while step < cfg.steps:
        states = _states(encoder, obs, device)
        eps = linearly_decaying_epsilon(
            step, cfg.epsilon_train, cfg.epsilon_decay_steps, cfg.min_replay, cfg.epsilon_start
        )
        actions = epsilon_greedy(agent.q_values(states), eps, rng)
        env.send(actions, all_envs)
        # The head learns from the replay while the emulators step (the updates owed so far).
        owed = since_update // cfg.update_every
        if step >= cfg.min_replay:
            if not calibrated:  # once, before the first update (a resumed agent has its scale)
                agent.calibrate(replay.stored())
                calibrated = True
            if owed:  # one sample for all the updates owed (the replay does not change between)
                for batch in replay.sample(cfg.batch_size * owed).split(owed):
                    metrics = agent.update(batch)
                since_update -= owed * cfg.update_every
        else:
            since_update = 0
        res = env.recv()
        order = np.argsort(res.env_id)  # results in env order
        reward, term, trunc = res.reward[order], res.terminated[order], res.truncated[order]
        live = np.flatnonzero(~resetting)
        rows = torch.as_tensor(live, device=device)
        replay.add(
            live,
            states[rows, -1] if frames else states[rows],
            actions[live],
            np.clip(reward[live], -1.0, 1.0) if clip_steps else reward[live],
            term[live],
            trunc[live],
        )
        if replay_log is not None:
            replay_log.add(
                live, obs[live, -1], actions[live], reward[live], term[live], trunc[live]
            )
        score[live] += reward[live]
        ended = ~resetting & (term | trunc)
        for i in np.flatnonzero(ended):
            episodes.append({"return": float(score[i]), "step": step + len(live)})
            score[i] = 0.0
        obs = stack.push(res.obs[order, -1], resetting)  # rows that just reset restart from zeros
        resetting = ended
        step += len(live)
        since_update += len(live)
        since_log += len(live)
        if pbar is not None:
            pbar.update(len(live))
        if evaluating and (step >= cfg.steps or (next_eval is not None and step >= next_eval)):
            evaluate()
            if next_eval is not None:
                next_eval = step + cfg.eval_every
        if log is not None and (since_log >= cfg.log_every or step >= cfg.steps):
            dt = time.perf_counter() - t0
            values = {"steps_per_s": since_log / dt, "epsilon": eps}
            values.update({k: float(v) for k, v in metrics.items()})
            recent = [e["return"] for e in episodes[-10:]]
            if recent:
                values["episodic_return"] = float(np.mean(recent))
            log(step, values)
            since_log, t0 = 0, time.perf_counter()
        if next_ckpt is not None and step >= next_ckpt and step < cfg.steps:
            state = {
                "agent": agent.state_dict(),
                "replay": replay.state_dict(),
                "rng": rng.bit_generator.state,
                "eval_rng": eval_rng.bit_generator.state,
                "episodes": episodes,
                "evaluations": evaluations,
                "step": step,
                "since_update": since_update,
                "next_eval": next_eval or 0,
                "resumed_at": resumed_at,
                "replay_log": None if replay_log is None else replay_log.writer.state_dict(),
            }
            checkpoint(step, state)
            next_ckpt = (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    return {
        "episodes": episodes,
        "evaluations": evaluations,
        "steps": step,
        "replay_size": len(replay),
        "resumed_at": resumed_at,
    }
