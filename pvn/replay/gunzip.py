"""Reading gzip streams (DQN Replay's files, RL Unplugged's raw TFRecords) with ISA-L.

Intel's ISA-L inflates these files about 3x faster than zlib, which Python's :mod:`gzip` uses
(``docs/store.md`` measures it against zlib and zlib-ng); the bindings (``isal``, python-isal)
keep :class:`gzip.GzipFile`'s interface and check the same CRC and length at a stream's end.
Every first read of a log, ``pvn data convert`` and ``pvn data verify`` go through it. Writing
stays with zlib: its levels are the ones Dopamine's files are made with.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from isal import igzip, isal_zlib

#: what reading a damaged or truncated gzip stream raises
ERRORS = (OSError, EOFError, zlib.error, isal_zlib.error)


def open_gzip(path: str | Path) -> igzip.IGzipFile:
    """``path`` opened for reading its decompressed bytes."""
    return igzip.open(path, "rb")
