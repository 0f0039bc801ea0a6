"""The store of Dopamine checkpoints: each gzip file is decompressed once, streaming, into an
entry whose frames are zstd chunks (:mod:`replay.frames`) and whose small arrays are ``.npy``.

Why: a DQN Replay checkpoint is ~7 GB of frames once decompressed, and a game has 50 of them.
Loading them with ``np.load`` (as Dopamine does) needs that much RAM per checkpoint, and a raw
cache 350 GB of disk per game-run. Here each checkpoint's frames are re-compressed in chunks of
a few consecutive frames (about the gzip files' size, ``docs/store.md``) and its small arrays
memory-mapped, so opening 50 checkpoints costs about what the source takes on disk. The same
entries make the replay cache (keyed by the source directory) and the stores that
``pvn data convert`` writes (:mod:`replay.store`).

Cache entries are keyed by the replay directory's real path and validated against each source
file's size and mtime, and their own files against the sizes recorded when they were made (a
cache file truncated later is rebuilt, never read as data). A conversion writes into a
temporary directory and renames it into place only once complete (the sentinel is the final
``meta.json``), under a file lock so concurrent workers convert a checkpoint once; a conversion
killed midway leaves only a temporary directory, which the next run deletes and redoes. A full
disk while converting is one error naming the cache directory, with nothing left behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pvn.replay.dopamine_format import (
    STORE,
    array_nbytes,
    checkpoint_files,
    chunks,
    open_checked,
    read_small,
    stream_to_npy,
)
from pvn.replay.errors import ReplayError
from pvn.replay.frames import (
    DEFAULT_CODEC,
    ChunkedFrames,
    FrameCodec,
    FrameWriter,
    open_frames,
    same_codec,
)

_META_VERSION = 3  # 2: meta records the cache files' sizes; 3: frames in zstd chunks
SMALL = ("action", "reward", "terminal")  # the slot arrays besides the frames


def default_cache_dir() -> Path:
    """``$PVN_CACHE_DIR``, else ``$XDG_CACHE_HOME/pvn/replay``, else ``~/.cache/pvn/replay``."""
    if env := os.environ.get("PVN_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pvn" / "replay"


@dataclass(frozen=True)
class Checkpoint:
    """One Dopamine checkpoint, its arrays memory-mapped read-only.

    ``cursor`` is the next slot Dopamine would write (``add_count % capacity``); ``is_full`` is
    Dopamine's ``add_count >= capacity`` (slots past the cursor then hold the previous round's
    data, which Dopamine treats as valid).
    """

    id: int
    observation: np.ndarray | ChunkedFrames | None  # None when opened without frames
    action: np.ndarray
    reward: np.ndarray
    terminal: np.ndarray
    add_count: int
    invalid_range: np.ndarray

    @property
    def capacity(self) -> int:
        return len(self.action)

    @property
    def cursor(self) -> int:
        return self.add_count % self.capacity

    @property
    def is_full(self) -> bool:
        return self.add_count >= self.capacity


def _fingerprint(files: dict[str, Path]) -> dict[str, list[int]]:
    out = {}
    for kind, path in files.items():
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ReplayError(f"{path}: missing file") from None
        out[kind] = [st.st_size, st.st_mtime_ns]
    return out


def _check_consistent(files: dict[str, Path], lengths: dict[str, int], add_count: int, ir) -> None:
    cap = lengths["observation"]
    for kind, n in lengths.items():
        if n != cap:
            raise ReplayError(
                f"{files[kind]}: {n} entries, but {files['observation'].name} has {cap}"
            )
    if cap == 0:
        raise ReplayError(f"{files['observation']}: empty checkpoint")
    if add_count < 0:
        raise ReplayError(f"{files['add_count']}: negative add_count {add_count}")
    cursor = add_count % cap
    ir = np.asarray(ir)
    consecutive = len(ir) > 0 and np.array_equal(ir, (ir[0] + np.arange(len(ir))) % cap)
    if not consecutive or cursor not in ir:
        raise ReplayError(
            f"{files['add_count']}: add_count {add_count} (cursor {cursor}) is inconsistent with "
            f"{files['invalid_range'].name} {ir.tolist()} for capacity {cap}"
        )


def _stream_frames(path: Path, dest: Path, codec: FrameCodec, progress) -> int:
    """Decompress an observation file into the frame store of ``dest``; its frame count."""
    writer = FrameWriter(dest, codec)
    with open_checked(path, "observation") as (f, shape, total):
        for data in chunks(f, total, path):  # read errors: open_checked's, naming the file
            try:
                writer.write(data)
            except OSError as e:  # writing the entry (a full disk), not reading the source
                raise _write_error(dest, e) from None
            if progress is not None:
                progress(len(data))
    writer.close()
    return int(shape[0])


def _write_error(where: Path, e: OSError) -> ReplayError:
    """A cache or store entry that could not be written (a full disk, a file-size limit)."""
    return ReplayError(f"{where}: could not be written ({e.strerror or e}); free space or "
                       "choose another cache dir (data.cache_dir, $PVN_CACHE_DIR)")  # fmt: skip


def _convert(
    files: dict[str, Path], dest: Path, codec: FrameCodec, progress: Callable[[int], None] | None
) -> None:
    """Stream every array of one checkpoint into ``dest`` (a fresh directory), meta last."""
    add_count = int(read_small(files["add_count"], "add_count"))
    invalid_range = read_small(files["invalid_range"], "invalid_range")
    lengths = {"observation": _stream_frames(files["observation"], dest, codec, progress)}
    for kind in SMALL:
        lengths[kind] = stream_to_npy(files[kind], kind, dest / f"{kind}.npy", progress)[0]
    _check_consistent(files, lengths, add_count, invalid_range)
    write_meta(dest, {"version": _META_VERSION, "sources": _fingerprint(files),
                      "add_count": add_count, "invalid_range": invalid_range.tolist()})  # fmt: skip


def write_meta(dest: Path, meta: dict) -> None:
    """fsync the entry's files, record their sizes (so an entry damaged later, e.g. truncated,
    is seen, never read as data) and write ``meta.json``, the entry's sentinel, last."""
    names = sorted(p.name for p in dest.iterdir() if p.name != "meta.json")
    for name in names:
        with open(dest / name, "rb+") as f:
            os.fsync(f.fileno())
    meta["sizes"] = {name: (dest / name).stat().st_size for name in names}
    tmp = dest / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, dest / "meta.json")


def read_meta(entry: Path, version: int = _META_VERSION) -> dict | None:
    """The entry's ``meta.json`` when the entry is complete, of ``version``, and whole (its
    files have the sizes recorded), else None."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        sizes = {name: (entry / name).stat().st_size for name in meta.get("sizes", {})}
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if meta.get("version") == version and meta.get("sizes") == sizes else None


def load_entry(entry: Path, ckpt: int) -> Checkpoint:
    """Open a complete Dopamine store entry as checkpoint ``ckpt``."""
    meta = read_meta(entry)
    if meta is None:
        raise ReplayError(f"{entry}: incomplete or damaged store entry (its files do not match "
                          "meta.json); convert the checkpoint again")  # fmt: skip
    # Plain ndarray views of the maps: np.memmap's Python-level __getitem__ costs ~10 us a call.
    arrays = {
        k: np.asarray(np.load(entry / f"{k}.npy", mmap_mode="r", allow_pickle=False)) for k in SMALL
    }
    return Checkpoint(
        id=ckpt,
        observation=open_frames(entry),
        add_count=int(meta["add_count"]),
        invalid_range=np.asarray(meta["invalid_range"], dtype=np.int64),
        **arrays,
    )


def _is_current(entry: Path, files: dict[str, Path], codec: FrameCodec) -> bool:
    """The entry is complete, made from the current source files with ``codec``, and whole."""
    meta = read_meta(entry)
    if meta is None or meta.get("sources") != _fingerprint(files):
        return False
    return same_codec(entry, codec)


def cache_root(log_dir: Path, cache_dir: Path | None = None) -> Path:
    """The cache directory of one replay directory (keyed by its real path)."""
    key = hashlib.sha1(str(Path(log_dir).resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / key


def convert_checkpoint(
    log_dir: Path,
    ckpt: int,
    root: Path,
    codec: FrameCodec = DEFAULT_CODEC,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
) -> Path:
    """The store entry ``root/ckpt.<ckpt>`` of checkpoint ``ckpt`` of ``log_dir``, converted
    unless an entry made from the same files with the same codec is there (:func:`build_once`).

    ``progress(description, total_bytes)`` may return a per-chunk callback for a progress bar.
    """
    files = checkpoint_files(Path(log_dir).resolve(), ckpt)
    _fingerprint(files)  # fail early, naming the missing file

    def convert(tmp: Path) -> None:
        cb = None
        if progress is not None:
            # the bar says where the entry goes and how big it will be (the zstd chunks come
            # to about the gzip files' size, docs/store.md); its total is the bytes decompressed
            size = sum(f.stat().st_size for f in files.values()) / 2**20
            cb = progress(f"storing checkpoint {ckpt} in {root} (~{size:.1f} MB; "
                          "PVN_CACHE_DIR moves it)", _raw_bytes(files))  # fmt: skip
        _convert(files, tmp, codec, cb)

    return build_once(root, f"ckpt.{ckpt}", lambda e: _is_current(e, files, codec), convert)


def open_checkpoint(
    log_dir: Path,
    ckpt: int,
    cache_dir: Path | None = None,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
    codec: FrameCodec = DEFAULT_CODEC,
) -> Checkpoint:
    """Open checkpoint ``ckpt`` of ``log_dir`` through the cache, converting it if needed."""
    entry = convert_checkpoint(log_dir, ckpt, cache_root(log_dir, cache_dir), codec, progress)
    return load_entry(entry, ckpt)


@contextmanager
def claimed(root: Path, name: str) -> Iterator[Path]:
    """Hold ``root/name``'s file lock, so that concurrent processes build it once, and yield
    this process's temporary path for it, ``root/name.tmp-<pid>`` (not created; removed on
    exit, file or directory). A builder killed midway (SIGKILL: no cleanup ran) leaves its
    temporary behind; whoever holds the lock next deletes it, since no one else can be writing.
    The caller checks, under the lock, whether the thing is already built."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in root.glob(f"{name}.tmp-*"):
            _remove(stale)
        tmp = root / f"{name}.tmp-{os.getpid()}"
        try:
            yield tmp
        finally:
            _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def build_once(
    root: Path, name: str, is_current: Callable[[Path], bool], convert: Callable[[Path], None]
) -> Path:
    """The cache entry ``root/name``, made by ``convert(tmp)`` unless ``is_current(entry)``:
    into a fresh temporary directory, renamed into place only once complete, under a file lock
    so that concurrent processes convert it once (:func:`claimed`); a conversion killed midway
    leaves only a temporary directory, which the next one deletes. A full disk is one error
    naming the directory, with nothing left behind.

    Args:
        root: the cache directory of one source.
        name: the entry's name.
        is_current: whether an existing entry is complete and made from the current source.
        convert: writes the entry into the directory it is given (its sentinel last).

    Returns:
        The entry's path.
    """
    entry = root / name
    if is_current(entry):
        return entry
    with claimed(root, name) as tmp:
        if is_current(entry):  # another process may have converted it meanwhile
            return entry
        try:
            tmp.mkdir()
            convert(tmp)
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        except OSError as e:  # a full disk or a file-size limit while writing the cache
            raise _write_error(tmp, e) from None
    return entry


def in_parallel(fn: Callable[..., Any], jobs: list[tuple], workers: int,
                tick: Callable[[int], None] | None = None,
                weights: list[int] | None = None) -> list[Any]:  # fmt: skip
    """``[fn(*job) for job in jobs]`` on ``workers`` processes (inline with one), in order;
    ``tick(weight)`` as each finishes (weight 1 unless ``weights``): how every conversion runs
    parallel over checkpoints."""
    weights = weights or [1] * len(jobs)
    out = []
    if workers <= 1 or len(jobs) <= 1:
        for job, w in zip(jobs, weights, strict=True):
            out.append(fn(*job))
            if tick:
                tick(w)
        return out
    with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
        for f, w in zip([pool.submit(fn, *job) for job in jobs], weights, strict=True):
            out.append(f.result())
            if tick:
                tick(w)
    return out


def read_checkpoint_meta(log_dir: Path, ckpt: int) -> Checkpoint:
    """Actions, rewards, terminals and counters of a checkpoint, without its frames.

    Cheap (a few MB per checkpoint, no cache): enough for validity counts and episode statistics.
    """
    files = checkpoint_files(Path(log_dir), ckpt)
    arrays = {k: read_small(files[k], k) for k in ("action", "reward", "terminal")}
    add_count = int(read_small(files["add_count"], "add_count"))
    invalid_range = read_small(files["invalid_range"], "invalid_range")
    lengths = {k: len(v) for k, v in arrays.items()}
    lengths["observation"] = array_nbytes(files["observation"], "observation") // 84 // 84
    _check_consistent(files, lengths, add_count, invalid_range)
    return Checkpoint(ckpt, None, add_count=add_count, invalid_range=invalid_range, **arrays)


def _raw_bytes(files: dict[str, Path]) -> int:
    """Decompressed size of the store arrays, from their .npy headers (cheap to read)."""
    return sum(array_nbytes(files[kind], kind) for kind in STORE)


def chronological(ck: Checkpoint) -> np.ndarray:
    """Written slots of ``ck`` in the order they were written (oldest first)."""
    if ck.is_full:
        return np.r_[ck.cursor : ck.capacity, 0 : ck.cursor]
    return np.arange(ck.cursor)
