"""``DQNReplayDataset``: exact, memory-bounded, vectorised sampling from DQN Replay checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

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
from pvn.replay.sampler import ShardSampler
from pvn.replay.store import (
    entry_add_count,
    is_store,
    open_entry,
    source_format,
    store_checkpoints,
)
from pvn.replay.transitions import valid_mask


def resolve_log_dir(path: str | Path) -> Path:
    """Accept either a ``replay_logs`` directory or a run directory that contains one."""
    path = Path(path).expanduser()
    return path / "replay_logs" if (path / "replay_logs").is_dir() else path


def previous_add_count(path: Path, c: int, found: Sequence[int]) -> int | None:
    """``add_count`` of checkpoint ``c - 1`` of a replay directory or a store, if it is there."""
    if c - 1 not in found:
        return None
    if is_store(path):
        return entry_add_count(path, c - 1)
    return int(read_small(path / file_name("add_count", c - 1), "add_count"))


def new_slot_count(ck: Checkpoint, prev_add_count: int | None) -> int:
    """Slots of checkpoint ``ck`` written since the checkpoint before it, whose ``add_count``
    was ``prev_add_count`` (all, without one): a logged buffer's final partial checkpoint
    holds fewer new slots than its capacity."""
    if prev_add_count is None or not ck.is_full:
        return ck.capacity
    since = ck.add_count - prev_add_count
    return ck.capacity if since <= 0 else min(ck.capacity, since)


def new_slot_mask(ck: Checkpoint, new: int) -> np.ndarray:
    """Bool over the slots of ``ck``: the ``new`` slots written last, just before the cursor."""
    fresh = np.zeros(ck.capacity, bool)
    fresh[(ck.cursor - new + np.arange(new)) % ck.capacity] = True
    return fresh


def checkpoint_listing(path: Path, skip_incomplete: bool) -> tuple[list[int], dict[int, list[str]]]:
    """The complete checkpoints of a replay directory or a store, and the incomplete ones with
    what is missing; an incomplete one is an error unless ``skip_incomplete``."""
    if not is_store(path):
        skipped = incomplete_checkpoints(path) if path.is_dir() else {}
        return find_checkpoints(path, skip_incomplete), skipped
    if source_format(path) != "dopamine":
        raise ReplayError(f"{path}: a store of {source_format(path)} data; read it with "
                          "data.format=rlu (RLUDataset)")  # fmt: skip
    found, skipped = store_checkpoints(path)
    if skipped and not skip_incomplete:
        c, why = next(iter(skipped.items()))
        raise ReplayError(f"checkpoint {c} of the store is not usable: {why[0]}")
    if not found:
        raise ReplayError(f"{path}: a store with no complete checkpoint; run pvn data convert")
    return found, skipped


class DQNReplayDataset(ShardSampler):
    """Transitions of one game's DQN Replay logs, with Dopamine's exact validity rules.

    Args:
        path: a ``replay_logs`` directory (or a directory holding one) of Dopamine checkpoints,
            or a store ``pvn data convert`` wrote from one (:mod:`replay.store`).
        checkpoints: ids to use (default: all found). Each must exist.
        stack_size: frames per observation (Dopamine: 4).
        n_step: update horizon; rewards are discounted sums truncated at the first terminal.
        gamma: discount for the n-step reward.
        cache_dir: where checkpoints are stored once decompressed (default
            :func:`replay.cache.default_cache_dir`; a store is read in place).
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

    # (each parameter is a user-facing option of the data: config keys under data.)
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
        found, self.skipped = checkpoint_listing(self.path, skip_incomplete or asked is not None)
        for c in asked or []:
            if c in self.skipped:
                raise ReplayError(
                    f"{self.path}: checkpoint {c} is incomplete: {self.skipped[c][0]} is missing"
                )
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
        self.guard_cursor = guard_cursor
        ckpts, masks = [], []
        for c in chosen:
            if is_store(self.path):
                ck = open_entry(self.path, c)
            else:
                ck = open_checkpoint(self.path, c, cache_dir, progress)
            if ck.capacity < stack_size + n_step:
                raise ReplayError(
                    f"{self.path}: checkpoint {c} has capacity {ck.capacity}, less than "
                    f"stack_size + n_step = {stack_size + n_step}"
                )
            mask = valid_mask(ck, stack_size, n_step, guard_cursor)
            new = new_slot_count(ck, previous_add_count(self.path, c, found))
            if not keep_stale and new < ck.capacity:
                mask &= new_slot_mask(ck, new)
            ckpts.append(ck)
            masks.append(mask)
        super().__init__(chosen, ckpts, masks, stack_size, n_step, gamma, seed)
        if len(self) == 0:
            raise ReplayError(
                f"{self.path}: no valid transition in checkpoints {chosen} with "
                f"stack_size={stack_size}, n_step={n_step}"
            )

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

    def checkpoint(self, ckpt: int) -> Checkpoint:
        """The memory-mapped arrays of checkpoint ``ckpt``."""
        return self._shards[self._pos(ckpt)]
