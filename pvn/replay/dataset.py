"""``DQNReplayDataset``: exact, memory-bounded, vectorised sampling from DQN Replay checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pvn.replay.cache import Checkpoint, chronological, open_checkpoint
from pvn.replay.dopamine_format import (
    file_name,
    find_checkpoints,
    incomplete_checkpoints,
    read_small,
)
from pvn.replay.errors import ReplayError
from pvn.replay.protocol import ShardLog
from pvn.replay.transitions import TransitionBatch, discount_vector, gather_into, valid_mask


def resolve_log_dir(path: str | Path) -> Path:
    """Accept either a ``replay_logs`` directory or a run directory that contains one."""
    path = Path(path).expanduser()
    return path / "replay_logs" if (path / "replay_logs").is_dir() else path


def new_slot_count(log_dir: Path, c: int, ck: Checkpoint, found: Sequence[int]) -> int:
    """Slots of checkpoint ``c`` written since checkpoint ``c - 1`` (all, without one): a
    logged buffer's final partial checkpoint holds fewer new slots than its capacity."""
    if c - 1 not in found or not ck.is_full:
        return ck.capacity
    prev = int(read_small(log_dir / file_name("add_count", c - 1), "add_count"))
    since = ck.add_count - prev
    return ck.capacity if since <= 0 else min(ck.capacity, since)


def new_slot_mask(ck: Checkpoint, new: int) -> np.ndarray:
    """Bool over the slots of ``ck``: the ``new`` slots written last, just before the cursor."""
    fresh = np.zeros(ck.capacity, bool)
    fresh[(ck.cursor - new + np.arange(new)) % ck.capacity] = True
    return fresh


class DQNReplayDataset:
    """Transitions of one game's DQN Replay logs, with Dopamine's exact validity rules.

    Args:
        path: a ``replay_logs`` directory (or a directory holding one) of Dopamine checkpoints.
        checkpoints: ids to use (default: all found). Each must exist.
        stack_size: frames per observation (Dopamine: 4).
        n_step: update horizon; rewards are discounted sums truncated at the first terminal.
        gamma: discount for the n-step reward.
        cache_dir: where decompressed checkpoints are memory-mapped (default
            :func:`replay.cache.default_cache_dir`).
        seed: seed of the sampling generator (its state is in :meth:`state_dict`).
        guard_cursor: also reject slots whose n-step window reaches the write cursor (see
            :func:`replay.transitions.valid_mask`); ``False`` matches Dopamine bit for bit.
        skip_incomplete: skip checkpoints missing any of their six files (listed in
            :attr:`skipped`) instead of refusing the dataset; a checkpoint asked for in
            ``checkpoints`` must be complete either way.
        keep_stale: also sample the slots a final partial checkpoint still holds from the
            previous round of the circular buffer. Those transitions are also in the previous
            checkpoint, so Dopamine's reading (``True``) samples them twice; by default only
            each checkpoint's new slots (written since checkpoint ``c - 1``) start transitions.
            Their stacks may still read the slots just before them, which hold the frames
            that truly preceded them.
        progress: ``progress(description, total_bytes)`` factory for conversion progress bars.

    Frames are stored once (the memmapped single frames); stacks are built at sample time.
    Validity masks are kept bit-packed (1 bit per slot), so the process's own memory does not grow
    with the number of checkpoints; frames live in the page cache.
    """

    def __init__(
        self,
        path: str | Path,
        checkpoints: Sequence[int] | None = None,
        stack_size: int = 4,
        n_step: int = 1,
        gamma: float = 0.99,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        guard_cursor: bool = True,
        progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
        skip_incomplete: bool = False,
        keep_stale: bool = False,
    ) -> None:
        if stack_size < 1:
            raise ReplayError(f"stack_size={stack_size}: must be >= 1")
        if n_step < 1:
            raise ReplayError(f"n_step={n_step}: must be >= 1")
        if not 0.0 <= gamma <= 1.0:
            raise ReplayError(f"gamma={gamma}: must be in [0, 1]")
        self.path = resolve_log_dir(path)
        asked = None if checkpoints is None else [int(c) for c in checkpoints]
        #: incomplete checkpoints that were skipped, with their missing files
        self.skipped: dict[int, list[str]] = {}
        if self.path.is_dir():
            self.skipped = incomplete_checkpoints(self.path)
            for c in asked or []:
                if c in self.skipped:
                    raise ReplayError(
                        f"{self.path}: checkpoint {c} is incomplete: {self.skipped[c][0]} is "
                        "missing"
                    )
        found = find_checkpoints(self.path, skip_incomplete or asked is not None)
        if asked is None:
            chosen = found
        else:
            chosen = asked
            missing = sorted(set(chosen) - set(found))
            if missing:
                raise ReplayError(
                    f"{self.path}: checkpoint(s) {missing} not found; available: {found}"
                )
            if len(set(chosen)) != len(chosen):
                raise ReplayError(f"checkpoints={chosen}: repeated checkpoint ids")
        self.checkpoints: list[int] = chosen
        self.stack_size, self.n_step, self.gamma = stack_size, n_step, gamma
        self.guard_cursor = guard_cursor
        self._discount = discount_vector(gamma, n_step)
        self._ckpts: list[Checkpoint] = []
        self._packed: list[np.ndarray] = []
        counts = []
        for c in chosen:
            ck = open_checkpoint(self.path, c, cache_dir, progress)
            if ck.capacity < stack_size + n_step:
                raise ReplayError(
                    f"{self.path}: checkpoint {c} has capacity {ck.capacity}, less than "
                    f"stack_size + n_step = {stack_size + n_step}"
                )
            mask = valid_mask(ck, stack_size, n_step, guard_cursor)
            new = new_slot_count(self.path, c, ck, found)
            if not keep_stale and new < ck.capacity:
                mask &= new_slot_mask(ck, new)
            self._ckpts.append(ck)
            self._packed.append(np.packbits(mask))
            counts.append(int(mask.sum()))
        self._counts = np.asarray(counts, dtype=np.int64)
        if self._counts.sum() == 0:
            raise ReplayError(
                f"{self.path}: no valid transition in checkpoints {chosen} with "
                f"stack_size={stack_size}, n_step={n_step}"
            )
        self._rng = np.random.Generator(np.random.PCG64(seed))

    # -- sizes and masks ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._counts.sum())

    @property
    def shards(self) -> list[int]:
        """The chosen checkpoints: a Dopamine log's shards (:class:`replay.LoggedData`)."""
        return list(self.checkpoints)

    def slots(self, shard: int) -> int:
        """The capacity of checkpoint ``shard``."""
        return self.checkpoint(shard).capacity

    def num_actions(self) -> int:
        """The largest logged action + 1 over the chosen checkpoints."""
        return max(int(np.max(self.checkpoint(c).action)) for c in self.checkpoints) + 1

    def logged(self, shard: int) -> ShardLog:
        """Checkpoint ``shard``'s written slots in the order they were written (from the cursor
        round the circular buffer when it is full), with their rewards and terminals."""
        ck = self.checkpoint(shard)
        order = chronological(ck)
        reward = np.asarray(ck.reward, np.float32)[order]
        return ShardLog(order, reward, np.asarray(ck.terminal, bool)[order])

    def _pos(self, ckpt: int) -> int:
        try:
            return self.checkpoints.index(int(ckpt))
        except ValueError:
            raise ReplayError(f"checkpoint {ckpt} is not one of {self.checkpoints}") from None

    def checkpoint(self, ckpt: int) -> Checkpoint:
        """The memory-mapped arrays of checkpoint ``ckpt``."""
        return self._ckpts[self._pos(ckpt)]

    def valid_counts(self) -> dict[int, int]:
        """Number of valid transitions in each chosen checkpoint."""
        return dict(zip(self.checkpoints, self._counts.tolist(), strict=True))

    def valid_mask(self, ckpt: int) -> np.ndarray:
        """Bool array over every slot of ``ckpt``: Dopamine's ``is_valid_transition``."""
        pos = self._pos(ckpt)
        return np.unpackbits(self._packed[pos], count=self._ckpts[pos].capacity).astype(bool)

    def _is_valid(self, pos: int, idx: np.ndarray) -> np.ndarray:
        return ((self._packed[pos][idx >> 3] >> (7 - (idx & 7))) & 1).astype(bool)

    # -- transitions -------------------------------------------------------------------------
    def gather(self, ckpt: int, indices: Sequence[int] | np.ndarray) -> TransitionBatch:
        """The transitions at slots ``indices`` of ``ckpt`` (validity is not checked)."""
        pos = self._pos(ckpt)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        cap = self._ckpts[pos].capacity
        if idx.size and (idx.min() < 0 or idx.max() >= cap):
            raise ReplayError(f"indices out of range [0, {cap}) for checkpoint {ckpt}")
        out = TransitionBatch.empty(len(idx), self.stack_size)
        gather_into(self._ckpts[pos], idx, out, 0, self.stack_size, self._discount)
        return out

    def sample_indices(self, batch_size: int) -> list[tuple[int, np.ndarray]]:
        """Draw ``batch_size`` slots uniformly over the valid transitions of all checkpoints.

        Returns ``(checkpoint position, slots)`` groups. The number per checkpoint is multinomial
        with probabilities proportional to the valid counts; within a checkpoint, slots are drawn
        uniformly and invalid ones rejected (valid fractions are ~99% in real data).
        """
        rng = self._rng
        per = rng.multinomial(batch_size, self._counts / self._counts.sum())
        groups = []
        for pos, m in enumerate(per.tolist()):
            if m == 0:
                continue
            cap = self._ckpts[pos].capacity
            frac = self._counts[pos] / cap
            got: list[np.ndarray] = []
            need = m
            while need > 0:
                cand = rng.integers(0, cap, size=int(need / frac * 1.1) + 8)
                cand = cand[self._is_valid(pos, cand)][:need]
                got.append(cand)
                need -= len(cand)
            groups.append((pos, np.concatenate(got)))
        return groups

    def sample(self, batch_size: int, out: TransitionBatch | None = None) -> TransitionBatch:
        """A batch of ``batch_size`` transitions drawn uniformly from the valid ones.

        Rows are grouped by checkpoint (the order within a batch carries no meaning).
        ``out`` may be a preallocated batch to fill, avoiding allocations in a hot loop.
        """
        if batch_size < 1:
            raise ReplayError(f"batch_size={batch_size}: must be >= 1")
        if out is None:
            out = TransitionBatch.empty(batch_size, self.stack_size)
        start = 0
        for pos, idx in self.sample_indices(batch_size):
            gather_into(self._ckpts[pos], idx, out, start, self.stack_size, self._discount)
            start += len(idx)
        return out

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The sampler's generator state (JSON-serialisable)."""
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
