"""``pvn data verify``: read every byte of a DQN Replay log once and check it against the format.

``pvn data info`` reads only the small arrays, so a truncated observation file (the usual result
of an interrupted download or copy) would surface hours into a pretraining run. This reads each
file of each checkpoint once, streaming (bounded memory), and checks:

* all six files are present; each is a whole gzip stream (CRC and length checked at its end)
  holding one ``np.save`` array of the format's dtype and shape, with every byte there;
* ``add_count`` and ``invalid_range`` agree (the range is Dopamine's, around the cursor), and the
  buffer's capacity is the same in every array;
* rewards are clipped to [-1, 1] and terminals are 0 or 1;
* episodes are consistent: the ``stack_size - 1`` slots after every terminal (the next episode's
  padding) hold all-zero frames with zero action, reward and terminal.

Each checkpoint gets ``ok`` or the list of what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pvn.replay.dopamine_format import (
    DTYPES,
    FRAME_SHAPE,
    checkpoint_files,
    chunks,
    incomplete_checkpoints,
    open_checked,
)
from pvn.replay.errors import ReplayError
from pvn.replay.transitions import cursor_range


def _read_all(path: Path, kind: str, keep: bool, on_chunk=None, progress=None, cap=None):
    """Stream one file: header (checked against the format), every data byte
    (``on_chunk(offset, bytes)``), then the gzip trailer (its CRC and length are checked when the
    stream is read to its end). Returns ``(array or None, problems)``."""
    try:
        with open_checked(path, kind) as (f, shape, total):
            if cap is not None and shape[0] != cap:
                return None, [f"{path.name}: {shape[0]} slots, the other arrays {cap}"]
            buf = bytearray(total) if keep else None
            done, last = 0, 0
            for data in chunks(f, total, path):
                if buf is not None:
                    buf[done : done + len(data)] = data
                if on_chunk is not None:
                    on_chunk(done, data)
                done += len(data)
                if progress is not None:  # in compressed bytes, as the bar counts them
                    pos = f.fileobj.tell()
                    progress(pos - last)
                    last = pos
            if f.read(1):
                return None, [f"{path.name}: more bytes than its header's shape {shape}"]
    except ReplayError as e:
        return None, [f"{path.name}: {str(e).removeprefix(str(path) + ': ')}"]
    if buf is None:
        return None, []
    return np.frombuffer(bytes(buf), dtype=DTYPES[kind]).reshape(shape), []


def verify_checkpoint(
    log_dir: Path, c: int, stack_size: int = 4, progress: Callable[[int], None] | None = None
) -> list[str]:
    """What is wrong with checkpoint ``c`` (empty: nothing)."""
    files = checkpoint_files(log_dir, c)
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        return [f"missing {', '.join(missing)}"]
    problems: list[str] = []
    small = {}
    for kind in ("action", "reward", "terminal", "add_count", "invalid_range"):
        arr, probs = _read_all(files[kind], kind, True, progress=progress)
        problems += probs
        small[kind] = arr
    caps = {k: len(small[k]) for k in ("action", "reward", "terminal") if small[k] is not None}
    if len(set(caps.values())) > 1:
        problems.append(f"arrays of different lengths {caps}")
    cap = next(iter(caps.values()), None)
    pad_slots = np.zeros(0, np.int64)
    if cap and small["add_count"] is not None and small["add_count"].shape == ():
        add = int(small["add_count"])
        cursor = add % cap
        rng_ = small["invalid_range"]
        if rng_ is not None:
            h = len(rng_) - stack_size
            if h < 1 or not np.array_equal(rng_, cursor_range(cursor, cap, stack_size, h)):
                problems.append(f"invalid_range {rng_.tolist()} does not match add_count {add}")
        r, t = small["reward"], small["terminal"]
        if r is not None and (np.abs(r) > 1).any():
            problems.append(f"rewards outside [-1, 1] (max |r| = {np.abs(r).max():g})")
        if t is not None and r is not None and small["action"] is not None:
            if (t > 1).any():
                problems.append("terminal values other than 0 and 1")
            # slots in the order they were written; padding follows each terminal (and opens
            # the log), unless the cursor came first
            order = np.r_[cursor:cap, 0:cursor] if add >= cap else np.arange(cursor)
            ends = np.flatnonzero(t[order])
            pos = (ends[:, None] + np.arange(1, stack_size)).ravel()
            if add < cap:
                pos = np.r_[np.arange(stack_size - 1), pos]
            pad_slots = order[pos[pos < len(order)]]
            a_, r_, t_ = small["action"], r, t
            bad = np.flatnonzero((a_[pad_slots] != 0) | (r_[pad_slots] != 0) | (t_[pad_slots] != 0))
            if len(bad):
                problems.append(f"padding slots with data: {pad_slots[bad][:5].tolist()}")
    frame = FRAME_SHAPE[0] * FRAME_SHAPE[1]
    want = np.unique(pad_slots)
    nonzero: list[int] = []

    def check_frames(offset: int, data: bytes) -> None:
        first, last = offset // frame, (offset + len(data) - 1) // frame
        view = np.frombuffer(data, np.uint8)
        lo_i, hi_i = np.searchsorted(want, [first, last + 1])
        for s in want[lo_i:hi_i].tolist():
            lo, hi = max(s * frame - offset, 0), min((s + 1) * frame - offset, len(data))
            if view[lo:hi].any():
                nonzero.append(s)

    obs_file = files["observation"]
    _, probs = _read_all(obs_file, "observation", False, check_frames, progress, cap)
    problems += probs
    if nonzero:
        problems.append(f"padding frames that are not zero at slots {sorted(set(nonzero))[:5]}")
    return problems


def verify(
    path: Path,
    checkpoints: Sequence[int] | None = None,
    stack_size: int = 4,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per checkpoint: ``{"checkpoint", "problems"}`` (empty problems: ok)."""
    if not path.is_dir():
        raise ReplayError(f"{path}: no such replay directory")
    ids = set(incomplete_checkpoints(path))
    ids |= {int(p.name.split(".")[-2]) for p in path.glob("add_count_ckpt.*.gz")}
    if checkpoints is not None:
        absent = sorted(set(checkpoints) - ids)
        if absent:
            raise ReplayError(f"{path}: checkpoint(s) {absent} not found")
        ids = set(checkpoints)
    if not ids:
        raise ReplayError(f"{path}: no Dopamine checkpoints")
    return [
        {"checkpoint": c, "problems": verify_checkpoint(path, c, stack_size, progress)}
        for c in sorted(ids)
    ]
