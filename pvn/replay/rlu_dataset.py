"""``RLUDataset``: RL Unplugged Atari runs as :class:`replay.LoggedData`, sampled uniformly under
the official PVN transition rule.

Each checkpoint split is decoded once into a cache entry (frames as one uint8 array, actions,
rewards, Dopamine-style terminals and the episode table), in parallel worker processes, one
checkpoint each; entries are made like the DQN Replay cache's (a temporary directory renamed into
place when complete, under a lock; keyed by the source files' sizes and times). A slot is one
step; the slot ``t`` of an episode starting at ``s`` with ``L`` steps is valid when
``s + 3 <= t <= s + L - 2``: its stack is frames ``t-3..t``, its action ``action[t]`` and its
next stack frames ``t-2..t+1``, so the valid slots are exactly the official windows
(:func:`replay.rlu.official_transitions`, window ``i = t - 3``), and the terminal of slot ``t`` is
``is_terminal[t + 1]``. Sampling is uniform over the selected transitions, where the official
pipeline approximates it with shuffle buffers of 1,000 episodes and 200,000 transitions
(``docs/exactness.md``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pvn.replay.cache import build_once, default_cache_dir, in_parallel, read_meta, write_meta
from pvn.replay.errors import ReplayError
from pvn.replay.frames import (
    DEFAULT_CODEC,
    ChunkedFrames,
    FrameCodec,
    FrameWriter,
    open_frames,
    same_codec,
)
from pvn.replay.protocol import ShardLog
from pvn.replay.rlu import (
    FIXED_SPLITS,
    STACK,
    Source,
    episode_limit,
    locate,
    read_checkpoint,
    selection,
)
from pvn.replay.sampler import ShardSampler
from pvn.replay.store import RLU_ENTRY_VERSION, entries_bytes, write_store_info

_META_VERSION = RLU_ENTRY_VERSION
_SMALL = ("action", "reward", "terminal", "episode_start", "episode_length", "episode_id",
          "episode_terminal")  # fmt: skip


@dataclass(frozen=True)
class Steps:
    """One converted checkpoint: its steps as slots (the arrays ``gather_into`` reads)."""

    id: int
    observation: np.ndarray | ChunkedFrames  # uint8 (S, 84, 84)
    action: np.ndarray  # int32 (S,)
    reward: np.ndarray  # float32 (S,)
    terminal: np.ndarray  # uint8 (S,): is_terminal of the next step (Dopamine's convention)
    episode_start: np.ndarray  # int64 (E,)
    episode_length: np.ndarray  # int64 (E,)
    episode_id: np.ndarray  # int64 (E,)
    episode_terminal: np.ndarray  # bool (E,): the episode ends in a terminal state

    @property
    def capacity(self) -> int:
        return len(self.action)


def _fingerprint(source: Source, checkpoint: int) -> list[list[Any]]:
    files, _ = source.shards[checkpoint]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _convert(source: Source, checkpoint: int, limit: int | None, codec: FrameCodec,
             dest: Path) -> None:  # fmt: skip
    """Decode the checkpoint's episodes into ``dest``: frames into the frame store as they come,
    the small arrays and ``meta.json`` (the sentinel) last."""
    cols: dict[str, list] = {k: [] for k in _SMALL}
    steps = 0
    frames = FrameWriter(dest, codec)
    for ep in read_checkpoint(source, checkpoint, limit):
        n = len(ep["action"])
        frames.write(np.ascontiguousarray(ep["observation"], np.uint8))
        cols["action"].append(ep["action"].astype(np.int32))
        cols["reward"].append(ep["reward"].astype(np.float32))
        cols["terminal"].append(np.append(ep["is_terminal"][1:], False).astype(np.uint8))
        cols["episode_start"].append([steps])
        cols["episode_length"].append([n])
        cols["episode_id"].append([ep["episode_id"]])
        cols["episode_terminal"].append([bool(ep["is_terminal"][-1]) if n else False])
        steps += n
    frames.close()
    dtypes = {"episode_start": np.int64, "episode_length": np.int64, "episode_id": np.int64,
              "episode_terminal": bool}  # fmt: skip
    for k, parts in cols.items():
        arr = np.concatenate([np.asarray(p, dtypes.get(k)) for p in parts]) if parts else []
        np.save(dest / f"{k}.npy", np.asarray(arr, dtypes.get(k)), allow_pickle=False)
    write_meta(dest, {"version": _META_VERSION, "steps": steps, "limit": limit,
                      "sources": _fingerprint(source, checkpoint)})  # fmt: skip


def _is_current(entry: Path, source: Source, checkpoint: int, limit: int | None,
                codec: FrameCodec) -> bool:  # fmt: skip
    meta = read_meta(entry, _META_VERSION)
    return (
        meta is not None
        and meta.get("limit") == limit
        and meta.get("sources") == _fingerprint(source, checkpoint)
        and same_codec(entry, codec)
    )


def _entry(source: Source, checkpoint: int, limit: int | None, cache_dir: Path | None,
           codec: FrameCodec = DEFAULT_CODEC) -> Path:  # fmt: skip
    """The decoded checkpoint: the store's own entry, or the cache's (made if needed)."""
    if source.kind == "store":  # whole checkpoints; a limit is applied when loading
        return source.shards[checkpoint][0][0]
    # raw files of every run share one directory: the run is part of the key
    ident = f"rlu:{source.root.resolve()}:{source.game}:{source.run}"
    key = hashlib.sha1(ident.encode()).hexdigest()[:16]
    return _build(Path(cache_dir or default_cache_dir()) / key, source, checkpoint, limit, codec)


def _build(root: Path, source: Source, checkpoint: int, limit: int | None,
           codec: FrameCodec) -> Path:  # fmt: skip
    name = f"ckpt.{checkpoint}" + ("" if limit is None else f".first{limit}")
    return build_once(
        root,
        name,
        lambda e: _is_current(e, source, checkpoint, limit, codec),
        lambda tmp: _convert(source, checkpoint, limit, codec, tmp),
    )


def _load(entry: Path, shard: int, limit: int | None = None) -> Steps:
    """A decoded checkpoint; with ``limit``, only its first ``limit`` episodes (their steps
    come first, so the slot arrays are cut and the frames kept as they are)."""
    if read_meta(entry, _META_VERSION) is None:
        raise ReplayError(f"{entry}: incomplete or damaged store entry; convert it again")
    small = {k: np.load(entry / f"{k}.npy", allow_pickle=False) for k in _SMALL}
    if limit is not None and limit < len(small["episode_start"]):
        steps = int(small["episode_start"][limit])
        for k in _SMALL:
            small[k] = small[k][:limit] if k.startswith("episode_") else small[k][:steps]
    return Steps(shard, open_frames(entry), **small)


def valid_slots(steps: Steps, n_step: int = 1) -> np.ndarray:
    """Where a transition starts: ``s + 3 <= t <= s + L - 2`` in each episode (module
    docstring); with ``n_step > 1`` the window's last next stack must also stay inside the
    episode unless the episode ends in a terminal state (the window stops there)."""
    mask = np.zeros(steps.capacity, bool)
    for s, n, term in zip(steps.episode_start, steps.episode_length, steps.episode_terminal,
                          strict=True):  # fmt: skip
        last = s + n - 1  # the episode's last step: a next state, never a start
        end = last if term else last - n_step + 1  # the last start whose window fits
        mask[s + STACK - 1 : max(s + STACK - 1, end)] = True
    return mask


class RLUDataset(ShardSampler):
    """An RL Unplugged Atari run (or the ``weak`` split's five runs) as logged data.

    Args:
        data_dir: the TFDS data directory or the raw files' directory (:func:`replay.rlu.locate`).
        game: the game.
        run: the run, 1-5.
        version: the TFDS version of prepared data (``1.0.0``, the official code's).
        split: ``full``, ``mixed_small``, ``mixed``, ``weak`` or ``checkpoint_XX``.
        proportion: with ``full``, the first ``floor(proportion * episodes)`` of each checkpoint.
        checkpoints: a subset of the split's checkpoints (shard ids) to read.
        n_step: update horizon (the official transitions are one-step).
        gamma: discount of the n-step reward.
        cache_dir: where decoded checkpoints are stored (default: the replay cache).
        seed: seed of the sampler.
        workers: processes decoding checkpoints in parallel (default: the CPUs, at most 8).
        progress: ``progress(description, total)`` factory; its callback counts checkpoints.

    Shard ids are checkpoint ids; under ``weak`` (checkpoint 0 of runs 1-5) they are the runs.
    Rewards are the data's (clipped) rewards of the stack's last step.
    """

    # (the official loader's selection options and DQNReplayDataset's sampling ones: each
    # parameter is a user-facing option, a config key under data.)
    def __init__(self, data_dir: str | Path, game: str, run: int = 1, version: str = "1.0.0",
                 split: str = "full", proportion: float = 1.0, checkpoints: list[int] | None = None,
                 n_step: int = 1, gamma: float = 0.99, cache_dir: str | Path | None = None,
                 seed: int = 0, workers: int | None = None,
                 progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
                 ) -> None:  # fmt: skip
        if n_step < 1:
            raise ReplayError(f"n_step={n_step}: must be >= 1")
        self.path, self.game = Path(data_dir), game
        self.stack_size = STACK
        jobs = []  # (shard id, source, checkpoint, limit)
        for r, source, c in selection(data_dir, game, run, version, split, proportion):
            shard = r if split == "weak" else c
            if checkpoints is None or shard in checkpoints:  # (a limit may read a raw file)
                jobs.append((shard, source, c, episode_limit(source, c, split, proportion)))
        missing = sorted(set(checkpoints or []) - {j[0] for j in jobs})
        if missing:
            raise ReplayError(f"checkpoints={missing}: not in split {split!r} of {data_dir}")
        cache = None if cache_dir is None else Path(cache_dir)
        entries = self._convert_all(jobs, cache, workers, progress)
        shards = [_load(e, j[0], j[3]) for e, j in zip(entries, jobs, strict=True)]
        masks = [valid_slots(s, n_step) for s in shards]
        super().__init__([j[0] for j in jobs], shards, masks, STACK, n_step, gamma, seed)
        if len(self) == 0:
            raise ReplayError(f"{data_dir}: no transition of 5 steps in split {split!r}")
        #: the shard ids' sources, for messages: shard -> (run, checkpoint)
        self.sources = {j[0]: (j[1].run, j[2]) for j in jobs}
        self.skipped: dict[int, list[str]] = {}  # (the DQN Replay reader's; none here)

    @staticmethod
    def _convert_all(jobs, cache, workers, progress) -> list[Path]:
        where = cache or default_cache_dir()  # ~7 KB a frame raw, ~30x less stored
        tick = progress(f"decoding RL Unplugged checkpoints into {where}", len(jobs)) if (
            progress) else None  # fmt: skip
        in_store = all(source.kind == "store" for _, source, _, _ in jobs)  # nothing to decode
        workers = 1 if in_store else workers or min(8, os.cpu_count() or 1)
        args = [(source, c, limit, cache) for _, source, c, limit in jobs]
        return in_parallel(_entry, args, workers, tick)

    def num_actions(self) -> int:
        """The largest logged action + 1 over the shards."""
        return max(int(s.action.max()) for s in self._shards if s.capacity) + 1

    def logged(self, shard: int) -> ShardLog:
        """The shard's steps in order, with their rewards and Dopamine-style terminals (a
        truncated episode's end is marked too: no return runs across episodes)."""
        s = self._shards[self._pos(shard)]
        ends = np.asarray(s.terminal, bool).copy()
        ends[s.episode_start + s.episode_length - 1] = True
        return ShardLog(np.arange(s.capacity), np.asarray(s.reward, np.float32), ends)


# (the options of `pvn data convert --game`, one parameter each)
def convert_rlu(data_dir: str | Path, game: str, run: int, dst: Path, version: str = "1.0.0",
                checkpoints: list[int] | None = None, codec: FrameCodec = DEFAULT_CODEC,
                workers: int | None = None,
                progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
                ) -> dict:  # fmt: skip
    """Decode RL Unplugged ``game`` run ``run`` (prepared or raw) into the store ``dst``, one
    entry per checkpoint (whole checkpoints; a split's ``proportion`` is applied when read), in
    parallel over checkpoints, resumably.

    Args:
        data_dir: the TFDS data directory or the raw files' directory (:func:`replay.rlu.locate`).
        game: the game (CamelCase).
        run: the run, 1-5.
        dst: the store directory (made if needed; a stopped conversion into it resumes).
        version: the TFDS version of prepared data.
        checkpoints: the ids to convert (default: all of the run's).
        codec: how frames are compressed.
        workers: processes (default: the CPUs).
        progress: ``progress(description, total)`` may return a callback counting checkpoints.

    Returns:
        ``{"checkpoints", "source_bytes", "store_bytes"}``.
    """
    source = locate(data_dir, game, run, version)
    ids = source.checkpoints if checkpoints is None else [int(c) for c in checkpoints]
    missing = sorted(set(ids) - set(source.checkpoints))
    if missing:
        raise ReplayError(f"{source.root}: checkpoint(s) {missing} not found; it has "
                          f"{source.checkpoints}")  # fmt: skip
    dst = Path(dst)
    write_store_info(dst, codec, source=str(source.root), source_format="rlu", game=game,
                     run=run, tfds_version=version)  # fmt: skip
    tick = progress(f"converting {game} run {run} into {dst}", len(ids)) if progress else None
    jobs = [(dst, source, c, None, codec) for c in ids]
    in_parallel(_build, jobs, workers or os.cpu_count() or 1, tick)
    files = [p for c in ids for p in source.shards[c][0]]
    return {"checkpoints": ids, "source_bytes": sum(p.stat().st_size for p in files),
            "store_bytes": entries_bytes(dst, ids)}  # fmt: skip


__all__ = ["FIXED_SPLITS", "RLUDataset", "Steps", "convert_rlu", "valid_slots"]
