"""Run-directory text files written atomically (temp file, then rename): a reader never sees
half a config or results file, even if the run is killed while writing."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with failed_write(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


@contextmanager
def failed_write(path: Path, tmp: Path | None = None, error: type[Exception] | None = None):
    """Turn an ``OSError`` while writing ``path`` (through ``tmp``) into one line naming the
    file and the cause (``WriteError``, or ``error``), removing the partial ``tmp``."""
    try:
        yield
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        from pvn.errors import WriteError

        cause = e.strerror or str(e)
        raise (error or WriteError)(f"{path}: could not be written ({cause})") from None
