"""Frames of one shard, stored once: zstd-compressed chunks of consecutive frames, or raw.

Why: a DQN Replay checkpoint is 1M frames, 7 GB raw, and a game-run 50 of them (350 GB), while
consecutive Atari frames compress ~30x in small independent chunks (``docs/store.md`` has the
measurements that chose the codec, its level and the chunk length). Chunks are independent zstd
frames, so a sample decodes only the chunks its stacks touch. Each chunk's CRC-32 (of its
compressed bytes) is checked before it is decoded and each zstd frame carries its content size,
so a corrupt or truncated chunk is an error naming the file and the chunk, never a silently
different frame. (zstd's own xxhash-64 of the decoded content would check the same bytes at
~30% of a chunk's decoding time, where a CRC-32 of the ~30x fewer compressed bytes costs ~1%:
``docs/store.md``. Stores written before carry zstd's checksum and are read with it.)

One shard's frames are these files in its store entry::

    frames.zst         the chunks, one zstd frame each, back to back
    frames.index.npy   int64 (chunks + 1,): each chunk's byte offset, then the file's size
    frames.crc32.npy   uint32 (chunks,): each chunk's CRC-32
    frames.json        codec, level, chunk length, frame count and shape, the dictionary's size
    frames.dict        (when trained) the zstd dictionary every chunk was compressed with

``codec="raw"`` stores ``frames.u8`` (the frames back to back) instead, memory-mapped on reading.
Readers are :class:`ChunkedFrames` (compressed) or a plain ndarray (raw); :func:`take_frames`
gathers stacked frames from either.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zstandard

from pvn.replay.dopamine_format import FRAME_SHAPE
from pvn.replay.errors import ReplayError

_FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1]


@dataclass(frozen=True)
class FrameCodec:
    """How a store compresses frames (``docs/store.md`` measures the choices).

    Args:
        codec: ``zstd`` (chunks) or ``raw`` (no compression, memory-mapped).
        level: the zstd level (1-22); on Atari frames 1 and 3 give the same ratio.
        chunk: frames per chunk: longer chunks compress better, and a sample decodes more
            frames it does not need.
        dictionary: train a zstd dictionary on the shard's first frames and compress every
            chunk with it: short chunks then compress like long ones.
    """

    codec: str = "zstd"
    level: int = 1
    chunk: int = 8
    dictionary: bool = True

    def __post_init__(self) -> None:
        if self.codec not in ("zstd", "raw"):
            raise ReplayError(f"codec={self.codec!r}: expected 'zstd' or 'raw'")
        if not 1 <= self.level <= 22:
            raise ReplayError(f"level={self.level}: zstd levels are 1-22")
        if self.chunk < 1:
            raise ReplayError(f"chunk={self.chunk}: must be >= 1 frame")


DEFAULT_CODEC = FrameCodec()
_DICT_BYTES = 112_640  # zstd's default dictionary size
_DICT_TRAIN_FRAMES = 2048  # frames (14 MB) buffered to train the dictionary on


class FrameWriter:
    """Append frames (as bytes in any pieces) to a shard's store entry; :meth:`close` seals it.

    Args:
        dest: the entry's directory (written into, typically a temporary one).
        codec: how to store the frames.
    """

    def __init__(self, dest: Path, codec: FrameCodec = DEFAULT_CODEC) -> None:
        self.dest, self.codec = Path(dest), codec
        raw = codec.codec == "raw"
        self._file = open(self.dest / ("frames.u8" if raw else "frames.zst"), "wb")  # noqa: SIM115
        self._pending = bytearray()
        self._offsets = [0]
        self._crcs: list[int] = []
        self._bytes_in = 0
        self._dict: zstandard.ZstdCompressionDict | None = None
        self._cctx: zstandard.ZstdCompressor | None = None
        if not raw and not codec.dictionary:
            self._cctx = zstandard.ZstdCompressor(level=codec.level, write_checksum=False)

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Append ``data``: whole frames or any piece of the frames' bytes. Whole chunks are
        compressed straight from ``data``; only a chunk's unfinished tail (and, before the
        dictionary exists, the frames it is trained on) is copied aside."""
        data = memoryview(data).cast("B")
        self._bytes_in += len(data)
        if self.codec.codec == "raw":
            self._file.write(data)
            return
        if self._cctx is None:  # gather exactly the frames the dictionary is trained on
            need = _DICT_TRAIN_FRAMES * _FRAME_BYTES - len(self._pending)
            self._pending += data[:need]
            data = data[need:]
            if len(self._pending) < _DICT_TRAIN_FRAMES * _FRAME_BYTES:
                return
            self._train()
            self._compress(final=False)
        step = self.codec.chunk * _FRAME_BYTES
        if self._pending:  # complete the chunk begun in an earlier piece
            take = min(len(data), -len(self._pending) % step)
            self._pending += data[:take]
            data = data[take:]
            if len(self._pending) % step:
                return
            self._compress(final=False)
        whole = len(data) - len(data) % step
        self._compress_view(data[:whole], final=False)
        self._pending += data[whole:]

    def _train(self) -> None:
        frames = len(self._pending) // _FRAME_BYTES
        step = self.codec.chunk * _FRAME_BYTES
        samples = [bytes(self._pending[i : i + step]) for i in range(0, frames * _FRAME_BYTES,
                                                                     step)]  # fmt: skip
        try:
            # fastcover with fixed parameters on 2,048 frames: ~0.05 s a shard, where 8,192
            # frames took ~0.35 s and letting it search k and d ~20 s, each for a store within
            # ~1% of this one (docs/store.md)
            # a short shard (its frames all here before 2048 arrived) gets a dictionary in
            # proportion, which it cannot repay otherwise
            size = min(_DICT_BYTES, len(self._pending) // 250)
            self._dict = zstandard.train_dictionary(
                size, samples, k=1024, d=8, f=16, accel=4, level=self.codec.level
            )
            self._dict.precompute_compress(level=self.codec.level)  # else it is re-read per chunk
        except zstandard.ZstdError:  # too few or too uniform samples: no dictionary
            self._dict = None
        level = {} if self._dict else {"level": self.codec.level}  # (the dictionary holds it)
        self._cctx = zstandard.ZstdCompressor(dict_data=self._dict, write_checksum=False, **level)

    def _compress(self, final: bool) -> None:
        """Compress the whole chunks set aside (all of them, the last one short, if ``final``)."""
        with memoryview(self._pending) as view:  # (released: the buffer cannot shrink under it)
            done = self._compress_view(view, final)
        del self._pending[:done]

    def _compress_view(self, view: memoryview, final: bool) -> int:
        """Compress ``view``'s whole chunks (and its short tail if ``final``); bytes consumed."""
        assert self._cctx is not None
        step, done, out = self.codec.chunk * _FRAME_BYTES, 0, []
        while len(view) - done >= step or (final and done < len(view)):
            blob = self._cctx.compress(view[done : done + step])
            out.append(blob)
            self._crcs.append(zlib.crc32(blob))
            self._offsets.append(self._offsets[-1] + len(blob))
            done += step
        self._file.write(b"".join(out))
        return min(done, len(view))

    def close(self) -> dict:
        """Write the remaining frames and the index, fsync; return what ``frames.json`` holds."""
        codec = self.codec
        if self._bytes_in % _FRAME_BYTES:
            raise ReplayError(f"{self.dest}: frame bytes are not a whole number of 84x84 frames")
        if codec.codec == "zstd":
            if self._cctx is None:  # a short shard: every frame arrived before training
                self._train()
            self._compress(final=True)
        frames = self._bytes_in // _FRAME_BYTES
        size = self._offsets[-1] if codec.codec == "zstd" else self._bytes_in
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        info = {**asdict(codec), "frames": frames, "frame_shape": list(FRAME_SHAPE),
                "bytes": size, "dictionary_bytes": 0, "zstd": zstandard.ZSTD_VERSION}  # fmt: skip
        if codec.codec == "zstd":
            np.save(self.dest / "frames.index.npy", np.asarray(self._offsets, np.int64))
            np.save(self.dest / "frames.crc32.npy", np.asarray(self._crcs, np.uint32))
            info["checksum"] = "crc32"
            if self._dict is not None:
                blob = self._dict.as_bytes()
                (self.dest / "frames.dict").write_bytes(blob)
                info["dictionary_bytes"] = len(blob)
        info["zstd"] = ".".join(map(str, info["zstd"]))
        (self.dest / "frames.json").write_text(json.dumps(info))
        return info


class ChunkedFrames:
    """A shard's compressed frames, read chunk by chunk (thread-safe; one buffer per thread).

    Args:
        entry: the store entry holding ``frames.zst``, its index and ``frames.json``.

    The compressed bytes are memory-mapped, so a process's resident memory for frames is at
    most the store's size (pages the OS may drop) plus a decode buffer per sampling thread.
    """

    def __init__(self, entry: Path) -> None:
        self.path = Path(entry) / "frames.zst"
        info = read_info(entry)
        self.chunk, self.count = int(info["chunk"]), int(info["frames"])
        self.offsets = np.load(Path(entry) / "frames.index.npy", allow_pickle=False)
        size = self.path.stat().st_size
        if self.offsets[-1] != size or len(self.offsets) != -(-self.count // self.chunk) + 1:
            raise ReplayError(
                f"{self.path}: {size} bytes, but its index says {int(self.offsets[-1])} in "
                f"{len(self.offsets) - 1} chunks: truncated or not this index's file"
            )
        # a plain memoryview of the map: slicing it costs ~0.1 us (np.memmap's ~10 us)
        self._data = memoryview(np.memmap(self.path, np.uint8, "r")) if size else memoryview(b"")
        self._bounds = self.offsets.tolist()
        self._crcs: list[int] | None = None  # None: zstd's checksum (stores written before)
        if info.get("checksum") == "crc32":
            crcs = np.load(Path(entry) / "frames.crc32.npy", allow_pickle=False)
            if crcs.shape != (len(self.offsets) - 1,):
                raise ReplayError(
                    f"{Path(entry) / 'frames.crc32.npy'}: {crcs.size} checksums for "
                    f"{len(self.offsets) - 1} chunks"
                )
            self._crcs = crcs.tolist()
        dict_path = Path(entry) / "frames.dict"
        self._dict = (
            zstandard.ZstdCompressionDict(dict_path.read_bytes()) if dict_path.exists() else None
        )
        self._local = threading.local()

    def __len__(self) -> int:
        return self.count

    def _dctx(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "dctx", None)
        if d is None:
            d = self._local.dctx = zstandard.ZstdDecompressor(dict_data=self._dict)
        return d

    def _buffer(self, frames: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < frames:
            buf = self._local.buf = np.empty((max(frames, 1024), *FRAME_SHAPE), np.uint8)
        return buf

    def decode_into(
        self, chunk: int, out: memoryview, dctx: zstandard.ZstdDecompressor | None = None
    ) -> None:
        """Decode chunk ``chunk``'s frames into ``out`` (room for exactly its bytes), checked
        against the chunk's checksum first and its length."""
        a, b = self._bounds[chunk], self._bounds[chunk + 1]
        blob, want = self._data[a:b], len(out)
        dctx = dctx or self._dctx()
        try:
            if self._crcs is None:  # zstd's checksum: checked once the whole frame is decoded
                data = dctx.decompress(blob)
                got = len(data)
                if got == want:
                    out[:] = data
            else:  # checked, then decoded straight into place (no copy: docs/store.md)
                if zlib.crc32(blob) != self._crcs[chunk]:
                    raise ReplayError(
                        f"{self.path}: chunk {chunk} (bytes {a}-{b}) is corrupt (its CRC-32 "
                        "differs)"
                    )
                got = zstandard.frame_content_size(blob)
                if got == want:
                    with dctx.stream_reader(blob) as reader:
                        got = reader.readinto(out)
        except zstandard.ZstdError as e:
            raise ReplayError(
                f"{self.path}: chunk {chunk} (bytes {a}-{b}) is corrupt ({e})"
            ) from None
        if got != want:
            raise ReplayError(f"{self.path}: chunk {chunk} holds {got} bytes, not {want}")

    def chunk_bytes(self, chunk: int) -> int:
        """How many bytes chunk ``chunk`` decodes to (the last one may be short)."""
        return min(self.chunk, self.count - chunk * self.chunk) * _FRAME_BYTES

    def verify(self) -> None:
        """Decode every chunk once, each checked against its checksum and length."""
        scratch = memoryview(bytearray(self.chunk * _FRAME_BYTES))
        for chunk in range(len(self.offsets) - 1):
            self.decode_into(chunk, scratch[: self.chunk_bytes(chunk)])

    def take(self, indices: list[np.ndarray], outs: list[np.ndarray]) -> None:
        """``outs[k][...] = frames[indices[k] % len]`` for each ``k`` (``np.take``'s
        ``mode='wrap'``), decoding each chunk the indices touch once over all of them."""
        flat = np.concatenate([np.asarray(i, np.int64).reshape(-1) for i in indices]) % self.count
        chunks, where = np.unique(flat // self.chunk, return_inverse=True)
        buf = self._buffer(len(chunks) * self.chunk)
        flat_buf, ids = memoryview(buf.reshape(-1)), chunks.tolist()
        if _POOL is None or len(ids) < 2 * _THREADS:
            self._decode_into(flat_buf, ids, 0, len(ids))
        else:  # zstd releases the GIL: threads decode disjoint parts of the buffer at once
            cuts = np.linspace(0, len(ids), _THREADS + 1).astype(int).tolist()
            jobs = [_POOL.submit(self._decode_into, flat_buf, ids, a, b)
                    for a, b in itertools.pairwise(cuts)]  # fmt: skip
            for job in jobs:
                job.result()
        rows = where * self.chunk + flat % self.chunk
        start = 0
        for out in outs:
            dst = out.reshape(-1, *FRAME_SHAPE)
            np.take(buf, rows[start : start + len(dst)], axis=0, out=dst, mode="clip")  # unbuffered
            start += len(dst)

    def _decode_into(self, flat_buf: memoryview, ids: list[int], a: int, b: int) -> None:
        """Decode chunks ``ids[a:b]`` into their slots of the batch's buffer."""
        step, dctx = self.chunk * _FRAME_BYTES, self._dctx()
        if a == b:
            return
        if self._crcs is None or ids[b - 1] == len(self._crcs) - 1:  # (the last chunk: short)
            for j in range(a, b):
                out = flat_buf[j * step : j * step + self.chunk_bytes(ids[j])]
                self.decode_into(ids[j], out, dctx)
            return
        # decode_into inlined for whole chunks (its calls cost ~6% of a sample, docs/store.md);
        # a chunk that fails a check goes to decode_into, which names what is wrong
        data, bounds, crcs, crc32, size = self._data, self._bounds, self._crcs, zlib.crc32, \
            zstandard.frame_content_size  # fmt: skip
        for j in range(a, b):
            c, out = ids[j], flat_buf[j * step : (j + 1) * step]
            blob = data[bounds[c] : bounds[c + 1]]
            try:
                if crc32(blob) == crcs[c] and size(blob) == step:
                    with dctx.stream_reader(blob) as reader:
                        if reader.readinto(out) == step:
                            continue
            except zstandard.ZstdError:
                pass
            self.decode_into(c, out, dctx)  # the checked path: raises, naming the chunk

    def __getitem__(self, key: slice) -> np.ndarray:
        """Frames ``key`` (a slice) as an array: for walking a shard in order."""
        idx = np.arange(self.count)[key]
        out = np.empty((len(idx), *FRAME_SHAPE), np.uint8)
        for lo in range(0, len(idx), 4096):
            self.take([idx[lo : lo + 4096]], [out[lo : lo + 4096]])
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)


_POOL: ThreadPoolExecutor | None = None
_THREADS = 1


def set_decode_threads(threads: int) -> None:
    """Decode each batch's chunks on ``threads`` threads (process-wide; 1: in the caller's
    thread). zstd releases the GIL, so a sampler on a many-core host keeps up with a fast
    learner (``docs/store.md``); which transitions are drawn does not change."""
    global _POOL, _THREADS
    if threads < 1:
        raise ReplayError(f"decode_threads={threads}: must be >= 1")
    if _POOL is not None:
        _POOL.shutdown()
    _THREADS = threads
    _POOL = ThreadPoolExecutor(threads, thread_name_prefix="pvn-zstd") if threads > 1 else None


def read_info(entry: Path) -> dict:
    """``frames.json`` of a store entry."""
    try:
        return json.loads((Path(entry) / "frames.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise ReplayError(f"{entry}: no readable frames.json ({e})") from None


def open_frames(entry: Path) -> np.ndarray | ChunkedFrames:
    """The frames of a store entry: compressed chunks, or the raw frames memory-mapped."""
    info = read_info(entry)
    if info["codec"] == "zstd":
        return ChunkedFrames(entry)
    n = int(info["frames"])
    if n == 0:
        return np.zeros((0, *FRAME_SHAPE), np.uint8)
    return np.asarray(np.memmap(Path(entry) / "frames.u8", np.uint8, "r", shape=(n, *FRAME_SHAPE)))


def same_codec(entry: Path, codec: FrameCodec) -> bool:
    """Whether the store entry's frames were written with ``codec``."""
    info = read_info(entry)
    return {k: info.get(k) for k in asdict(codec)} == asdict(codec)


def take_frames(
    frames: np.ndarray | ChunkedFrames, indices: list[np.ndarray], outs: list[np.ndarray]
) -> None:
    """``outs[k][...] = frames[indices[k]]`` for each ``k``, indices wrapping around the shard
    (a circular buffer); compressed frames decode each chunk once for all ``k``."""
    if isinstance(frames, ChunkedFrames):
        frames.take(indices, outs)
        return
    for idx, out in zip(indices, outs, strict=True):
        np.take(frames, idx, axis=0, out=out, mode="wrap")
