"""Per-env frame stacks for acting, zero-padded at episode starts like the replay's stacks."""

from __future__ import annotations

import numpy as np


class FrameStack:
    """Keeps ``(num_envs, stack, 84, 84)`` uint8 stacks, oldest frame first.

    An episode's first stack is ``[0, ..., 0, f0]``: exactly what :class:`replay.DQNReplayDataset`
    returns for the first slot of an episode (Dopamine pads each episode with zero frames), so a
    policy acts on the same inputs it was trained on.
    """

    def __init__(self, num_envs: int, stack: int = 4, frame_shape=(84, 84)) -> None:
        self.obs = np.zeros((num_envs, stack, *frame_shape), np.uint8)

    def push(
        self,
        frames: np.ndarray,
        new_episode: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Append the newest frame of envs ``rows`` (default: all); those flagged in
        ``new_episode`` restart from zeros. Returns the stacks of ``rows``."""
        if rows is None:
            rows = np.arange(len(self.obs))
        stacks = self.obs[rows]  # a copy: rows may come in any order (async envs)
        stacks[:, :-1] = stacks[:, 1:]
        if new_episode is not None and new_episode.any():
            stacks[new_episode, :-1] = 0
        stacks[:, -1] = frames
        self.obs[rows] = stacks
        return stacks
