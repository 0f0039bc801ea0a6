"""``DQNReplayWriter``: log transitions in the DQN Replay (Dopamine) format.

It keeps a circular buffer exactly as Dopamine's ``OutOfGraphReplayBuffer`` does (each episode is
preceded by ``stack_size - 1`` all-zero padding slots, ``add_count`` counts every slot, and
``invalid_range`` is recomputed after each add) and writes checkpoints by batch_rl's
logged-buffer rule: checkpoint ``k`` is saved whenever ``add_count % capacity == capacity - 1``,
and :meth:`close` saves the final partial buffer as ``log_final_buffer`` does. Files written here
load in Dopamine / batch_rl, and theirs load in :class:`replay.DQNReplayDataset`.

Two deliberate differences, both invisible to readers of the format:

* batch_rl checks the rule once per ``add`` call, after its padding slots, so when padding steps
  over ``capacity - 1`` the checkpoint is skipped and a whole round of data is overwritten unlogged.
  Here the rule is checked after every slot, so no round is ever lost.
* Dopamine pads only after a *terminal* slot, so the episode after a time-limit truncation starts
  with a stack holding the previous episode's frames. Here every episode is padded. (The last
  transition of a truncated episode still bootstraps from a stack ending in padding: the format
  has no non-pickled way to mark it invalid.)

Frames go to a memory-mapped scratch file beside the output, not to RAM; each checkpoint file is
written atomically (temp file, fsync, rename) with ``add_count`` last, so a reader never sees half a
checkpoint.

A writer survives its process through :meth:`state_dict` (the counters, the small arrays, and only
the frames added since the last saved checkpoint: the rest of the buffer is that checkpoint's
file) and ``DQNReplayWriter(path, ..., resume=state)``, which removes the checkpoints a killed
process wrote after the state was taken and rebuilds the buffer, so the continued log equals one
written without the interruption from that state on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pvn.replay.dopamine_format import (
    FRAME_SHAPE,
    file_name,
    find_checkpoints,
    read_frames_into,
    write_npy_gz,
)
from pvn.replay.errors import ReplayError
from pvn.replay.transitions import cursor_range

_SCRATCH = ".pvn-writer-frames"


class DQNReplayWriter:
    """Append episodes to a ``replay_logs`` directory in the DQN Replay format.

    Args:
        path: the ``replay_logs`` directory (created; must not already hold checkpoints).
        capacity: slots per checkpoint (DQN Replay: 1,000,000).
        stack_size: frames per stack; sets the padding length (DQN Replay: 4).
        update_horizon: the horizon used for ``invalid_range`` (DQN Replay: 1).
        compresslevel: gzip level of the checkpoint files (1 is fastest, 9 smallest).
        resume: a :meth:`state_dict` of a writer on the same ``path`` to continue from.
    """

    def __init__(
        self,
        path: str | Path,
        capacity: int = 1_000_000,
        stack_size: int = 4,
        update_horizon: int = 1,
        compresslevel: int = 6,
        resume: dict | None = None,
    ) -> None:
        if capacity < stack_size + update_horizon:
            raise ReplayError(f"capacity={capacity}: must be >= stack_size + update_horizon")
        if not 1 <= compresslevel <= 9:
            raise ReplayError(f"compresslevel={compresslevel}: must be in 1..9")
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # an unwritable or impossible output path
            raise ReplayError(f"{self.path}: could not be created ({e.strerror or e})") from None
        try:
            existing = find_checkpoints(self.path, skip_incomplete=True)
        except ReplayError:
            existing = []
        if existing and resume is None:
            raise ReplayError(
                f"{self.path}: already holds checkpoints {existing}; choose a new dir"
            )
        for stale in self.path.glob(f"{_SCRATCH}*"):
            stale.unlink()
        self.capacity, self.stack_size, self.update_horizon = capacity, stack_size, update_horizon
        self.compresslevel = compresslevel
        self._scratch = self.path / f"{_SCRATCH}-{os.getpid()}"
        try:
            self._obs = np.lib.format.open_memmap(
                self._scratch, mode="w+", dtype=np.uint8, shape=(capacity, *FRAME_SHAPE)
            )
        except OSError as e:  # no room for the frame buffer (full disk, file-size limit)
            self._scratch.unlink(missing_ok=True)
            raise ReplayError(
                f"{self._scratch}: could not be written ({e.strerror or e})"
            ) from None
        self._action = np.zeros(capacity, np.int32)
        self._reward = np.zeros(capacity, np.float32)
        self._terminal = np.zeros(capacity, np.uint8)
        self.add_count = 0
        self._saved_count = 0  # add_count at the last saved checkpoint
        self.checkpoints_written: list[int] = []
        self._dirty = False  # slots added since the last checkpoint
        if resume is not None:
            self._load_state(resume, existing)

    @property
    def cursor(self) -> int:
        return self.add_count % self.capacity

    def add_episode(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: bool,
    ) -> None:
        """Append one episode: ``observations[t]`` is the frame in which ``actions[t]`` was taken.

        ``rewards`` should already be clipped to [-1, 1] (as in the DQN Replay Dataset).
        ``terminated`` marks the last slot terminal; pass ``False`` for a truncated episode.
        """
        obs = np.asarray(observations)
        n = len(obs)
        if obs.dtype != np.uint8 or obs.shape[1:] != FRAME_SHAPE:
            raise ReplayError(f"observations: {obs.dtype} {obs.shape}, expected uint8 (T, 84, 84)")
        if len(actions) != n or len(rewards) != n or n == 0:
            raise ReplayError(
                f"episode arrays: {n} frames, {len(actions)} actions, {len(rewards)} rewards; "
                "expected equal, non-zero lengths"
            )
        terminal = np.zeros(n, np.uint8)
        terminal[-1] = bool(terminated)
        pad = self.stack_size - 1
        zeros = np.zeros(pad)
        self._append(np.zeros((pad, *FRAME_SHAPE), np.uint8), zeros, zeros, zeros)
        self._append(obs, np.asarray(actions), np.asarray(rewards), terminal)

    def _append(self, obs, actions, rewards, terminals) -> None:
        done, n, cap = 0, len(obs), self.capacity
        while done < n:
            # Slots until the next save point (add_count % cap == cap - 1 after the add).
            until_save = (cap - 1 - self.cursor) % cap or cap
            take = min(n - done, until_save, cap - self.cursor)
            c, part = self.cursor, slice(done, done + take)
            self._obs[c : c + take] = obs[part]
            self._action[c : c + take] = actions[part]
            self._reward[c : c + take] = rewards[part]
            self._terminal[c : c + take] = terminals[part]
            self.add_count += take
            done += take
            self._dirty = True
            if self.add_count % cap == cap - 1:
                self._save()

    def _save(self) -> None:
        ckpt = len(self.checkpoints_written)
        arrays = {
            "observation": self._obs,
            "action": self._action,
            "reward": self._reward,
            "terminal": self._terminal,
            "invalid_range": cursor_range(
                self.cursor, self.capacity, self.stack_size, self.update_horizon
            ),
            "add_count": np.array(self.add_count, dtype=np.int64),
        }
        for kind, arr in arrays.items():  # add_count last: its presence marks a whole checkpoint
            write_npy_gz(self.path / file_name(kind, ckpt), arr, self.compresslevel)
        self.checkpoints_written.append(ckpt)
        self._saved_count = self.add_count
        self._dirty = False

    def _since_save(self) -> np.ndarray:
        """Buffer slots written since the last saved checkpoint (fewer than ``capacity``)."""
        return (self._saved_count + np.arange(self.add_count - self._saved_count)) % self.capacity

    def state_dict(self) -> dict:
        """What :class:`DQNReplayWriter` needs to continue this log exactly: counters, the small
        arrays, and the frames added since the last saved checkpoint."""
        arrays = {  # torch tensors: run checkpoints load with torch.load(weights_only=True)
            "action": self._action,
            "reward": self._reward,
            "terminal": self._terminal,
            "frames": self._obs[self._since_save()],
        }
        return {
            "capacity": self.capacity,
            "add_count": self.add_count,
            "saved_count": self._saved_count,
            "checkpoints_written": list(self.checkpoints_written),
            **{k: torch.from_numpy(np.array(v)) for k, v in arrays.items()},
        }

    def _load_state(self, state: dict, existing: list[int]) -> None:
        if state["capacity"] != self.capacity:
            raise ReplayError(
                f"{self.path}: resumed with capacity {self.capacity}, written with "
                f"{state['capacity']}"
            )
        written = list(state["checkpoints_written"])
        missing = sorted(set(written) - set(existing))
        if missing:
            raise ReplayError(f"{self.path}: checkpoints {missing} of the resumed log are missing")
        for f in self.path.glob("*_ckpt.*.gz"):  # files written after the state was taken
            if int(f.name.rsplit(".", 2)[-2]) not in written:
                f.unlink()
        if written:  # the buffer as the last saved checkpoint left it
            read_frames_into(self.path / file_name("observation", written[-1]), self._obs)
        self.add_count, self._saved_count = int(state["add_count"]), int(state["saved_count"])
        self.checkpoints_written = written
        self._obs[self._since_save()] = state["frames"].numpy()
        self._action[:], self._reward[:] = state["action"].numpy(), state["reward"].numpy()
        self._terminal[:] = state["terminal"].numpy()
        self._dirty = self.add_count > self._saved_count

    def close(self) -> None:
        """Save the final partial buffer (if anything was added since the last save)."""
        if self._obs is None:
            return
        if self._dirty:
            self._save()
        self._obs = None
        self._scratch.unlink(missing_ok=True)

    def __enter__(self) -> DQNReplayWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # keep the checkpoints already complete; drop the unsaved tail
            self._obs = None
            self._scratch.unlink(missing_ok=True)
