"""``pvn collect`` and ``pvn data info`` end to end, on real ALE play."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pvn.cli import main
from pvn.envs import make_atari
from pvn.replay import DQNReplayDataset
from pvn.replay.summary import summarize
from tests.reference import load_raw


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect") / "run"
    args = [
        "collect",
        "game=Breakout",
        "steps=1500",
        "num_envs=2",
        "seed=4",
        "protocol=eval",
        "capacity=700",
        f"out={out}",
        "progress=false",
    ]
    assert main(args) == 0
    return out


def _episodes(out):
    """The terminated episodes of the log, from its slots in write order (padding checked).

    Episodes still running when collection stopped are flushed last, unterminated; they are
    left out here."""
    log = out / "replay_logs"
    ids = sorted(int(p.name.split(".")[1]) for p in log.glob("add_count_ckpt.*.gz"))
    raws = [load_raw(log, c) for c in ids]
    cap = len(raws[0]["action"])
    counts = [int(r["add_count"]) for r in raws]
    episodes, cur, pad = [], None, 0
    for a in range(counts[-1]):
        raw = raws[next(k for k, n in enumerate(counts) if n > a)]
        s = a % cap
        frame = raw["observation"][s]
        if cur is None:
            assert not frame.any() and raw["action"][s] == 0  # 3 zero padding slots
            pad += 1
            if pad == 3:
                cur, pad = ([], []), 0
            continue
        cur[0].append(frame)
        cur[1].append(int(raw["action"][s]))
        if raw["terminal"][s]:
            episodes.append(cur)
            cur = None
    return episodes


def _assert_replays(episodes):
    """Each episode's logged actions, replayed in a fresh deterministic env, give its frames."""
    for frames, actions in episodes:
        with make_atari("Breakout", 1, "eval") as env:
            replay = [env.reset()[0, 0]]
            for a in actions[:-1]:
                replay.append(env.step(np.array([a])).obs[0, 0])
        np.testing.assert_array_equal(np.stack(frames), np.stack(replay))


def test_collect_writes_a_loadable_log_with_config_and_summary(collected, tmp_path):
    summary = json.loads((collected / "collect.json").read_text())
    cfg = yaml.safe_load((collected / "config.yaml").read_text())
    assert cfg["game"] == "Breakout" and cfg["steps"] == 1500
    assert summary["steps"] >= 1500 and summary["episodes"] >= 3
    assert summary["return_min"] <= summary["return_mean"] <= summary["return_max"]
    ds = DQNReplayDataset(collected, cache_dir=tmp_path)
    assert ds.checkpoints == summary["checkpoints"] and len(ds) > 1000
    info = summarize(collected)
    assert info["slots"] == summary["steps"] + 3 * (
        summary["episodes"] + summary["unfinished_episodes_logged_as_truncated"]
    )
    assert info["episodes_ended"] == summary["episodes"]


def test_each_episode_is_contiguous_and_replays_exactly(collected):
    """Replaying an episode's logged actions in a fresh env (no sticky actions, deterministic)
    reproduces its logged frames: no frame of another env is interleaved."""
    episodes = _episodes(collected)
    assert len(episodes) >= 3
    _assert_replays(episodes)


def test_async_collection_keeps_episodes_contiguous(tmp_path):
    """envpool's asynchronous mode (results for 1 of 3 envs at a time, in completion order):
    every logged episode is still one env's uninterrupted play."""
    out = tmp_path / "run"
    args = [
        "collect",
        "game=Breakout",
        "steps=1200",
        "num_envs=3",
        "batch_size=1",
        "protocol=eval",
        f"out={out}",
        "progress=false",
    ]
    assert main(args) == 0
    episodes = _episodes(out)
    assert len(episodes) >= 2
    _assert_replays(episodes)


def test_data_info_prints_the_summary(collected, capsys):
    assert main(["data", "info", str(collected)]) == 0
    out = capsys.readouterr().out
    info = summarize(collected)
    assert f"slots logged: {info['slots']}" in out
    assert f"episodes ended: {info['episodes_ended']}" in out


@pytest.mark.parametrize(
    "override, msg",
    [
        ("nope=1", "unknown key 'nope'"),
        ("steps=many", "steps='many' is not a valid int"),
        ("steps=0", "steps=0: must be > 0"),
        ("game=Pongg", "did you mean Pong"),
        ("policy=greedy", "policy='greedy'"),
        ("backend=gym", "backend='gym'"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, override, msg):
    out = tmp_path / "run"
    assert main(["collect", f"out={out}", "steps=100", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not out.exists()


def test_existing_log_is_refused(collected, capsys):
    assert main(["collect", f"out={collected}", "steps=10", "progress=false"]) == 2
    assert "holds a finished collection" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killed_collection_continues_from_its_last_checkpoint(sig, tmp_path, capsys):
    """SIGKILL after a log checkpoint, then the same command: the collection completes; the
    checkpoints written before the kill are kept byte for byte, nothing is logged twice (every
    logged step once, plus 3 padding slots per episode), the log verifies, and two re-runs from
    the same killed state write the same log. SIGTERM instead: it stops after the batch in
    flight with a checkpoint of the log as it stands there (its step is the one the stop line
    names) and exits 75; the rest holds as after a kill."""
    import shutil
    import signal
    import time

    from pvn.checkpoint import checkpoint_step, list_checkpoints

    out = tmp_path / "killed"
    args = ["collect", "game=Breakout", "steps=4000", "num_envs=4", "capacity=400", f"out={out}"]
    args += ["progress=false", "seed=1"]
    proc = subprocess.Popen([sys.executable, "-m", "pvn", *args], stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        while proc.poll() is None and not list_checkpoints(out):
            time.sleep(0.02)
    finally:
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=120)
    assert not (out / "collect.json").exists(), "finished before it could be killed"
    if sig == "SIGTERM":
        (at,) = [checkpoint_step(p) for p in list_checkpoints(out)]
        assert proc.returncode == 75
        assert err.strip().splitlines()[-1] == (
            f"pvn: stopped by SIGTERM at step {at}; the same command resumes"
        )
    kept = {p.name: p.read_bytes() for p in (out / "replay_logs").glob("*ckpt.0.gz")}
    assert kept, "no complete checkpoint before the kill"
    assert main([*args, "seed=2"]) == 2  # another seed is another collection, not a resume
    assert f"{out}: holds a run with a different config (seed)" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for o in (out, copy):
        assert main([*args[:-3], f"out={o}", *args[-2:]]) == 0
    for name, data in kept.items():
        assert (out / "replay_logs" / name).read_bytes() == data
    summary = json.loads((out / "collect.json").read_text())
    info = summarize(out)
    episodes = summary["episodes"] + summary["unfinished_episodes_logged_as_truncated"]
    assert info["slots"] == summary["steps"] + 3 * episodes and summary["steps"] >= 4000
    assert main(["data", "verify", str(out)]) == 0
    import gzip

    for p in (out / "replay_logs").glob("*.gz"):  # contents (gzip headers carry a time)
        other = copy / "replay_logs" / p.name
        assert gzip.decompress(p.read_bytes()) == gzip.decompress(other.read_bytes()), p.name
    assert not (out / "checkpoints").exists()  # finished: no resume state left behind


def test_cfg_job_and_help(tmp_path, capsys):
    assert main(["collect", "out=x", "num_envs=2", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["num_envs"] == 2 and cfg["out"] == "x"
    assert main(["collect", "--help"]) == 0
    assert "agent steps to log" in capsys.readouterr().out
    # a data subcommand's help: its usage and its paragraph, not the others'
    assert main(["data", "convert", "SRC", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pvn data convert") and "SRC DST" in out and "--level L" in out
    assert "turn DQN Replay" in out and "export" not in out and "verify" not in out
    proc = subprocess.run([sys.executable, "-m", "pvn", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "collect" in proc.stdout


def test_version(capsys):
    from pvn import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pvn {__version__}"
