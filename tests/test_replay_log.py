"""``pvn evaluate ... replay_log=DIR``: any online run logs its experience as a DQN Replay
dataset, and the log survives SIGKILL with the run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pvn.checkpoint import list_checkpoints
from pvn.cli import main
from pvn.replay import DQNReplayDataset, ReplayError
from pvn.replay.cache import read_checkpoint_meta
from pvn.replay.dataset import resolve_log_dir
from pvn.replay.dopamine_format import find_checkpoints
from pvn.replay.summary import chronological, summarize


def _complete_episode_returns(log) -> list[float]:
    """Clipped returns of the log's complete episodes: each checkpoint's new slots in the order
    they were written, concatenated into the stream of the whole run, summed between
    terminals (episodes longer than a checkpoint included)."""
    rewards, terminals = [], []
    for row in summarize(log)["checkpoints"]:
        ck = read_checkpoint_meta(resolve_log_dir(log), row["checkpoint"])
        order = chronological(ck)[len(chronological(ck)) - row["new_slots"] :]
        rewards.append(np.asarray(ck.reward)[order])
        terminals.append(np.asarray(ck.terminal)[order])
    r, t = np.concatenate(rewards), np.concatenate(terminals)
    ends = np.flatnonzero(t)
    sums = np.cumsum(r)[ends]
    return sorted(np.diff(np.concatenate([[0.0], sums])).tolist())


@pytest.mark.slow
def test_any_run_logs_every_transition(tmp_path, capsys):
    """Pong (rewards are already +-1, so clipped returns are the game's): 2 envs, a linear head
    on random features. Every agent step is logged once (plus 3 padding slots per episode), each
    env's episodes whole: the log's complete episodes have exactly the returns of the run's
    finished episodes."""
    run, log = tmp_path / "run", tmp_path / "log"
    args = ["evaluate", "encoder=random", "game=Pong", "num_envs=2", "steps=4000"]
    args += [f"run_dir={run}", f"replay_log={log}", "replay_log_capacity=1500", "progress=false"]
    assert main(args) == 0
    res = json.loads((run / "results.json").read_text())
    info = json.loads((log / "log.json").read_text())
    s = summarize(log)
    episodes = len(res["episodes"]) + info["unfinished_episodes_logged_as_truncated"]
    assert s["slots"] == res["steps"] + 3 * episodes
    assert info["slots"] == s["slots"] and len(s["checkpoints"]) >= 3
    assert sorted(e["return"] for e in res["episodes"]) == _complete_episode_returns(log)
    ds = DQNReplayDataset(log)
    for c in ds.checkpoints:
        r = np.asarray(ds.checkpoint(c).reward)
        assert r.min() >= -1 and r.max() <= 1
    assert len(ds) > 3000
    assert main(["data", "info", str(log)]) == 0
    assert "mean ret" in capsys.readouterr().out


def _run_until(args: list[str], done) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pvn", "evaluate", *args])
    try:
        while not done() and proc.poll() is None:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_killed_logging_run_resumes_its_log_exactly(tmp_path):
    """The issue's command (Dopamine's DQN on Breakout, log checkpoints of 250 slots), killed
    once right after its run checkpoint at step 1,500 and once much later (log checkpoints
    already written past it), then re-run: both finish with the same log, array for array, and
    the log's complete episodes are the run's finished episodes (none twice, none cut)."""
    logs = []
    for name, late in (("early", False), ("late", True)):
        run, log = tmp_path / f"run_{name}", tmp_path / f"log_{name}"
        args = [
            "encoder=e2e",
            "eval_preset=dopamine_dqn",
            "game=Breakout",
            "steps=3000",
            "checkpoint_every=1500",
            f"replay_log={log}",
            "replay_log_capacity=250",
            f"run_dir={run}",
            "progress=false",
        ]

        def logged(log=log) -> int:
            try:
                return len(find_checkpoints(log / "replay_logs"))
            except ReplayError:  # not created yet
                return 0

        need = 8 if late else 0  # 8 x 250 slots: well past step 1,500
        _run_until(args, lambda run=run, need=need: list_checkpoints(run) and logged() >= need)
        assert not (run / "results.json").exists(), "finished before it could be killed"
        assert len(list_checkpoints(run)) == 1
        if late:
            assert logged() >= 8  # checkpoints the resumed run must replace
        assert main(["evaluate", *args]) == 0
        res = json.loads((run / "results.json").read_text())
        assert res["resumed_at"] == [1500] and res["steps"] == 3000
        assert summarize(log)["episodes_ended"] == len(res["episodes"])
        logs.append(log)
    a, b = (resolve_log_dir(x) for x in logs)
    names = sorted(p.name for p in a.glob("*.gz"))
    assert names == sorted(p.name for p in b.glob("*.gz"))
    ds_a, ds_b = (
        DQNReplayDataset(a, cache_dir=tmp_path / "ca"),
        DQNReplayDataset(b, cache_dir=tmp_path / "cb"),
    )
    for c in ds_a.checkpoints:
        x, y = ds_a.checkpoint(c), ds_b.checkpoint(c)
        for k in ("observation", "action", "reward", "terminal"):
            np.testing.assert_array_equal(np.asarray(getattr(x, k)), np.asarray(getattr(y, k)))
        assert x.add_count == y.add_count


@pytest.mark.slow
def test_frame_replay_memory_grows_with_what_it_holds(tmp_path):
    """End-to-end DQN with the paper's 1M-frame replay (7 GB if allocated up front) for 6,000
    agent steps: peak resident memory of the process stays under 2 GB."""
    args = ["encoder=e2e", "game=Breakout", "steps=6000", "agent.min_replay=5000"]
    args += ["agent.capacity=1000000", f"run_dir={tmp_path / 'run'}", "progress=false"]
    # VmHWM, the peak RSS of this process image (ru_maxrss also counts the forked parent's)
    code = (
        "import sys; from pathlib import Path; from pvn.cli import main; rc = main(sys.argv[1:]); "
        "hwm = [x for x in Path('/proc/self/status').read_text().splitlines() if 'VmHWM' in x]; "
        "print('maxrss_kb', hwm[0].split()[1]); sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "evaluate", *args], check=True, capture_output=True, text=True
    ).stdout
    peak_kb = int(out.split("maxrss_kb")[-1])
    assert peak_kb < 2 * 1024**2, f"peak RSS {peak_kb / 1024**2:.2f} GB"


def test_replay_checkpoint_holds_only_the_filled_slots():
    """A run checkpoint of a frame replay holds what was stored, not the buffer's capacity
    (``torch.save`` of a slice writes its whole storage: 7 GB for a 1M-frame replay)."""
    import io

    import torch

    from pvn.replay.feature_replay import FeatureReplay

    replay = FeatureReplay(100_000, 2, (84, 84), 1, 0.99, dtype=torch.uint8, stack_size=4)
    for t in range(10):
        frames = torch.stack([torch.full((84, 84), t, dtype=torch.uint8)] * 2)
        frames[1] += 100
        n = 2 if t < 6 else 1  # env 1 stops after 6 steps
        replay.add([0, 1][:n], frames[:n], [1] * n, [0.0] * n, [False] * n, [False] * n)
    state = replay.state_dict()
    # the saved features are the buffer's own memory, not a copy (a copy doubled a 1M-step
    # run's peak memory at every checkpoint)
    assert state["features"][1].data_ptr() == replay.features[1].data_ptr()
    buf = io.BytesIO()
    torch.save(state, buf)
    assert len(buf.getvalue()) < 16 * 84 * 84 + 2_000_000  # not 100,000 frames (706 MB)
    buf.seek(0)
    back = FeatureReplay(100_000, 2, (84, 84), 1, 0.99, dtype=torch.uint8, stack_size=4)
    back.load_state_dict(torch.load(buf, weights_only=True))
    assert [len(f) for f in back.state_dict()["features"]] == [10, 6]
    assert back.features[0, :10, 0, 0].tolist() == list(range(10))
    assert back.features[1, :6, 0, 0].tolist() == list(range(100, 106))
    assert torch.equal(back.sample(8).features, replay.sample(8).features)
