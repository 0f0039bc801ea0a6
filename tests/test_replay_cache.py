"""The memory-mapped cache: converted once, reused, rebuilt when stale or half-written."""

from __future__ import annotations

import gzip
import mmap
import os
import subprocess
import sys
import textwrap

import numpy as np

from pvn.replay import DQNReplayDataset
from pvn.replay import cache as cache_mod
from pvn.replay.frames import ChunkedFrames


def _file_backed(a: np.ndarray) -> bool:
    while a is not None and not isinstance(a, mmap.mmap):
        a = getattr(a, "base", None)
    return isinstance(a, mmap.mmap)


def test_converted_once_then_reused(dopamine_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = DQNReplayDataset(dopamine_copy, cache_dir=cache)
    assert len(list(cache.rglob("meta.json"))) == 4
    frames = first.checkpoint(0).observation
    assert isinstance(frames, ChunkedFrames) and _file_backed(frames._data.obj)

    def fail(*a, **k):
        raise AssertionError("reconverted a current cache entry")

    monkeypatch.setattr(cache_mod, "_convert", fail)
    second = DQNReplayDataset(dopamine_copy, cache_dir=cache)
    np.testing.assert_array_equal(second.valid_mask(2), first.valid_mask(2))


def test_a_conversion_says_where_the_cache_goes_and_how_big_it_will_be(dopamine_copy, tmp_path):
    said = []
    DQNReplayDataset(dopamine_copy, cache_dir=tmp_path / "cache", checkpoints=[1],
                     progress=lambda desc, total: said.append(desc))  # fmt: skip
    (desc,) = said
    root = cache_mod.cache_root(dopamine_copy, tmp_path / "cache")
    gz = sum(f.stat().st_size for f in (dopamine_copy).glob("*_ckpt.1.gz")) / 2**20
    assert desc == f"storing checkpoint 1 in {root} (~{gz:.1f} MB; PVN_CACHE_DIR moves it)"
    stored = sum(f.stat().st_size for f in (root / "ckpt.1").iterdir()) / 2**20
    assert stored < 2 * gz + 1  # about the gzip files' size, as the line says


def test_stale_entry_is_rebuilt(dopamine_copy, tmp_path):
    cache = tmp_path / "cache"
    DQNReplayDataset(dopamine_copy, cache_dir=cache)
    path = dopamine_copy / "$store$_reward_ckpt.0.gz"
    with gzip.open(path) as f:
        reward = np.load(f, allow_pickle=False)
    reward[:] = 0.5
    with gzip.open(path, "wb") as f:
        np.save(f, reward)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    ds = DQNReplayDataset(dopamine_copy, cache_dir=cache)
    assert np.all(ds.checkpoint(0).reward == 0.5)


def test_conversion_killed_midway_is_redone(dopamine_copy, tmp_path):
    """SIGKILL a real conversion in a subprocess after its first chunk; the next open redoes it."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pvn.replay import DQNReplayDataset
        def progress(desc, total):
            def cb(n):
                os.kill(os.getpid(), signal.SIGKILL)
            return cb
        DQNReplayDataset({str(dopamine_copy)!r}, cache_dir={str(cache)!r}, progress=progress)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert not list(cache.rglob("meta.json")), "no entry may look complete"
    assert list(cache.rglob("ckpt.0.tmp-*")), "the killed conversion left its temporary dir"
    ds = DQNReplayDataset(dopamine_copy, cache_dir=cache)
    assert not list(cache.rglob("ckpt.0.tmp-*"))
    fresh = DQNReplayDataset(dopamine_copy, cache_dir=tmp_path / "fresh")
    for c in ds.checkpoints:
        np.testing.assert_array_equal(ds.checkpoint(c).observation, fresh.checkpoint(c).observation)
