"""``pvn pretrain`` end to end: logs, checkpoints, determinism, exact resume after SIGKILL and
after a stop signal, every torso x tasks x optimizer, config errors, the non-finite guard,
load_encoder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

import pvn
from pvn.checkpoint import list_checkpoints, load_checkpoint
from pvn.cli import main
from pvn.config import load_config
from pvn.metrics import read_metrics
from pvn.pretraining import PretrainConfig, build
from pvn.replay import DQNReplayDataset, DQNReplayWriter, Prefetcher
from pvn.settings import section
from pvn.task_cache import attach_task_cache, build_task_cache, cache_wanted, task_rewards


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory, ale_episodes):
    """Real Breakout play over three 500-slot checkpoints."""
    path = tmp_path_factory.mktemp("data") / "replay_logs"
    with DQNReplayWriter(path, capacity=500) as w:
        for ep in ale_episodes:
            w.add_episode(*ep)
    return path


def _args(log_dir, run_dir, *extra):
    return [
        "pretrain",
        f"data.path={log_dir}",
        f"data.cache_dir={log_dir.parent / 'cache'}",
        f"run_dir={run_dir}",
        "torso.feature_dim=32",
        "tasks.num_tasks=10",
        "batch_size=8",
        "steps=30",
        "td.warmup_steps=5",
        "log_every=5",
        "checkpoint_every=10",
        "keep_checkpoints=2",
        "progress=false",
        *extra,
    ]


def _flat(state, prefix=""):
    """Every tensor and number in a nested checkpoint, by path."""
    out = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(_flat(v, f"{prefix}{k}/"))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(_flat(v, f"{prefix}{i}/"))
    else:
        out[prefix] = state
    return out


def _assert_same(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            assert torch.equal(fa[k], fb[k]), k
        else:
            assert fa[k] == fb[k], k


def test_run_writes_logs_checkpoints_and_config(log_dir, tmp_path):
    run = tmp_path / "run"
    assert main(_args(log_dir, run)) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["batch_size"] == 8 and cfg["torso"]["name"] == "nature"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert "td_loss" not in records[0]  # TD is off during the 5 warm-up updates
    for key in (
        "td_loss",
        "calibration_loss",
        "fire_mean",
        "fire_min",
        "fire_max",
        "srank",
        "dormant_fraction",
        "grad_norm",
        "updates_per_s",
        "samples_per_s",
    ):
        assert key in records[-1], key
    # srank is measured over the last batches' features, not one batch (8 states cap it at 8)
    assert 8 < records[-1]["srank"] <= 32
    assert 0 <= records[-1]["fire_min"] <= records[-1]["fire_mean"] <= records[-1]["fire_max"] <= 1
    assert any(f.name.startswith("events.out.tfevents") for f in (run / "tb").iterdir())
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_000000020.pt", "ckpt_000000030.pt"]


def test_same_seed_same_parameters(log_dir, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(_args(log_dir, tmp_path / name, "steps=12", f"seed={seed}")) == 0
    a, b, c = (load_checkpoint(list_checkpoints(tmp_path / n)[-1]) for n in "abc")
    _assert_same(a, b)
    assert not torch.equal(
        a["learner"]["online"]["head.weight"], c["learner"]["online"]["head.weight"]
    )


@pytest.mark.parametrize("task_cache", ["false", "true"])
@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact(log_dir, tmp_path, task_cache):
    """A run killed with SIGKILL after a checkpoint, then restarted, ends bit for bit where an
    uninterrupted run ends (parameters, optimizer and task state, sampler), with the task
    outputs computed per batch or stored per slot."""
    args = [
        "steps=40",
        "checkpoint_every=10",
        "keep_checkpoints=5",
        f"data.task_cache={task_cache}",
    ]
    assert main(_args(log_dir, tmp_path / "straight", *args)) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pvn", *_args(log_dir, run, *args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (run / "checkpoints" / "ckpt_000000020.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before the checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [p.name for p in list_checkpoints(run)]
    assert "ckpt_000000040.pt" not in done, "killed too late to test anything"
    assert main(_args(log_dir, run, *args)) == 0
    _assert_same(
        load_checkpoint(list_checkpoints(tmp_path / "straight")[-1]),
        load_checkpoint(list_checkpoints(run)[-1]),
    )
    # its metrics, read back, are the uninterrupted run's: the killed attempt's logs after the
    # checkpoint (logged again on resuming) are dropped
    losses = [[(r["step"], r.get("td_loss")) for r in read_metrics(d)]
              for d in (tmp_path / "straight", run)]  # fmt: skip
    assert losses[0] == losses[1] and [s for s, _ in losses[0]] == list(range(5, 41, 5))


def test_a_signal_stops_the_run_with_a_checkpoint_where_it_stands(
    log_dir, tmp_path, stop_after_first_log
):
    """SIGTERM (``kill``, a cluster's warning) during the updates: the run writes a checkpoint
    at the update it reached, far from any periodic one, and exits 75 with one line; the same
    command then ends bit for bit where an uninterrupted run ends."""
    args = ["steps=120", "checkpoint_every=1000", "keep_checkpoints=5"]
    assert main(_args(log_dir, tmp_path / "straight", *args)) == 0
    run = tmp_path / "stopped"
    rc, err = stop_after_first_log(_args(log_dir, run, *args), run)
    assert rc == 75, err
    (ckpt,) = list_checkpoints(run)
    at = load_checkpoint(ckpt)["step"]
    assert 5 <= at < 120, "stopped too late to test anything"
    assert err.strip().splitlines()[-1] == (
        f"pvn: stopped by SIGTERM at update {at}; the same command resumes"
    )
    assert main(_args(log_dir, run, *args)) == 0
    _assert_same(
        load_checkpoint(list_checkpoints(tmp_path / "straight")[-1]),
        load_checkpoint(list_checkpoints(run)[-1]),
    )


@pytest.mark.parametrize("family", ["indicator_rnd", "indicator_hash", "random_cumulants"])
def test_task_cache_holds_each_slots_frozen_outputs(log_dir, tmp_path, family):
    """The stored outputs are the task family's frozen outputs of each slot's stack, and the
    learner's rewards and calibration loss from them equal those computed from the frames."""
    run = tmp_path / "run"
    extra = ["steps=6", "data.task_cache=true", f"tasks={family}"]
    assert main(_args(log_dir, run, *extra)) == 0
    cfg = load_config("pretrain", _args(log_dir, run, *extra)[1:])
    ds = DQNReplayDataset(log_dir, cache_dir=log_dir.parent / "cache")
    learner = build(section(PretrainConfig, cfg), num_actions=4)
    gen = torch.Generator().manual_seed(0)
    for ckpt in ds.checkpoints:
        (path,) = (run / "task_outputs").glob(f"*/ckpt.{ckpt}.npy")
        stored = np.load(path, allow_pickle=False)
        slots = torch.randint(0, stored.shape[0], (40,), generator=gen).numpy()
        obs = torch.from_numpy(ds.gather(ckpt, slots).observation)
        ref = learner.tasks.frozen(obs)
        torch.testing.assert_close(torch.from_numpy(stored[slots]), ref, rtol=1e-5, atol=1e-6)
    attach_task_cache(
        learner, ds, cfg.data.task_cache, run, cfg.steps, cfg.batch_size, torch.device("cpu"), False
    )  # reads the stored files
    with Prefetcher(ds, 64) as pf:
        batch = next(pf)
        cached = learner.task_output(batch)
        direct = learner.tasks(batch.observation, batch.reward)
    if learner.tasks.indicator:  # thresholded: the same bits
        assert torch.equal(cached.rewards, direct.rewards)
    else:  # a conv over 64 stacks need not round like one over the cache's chunk
        torch.testing.assert_close(cached.rewards, direct.rewards, rtol=1e-5, atol=1e-6)
    if family == "indicator_rnd":
        torch.testing.assert_close(cached.calibration_loss, direct.calibration_loss)
    # the rewards the report's successor-measure probe reads along the log: the same, from the
    # run's stored files (none added)
    files = sorted((run / "task_outputs").rglob("*"))
    along = task_rewards(learner.tasks, ds, run)
    ckpt = ds.shards[-1]
    slots = torch.randint(0, ds.slots(ckpt), (40,), generator=gen).numpy()
    b = ds.gather(ckpt, slots)
    direct = learner.tasks(torch.from_numpy(b.observation), torch.from_numpy(b.reward)).rewards
    torch.testing.assert_close(torch.from_numpy(along(ckpt, slots, b.reward)), direct.float(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert sorted((run / "task_outputs").rglob("*")) == files
    # a run that stored none: computed from the frames, and nothing written
    fresh = task_rewards(learner.tasks, ds, tmp_path / "stored_none")(ckpt, slots, b.reward)
    torch.testing.assert_close(torch.from_numpy(fresh), direct.float(), rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "stored_none").exists()


def test_task_cache_removes_a_killed_runs_temporary_file(log_dir, tmp_path):
    """A run killed while computing a checkpoint's outputs (SIGKILL: no cleanup) leaves its
    temporary file; the next build, holding the checkpoint's lock, deletes it and stores the
    same outputs as a build in a clean directory."""
    cfg = load_config("pretrain", _args(log_dir, tmp_path / "run", "tasks.num_tasks=10")[1:])
    learner = build(section(PretrainConfig, cfg), num_actions=4)
    ds = DQNReplayDataset(log_dir, cache_dir=log_dir.parent / "cache")
    clean = build_task_cache(ds, learner.tasks, tmp_path / "clean", "cpu")
    killed = tmp_path / "killed"
    killed.mkdir()
    stale = killed / f"ckpt.{ds.shards[0]}.npy.tmp-4194304"
    stale.write_bytes(b"half a float32 table")
    again = build_task_cache(ds, learner.tasks, killed, "cpu")
    assert not stale.exists() and not list(killed.glob("*.tmp-*"))
    assert torch.equal(again.values, clean.values)


def test_task_cache_auto_rule():
    """auto stores the outputs only when the run draws at least as many samples as slots and
    the table fits (the paper's 50 checkpoints x 1M slots x 100 tasks = 20 GB does not)."""
    assert cache_wanted("auto", steps=100, batch_size=10, slots=1000)
    assert not cache_wanted("auto", steps=99, batch_size=10, slots=1000)
    assert not cache_wanted("auto", steps=10**9, batch_size=256, slots=50 * 10**6, num_tasks=100)
    assert cache_wanted(True, steps=1, batch_size=1, slots=10**9)
    assert not cache_wanted(False, steps=10**9, batch_size=256, slots=1)


TORSOS = ["nature", "impala", "impala_x8"]
TASKS = ["indicator_rnd", "indicator_hash", "random_cumulants", "reward"]
OPTIMIZERS = ["adam", "adamw", "sgd"]


@pytest.mark.parametrize("torso", TORSOS)
@pytest.mark.slow
def test_every_torso_task_family_and_optimizer_trains(log_dir, tmp_path, torso):
    """Each torso with every task family, each family with every optimizer, in a Latin square
    (torso i, family j: optimizer (i + j) mod 3): every family x optimizer pair trains on one
    torso, and every torso with every family and every optimizer (the parts are independent:
    the full cube cost 3x the time, most of it in IMPALA x8)."""
    ds = DQNReplayDataset(log_dir, cache_dir=log_dir.parent / "cache")
    with Prefetcher(ds, 2) as batches:
        for j, tasks in enumerate(TASKS):
            optimizer = OPTIMIZERS[(TORSOS.index(torso) + j) % len(OPTIMIZERS)]
            cfg = load_config(
                "pretrain",
                [
                    f"torso={torso}",
                    f"tasks={tasks}",
                    f"optimizer={optimizer}",
                    "data.path=x",
                    "run_dir=x",
                    "tasks.num_tasks=10" if tasks != "reward" else "tasks.num_tasks=1",
                    "td.warmup_steps=0",
                ],
            )
            learner = build(section(PretrainConfig, cfg), num_actions=4)
            before = learner.online.head.weight.detach().clone()
            for step in range(2):
                m = learner.update(next(batches), step)
                assert torch.isfinite(m["loss"]), (torso, tasks, optimizer)
            assert not torch.equal(before, learner.online.head.weight), (tasks, optimizer)
            q, feats = learner.online(torch.zeros(1, 4, 84, 84, dtype=torch.uint8))
            assert q.shape == (1, learner.tasks.num_tasks, 4)
            assert feats.shape == (1, cfg.torso.feature_dim)


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["nope=1"], "unknown key 'nope'"),
        (["torso=resnet"], "torso"),
        (["td.aggregate=min"], "td.aggregate='min'"),
        (["data.n_step=3"], "data.n_step=3: tasks=indicator_rnd"),
        (["local=nope"], "local"),
        (["steps=0"], "steps=0"),
        (["batch_size=two"], "batch_size='two' is not a valid int"),
        (["td.target_period=100"], "exactly one of td.target_tau and td.target_period"),
        (["td.target_tau=1.5"], "td.target_tau=1.5: must be in (0, 1]"),
        (["td.warmup_mode=later"], "td.warmup_mode='later': choose skip or zero_td"),
        (["tasks=random_cumulants", "td.center=true"], "td.center=true: the task family has no"),
        (["device=cuda"] if not torch.cuda.is_available() else ["device=tpu"], "device="),
        (["data.checkpoints=[7]"], "checkpoint(s) [7] not found"),
        (["data.sample_run=0"], "data.sample_run=0: must be >= 1"),
    ],
)
def test_config_errors_are_one_line_exit_2(log_dir, tmp_path, capsys, extra, msg):
    assert main(_args(log_dir, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not list_checkpoints(tmp_path / "run")


def test_resuming_with_another_config_is_refused(log_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(log_dir, run, "steps=10")) == 0
    assert main(_args(log_dir, run, "steps=20", "optimizer.lr=0.5")) == 2
    assert "different config (optimizer)" in capsys.readouterr().err
    assert main(_args(log_dir, run, "steps=20")) == 0  # more steps is a resume
    assert list_checkpoints(run)[-1].name == "ckpt_000000020.pt"
    moved = tmp_path / "moved"  # a run directory moved elsewhere resumes there
    run.rename(moved)
    assert main(_args(log_dir, moved, "steps=30")) == 0
    assert list_checkpoints(moved)[-1].name == "ckpt_000000030.pt"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(log_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        _args(
            log_dir,
            run,
            "optimizer=sgd",
            "optimizer.lr=1e12",
            "td.warmup_steps=0",
            "checkpoint_every=1",
            "log_every=1",
            "steps=50",
        )
    )
    assert code == 3  # diverged: not a user error (2)
    err = capsys.readouterr().err
    assert "non-finite" in err and "last good checkpoint kept" in err
    assert "non-finite loss at update" in json.loads((run / "diverged.json").read_text())["error"]
    kept = list_checkpoints(run)
    for path in kept:
        online = load_checkpoint(path)["learner"]["online"]
        assert all(torch.isfinite(v).all() for v in online.values()), path


def test_load_encoder_returns_the_frozen_torso(log_dir, tmp_path):
    run = tmp_path / "run"
    assert main(_args(log_dir, run, "steps=10")) == 0
    enc = pvn.load_encoder(run)
    assert enc.feature_dim == 32 and not any(p.requires_grad for p in enc.parameters())
    state = load_checkpoint(list_checkpoints(run)[-1])
    cfg = load_config(
        "pretrain", ["data.path=x", "run_dir=x", "torso.feature_dim=32", "tasks.num_tasks=10"]
    )
    learner = build(section(PretrainConfig, cfg), num_actions=state["meta"]["num_actions"])
    learner.load_state_dict(state["learner"])
    obs = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(enc(obs), learner.online.torso(obs), rtol=0, atol=0)
    same = pvn.load_encoder(list_checkpoints(run)[-1])
    torch.testing.assert_close(same(obs), enc(obs), rtol=0, atol=0)
    from pvn.errors import CheckpointError

    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a run dir"):
        pvn.load_encoder(tmp_path / "nothing")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: neither a pvn pretraining checkpoint"):
        pvn.load_encoder(tmp_path / "other.pt")
    # the torso alone (export_encoder) opens as the run does, and is a fraction of the checkpoint
    from pvn.encoder import export_encoder

    alone = export_encoder(run, tmp_path / "torso.pt", game="Pong")
    torch.testing.assert_close(pvn.load_encoder(alone)(obs), enc(obs), rtol=0, atol=0)
    assert alone.stat().st_size < list_checkpoints(run)[-1].stat().st_size / 2


@pytest.mark.parametrize("extra", [["bf16=true"], ["compile=true"]], ids=["bf16", "compile"])
def test_bf16_autocast_and_torch_compile_run(log_dir, tmp_path, extra):
    """The options meant for CUDA also run on CPU (bf16 autocast; torch.compile via inductor)."""
    run = tmp_path / "run"
    assert main(_args(log_dir, run, "steps=10", "td.warmup_steps=0", *extra)) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["td_loss"] == last["td_loss"] and last["td_loss"] < 10  # finite, sane


def test_paper_preset(capsys):
    assert main(["pretrain", "preset=paper", "data.path=x", "run_dir=y", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["torso"] == {"name": "impala", "width": 8, "feature_dim": 4096}
    assert cfg["tasks"]["num_tasks"] == 100 and cfg["tasks"]["target_proportion"] == 0.01
    assert cfg["batch_size"] == 256 and cfg["steps"] == 1_562_500
    assert abs(cfg["optimizer"]["lr"] - 6.25e-5 * 8**0.25) < 1e-12
    assert cfg["optimizer"]["eps"] == 1.5e-4 and cfg["td"]["target_tau"] == 0.01
    # the TD loss is masked while step <= 62,500 (offline.py), the main Adam stepping on zeros
    assert cfg["td"]["warmup_steps"] == 62_501 and cfg["td"]["warmup_mode"] == "zero_td"
    t = cfg["tasks"]
    assert (t["calibration_reduce"], t["calibration_optimizer"], t["final_relu"]) == (
        "mean",
        None,
        True,
    )
    assert cfg["td"]["max_grad_norm"] is None and cfg["td"]["loss"] == "l2"


def test_load_encoder_of_random_says_how_to_build_one():
    from pvn.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"for a random torso use pvn.networks.build_torso"):
        pvn.load_encoder("random")
