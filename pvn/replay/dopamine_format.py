"""The DQN Replay (Dopamine) on-disk format: file names, dtypes, shapes, safe gzip-npy I/O.

One checkpoint ``N`` of a ``replay_logs`` directory is six files, each a gzip stream holding one
``np.save`` array (Dopamine ``OutOfGraphReplayBuffer.save``)::

    $store$_observation_ckpt.N.gz   uint8   (cap, 84, 84)   single frames, never stacks
    $store$_action_ckpt.N.gz        int32   (cap,)
    $store$_reward_ckpt.N.gz        float32 (cap,)          already clipped to [-1, 1]
    $store$_terminal_ckpt.N.gz      uint8   (cap,)
    add_count_ckpt.N.gz             int64   ()              adds since the buffer was created
    invalid_range_ckpt.N.gz         int64   (stack + n,)    slots around the write cursor

Newer Dopamine also writes ``episode_end_indices_ckpt.N.gz``, a *pickled* Python set: it is never
read here (unpickling a data file can run arbitrary code).

Everything here reads with ``allow_pickle=False`` and checks dtype and shape against the table, so
a wrong or hostile file fails with a :class:`ReplayError` naming it instead of being misread.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pvn.replay.errors import ReplayError
from pvn.replay.gunzip import ERRORS, open_gzip

STORE = ("observation", "action", "reward", "terminal")
DTYPES = {
    "observation": np.dtype(np.uint8),
    "action": np.dtype(np.int32),
    "reward": np.dtype(np.float32),
    "terminal": np.dtype(np.uint8),
    "add_count": np.dtype(np.int64),
    "invalid_range": np.dtype(np.int64),
}
FRAME_SHAPE = (84, 84)
_CKPT_RE = re.compile(r"^add_count_ckpt\.(\d+)\.gz$")
_KIND_RE = re.compile(
    r"^(?:\$store\$_)?(observation|action|reward|terminal|add_count|invalid_range)_ckpt\.(\d+)\.gz$"
)
_CHUNK = 1 << 22  # 4 MiB of decompressed bytes per read when streaming to a memmap


def file_name(kind: str, ckpt: int) -> str:
    """Dopamine's file name for ``kind`` (a store array, ``add_count`` or ``invalid_range``)."""
    prefix = "$store$_" if kind in STORE else ""
    return f"{prefix}{kind}_ckpt.{ckpt}.gz"


def checkpoint_files(log_dir: Path, ckpt: int) -> dict[str, Path]:
    """The six files of one checkpoint, by kind."""
    return {k: log_dir / file_name(k, ckpt) for k in (*STORE, "add_count", "invalid_range")}


def incomplete_checkpoints(log_dir: Path) -> dict[int, list[str]]:
    """Checkpoint ids of which some but not all six files are present, with the missing file
    names (an interrupted download or copy; a checkpoint being written)."""
    present: dict[int, set[str]] = {}
    for f in os.listdir(log_dir):
        if m := _KIND_RE.match(f):
            present.setdefault(int(m.group(2)), set()).add(m.group(1))
    kinds = (*STORE, "add_count", "invalid_range")
    return {
        c: [file_name(k, c) for k in kinds if k not in have]
        for c, have in sorted(present.items())
        if len(have) < len(kinds)
    }


def find_checkpoints(log_dir: Path, skip_incomplete: bool = False) -> list[int]:
    """Ids of the complete checkpoints in ``log_dir``, sorted.

    A checkpoint missing any of its six files is an error naming the checkpoint and the file
    (a partial download would otherwise drop a million transitions without a word), unless
    ``skip_incomplete``; see :func:`incomplete_checkpoints` for which were skipped.
    """
    if not log_dir.is_dir():
        raise ReplayError(f"{log_dir}: no such replay directory")
    incomplete = incomplete_checkpoints(log_dir)
    if incomplete and not skip_incomplete:
        c, missing = next(iter(incomplete.items()))
        more = f" (and {len(incomplete) - 1} more)" if len(incomplete) > 1 else ""
        raise ReplayError(
            f"{log_dir}: checkpoint {c} is incomplete: {missing[0]} is missing{more}; "
            "restore it, or skip incomplete checkpoints (data.skip_incomplete=true)"
        )
    ids = sorted(int(m.group(1)) for f in os.listdir(log_dir) if (m := _CKPT_RE.match(f)))
    ids = [c for c in ids if c not in incomplete]
    if not ids:
        raise ReplayError(f"{log_dir}: no Dopamine checkpoints (no complete set of six files)")
    return ids


def _read_header(stream, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (*ERRORS, ValueError) as e:
        raise ReplayError(f"{path}: not a gzip-compressed .npy array ({e})") from None
    if dtype.hasobject:
        raise ReplayError(f"{path}: holds a pickled object array; refusing to unpickle it")
    return shape, fortran, dtype


def _check(path: Path, kind: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    want = DTYPES[kind]
    if dtype != want:
        raise ReplayError(f"{path}: dtype {dtype}, expected {want}")
    if kind == "observation" and (len(shape) != 3 or shape[1:] != FRAME_SHAPE):
        raise ReplayError(f"{path}: shape {shape}, expected (capacity, 84, 84) single frames")
    if kind in ("action", "reward", "terminal", "invalid_range") and len(shape) != 1:
        raise ReplayError(f"{path}: shape {shape}, expected a 1-d array")
    if kind == "add_count" and shape != ():
        raise ReplayError(f"{path}: shape {shape}, expected a scalar")


@contextmanager
def open_checked(path: Path, kind: str):
    """Open a gzip-npy file, parse and check its header; yield ``(stream, shape, nbytes)``.

    Every I/O or decompression error inside the block becomes a ReplayError naming the file.
    """
    if not path.is_file():
        raise ReplayError(f"{path}: missing file")
    try:
        with open_gzip(path) as f:
            shape, fortran, dtype = _read_header(f, path)
            _check(path, kind, shape, dtype)
            if fortran and len(shape) > 1:
                raise ReplayError(f"{path}: Fortran-ordered array; expected C order")
            yield f, tuple(shape), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except ERRORS as e:
        raise ReplayError(f"{path}: truncated or corrupt gzip stream ({e})") from None


def chunks(f, total: int, path: Path) -> Iterator[bytes]:
    """The ``total`` data bytes of an opened gzip-npy stream, ``_CHUNK`` at a time; a stream that
    ends early is a :class:`ReplayError` naming ``path``."""
    done = 0
    while done < total:
        data = f.read(min(_CHUNK, total - done))
        if not data:
            raise ReplayError(f"{path}: truncated: {done} of {total} bytes")
        done += len(data)
        yield data


def read_small(path: Path, kind: str) -> np.ndarray:
    """Read a whole (small) array into memory, checked against the format table."""
    with open_checked(path, kind) as (f, shape, nbytes):
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ReplayError(f"{path}: truncated: {len(data)} of {nbytes} bytes")
    return np.frombuffer(data, dtype=DTYPES[kind]).reshape(shape).copy()


def array_nbytes(path: Path, kind: str) -> int:
    """Size in bytes of the array in ``path``, from its header alone."""
    with open_checked(path, kind) as (_, _, nbytes):
        return nbytes


def stream_to_npy(
    path: Path, kind: str, out: Path, progress: Callable[[int], None] | None = None
) -> tuple[int, ...]:
    """Decompress ``path`` into the ``.npy`` file ``out``, a chunk at a time (bounded RAM).

    ``out`` is opened as a memmap afterwards, so a 7 GB observation file never sits in RAM. It
    is written with plain writes, not through a map: a full disk is then an error naming the
    file (a write through a map would end the process with SIGBUS).
    ``progress`` receives the number of decompressed bytes after each chunk.
    """
    with open_checked(path, kind) as (f, shape, total):
        try:
            dst = open(out, "wb")  # noqa: SIM115 (closed below; write errors named apart)
            header = {"descr": DTYPES[kind].str, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(dst, header)
        except OSError as e:
            raise ReplayError(f"{out}: could not be written ({e.strerror or e})") from None
        with dst:
            for data in chunks(f, total, path):  # read errors: open_checked's
                try:
                    dst.write(data)
                except OSError as e:
                    raise ReplayError(f"{out}: could not be written ({e.strerror or e})") from None
                if progress is not None:
                    progress(len(data))
    return shape


def read_frames_into(path: Path, out: np.ndarray) -> None:
    """Decompress an observation file straight into ``out`` (uint8 ``(cap, 84, 84)``, e.g. a
    memmap), a chunk at a time."""
    with open_checked(path, "observation") as (f, shape, total):
        if tuple(shape) != out.shape:
            raise ReplayError(f"{path}: shape {shape}, expected {out.shape}")
        dst, done = out.reshape(-1), 0
        for data in chunks(f, total, path):
            dst[done : done + len(data)] = np.frombuffer(data, np.uint8)
            done += len(data)


def write_npy_gz(path: Path, array: np.ndarray, compresslevel: int = 6) -> None:
    """Write one array as Dopamine does (gzip of ``np.save``), atomically: temp, fsync, rename.
    A failed write (full disk, file-size limit) is a :class:`ReplayError` naming the file, and
    leaves no partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel) as gz:
                np.save(gz, np.asarray(array), allow_pickle=False)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ReplayError(f"{path}: could not be written ({e.strerror or e})") from None
