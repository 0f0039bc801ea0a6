"""Dopamine's transition rules, vectorised: which slots are valid, and what a slot's transition is.

These are the semantics of ``OutOfGraphReplayBuffer.is_valid_transition`` and
``sample_transition_batch`` (google/dopamine, ``circular_replay_buffer.py``), computed for whole
arrays of indices at once instead of a Python loop per index.

Slot ``i`` holds frame ``s_i``, the action taken in it, the (clipped) reward received and whether
the episode terminated. Its transition is::

    observation      = frames i-stack+1 .. i              (wrapping around the circular buffer)
    L                = n, or 1 + the position of the first terminal among slots i .. i+n-1
    reward           = sum_{k<L} gamma^k r_{i+k}          (float32, summed in order as Dopamine)
    next_observation = frames i+L-stack+1 .. i+L
    terminal         = any terminal among slots i .. i+n-1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pvn.replay.cache import Checkpoint
from pvn.replay.frames import take_frames


def cursor_range(cursor: int, capacity: int, stack_size: int, n_step: int) -> np.ndarray:
    """Dopamine's ``invalid_range``: the slots whose stack or n-step window straddles the cursor."""
    return (cursor - n_step + np.arange(stack_size + n_step)) % capacity


def valid_mask(ck: Checkpoint, stack_size: int, n_step: int, guard_cursor: bool) -> np.ndarray:
    """Dopamine's ``is_valid_transition`` for every slot of ``ck``.

    A slot is invalid if (1) it is in the checkpoint's stored ``invalid_range``; (2) a frame of its
    stack other than the last is terminal (the stack would cross an episode boundary); (3) the
    buffer is not full and ``i < stack-1`` (first padding) or ``i >= cursor - n`` (not yet written).

    Dopamine uses the ``invalid_range`` stored in the file, which the logging agent computed for
    its own update horizon (1 in the DQN Replay Dataset). Read with ``n > 1`` it misses slots whose
    n-step window reaches the cursor, whose ``next_observation`` then mixes frames from two rounds
    of the circular buffer. ``guard_cursor=True`` also invalidates those ``n-1`` slots;
    ``guard_cursor=False`` reproduces Dopamine exactly.
    """
    cap = ck.capacity
    terminal = np.asarray(ck.terminal, dtype=bool)
    valid = np.ones(cap, dtype=bool)
    if not ck.is_full:
        valid[: stack_size - 1] = False
        valid[max(ck.cursor - n_step, 0) :] = False
    valid[ck.invalid_range % cap] = False
    if guard_cursor:
        valid[cursor_range(ck.cursor, cap, stack_size, n_step)] = False
    for k in range(1, stack_size):
        valid &= ~np.roll(terminal, k)  # np.roll(t, k)[i] == t[i - k], wrapping like Dopamine
    return valid


def discount_vector(gamma: float, n_step: int) -> np.ndarray:
    """``[gamma**k for k < n]`` in float32, built as Dopamine builds it."""
    return np.array([gamma**k for k in range(n_step)], dtype=np.float32)


def window_length(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The n-step windows' lengths: ``ends`` (B, n) marks the slots of each window at which an
    episode ends; a window stops after its first end. Returns ``(length, has_end)``:
    ``L = 1 + `` the first end's offset, or ``n``; and whether the window holds an end."""
    has_end = ends.any(axis=1)
    return np.where(has_end, ends.argmax(axis=1) + 1, ends.shape[1]), has_end


def discounted_sum(rewards: np.ndarray, length: np.ndarray, discount: np.ndarray) -> np.ndarray:
    """``sum_{k<L} gamma^k r_k`` of each window of ``rewards`` (B, n), float32, summed in
    order as Dopamine's ``np.sum`` over its window (so the bits are Dopamine's)."""
    total = np.zeros(len(rewards), dtype=np.float32)
    for k in range(rewards.shape[1]):
        total += np.where(k < length, discount[k] * rewards[:, k], np.float32(0))
    return total


@dataclass
class TransitionBatch:
    """A batch of transitions (numpy); frames channels-first, oldest frame first."""

    observation: np.ndarray  # uint8 (B, stack, 84, 84)
    action: np.ndarray  # int64 (B,)
    reward: np.ndarray  # float32 (B,), n-step discounted sum truncated at the first terminal
    next_observation: np.ndarray  # uint8 (B, stack, 84, 84)
    terminal: np.ndarray  # bool (B,)
    shard: np.ndarray  # int64 (B,), the shard (a checkpoint) of each transition
    index: np.ndarray  # int64 (B,), the slot of each transition in its checkpoint

    @classmethod
    def empty(cls, batch_size: int, stack_size: int, frame_shape=(84, 84)) -> TransitionBatch:
        frames = (batch_size, stack_size, *frame_shape)
        return cls(
            observation=np.empty(frames, np.uint8),
            action=np.empty(batch_size, np.int64),
            reward=np.empty(batch_size, np.float32),
            next_observation=np.empty(frames, np.uint8),
            terminal=np.empty(batch_size, bool),
            shard=np.empty(batch_size, np.int64),
            index=np.empty(batch_size, np.int64),
        )


def gather_into(
    ck: Checkpoint,
    indices: np.ndarray,
    out: TransitionBatch,
    start: int,
    stack_size: int,
    discount: np.ndarray,
) -> None:
    """Write the transitions of slots ``indices`` of ``ck`` into rows ``start:`` of ``out``."""
    cap, n_step = ck.capacity, len(discount)
    idx = np.asarray(indices, dtype=np.int64)
    rows = slice(start, start + len(idx))
    if n_step == 1:  # the common case, without the window machinery (r * 1.0 is exact)
        is_terminal = ck.terminal[idx].astype(bool)
        length = 1
        total = ck.reward[idx]
    else:
        window = (idx[:, None] + np.arange(n_step)) % cap
        length, is_terminal = window_length(ck.terminal[window].astype(bool))
        total = discounted_sum(ck.reward[window], length, discount)
    back = np.arange(-stack_size + 1, 1)
    nxt = (idx + length)[:, None] + back  # both stacks wrap around the circular buffer
    take_frames(ck.observation, [idx[:, None] + back, nxt],
                [out.observation[rows], out.next_observation[rows]])  # fmt: skip
    out.action[rows] = ck.action[idx]
    out.reward[rows] = total
    out.terminal[rows] = is_terminal
    out.shard[rows] = ck.id
    out.index[rows] = idx
