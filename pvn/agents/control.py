"""The online control loop: act with a frozen encoder and learn a linear Q head, or learn
end to end.

:func:`run_control` reads top to bottom like a CleanRL script: every step, one batched forward
pass of the frozen encoder over all envs' zero-padded stacks gives ``phi(s_t)``; the linear head
acts epsilon-greedily on it; the features, actions and rewards (clipped here with
``reward_clip=step``) go to the feature replay; every ``update_every`` agent steps the head
takes a double-DQN n-step update, computed while the emulators step (``send``, update,
``recv``); before the first, the agent sees the replay's states once
(:meth:`agents.dqn.DQN.calibrate`: a linear head's ``feature_norm``). Frames are never stored
and the torso never runs in an update. With ``encoder=None`` (end-to-end DQN) the agent's own
network reads the stacks and the replay keeps each state's newest frame instead. Each finished
episode's (unclipped) return is recorded with the agent step at which it ended.

Everything around the algorithm plugs in as a :class:`Callback` (Stable-Baselines3's
``BaseCallback``): greedy evaluations (:class:`Evaluations`), metric logs (:class:`Logs`), the
progress bar (:class:`Progress`), the DQN Replay log of every transition (:class:`ReplayLog`) and
checkpoints (:class:`Checkpoints`), called in that order after each batched step.

Runs resume from a checkpoint of :func:`run_control`'s state (agent, replay, generators,
episodes, counters). Emulator state cannot be saved through envpool, so, as in Dopamine's runner,
a resumed run starts fresh episodes: the episodes in flight at the checkpoint are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pvn.agents.dqn import DQN, DQNConfig
from pvn.agents.policies import epsilon_greedy, linearly_decaying_epsilon
from pvn.envs import FrameStack
from pvn.replay.episode_log import EpisodeLog
from pvn.replay.feature_replay import FeatureReplay


@dataclass
class EvalConfig:
    """The control loop's schedule: how long it runs and when it evaluates, logs and
    checkpoints (the top-level keys of ``pvn evaluate``; the learner's own settings, its replay
    and exploration are :class:`agents.dqn.DQNConfig`)."""

    steps: int = 20_000  # agent steps over all envs (paper: 1,000,000 = 4M frames)
    log_every: int = 1_000  # agent steps between metric logs
    eval_episodes: int = 0  # greedy episodes (agent.epsilon_eval) per evaluation, played at step
    # 0 and after the last step; 0: no evaluation, runs are scored by their last 10 training
    # episodes (paper: 100)
    eval_every: int = 0  # agent steps between further evaluations (0: only the first and last)
    eval_first: bool = True  # also evaluate the untrained head at step 0 (false: save its time
    # when only the final score matters)
    eval_max_steps: int = 27_000  # cap of each evaluation episode (agent steps; 108k frames, the
    # paper's)
    checkpoint_every: int = 100_000  # agent steps between resumable checkpoints (0: only the
    # final agent)

    def __post_init__(self) -> None:
        for key in ("steps", "log_every", "eval_max_steps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}={getattr(self, key)}: must be > 0")
        for key in ("eval_episodes", "eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)}: must be >= 0")
        if self.eval_every and not self.eval_episodes:
            raise ValueError(f"eval_every={self.eval_every}: needs eval_episodes > 0 (the "
                             "episodes each evaluation plays)")  # fmt: skip


#: frames per state: end-to-end DQN replays single frames and restacks them (Mnih et al. 2015)
STACK_SIZE = 4


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


@dataclass
class Step:
    """One batched env step, as the callbacks see it: the envs that acted (``live``; an env
    whose previous episode just ended only resets), the newest frame of the state each acted
    in, the actions, the raw rewards and how each step ended."""

    live: np.ndarray
    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


@dataclass
class Loop:
    """The loop's state: what :func:`run_control` returns and a checkpoint holds."""

    agent: DQN
    replay: FeatureReplay
    rng: np.random.Generator
    steps: int  # the run's length in agent steps (over all envs)
    step: int = 0
    since_update: int = 0
    epsilon: float = 1.0
    episodes: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # the last update's
    stopped: bool = False  # asked to stop before ``steps``, with a checkpoint (Checkpoints)

    def state_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(),
            "replay": self.replay.state_dict(),
            "rng": self.rng.bit_generator.state,
            "episodes": self.episodes,
            "evaluations": self.evaluations,
            "step": self.step,
            "since_update": self.since_update,
            "resumed_at": self.resumed_at,
        }

    def summary(self) -> dict[str, Any]:
        """What a run reports: its episodes (each return with the agent step it ended at),
        evaluations, steps, replay size, where it was resumed and whether it stopped early."""
        return {"episodes": self.episodes, "evaluations": self.evaluations, "steps": self.step,
                "replay_size": len(self.replay), "resumed_at": self.resumed_at,
                "stopped": self.stopped}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.replay.load_state_dict(state["replay"])
        self.rng.bit_generator.state = state["rng"]
        self.episodes, self.evaluations = state["episodes"], state["evaluations"]
        self.resumed_at = [*state["resumed_at"], int(state["step"])]
        self.step, self.since_update = int(state["step"]), int(state["since_update"])
        self.replay.start_new_episodes()


class Callback:
    """A hook into :func:`run_control`: told when the run starts (fresh or resumed), after each
    batched step, and at the end. A callback with state of its own saves it in the loop's
    checkpoints (:meth:`state_dict`, under its :attr:`key`)."""

    key: str | None = None  # its entry in a checkpoint state (None: nothing to save)

    def on_start(self, loop: Loop, resume: dict[str, Any] | None) -> None:
        """Called once, before the first step (``resume``: the state the run resumes from)."""

    def on_step(self, loop: Loop, step: Step) -> None:
        """Called after each batched env step (``loop.step`` already counts it)."""

    def state_dict(self) -> Any:
        return None


class Evaluations(Callback):
    """The paper's scoring: ``episodes`` greedy episodes (``epsilon``; paper: 100 at 0.001) at
    step 0 (``eval_first``), every ``every`` agent steps if set, and after the last step.

    Each evaluation plays in fresh envs from ``make_env(seed)`` and draws its actions from its
    own generator, both seeded by the run's seed and the evaluation's step: it never changes the
    training run, and a head's score at a step does not depend on which evaluations came before
    it, nor on whether the run was resumed in between."""

    key = "next_eval"

    def __init__(self, make_env: Callable[[int], Any], encoder, device, cfg: EvalConfig,
                 seed: int, log=None) -> None:  # fmt: skip
        self.make_env, self.encoder, self.device, self.cfg = make_env, encoder, device, cfg
        self.seed, self.log = int(seed), log
        self.next_eval: int | None = cfg.eval_every if cfg.eval_every > 0 else None

    def _evaluate(self, loop: Loop) -> None:
        cfg = self.cfg
        seeds = np.random.SeedSequence([self.seed, loop.step, 1]).generate_state(2)
        env = self.make_env(int(seeds[0] >> 1))
        try:
            returns = greedy_episodes(env, self.encoder, loop.agent, cfg.eval_episodes,
                                      loop.agent.cfg.epsilon_eval, cfg.eval_max_steps,
                                      self.device, np.random.default_rng(seeds[1]))  # fmt: skip
        finally:
            env.close()
        loop.evaluations.append({"step": loop.step, "returns": returns})
        if self.log is not None:
            self.log(loop.step, {"eval_return": float(np.mean(returns))})

    def on_start(self, loop: Loop, resume: dict[str, Any] | None) -> None:
        if resume is not None and self.next_eval is not None:
            self.next_eval = int(resume["next_eval"])
        if loop.step == 0 and self.cfg.eval_first:
            self._evaluate(loop)

    def on_step(self, loop: Loop, step: Step) -> None:
        due = self.next_eval is not None and loop.step >= self.next_eval
        if loop.step >= loop.steps or due:
            self._evaluate(loop)
            if self.next_eval is not None:
                self.next_eval = loop.step + self.cfg.eval_every

    def state_dict(self) -> int:
        return self.next_eval or 0


class Logs(Callback):
    """Every ``every`` agent steps (and at the end): agent steps per second, epsilon, the last
    update's metrics and the mean return of the last 10 episodes, to ``log(step, values)``."""

    def __init__(self, log: Callable[[int, dict[str, float]], None], every: int) -> None:
        self.log, self.every = log, every

    def on_start(self, loop: Loop, resume: dict[str, Any] | None) -> None:
        self.since, self.t0 = 0, time.perf_counter()

    def on_step(self, loop: Loop, step: Step) -> None:
        self.since += len(step.live)
        if self.since < self.every and loop.step < loop.steps:
            return
        values = {"steps_per_s": self.since / (time.perf_counter() - self.t0),
                  "epsilon": loop.epsilon}  # fmt: skip
        values.update({k: float(v) for k, v in loop.metrics.items()})
        recent = [e["return"] for e in loop.episodes[-10:]]
        if recent:
            values["episodic_return"] = float(np.mean(recent))
        self.log(loop.step, values)
        self.since, self.t0 = 0, time.perf_counter()


class Progress(Callback):
    """Advances a progress bar by the agent steps taken; its rate and ETA count from the start
    of this process (a resume) and again from the first update (the random warm-up before
    ``min_replay`` runs many times faster than learning)."""

    def __init__(self, pbar) -> None:  # a :class:`pvn.progress.Bar`
        self.pbar = pbar

    def on_start(self, loop: Loop, resume: dict[str, Any] | None) -> None:
        self.pbar.restart_rate(loop.step)

    def on_step(self, loop: Loop, step: Step) -> None:
        before = loop.step - len(step.live)
        if before < loop.agent.cfg.min_replay <= loop.step:  # learning starts: a new pace
            self.pbar.restart_rate(loop.step)
        else:
            self.pbar.update(len(step.live))


class ReplayLog(Callback):
    """Logs every transition as a DQN Replay dataset (each env's episodes whole); the writer's
    state goes into the checkpoints, and the episodes in flight at a checkpoint are dropped from
    the log on resume, as from the agent's replay. The caller closes the log."""

    key = "replay_log"

    def __init__(self, log: EpisodeLog) -> None:
        self.log = log

    def on_step(self, loop: Loop, step: Step) -> None:
        s = step
        self.log.add(s.live, s.frames, s.actions, s.rewards, s.terminated, s.truncated)

    def state_dict(self) -> dict[str, Any]:
        return self.log.writer.state_dict()


class Checkpoints(Callback):
    """Every ``every`` agent steps (not after the last), ``save(step, state)`` receives the
    loop's state with every callback's own; passing such a state as ``resume`` to
    :func:`run_control` continues the run from it. When ``stop()`` turns true (a signal asked
    the run to stop: :mod:`pvn.preemption`) it saves after the step in flight and ends the
    loop there (:attr:`Loop.stopped`), unfinished."""

    def __init__(
        self,
        save: Callable[[int, dict[str, Any]], None],
        every: int,
        callbacks: list[Callback],
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.save, self.every, self.callbacks, self.stop = save, every, callbacks, stop

    def on_start(self, loop: Loop, resume: dict[str, Any] | None) -> None:
        self.next = (loop.step // self.every + 1) * self.every

    def on_step(self, loop: Loop, step: Step) -> None:
        if loop.step >= loop.steps:  # the end: the command saves the agent
            return
        stop = self.stop()
        if loop.step >= self.next or stop:
            state = loop.state_dict()
            for c in self.callbacks:
                if c.key is not None:
                    state[c.key] = c.state_dict()
            self.save(loop.step, state)
            self.next = (loop.step // self.every + 1) * self.every
            loop.stopped = stop


def _replay(a: DQNConfig, encoder: nn.Module | None, envs: int, device: torch.device,
            seed: int) -> FeatureReplay:  # fmt: skip
    """The agent's replay: single frames, stacked at sample time, for end-to-end DQN
    (``encoder`` None); the frozen torso's features (one per state) for a linear head."""
    frames = encoder is None
    return FeatureReplay(
        a.capacity,
        envs,
        (84, 84) if frames else encoder.feature_dim,
        a.n_step,
        a.gamma,
        device,
        torch.uint8 if frames else getattr(torch, a.feature_dtype),
        seed,
        STACK_SIZE if frames else 1,
    )


def run_control(
    env,
    encoder: nn.Module | None,
    agent: DQN,
    cfg: EvalConfig,
    device: torch.device,
    seed: int,
    callbacks: list[Callback] = (),
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run online DQN for ``cfg.steps`` agent steps (counted over all envs).

    Args:
        env: the batched training envs (:func:`envs.make_atari`).
        encoder: the frozen torso whose features a linear ``agent`` learns on, or ``None`` for
            end-to-end DQN (the replay then holds frames).
        agent: the learner (:class:`agents.dqn.DQN`).
        cfg: the loop's settings.
        device: where features, the replay and the agent live.
        seed: seeds exploration and replay sampling.
        callbacks: what runs around the algorithm, in order after each step (module docstring).
        resume: a checkpoint state (:class:`Checkpoints`) to continue from.

    Returns:
        :meth:`Loop.summary`: episodes (each return with the agent step it ended at),
        evaluations, steps, replay size, where the run was resumed, and ``stopped`` when a
        checkpoint callback ended it early (asked to stop).
    """
    n = env.num_envs
    frames = encoder is None
    a = agent.cfg
    replay = _replay(a, encoder, n, device, seed)
    loop = Loop(agent, replay, np.random.default_rng(seed), cfg.steps)
    if resume is not None:
        loop.load_state_dict(resume)
    for c in callbacks:
        c.on_start(loop, resume)
    calibrated = loop.step >= a.min_replay  # learning started before the checkpoint
    clip_steps = a.reward_clip == "step"
    stack, all_envs = FrameStack(n), np.arange(n)
    obs = stack.push(env.reset()[:, -1], np.ones(n, bool))
    resetting = np.zeros(n, bool)  # these envs' next step only resets them (envpool)
    score = np.zeros(n)
    while loop.step < cfg.steps and not loop.stopped:
        states = _states(encoder, obs, device)
        loop.epsilon = linearly_decaying_epsilon(loop.step, a.epsilon_train,
                                                 a.epsilon_decay_steps, a.min_replay,
                                                 a.epsilon_start)  # fmt: skip
        actions = epsilon_greedy(agent.q_values(states), loop.epsilon, loop.rng)
        env.send(actions, all_envs)
        # The head learns from the replay while the emulators step (the updates owed so far).
        owed = loop.since_update // a.update_every
        if loop.step >= a.min_replay:
            if not calibrated:  # once, before the first update (a resumed agent has its scale)
                agent.calibrate(replay.stored())
                calibrated = True
            if owed:  # one sample for all the updates owed (the replay does not change between)
                for batch in replay.sample(a.batch_size * owed).split(owed):
                    loop.metrics = agent.update(batch)
                loop.since_update -= owed * a.update_every
        else:
            loop.since_update = 0
        res = env.recv()
        order = np.argsort(res.env_id)  # results in env order
        reward, term, trunc = res.reward[order], res.terminated[order], res.truncated[order]
        live = np.flatnonzero(~resetting)
        rows = torch.as_tensor(live, device=device)
        replay.add(live, states[rows, -1] if frames else states[rows], actions[live],
                   np.clip(reward[live], -1.0, 1.0) if clip_steps else reward[live],
                   term[live], trunc[live])  # fmt: skip
        score[live] += reward[live]
        ended = ~resetting & (term | trunc)
        for i in np.flatnonzero(ended):
            loop.episodes.append({"return": float(score[i]), "step": loop.step + len(live)})
            score[i] = 0.0
        step = Step(live, obs[live, -1], actions[live], reward[live], term[live], trunc[live])
        obs = stack.push(res.obs[order, -1], resetting)  # rows that just reset restart from zeros
        resetting = ended
        loop.step += len(live)
        loop.since_update += len(live)
        for c in callbacks:
            c.on_step(loop, step)
    return loop.summary()
