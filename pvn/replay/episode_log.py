"""Log batched play as a DQN Replay dataset, one whole episode at a time per env.

Envs finish episodes at different times; appending their steps as they arrive would interleave
episodes, which the format cannot represent (a stack is the previous ``stack_size`` slots). So
each env's steps wait in its own buffer and its episode goes to the :class:`DQNReplayWriter`
when it ends: every episode in the log is contiguous, exactly as in a single-env Dopamine log.
Rewards are stored clipped to [-1, 1], as the DQN Replay Dataset stores them.
"""

from __future__ import annotations

import numpy as np

from pvn.replay.writer import DQNReplayWriter


class EpisodeLog:
    """Per-env buffers of (frame, action, reward) for the episodes in progress.

    Args:
        writer: the DQN Replay writer the finished episodes go to.
        num_envs: the batched envs whose steps arrive.
    """

    def __init__(self, writer: DQNReplayWriter, num_envs: int) -> None:
        self.writer = writer
        self.logged_steps = 0  # steps of the episodes written so far (padding not counted)
        self.frames: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self.actions: list[list[int]] = [[] for _ in range(num_envs)]
        self.rewards: list[list[float]] = [[] for _ in range(num_envs)]

    def add(
        self,
        env_ids: np.ndarray,
        frames: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> int:
        """One step of envs ``env_ids``: the newest frame of the state each acted in, the action,
        the (raw) reward and how the step ended. Ended episodes are written; returns how many."""
        written = 0
        for j, i in enumerate(np.asarray(env_ids).tolist()):
            self.frames[i].append(np.array(frames[j], np.uint8))
            self.actions[i].append(int(actions[j]))
            self.rewards[i].append(float(rewards[j]))
            if terminated[j] or truncated[j]:
                self._write(i, bool(terminated[j]))
                written += 1
        return written

    def in_flight(self) -> int:
        """Steps buffered in episodes not yet ended."""
        return sum(len(f) for f in self.frames)

    def _write(self, i: int, terminated: bool) -> None:
        self.logged_steps += len(self.frames[i])
        self.writer.add_episode(
            np.stack(self.frames[i]),
            np.asarray(self.actions[i], np.int32),
            np.clip(np.asarray(self.rewards[i], np.float32), -1.0, 1.0),
            terminated=terminated,
        )
        self.frames[i], self.actions[i], self.rewards[i] = [], [], []

    def close(self, write_in_flight: bool = True) -> int:
        """Write the episodes still running as truncated (or drop them), then close the writer
        (it saves its final partial checkpoint); returns how many were written."""
        written = 0
        for i in range(len(self.frames)):
            if self.frames[i] and write_in_flight:
                self._write(i, terminated=False)
                written += 1
        self.writer.close()
        return written
