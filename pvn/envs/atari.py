"""Batched ALE environments: envpool (threaded C++), or ale-py's own threaded vector env.

Both backends share the same preprocessing code lineage (ale-py's ``AtariVectorEnv`` is a port of
envpool's Atari env), and with sticky actions off they give the same frames pixel for pixel for the
same action sequence once their reset phase agrees (``tests/test_envs.py``). One difference cannot
be configured away: envpool cannot run zero no-ops at reset (``noop_max=0`` crashes it), so with
envpool every episode starts after exactly one NOOP emulator frame (checked against ALE's RAM),
one frame later than Dopamine's protocol; the ale-py backend starts at the reset frame.

Both auto-reset the step *after* an episode ends: that step ignores its action and returns the
first frame of the next episode with reward 0.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from pvn.envs.errors import EnvError
from pvn.envs.protocols import Protocol, get_protocol

BACKENDS = ("envpool", "ale_py")


def _snake(game: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


@cache
def _envpool_games() -> tuple[str, ...]:
    import envpool

    return tuple(sorted(e[:-3] for e in envpool.list_all_envs() if e.endswith("-v5")))


@cache
def _ale_games() -> dict[str, str]:
    from ale_py import roms

    return {"".join(p.capitalize() for p in r.split("_")): r for r in roms.get_all_rom_ids()}


def check_game(game: str, backend: str = "envpool") -> str:
    """Validate ``game`` (CamelCase, e.g. ``Pong``, ``SpaceInvaders``) for ``backend``."""
    games = _envpool_games() if backend == "envpool" else tuple(_ale_games())
    if game not in games:
        close = difflib.get_close_matches(game, games, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(games[:5])}"
        raise EnvError(f"game={game!r}: unknown ALE game for backend {backend}; {hint}")
    return game


@dataclass
class StepResult:
    obs: np.ndarray  # uint8 (N, stack, 84, 84)
    reward: np.ndarray  # float32 (N,), unclipped game score change
    terminated: np.ndarray  # bool (N,)
    truncated: np.ndarray  # bool (N,)
    env_id: np.ndarray  # int32 (N,)


class AtariVecEnv:
    """A batch of ALE games behind one small interface for both backends.

    ``reset() -> obs``; ``step(actions) -> StepResult`` (synchronous); and, when
    ``batch_size < num_envs``, ``send(actions, env_id)`` / ``recv()`` (envpool's async mode).
    """

    def __init__(
        self,
        game: str,
        num_envs: int,
        protocol: Protocol,
        seed: int,
        backend: str,
        stack: int,
        batch_size: int,
        num_threads: int,
    ) -> None:
        self.game, self.num_envs, self.protocol, self.backend = game, num_envs, protocol, backend
        self.batch_size, self.stack, self.seed = batch_size, stack, seed
        self._pending_reset: np.ndarray | None = None  # ale_py: reset frames for the next recv
        p = protocol
        if backend == "envpool":
            import envpool

            self._env = envpool.make(
                f"{game}-v5",
                env_type="gymnasium",
                num_envs=num_envs,
                batch_size=batch_size,
                num_threads=num_threads,
                seed=seed,
                stack_num=stack,
                frame_skip=p.frame_skip,
                noop_max=1,  # envpool's minimum: exactly one NOOP frame at reset
                episodic_life=p.episodic_life,
                reward_clip=False,
                use_fire_reset=p.fire_reset,
                repeat_action_probability=p.repeat_action_probability,
                max_episode_steps=p.max_episode_steps,
                img_height=p.img_size,
                img_width=p.img_size,
                gray_scale=True,
                full_action_space=p.full_action_space,
                use_inter_area_resize=True,
            )
        else:
            from ale_py.vector_env import AtariVectorEnv

            if batch_size != num_envs:
                raise EnvError("backend=ale_py: asynchronous batches need backend=envpool")
            self._env = AtariVectorEnv(
                _ale_games()[game],
                num_envs,
                num_threads=num_threads,
                stack_num=stack,
                frameskip=p.frame_skip,
                noop_max=0,
                episodic_life=p.episodic_life,
                reward_clipping=False,
                use_fire_reset=p.fire_reset,
                repeat_action_probability=p.repeat_action_probability,
                max_num_frames_per_episode=p.max_episode_steps * p.frame_skip,
                img_height=p.img_size,
                img_width=p.img_size,
                grayscale=True,
                full_action_space=p.full_action_space,
            )
        self.num_actions = int(self._env.single_action_space.n)

    def reset(self) -> np.ndarray:
        """Reset every env; returns uint8 ``(num_envs, stack, 84, 84)`` observations."""
        if self.backend == "envpool":
            obs, _ = self._env.reset()
        else:
            obs, _ = self._env.reset(seed=self.seed)
        return obs

    def _result(self, out) -> StepResult:
        obs, reward, terminated, truncated, info = out
        return StepResult(
            obs=obs,
            reward=np.asarray(reward, np.float32),
            terminated=np.asarray(terminated, bool),
            truncated=np.asarray(truncated, bool),
            env_id=np.asarray(info["env_id"], np.int32),
        )

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env (synchronous mode)."""
        return self._result(self._env.step(np.asarray(actions, np.int32)))

    def async_reset(self) -> None:
        """Start resetting every env; results arrive through :meth:`recv` (reward 0)."""
        if self.backend == "envpool":
            self._env.async_reset()
        else:
            self._pending_reset = self.reset()

    def send(self, actions: np.ndarray, env_id: np.ndarray) -> None:
        """Start stepping envs ``env_id`` with ``actions`` (all envs, in order, for ale_py)."""
        if self.backend == "envpool":
            self._env.send(np.asarray(actions, np.int32), np.asarray(env_id, np.int32))
        else:
            self._env.send(np.asarray(actions, np.int32))

    def recv(self) -> StepResult:
        """The next ``batch_size`` envs that finished stepping (or resetting)."""
        if self._pending_reset is not None:
            obs, self._pending_reset = self._pending_reset, None
            n = len(obs)
            zeros = np.zeros(n, bool)
            return StepResult(obs, np.zeros(n, np.float32), zeros, zeros, np.arange(n))
        return self._result(self._env.recv())

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> AtariVecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_atari(
    game: str,
    num_envs: int,
    protocol: str | Protocol = "dopamine",
    seed: int = 0,
    backend: str = "envpool",
    stack: int = 1,
    batch_size: int | None = None,
    num_threads: int = 0,
) -> AtariVecEnv:
    """Batched ALE games under a protocol preset (see :mod:`envs.protocols`).

    Args:
        game: CamelCase ALE name (``Pong``, ``SpaceInvaders``); validated with suggestions.
        num_envs: number of parallel games.
        protocol: ``"dopamine"`` (the DQN Replay data protocol), ``"eval"`` or a Protocol.
        seed: envs get seeds ``seed, seed+1, ...`` (sticky actions and game randomness).
        backend: ``"envpool"`` (default) or ``"ale_py"`` (ale-py's threaded vector env).
        stack: frames per observation: 1 for single frames, 4 for the usual stacks.
        batch_size: envpool async mode when smaller than ``num_envs``.
        num_threads: worker threads (0: the backend's default).

    Returns:
        The batched env: ``reset()`` and ``step(actions)`` (or ``send``/``recv``) give uint8
        ``(num_envs, stack, 84, 84)`` observations with rewards, terminations, truncations
        and env ids; ``num_actions`` is the game's minimal action set; a context manager.
    """
    if backend not in BACKENDS:
        raise EnvError(f"backend={backend!r}: unknown; choose one of {list(BACKENDS)}")
    if num_envs < 1:
        raise EnvError(f"num_envs={num_envs}: must be >= 1")
    batch = num_envs if batch_size is None else batch_size
    if not 1 <= batch <= num_envs:
        raise EnvError(f"batch_size={batch_size}: must be in [1, num_envs={num_envs}]")
    check_game(game, backend)
    p = get_protocol(protocol)
    return AtariVecEnv(game, num_envs, p, seed, backend, stack, batch, num_threads)
