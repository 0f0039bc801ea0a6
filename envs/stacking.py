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

    def push(self, frames: np.ndarray, new_episode: np.ndarray | None = None) -> np.ndarray:
        """Append each env's newest frame; rows in ``new_episode`` restart from zeros."""
        self.obs[:, :-1] = self.obs[:, 1:]
        if new_episode is not None and new_episode.any():
            self.obs[new_episode, :-1] = 0
        self.obs[:, -1] = frames
        return self.obs
