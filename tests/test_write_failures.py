"""Full disks and concurrent readers: a write that fails is one line naming the file (exit 2)
with nothing half-written, a re-run completes; two readers convert a checkpoint once; a cache
file damaged after conversion is rebuilt."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pvn.checkpoint import list_checkpoints
from pvn.replay import DQNReplayDataset
from pvn.replay import cache as cache_mod

# In the child: writes past the limit fail with EFBIG instead of killing it (SIGXFSZ ignored).
_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    from pvn.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _pvn_limited(limit: int, *args: str) -> subprocess.CompletedProcess:
    code = _LIMITED.format(limit=limit)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def _one_error_line(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("pvn: error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.slow
def test_full_disk_while_caching_a_checkpoint(dopamine_copy, tmp_path):
    """A checkpoint's compressed frames (~150 kB) cannot be stored under a 64 kB limit."""
    cache = tmp_path / "cache"
    args = ["pretrain", f"data.path={dopamine_copy}", f"data.cache_dir={cache}",
            f"run_dir={tmp_path / 'run'}", "steps=2", "batch_size=4", "torso.feature_dim=16",
            "tasks.num_tasks=10", "progress=false"]  # fmt: skip
    proc = _pvn_limited(64 * 2**10, *args)
    _one_error_line(proc, "could not be written", "File too large", str(cache))
    assert not list(cache.rglob("meta.json")) and not list(cache.rglob("*.tmp-*"))
    ds = DQNReplayDataset(dopamine_copy, cache_dir=cache)  # with space again: it completes
    assert ds.checkpoints == [0, 1, 2, 3]


@pytest.mark.slow
def test_full_disk_while_writing_a_run_checkpoint(tmp_path):
    """End-to-end DQN's checkpoint (network, target, Adam and replay: tens of MB) cannot be
    written under a 5 MB limit: one line naming it, no partial checkpoint; a re-run completes."""
    run = tmp_path / "run"
    args = ["evaluate", "encoder=e2e", "game=Breakout", "steps=400", "num_envs=2",
            "agent.min_replay=300", "checkpoint_every=200", f"run_dir={run}",
            "progress=false"]  # fmt: skip
    proc = _pvn_limited(5 * 2**20, *args)
    _one_error_line(proc, "ckpt_", "could not be written")
    assert list_checkpoints(run) == [] and not list((run / "checkpoints").glob(".*tmp*"))
    assert not (run / "results.json").exists()
    done = subprocess.run([sys.executable, "-m", "pvn", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (run / "results.json").exists()


@pytest.mark.slow
def test_full_disk_for_a_logs_frame_buffer(tmp_path):
    """``pvn collect`` and ``replay_log=``: the frame buffer (capacity x 7 KB) does not fit."""
    out = tmp_path / "data"
    collect = ["collect", "game=Breakout", "steps=300", "num_envs=2", "capacity=2000",
               f"out={out}", "progress=false"]  # fmt: skip
    _one_error_line(_pvn_limited(2**20, *collect), "could not be written", str(out))
    assert not list((out / "replay_logs").glob("*_ckpt.*.gz"))
    log = tmp_path / "log"
    evaluate = ["evaluate", "encoder=random", "game=Breakout", "steps=300", "num_envs=2",
                f"replay_log={log}", "replay_log_capacity=2000", f"run_dir={tmp_path / 'r'}",
                "progress=false"]  # fmt: skip
    _one_error_line(_pvn_limited(2**20, *evaluate), "could not be written", str(log))
    done = subprocess.run([sys.executable, "-m", "pvn", *collect], capture_output=True)
    assert done.returncode == 0  # with space again, the same command completes


@pytest.mark.slow
def test_two_readers_convert_a_checkpoint_once(dopamine_copy, tmp_path):
    """Two processes open the same uncached log at once: each checkpoint is converted by one of
    them (the other waits on its lock), and both read the same data."""
    cache, marks = tmp_path / "cache", tmp_path / "conversions"
    marks.mkdir()
    code = textwrap.dedent(
        f"""
        import os, sys, zlib
        import numpy as np
        from pathlib import Path
        from pvn.replay import DQNReplayDataset
        def progress(desc, total):
            name = desc.split(" in ")[0]  # "storing checkpoint C in CACHE_DIR"
            Path({str(marks)!r}, name.replace(" ", "_") + f".{{os.getpid()}}").touch()
            return None
        ds = DQNReplayDataset({str(dopamine_copy)!r}, cache_dir={str(cache)!r}, progress=progress)
        frames = [np.asarray(ds.checkpoint(c).observation) for c in ds.checkpoints]
        print(sum(zlib.crc32(f.tobytes()) for f in frames))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1]
    converted = sorted(m.name.rsplit(".", 1)[0] for m in marks.iterdir())
    assert converted == [f"storing_checkpoint_{c}" for c in range(4)]  # once each


def test_a_cache_file_truncated_after_conversion_is_rebuilt(dopamine_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = DQNReplayDataset(dopamine_copy, cache_dir=cache)
    want = np.array(first.checkpoint(1).observation)
    del first
    (obs,) = cache.rglob("ckpt.1/frames.zst")
    obs.write_bytes(obs.read_bytes()[: obs.stat().st_size // 3])
    calls = []
    real = cache_mod._convert
    monkeypatch.setattr(cache_mod, "_convert", lambda *a: calls.append(1) or real(*a))
    ds = DQNReplayDataset(dopamine_copy, cache_dir=cache)
    assert len(calls) == 1  # only the damaged checkpoint
    np.testing.assert_array_equal(ds.checkpoint(1).observation, want)


RLU = Path(__file__).parent / "data" / "rlu" / "tfds"


@pytest.mark.parametrize(
    "args, named",
    [
        (["collect", "game=Pong", "steps=50", "out=/proc/pvn_out"], "/proc/pvn_out/replay_logs"),
        (["evaluate", "encoder=random", "steps=50", "run_dir=/proc/pvn_run"], "/proc/pvn_run"),
        (
            [
                "evaluate",
                "encoder=random",
                "steps=50",
                "run_dir={tmp}/e",
                "replay_log=/proc/pvn_log",
            ],
            "/proc/pvn_log",
        ),
        (
            [
                "pretrain",
                f"data.path={RLU}",
                "data.game=Asterix",
                "data.version=1.1.0",
                "steps=2",
                "data.cache_dir={tmp}/c",
                "tasks.num_tasks=10",
                "run_dir=/proc/pvn_run",
            ],
            "/proc/pvn_run",
        ),
    ],
    ids=["collect", "evaluate", "evaluate-replay-log", "pretrain"],
)
def test_an_unwritable_output_path_is_one_line_in_every_command(tmp_path, args, named):
    """An output directory that cannot be made (under /proc) is one line naming it, exit 2,
    from every command that writes one."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["progress=false"]
    proc = subprocess.run([sys.executable, "-m", "pvn", *argv], capture_output=True, text=True)
    _one_error_line(proc, named)
