"""Memory-mapped cache of Dopamine checkpoints: each gzip file is decompressed once, streaming.

Why: a DQN Replay checkpoint is ~7 GB of frames once decompressed, and a game has 50 of them.
Loading them with ``np.load`` (as Dopamine does) needs that much RAM per checkpoint. Here each
``.gz`` is streamed into a ``.npy`` file under the cache and opened with ``np.load(mmap_mode='r')``,
so opening 50 checkpoints costs disk and page cache, not anonymous memory.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pvn.replay.dopamine_format import (
    STORE,
    array_nbytes,
    checkpoint_files,
    read_small,
    stream_to_npy,
)
from pvn.replay.errors import ReplayError

_META_VERSION = 2  # 2: meta records the cache files' sizes


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
    observation: np.ndarray | None  # None when opened without frames (read_checkpoint_meta)
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


def _convert(files: dict[str, Path], dest: Path, progress: Callable[[int], None] | None) -> None:
    """Stream every array of one checkpoint into ``dest`` (a fresh directory), meta last."""
    add_count = int(read_small(files["add_count"], "add_count"))
    invalid_range = read_small(files["invalid_range"], "invalid_range")
    lengths = {}
    for kind in STORE:
        lengths[kind] = stream_to_npy(files[kind], kind, dest / f"{kind}.npy", progress)[0]
    _check_consistent(files, lengths, add_count, invalid_range)
    meta = {
        "version": _META_VERSION,
        "sources": _fingerprint(files),
        "add_count": add_count,
        "invalid_range": invalid_range.tolist(),
    }
    for name in os.listdir(dest):
        with open(dest / name, "rb+") as f:
            os.fsync(f.fileno())
    # the cache's own files, so a cache damaged later (truncated) is seen, not read as data
    meta["sizes"] = {k: (dest / f"{k}.npy").stat().st_size for k in STORE}
    tmp = dest / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, dest / "meta.json")


def _load(entry: Path, ckpt: int) -> Checkpoint:
    meta = json.loads((entry / "meta.json").read_text())
    # Plain ndarray views of the maps: np.memmap's Python-level __getitem__ costs ~10 us a call.
    arrays = {
        k: np.asarray(np.load(entry / f"{k}.npy", mmap_mode="r", allow_pickle=False)) for k in STORE
    }
    return Checkpoint(
        id=ckpt,
        add_count=int(meta["add_count"]),
        invalid_range=np.asarray(meta["invalid_range"], dtype=np.int64),
        **arrays,
    )


def _is_current(entry: Path, files: dict[str, Path]) -> bool:
    """The entry is complete, made from the current source files, and its arrays are whole."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        sizes = {k: (entry / f"{k}.npy").stat().st_size for k in STORE}
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return (
        meta.get("version") == _META_VERSION
        and meta.get("sources") == _fingerprint(files)
        and meta.get("sizes") == sizes
    )


def open_checkpoint(
    log_dir: Path,
    ckpt: int,
    cache_dir: Path | None = None,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
) -> Checkpoint:
    """Open checkpoint ``ckpt`` of ``log_dir`` through the cache, converting it if needed.

    ``progress(description, total_bytes)`` may return a per-chunk callback for a progress bar.
    """
    log_dir = Path(log_dir).resolve()
    files = checkpoint_files(log_dir, ckpt)
    _fingerprint(files)  # fail early, naming the missing file
    key = hashlib.sha1(str(log_dir).encode()).hexdigest()[:16]
    root = Path(cache_dir or default_cache_dir()) / key

    def convert(tmp: Path) -> None:
        cb = None
        if progress is not None:
            # the bar names where the cache goes; its total is the size it will take
            cb = progress(f"caching checkpoint {ckpt} in {root}", _raw_bytes(files))
        _convert(files, tmp, cb)

    entry = build_once(root, f"ckpt.{ckpt}", lambda e: _is_current(e, files), convert)
    return _load(entry, ckpt)


def build_once(
    root: Path, name: str, is_current: Callable[[Path], bool], convert: Callable[[Path], None]
) -> Path:
    """The cache entry ``root/name``, made by ``convert(tmp)`` unless ``is_current(entry)``:
    into a fresh temporary directory, renamed into place only once complete, under a file lock
    so that concurrent processes convert it once; a conversion killed midway leaves only a
    temporary directory, which the next one deletes. A full disk is one error naming the
    directory, with nothing left behind.

    Args:
        root: the cache directory of one source.
        name: the entry's name.
        is_current: whether an existing entry is complete and made from the current source.
        convert: writes the entry into the directory it is given (its sentinel last).

    Returns:
        The entry's path.
    """
    root.mkdir(parents=True, exist_ok=True)
    entry = root / name
    if is_current(entry):
        return entry
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(entry):  # another process may have converted it meanwhile
            for stale in root.glob(f"{name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = root / f"{name}.tmp-{os.getpid()}"
            try:
                tmp.mkdir()
                convert(tmp)
                if entry.exists():
                    shutil.rmtree(entry)
                os.replace(tmp, entry)
            except OSError as e:  # a full disk or a file-size limit while writing the cache
                raise ReplayError(
                    f"{tmp}: could not be written ({e.strerror or e}); free space or choose "
                    "another cache dir (data.cache_dir, $PVN_CACHE_DIR)"
                ) from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return entry


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
