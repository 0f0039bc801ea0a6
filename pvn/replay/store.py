"""Compressed stores of DQN Replay logs: what ``pvn data convert`` writes and every reader opens.

A store is a directory of checkpoint entries, the same entries as the replay cache
(:mod:`replay.cache`: frames as zstd chunks, :mod:`replay.frames`; actions, rewards, terminals as
``.npy``; ``add_count`` and ``invalid_range`` in ``meta.json``), with a ``store.json`` naming
what it was converted from::

    DST/store.json      {"format": "pvn-store", "version": 1, "source": ..., "codec": {...}}
    DST/ckpt.N/         one entry per converted checkpoint, complete once its meta.json is there

:class:`replay.DQNReplayDataset` opens a store wherever it opens a ``replay_logs`` directory, so
pretraining, probes, diagnostics, reports and the distributed team read stores unchanged, under
the same validity rules (``keep_stale``, ``guard_cursor``, n-step windows). Conversion is
parallel over checkpoints and resumable: an entry is made in a temporary directory renamed into
place when complete (:func:`replay.cache.build_once`), so a converted checkpoint is never redone
and a half-written one never read. :func:`export` writes a store back out in the DQN Replay
format (gzip ``np.save`` files), for Dopamine, TorchRL and d4rl-atari.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pvn.replay.cache import Checkpoint, convert_checkpoint, in_parallel, load_entry, read_meta
from pvn.replay.dopamine_format import (
    STORE,
    array_nbytes,
    checkpoint_files,
    file_name,
    find_checkpoints,
    write_npy_gz,
)
from pvn.replay.errors import ReplayError
from pvn.replay.frames import DEFAULT_CODEC, ChunkedFrames, FrameCodec, open_frames

STORE_FILE = "store.json"
_VERSION = 1
RLU_ENTRY_VERSION = 2  # of a decoded RL Unplugged checkpoint's meta.json; 2: zstd frames


def is_store(path: Path) -> bool:
    """Whether ``path`` is a store (holds ``store.json``)."""
    return (Path(path) / STORE_FILE).is_file()


def read_store(path: Path) -> dict:
    """The store's ``store.json``, checked."""
    try:
        info = json.loads((Path(path) / STORE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReplayError(f"{Path(path) / STORE_FILE}: unreadable ({e})") from None
    if info.get("format") != "pvn-store" or info.get("version") != _VERSION:
        raise ReplayError(
            f"{Path(path) / STORE_FILE}: not a version-{_VERSION} pvn store (format "
            f"{info.get('format')!r}, version {info.get('version')!r})"
        )
    return info


def store_checkpoints(
    path: Path, version: int | None = None
) -> tuple[list[int], dict[int, list[str]]]:
    """The store's complete checkpoints, and those begun but not complete (a conversion that
    was stopped, or an entry damaged since), with what is wrong. ``version``: of the entries'
    ``meta.json`` (default: DQN Replay entries')."""
    read_store(path)
    complete, incomplete = [], {}
    for entry in sorted(Path(path).glob("ckpt.*")):
        suffix = entry.name[len("ckpt.") :]
        if not entry.is_dir() or not suffix.isdigit():
            continue  # a lock file, a temporary directory
        if read_meta(entry, *([] if version is None else [version])) is None:
            incomplete[int(suffix)] = [
                f"{entry}: incomplete or damaged; run pvn data convert again"
            ]
        else:
            complete.append(int(suffix))
    return sorted(complete), dict(sorted(incomplete.items()))


def source_format(path: Path) -> str:
    """What the store was converted from: ``dopamine`` or ``rlu``."""
    return str(read_store(path).get("source_format"))


def open_entry(path: Path, ckpt: int) -> Checkpoint:
    """Checkpoint ``ckpt`` of the store ``path``."""
    return load_entry(Path(path) / f"ckpt.{ckpt}", ckpt)


def entry_add_count(path: Path, ckpt: int) -> int:
    """``add_count`` of checkpoint ``ckpt`` of the store (from its meta, no arrays read)."""
    meta = read_meta(Path(path) / f"ckpt.{ckpt}")
    if meta is None:
        raise ReplayError(f"{path}: checkpoint {ckpt} is not complete in this store")
    return int(meta["add_count"])


def write_store_info(dst: Path, codec: FrameCodec, **source: Any) -> None:
    """Make ``dst`` a store of ``source`` (``source=``, ``source_format=``, and what else names
    it), or check that the store there is one, written with ``codec``."""
    info = {"format": "pvn-store", "version": _VERSION, **source, "codec": asdict(codec)}
    if is_store(dst):
        old = read_store(dst)
        for key, value in info.items():
            if key != "source" and old.get(key) != value:
                raise ReplayError(
                    f"{dst}: a store with {key}={old.get(key)!r}; convert into a new directory "
                    f"for {key}={value!r}"
                )
        return
    if dst.is_dir() and any(dst.iterdir()):
        raise ReplayError(f"{dst}: exists and is not a pvn store; convert into a new or empty "
                          "directory")  # fmt: skip
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / f"{STORE_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, dst / STORE_FILE)


def convert(
    src: Path,
    dst: Path,
    checkpoints: Sequence[int] | None = None,
    codec: FrameCodec = DEFAULT_CODEC,
    workers: int | None = None,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
) -> dict:
    """Convert the DQN Replay checkpoints of ``src`` (a ``replay_logs`` directory, official or
    written by pvn) into the store ``dst``, in parallel over checkpoints, resumably.

    Args:
        src: the replay directory.
        dst: the store directory (made if needed; a stopped conversion into it resumes).
        checkpoints: the ids to convert (default: every complete checkpoint of ``src``).
        codec: how frames are compressed.
        workers: processes (default: the CPUs, at most the checkpoints).
        progress: ``progress(description, total_bytes)`` may return a callback, called with
            each finished checkpoint's decompressed bytes.

    Returns:
        ``{"checkpoints", "source_bytes", "store_bytes", "raw_bytes"}``.
    """
    src, dst = Path(src), Path(dst)
    found = find_checkpoints(src, skip_incomplete=checkpoints is not None)
    ids = found if checkpoints is None else [int(c) for c in checkpoints]
    missing = sorted(set(ids) - set(found))
    if missing:
        raise ReplayError(f"{src}: checkpoint(s) {missing} not found; available: {found}")
    write_store_info(dst, codec, source=str(src), source_format="dopamine")
    raw = {c: sum(array_nbytes(p, k) for k, p in checkpoint_files(src, c).items() if k in STORE)
           for c in ids}  # fmt: skip
    tick = progress(f"converting {src} into {dst}", sum(raw.values())) if progress else None
    jobs = [(src, c, dst, codec) for c in ids]
    in_parallel(convert_checkpoint, jobs, workers or os.cpu_count() or 1, tick,
                [raw[c] for c in ids])  # fmt: skip
    source_bytes = sum(p.stat().st_size for c in ids for p in checkpoint_files(src, c).values())
    return {"checkpoints": ids, "source_bytes": source_bytes,
            "store_bytes": entries_bytes(dst, ids), "raw_bytes": sum(raw.values())}  # fmt: skip


def entries_bytes(store: Path, ids: Sequence[int]) -> int:
    """Bytes on disk of the store's entries ``ids``."""
    return sum(p.stat().st_size for c in ids for p in (Path(store) / f"ckpt.{c}").iterdir())


def export(store: Path, dst: Path, checkpoints: Sequence[int] | None = None) -> list[int]:
    """Write the store's checkpoints out as a DQN Replay directory (Dopamine's six gzip files
    per checkpoint, each written atomically), for Dopamine, TorchRL and d4rl-atari.

    Args:
        store: a store made by :func:`convert`.
        dst: the ``replay_logs`` directory to write (made if needed).
        checkpoints: the ids to write (default: every complete checkpoint of the store).

    Returns:
        The ids written.
    """
    complete, _ = store_checkpoints(store)
    ids = complete if checkpoints is None else [int(c) for c in checkpoints]
    missing = sorted(set(ids) - set(complete))
    if missing:
        raise ReplayError(f"{store}: checkpoint(s) {missing} not in the store; it has {complete}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for c in ids:
        ck = open_entry(store, c)
        arrays = {"observation": np.asarray(ck.observation), "action": ck.action,
                  "reward": ck.reward, "terminal": ck.terminal, "add_count": np.int64(ck.add_count),
                  "invalid_range": ck.invalid_range}  # fmt: skip
        # add_count last: readers take a checkpoint as present once its add_count file is
        for kind in (*STORE, "invalid_range", "add_count"):
            write_npy_gz(dst / file_name(kind, c), np.asarray(arrays[kind]))
    return ids


def verify_store(path: Path, checkpoints: Sequence[int] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[dict]:  # fmt: skip
    """Decode every chunk of every entry of the store once, checking each against its checksum
    and length; one row ``{"checkpoint", "problems"}`` per checkpoint (begun ones included).
    ``progress`` receives each entry's compressed frame bytes once it is read."""
    version = RLU_ENTRY_VERSION if source_format(path) == "rlu" else None
    complete, incomplete = store_checkpoints(path, version)
    ids = sorted(set(complete) | set(incomplete)) if checkpoints is None else list(checkpoints)
    rows = []
    for c in ids:
        entry = Path(path) / f"ckpt.{c}"
        problems = list(incomplete.get(c, []))
        if c not in complete and not problems:
            problems.append(f"checkpoint {c} is not in the store")
        if not problems:
            try:
                frames = open_frames(entry)
                if isinstance(frames, ChunkedFrames):
                    frames.verify()
                slots = len(np.load(entry / "action.npy", mmap_mode="r", allow_pickle=False))
                if len(frames) != slots:
                    problems.append(f"{entry}: {len(frames)} frames for {slots} slots")
            except ReplayError as e:
                problems.append(str(e))
            if progress:
                progress(sum(p.stat().st_size for p in entry.glob("frames.*")))
        rows.append({"checkpoint": c, "problems": problems})
    return rows
