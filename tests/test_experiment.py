"""``pvn experiment``: every stage once, skipped when complete, resumed when killed."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import pvn
from pvn.checkpoint import list_checkpoints
from pvn.cli import main
from pvn.commands.report import load_results
from pvn.experiments.store import Store


def _config(tmp_path) -> str:
    cfg = {
        "name": "tiny",
        "out": str(tmp_path / "runs"),
        "results": str(tmp_path / "results"),
        "games": ["Breakout"],
        "seeds": [0, 1],
        "data": {"kind": "collect", "overrides": ["steps=1500", "num_envs=4", "capacity=1000"]},
        "pretrain": {
            "overrides": [
                "steps=40",
                "batch_size=8",
                "torso.feature_dim=32",
                "tasks.num_tasks=10",
                "td.warmup_steps=5",
                "checkpoint_every=20",
            ]
        },
        "arms": {
            "pvn": {
                "encoder": "pvn",
                "overrides": [
                    "steps=400",
                    "num_envs=2",
                    "agent.min_replay=100",
                    "eval_episodes=2",
                    "eval_max_steps=50",
                ],
            },
            "random": {
                "encoder": "random",
                "overrides": [
                    "steps=400",
                    "num_envs=2",
                    "agent.min_replay=100",
                    "torso.feature_dim=32",
                ],
            },
        },
        "probes": False,
        "torsos": True,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
def test_killed_experiment_resumes_without_redoing_finished_stages(tmp_path, capfd, monkeypatch):
    config = _config(tmp_path)
    assert main(["experiment", config, "--print-commands"]) == 0
    # each command, then a shell comment naming its stage and what it needs
    commands = [line.split("  # ")[0] for line in capfd.readouterr().out.splitlines()]
    assert len(commands) == 1 + 1 + 2 * 2 + 1  # data, pretrain, 2 arms x 2 seeds, report
    assert commands[0].startswith("pvn collect game=Breakout")
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "pvn", "experiment", config])
    try:  # kill it once the pretraining has finished and an evaluation has started
        while proc.poll() is None and not (runs / "eval").exists():
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (runs / "pretrain" / "Breakout" / "done.json").is_file()
    assert not (tmp_path / "results" / "runs.csv").exists()
    # the killed runner's stage is not "running" (its pid is dead); the finished stages' times
    # are kept, and the kinds not yet timed are named
    assert main(["experiment", config, "--status"]) == 0
    status = capfd.readouterr().out
    assert "  running " not in status and "(not counting eval/linear: no finished" in status
    times = json.loads((runs / "stage_times.json").read_text())
    assert set(times) == {"data/Breakout", "pretrain/Breakout"}
    data_mtime = (runs / "data" / "Breakout" / "collect.json").stat().st_mtime_ns
    pre_mtime = (runs / "pretrain" / "Breakout" / "done.json").stat().st_mtime_ns
    # two runners finish it together: each stage is started by exactly one of them
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pvn", "experiment", config],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    started = [
        line.split("] ")[1].split(" (")[0]
        for _, err in outs
        for line in err.splitlines()
        if line.startswith("pvn experiment: [")
    ]
    assert sorted(started) == sorted(
        ["eval/Breakout/pvn/seed0", "eval/Breakout/pvn/seed1", "eval/Breakout/random/seed0",
         "eval/Breakout/random/seed1", "report"]
    ), outs  # fmt: skip
    assert all("7 of 7 stages done" in out for out, _ in outs)
    # the finished stages were not run again
    assert (runs / "data" / "Breakout" / "collect.json").stat().st_mtime_ns == data_mtime
    assert (runs / "pretrain" / "Breakout" / "done.json").stat().st_mtime_ns == pre_mtime
    with open(tmp_path / "results" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["arm"], r["seed"]) for r in rows) == [
        ("pvn", "0"), ("pvn", "1"), ("random", "0"), ("random", "1")
    ]  # fmt: skip
    pvn_rows = [r for r in rows if r["arm"] == "pvn"]
    assert all(r["scored_by"] == "final evaluation (2 episodes)" for r in pvn_rows)
    for r in pvn_rows:  # the spread of the final evaluation's returns, recomputed by hand
        returns = json.loads(r["final_evaluation_returns"])
        mean = sum(returns) / len(returns)
        std = (sum((x - mean) ** 2 for x in returns) / len(returns)) ** 0.5
        assert float(r["final_evaluation_std"]) == pytest.approx(std)
        assert int(r["final_evaluation_distinct"]) == len(set(returns))
    assert (tmp_path / "results" / "report.md").is_file()
    # the PVN the pvn arms read, measured beside them against the random torso
    with open(tmp_path / "results" / "pretraining.csv") as f:
        (pre,) = list(csv.DictReader(f))
    assert (pre["game"], pre["arm"], pre["seed"]) == ("Breakout", "pretrain", "0")
    assert float(pre["feat_l1"]) != float(pre["feat_l1_init"])
    assert "| pretrain | 1 |" in (tmp_path / "results" / "pretraining.md").read_text()
    assert (tmp_path / "results" / "experiment.yaml").is_file()
    assert (tmp_path / "results" / "complete.json").is_file()
    stages_txt = (tmp_path / "results" / "stages.txt").read_text()
    times = json.loads((runs / "stage_times.json").read_text())
    assert "7 of 7 stages done" in stages_txt and len(times) == 6  # all but the report
    for name, seconds in times.items():  # each stage's time beside it (all under 1.5 h here)
        assert f"done    {name}  ({seconds / 60:.0f} min)\n" in stages_txt
    assert not list((runs / "runners").iterdir())
    assert (
        json.loads((runs / "eval" / "Breakout" / "pvn" / "seed1" / "stage.json").read_text())[
            "argv"
        ]
        == commands[4].split()[1:]
    )  # each stage notes the command that made it
    # the game's torso, exported: the pretraining's own, bit for bit, and the arm's command
    # torsos.md gives runs from it at a new seed (relative paths: from the experiment's cwd)
    torso = tmp_path / "results" / "torsos" / "Breakout.pt"
    obs = torch.randint(0, 256, (5, 4, 84, 84), generator=torch.Generator().manual_seed(1),
                        dtype=torch.uint8)  # fmt: skip
    exported = pvn.load_encoder(torso)
    torch.testing.assert_close(
        exported(obs), pvn.load_encoder(runs / "pretrain" / "Breakout")(obs), rtol=0, atol=0
    )
    assert not any(p.requires_grad for p in exported.parameters())
    weights = sum(p.numel() * p.element_size() for p in exported.state_dict().values())
    assert torso.stat().st_size < weights + 20_000  # the torso alone, not the whole checkpoint
    guide = (tmp_path / "results" / "torsos.md").read_text()
    (line,) = [
        ln for ln in guide.splitlines() if ln.startswith(f"    pvn evaluate encoder={torso}")
    ]
    argv = shlex.split(line)[1:]
    monkeypatch.chdir(tmp_path)
    assert "seed=100" in argv and main(argv) == 0
    assert load_results(tmp_path / "runs" / "Breakout-pvn-seed100")["evaluations"]
    # a second run finds everything done and does nothing
    assert main(["experiment", config]) == 0
    monkeypatch.chdir(tmp_path.parent)  # paths as the config gives them (absolute)
    _a_lost_out_is_restored_from_the_kept_records(Path(config), tmp_path, capfd)


def _started(err: str) -> list[str]:
    return sorted(ln.split("] ")[1].split(" (")[0] for ln in err.splitlines()
                  if ln.startswith("pvn experiment: ["))  # fmt: skip


def _a_lost_out_is_restored_from_the_kept_records(config: Path, tmp_path: Path, capfd) -> None:
    """``results/kept`` (pvn.experiments.kept): with ``out`` gone, the finished stages come back
    from their kept records and only what was not kept runs again; an evaluation from a
    restored torso equals the one from the pretraining's own checkpoint; a pretraining kept
    before a report measured it runs again on its log (made again, bit for bit)."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    kept = results / "kept"
    assert sorted(p.name for p in (kept / "pretrain" / "Breakout").iterdir()) == [
        "config.yaml", "done.json", "measures.json", "metrics.jsonl", "stage.json",
        "time.json", "torso.pt"]  # fmt: skip
    assert sorted(p.name for p in (kept / "data" / "Breakout").iterdir()) == [
        "collect.json", "config.yaml", "stage.json", "time.json"]  # not the log  # fmt: skip
    evals = [f"eval/Breakout/{arm}/seed{k}" for arm in ("pvn", "random") for k in (0, 1)]
    before = {name: load_results(runs / name) for name in evals}
    times = json.loads((runs / "stage_times.json").read_text())
    runs_csv = (results / "runs.csv").read_text()
    pre_csv = (results / "pretraining.csv").read_text()
    shutil.rmtree(kept / evals[0])  # a stage no runner of this experiment kept: the report does
    assert main(["experiment", str(config), "--report"]) == 0
    assert load_results(kept / evals[0]) == before[evals[0]]
    cfg = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**cfg, "probes": True}))  # probes read the log
    shutil.rmtree(runs)  # out is lost, and so are seed 1's kept records
    for name in evals[1::2]:
        shutil.rmtree(kept / name)
    capfd.readouterr()
    assert main(["experiment", str(config), "--status"]) == 0  # says so, and writes nothing
    status = capfd.readouterr().out
    assert "1 of 7 stages done and 4 kept (restored when a runner starts)" in status  # + report
    assert "  kept    pretrain/Breakout" in status and "  left    eval/Breakout/pvn/seed1" in status
    assert not runs.exists()
    assert main(["experiment", str(config)]) == 0
    err = capfd.readouterr().err
    assert _started(err) == sorted([*evals[1::2], "report"]), err
    assert "4 finished stage(s) restored" in err and "no probes of Breakout: its log is gone" in err
    assert not (runs / "data" / "Breakout" / "replay_logs").exists()
    assert (runs / "pretrain" / "Breakout" / "torso.pt").is_file()
    assert not list_checkpoints(runs / "pretrain" / "Breakout")
    for name in evals[1::2]:  # run again from the restored torso: the same runs
        after = load_results(runs / name)
        assert after["episodes"] == before[name]["episodes"], name
        assert after["evaluations"] == before[name]["evaluations"], name
    assert (results / "runs.csv").read_text() == runs_csv
    assert (results / "pretraining.csv").read_text() == pre_csv  # the kept measures
    restored = json.loads((runs / "stage_times.json").read_text())
    for name in ["data/Breakout", "pretrain/Breakout", *evals[::2]]:
        assert restored[name] == pytest.approx(times[name], abs=0.05)  # fmt: skip
    # a pretraining whose measures were not kept runs again, and with it the data stage
    shutil.rmtree(runs)
    (kept / "pretrain" / "Breakout" / "measures.json").unlink()
    assert main(["experiment", str(config)]) == 0
    err = capfd.readouterr().err
    assert _started(err) == ["data/Breakout", "pretrain/Breakout", "report"], err
    with open(results / "pretraining.csv") as f:  # measured again: the same, but its speed
        (again,) = [{k: v for k, v in r.items() if k != "updates_per_s"} for r in csv.DictReader(f)]
    (first,) = [{k: v for k, v in r.items() if k != "updates_per_s"}
                for r in csv.DictReader(pre_csv.splitlines())]  # fmt: skip
    assert again == first
    assert (results / "probes_Breakout" / "report.md").is_file()


def test_a_report_needs_a_finished_evaluation(tmp_path, capsys):
    """``--report`` reports the runs finished so far; with none, a one-line error."""
    assert main(["experiment", _config(tmp_path), "--report"]) == 2
    assert "no evaluation or pretraining arm has finished yet" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_bad_experiment_configs_are_refused(tmp_path, capsys):
    assert main(["experiment", str(tmp_path / "none.yaml")]) == 2
    assert "no such experiment config" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "out": "o", "results": "r", "games": ["Pong"],
                                   "seeds": [0], "data": {"kind": "agent"}, "pretrain": {},
                                   "arms": {"a": {"encoder": "nope"}}}))  # fmt: skip
    assert main(["experiment", str(bad)]) == 2
    assert "arms.a.encoder='nope'" in capsys.readouterr().err
    assert main(["experiment", _config(tmp_path), "torsos=maybe", "--status"]) == 2
    assert "tiny.yaml: torsos='maybe': true or false" in capsys.readouterr().err


def _knob_config(tmp_path, logs) -> str:
    """A knob study over logs that already exist (``data.kind: dataset``)."""
    cfg = yaml.safe_load(Path(_config(tmp_path)).read_text())
    cfg["data"] = {"kind": "dataset", "path": str(logs)}
    cfg["arms"]["pvn_tasks5"] = {**cfg["arms"]["pvn"], "pretrain": ["tasks.num_tasks=5"]}
    path = tmp_path / "knobs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_knob_arm_pretrains_its_own_pvn_on_given_logs(tmp_path):
    from pvn.experiments.plan import load, stages

    todo = {s.name: s for s in stages(load(_knob_config(tmp_path, tmp_path / "logs")))}
    assert not any(n.startswith("data/") for n in todo)  # the logs exist: no data stage
    base, knob = todo["pretrain/Breakout"], todo["pretrain/Breakout-pvn_tasks5"]
    assert base.after == [] and f"data.path={tmp_path / 'logs' / 'Breakout'}" in base.argv
    # the experiment's pretraining overrides, then the arm's (the later one wins in Hydra)
    assert knob.argv[: len(base.argv)] == [
        a.replace("Breakout", "Breakout-pvn_tasks5") if a.startswith("run_dir=") else a
        for a in base.argv
    ]
    assert knob.argv[len(base.argv) :] == ["tasks.num_tasks=5"]
    ev = todo["eval/Breakout/pvn_tasks5/seed1"]
    assert ev.after == [knob.name] and f"encoder={knob.run_dir}" in ev.argv
    assert todo["eval/Breakout/pvn/seed1"].after == [base.name]
    assert todo["eval/Breakout/random/seed1"].after == []
    names = list(todo)
    assert names.index(knob.name) < names.index(ev.name) and names[-1] == "report"


def test_control_arms_with_the_same_knob_share_one_pretraining(tmp_path):
    """Two arms that differ only in their head settings read one PVN pretrained with their
    shared knob (named by the first arm), not two identical runs; another knob gets its own."""
    from pvn.experiments.plan import load, stages

    cfg = yaml.safe_load(Path(_knob_config(tmp_path, tmp_path / "logs")).read_text())
    five = cfg["arms"]["pvn_tasks5"]
    cfg["arms"]["pvn_tasks5_lr"] = {**five, "overrides": [*five.get("overrides", []),
                                                           "agent.lr=1e-3"]}  # fmt: skip
    cfg["arms"]["pvn_tasks6"] = {**five, "pretrain": ["tasks.num_tasks=6"]}
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(cfg))
    todo = {s.name: s for s in stages(load(str(path)))}
    pretrainings = sorted(n for n in todo if n.startswith("pretrain/"))
    assert pretrainings == ["pretrain/Breakout", "pretrain/Breakout-pvn_tasks5",
                            "pretrain/Breakout-pvn_tasks6"]  # fmt: skip
    shared = todo["pretrain/Breakout-pvn_tasks5"]
    for arm in ("pvn_tasks5", "pvn_tasks5_lr"):
        ev = todo[f"eval/Breakout/{arm}/seed1"]
        assert ev.after == [shared.name] and f"encoder={shared.run_dir}" in ev.argv
    assert "agent.lr=1e-3" in todo["eval/Breakout/pvn_tasks5_lr/seed1"].argv
    assert todo["eval/Breakout/pvn_tasks6/seed1"].after == ["pretrain/Breakout-pvn_tasks6"]


def test_an_arm_may_run_its_own_seeds(tmp_path, capsys):
    from pvn.experiments.plan import load, stages

    cfg = yaml.safe_load(Path(_config(tmp_path)).read_text())
    cfg["arms"]["random"]["seeds"] = [1]
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    evals = [s.name for s in stages(load(path)) if s.kind == "eval"]
    assert evals == ["eval/Breakout/pvn/seed0", "eval/Breakout/pvn/seed1",
                     "eval/Breakout/random/seed1"]  # fmt: skip
    cfg["arms"]["random"]["seeds"] = 1
    path.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(path), "--status"]) == 2
    assert "arms.random.seeds=1: give a list of integers" in capsys.readouterr().err


def test_runners_sharing_out_split_the_stages(tmp_path):
    """Each runner claims the first stage that is not done, whose prerequisites are done and
    that no other runner holds (its lock); with nothing to start while another runner holds a
    stage, it waits rather than finishing or running that stage too."""
    from pvn.experiments.launchers import claim
    from pvn.experiments.plan import load, stages

    cfg = load(_knob_config(tmp_path, tmp_path / "logs"))
    todo, store = stages(cfg), Store(cfg["out"], cfg["name"])
    first, lock1, wait = claim(store, todo)  # runner 1
    assert first.name == "pretrain/Breakout" and not wait
    # runner 2: runner 1 holds pretrain/Breakout, so the pvn arm's evaluations must wait
    second, lock2, wait = claim(store, todo)
    assert wait and second.name == "pretrain/Breakout-pvn_tasks5"  # the knob's own pretraining
    third, lock3, _ = claim(store, todo)
    assert third.name == "eval/Breakout/random/seed0"  # needs no pretraining
    fourth, lock4, _ = claim(store, todo)
    assert fourth.name == "eval/Breakout/random/seed1"
    assert claim(store, todo) == (None, None, True)  # all else needs a held stage: wait
    lock1.close()  # runner 1 died: its stage is free again, not done
    again, lock5, _ = claim(store, todo)
    assert again.name == "pretrain/Breakout"
    for lock in (lock2, lock3, lock4, lock5):
        lock.close()
    (tmp_path / "runs" / "pretrain" / "Breakout").mkdir(parents=True)
    (tmp_path / "runs" / "pretrain" / "Breakout" / "done.json").write_text("{}")
    knob, lock6, _ = claim(store, todo)  # every pretraining comes before the evaluations
    assert knob.name == "pretrain/Breakout-pvn_tasks5"
    nxt, lock7, _ = claim(store, todo)  # done stages are skipped; the pvn arm is free to start
    assert nxt.name == "eval/Breakout/pvn/seed0"
    after, lock8, _ = claim(store, todo)  # seed by seed: seed 0 of every arm before seed 1
    assert after.name == "eval/Breakout/random/seed0"
    for lock in (lock6, lock7, lock8):
        lock.close()


@pytest.mark.slow
def test_a_stopped_runner_stops_its_stage_with_a_checkpoint_and_resumes_it(
    tmp_path, dopamine_fixture, stop_after_first_log, capfd
):
    """SIGTERM to a runner alone (``kill PID``): it passes the signal on to its stage, whose
    pretraining writes a checkpoint where it stands; the runner exits 75 without starting
    another stage and without marking the stage done, and the same command resumes the stage
    from that checkpoint."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "Breakout").symlink_to(dopamine_fixture / "replay_logs")
    cfg = yaml.safe_load(Path(_config(tmp_path)).read_text())
    cfg["data"] = {"kind": "dataset", "path": str(logs)}
    cfg["seeds"], cfg["torsos"] = [0], False
    cfg["pretrain"]["overrides"] += ["steps=400", "checkpoint_every=1000", "log_every=5"]
    del cfg["arms"]["random"]
    path = tmp_path / "stop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "runs" / "pretrain" / "Breakout"
    rc, err = stop_after_first_log(["experiment", str(path)], run)
    assert rc == 75, err
    (ckpt,) = list_checkpoints(run)
    at = torch.load(ckpt, weights_only=True)["step"]
    assert 5 <= at < 400, "stopped too late to test anything"
    lines = err.strip().splitlines()
    assert f"pvn: stopped by SIGTERM at update {at}; the same command resumes" in lines
    assert (
        lines[-1] == "pvn: stopped by SIGTERM in stage pretrain/Breakout; the same command resumes"
    )
    assert not (run / "done.json").exists() and not (tmp_path / "runs" / "eval").exists()
    store = Store(cfg["out"], cfg["name"])
    (before,) = store.times(parts=True).values()  # the stopped part's seconds, kept aside
    assert before > 0 and "pretrain/Breakout" not in store.times()
    capfd.readouterr()
    t0 = time.perf_counter()
    assert main(["experiment", str(path)]) == 0
    rerun = time.perf_counter() - t0
    assert f"pvn: resuming pretraining from {ckpt}" in capfd.readouterr().err
    assert (run / "done.json").is_file() and (tmp_path / "results" / "runs.csv").is_file()
    # timed whole: the stopped part plus the resumed one (which the rerun's wall time bounds)
    assert before < store.times()["pretrain/Breakout"] <= before + rerun + 0.1  # (rounded)
    assert store.times(parts=True) == {}


def test_a_waiting_runner_stops_at_once_on_a_signal(tmp_path):
    """A runner waiting for another runner's stage has nothing to checkpoint: SIGTERM ends it
    with exit 75 and one line, and it leaves no mark of a live runner."""
    from pvn.experiments.plan import load, stages
    from pvn.experiments.store import Store

    config = _knob_config(tmp_path, tmp_path / "logs")
    cfg = load(config)
    todo, store = stages(cfg), Store(cfg["out"], cfg["name"])
    locks = [store.try_lock(s) for s in todo if s.kind != "report"]  # "another runner"
    notes = store.out / "runners"  # a live runner's note of what it does
    proc = subprocess.Popen([sys.executable, "-m", "pvn", "experiment", config],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 60
        while not any(notes.glob("*.json")) and proc.poll() is None:  # it notes its wait
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        for lock in locks:
            lock.close()
    assert proc.returncode == 75, err
    assert err.strip().splitlines()[-1] == (
        "pvn: stopped by SIGTERM between stages; the same command resumes"
    )
    assert not any(notes.glob("*.json"))


def test_status_shows_a_running_stages_progress_and_counts_it_in_the_eta(tmp_path):
    """A running stage shows its steps and rate (its last ``metrics.jsonl`` line, its
    config's ``steps``); the ETA counts what that rate leaves, and times the stage's kind by it
    while no stage of that kind has finished (by hand: 3,000 s + 3 x 4,000 s)."""
    from pvn.experiments.plan import load, stages
    from pvn.experiments.store import Store
    from pvn.experiments.summary import status_table

    cfg = load(_config(tmp_path))
    todo, store = stages(cfg), Store(cfg["out"], cfg["name"])
    data, pre, run = todo[0], todo[1], todo[2]
    assert (data.name, pre.name, run.name) == (
        "data/Breakout", "pretrain/Breakout", "eval/Breakout/pvn/seed0"
    )  # fmt: skip
    for done in (data, pre):
        done.run_dir.mkdir(parents=True)
        (done.run_dir / done.done_file).write_text("{}")
    store.record_time(data.name, 100.0)
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.yaml").write_text("steps: 40000\nseed: 0\n")
    lines = [{"step": 9000, "steps_per_s": 7.0}, {"step": 10000, "steps_per_s": 10.0}]
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    store.note_runner({"stage": run.name, "started": time.time()})
    try:
        table = status_table(todo, store).splitlines()
    finally:
        store.forget_runner()
    assert table[0] == "2 of 7 stages done; ETA 4.2 h"  # 15,000 s
    assert (
        table[3] == "  running eval/Breakout/pvn/seed0  (10,000 of 40,000 steps, 10/s: 50 min left)"
    )
    assert table[4] == "  left    eval/Breakout/random/seed0"


def test_status_shows_where_a_stopped_stage_resumes_and_counts_only_what_is_left(tmp_path):
    """A stage stopped before its end (killed or asked to stop) with a checkpoint: status
    shows the step it resumes from and what its last logged rate leaves; the ETA counts that
    rest, not a whole stage, and times the stage's kind by that rate (by hand: 10,000 steps at
    5/s = 2,000 s, + 3 x 40,000 / 5 s = 26,000 s)."""
    from pvn.experiments.plan import load, stages
    from pvn.experiments.store import Store
    from pvn.experiments.summary import status_table

    cfg = load(_config(tmp_path))
    todo, store = stages(cfg), Store(cfg["out"], cfg["name"])
    data, pre, run = todo[0], todo[1], todo[2]
    for done in (data, pre):
        done.run_dir.mkdir(parents=True)
        (done.run_dir / done.done_file).write_text("{}")
    (run.run_dir / "checkpoints").mkdir(parents=True)
    (run.run_dir / "checkpoints" / "ckpt_000030000.pt").write_bytes(b"")
    (run.run_dir / "config.yaml").write_text("steps: 40000\nseed: 0\n")
    (run.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 30500, "steps_per_s": 5.0}))
    table = status_table(todo, store).splitlines()
    assert table[0] == "2 of 7 stages done; ETA 7.2 h"  # 26,000 s
    assert table[3] == ("  left    eval/Breakout/pvn/seed0  (resumes from step 30,000 of "
                        "40,000; 5/s when it stopped: 33 min left)")  # fmt: skip
    assert table[4] == "  left    eval/Breakout/random/seed0"


def test_bad_knob_and_dataset_configs_are_refused(tmp_path, capsys):
    cfg = yaml.safe_load(Path(_config(tmp_path)).read_text())
    cfg["data"] = {"kind": "dataset"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(bad)]) == 2
    assert "data.kind=dataset needs data.path" in capsys.readouterr().err
    cfg = yaml.safe_load(Path(_config(tmp_path)).read_text())
    cfg["arms"]["random"]["pretrain"] = ["tasks.num_tasks=5"]
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "arms.random.pretrain: only an arm with encoder: pvn pretrains" in err


def test_a_report_is_redone_when_the_config_gains_evaluations(tmp_path):
    """``complete.json`` names the runs the report covers and hashes their commands: a finished
    experiment that gains a seed or an arm, or whose runs change settings, has its report stage
    to run again once those are done."""
    from pvn.experiments.plan import load, stages

    path = Path(_config(tmp_path))
    report = stages(load(path))[-1]
    report.run_dir.mkdir(parents=True)
    done = {"stages": report.after, "digest": report.digest}
    (report.run_dir / "complete.json").write_text(json.dumps(done))
    assert stages(load(path))[-1].done
    # the same runs made by other commands (an arm's settings changed): reported again
    cfg = yaml.safe_load(path.read_text())
    cfg["arms"]["random"]["overrides"].append("agent.lr=0.01")
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    assert stages(load(changed))[-1].after == report.after and not stages(load(changed))[-1].done
    # a report written before digests is judged by the names it covers
    (report.run_dir / "complete.json").write_text(json.dumps({"evaluations": report.after}))
    assert stages(load(path))[-1].done
    cfg = yaml.safe_load(path.read_text())
    cfg["seeds"] = [0, 1, 2]
    path.write_text(yaml.safe_dump(cfg))
    assert not stages(load(path))[-1].done
    (report.run_dir / "complete.json").write_text(json.dumps({"evaluations": 4}))  # older file
    assert not stages(load(path))[-1].done


def test_an_out_made_by_other_commands_is_refused(tmp_path, capsys):
    """A finished stage is skipped by its run dir; an experiment sharing ``out`` whose stage of
    the same name has other settings must not take that run for its own."""
    from pvn.experiments.plan import load, stages
    from pvn.experiments.store import Store

    config = _config(tmp_path)
    data = stages(load(config))[0]
    Store.record_command(data)  # what a runner notes before running the stage
    assert main(["experiment", config, "--status"]) == 0  # the same commands: fine
    capsys.readouterr()
    cfg = yaml.safe_load(Path(config).read_text())
    cfg["data"]["overrides"] = ["steps=3000", "num_envs=4", "capacity=1000"]
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(cfg))
    for mode in ([], ["--status"], ["--report"]):
        assert main(["experiment", str(other), *mode]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{data.run_dir}: stage data/Breakout was made by" in err[0]
        assert "steps=1500" in err[0] and "steps=3000" in err[0]
    assert main(["experiment", str(other), "--print-commands"]) == 0  # printing runs nothing
    (data.run_dir / "stage.json").write_text("{")
    assert main(["experiment", config, "--status"]) == 2
    assert "stage.json: unreadable stage record" in capsys.readouterr().err


@pytest.mark.slow
def test_pretraining_arms_are_pretrained_per_seed_and_measured_on_held_out_data(
    tmp_path, capsys, monkeypatch
):
    """``control: false`` arms: one pretraining per seed (the experiment's overrides, then the
    arm's), no control run, no unused game PVN; the report measures each run on the held-out
    log checkpoint: its TD loss there equals the PVN TD loss computed by hand from the run's
    networks (Eq. 4: 1/2 squared error to r - p + gamma (1 - done) mean_a Q_target(s', a))."""
    import torch

    from pvn.analysis.heldout import heldout_batch, trained_learner
    from pvn.replay import DQNReplayDataset

    cfg = yaml.safe_load(Path(_config(tmp_path)).read_text())
    cfg["data"]["overrides"] = ["steps=1500", "num_envs=4", "capacity=600"]
    cfg["pretrain"]["overrides"] += ["data.checkpoints=[0]", "keep_checkpoints=2"]
    cfg["arms"] = {
        "base": {"encoder": "pvn", "control": False},
        "wide": {"encoder": "pvn", "control": False, "pretrain": ["torso.feature_dim=64"],
                 "seeds": [1]},
        "smoe": {"encoder": "pvn", "control": False, "pretrain": ["moe=smoe"], "seeds": [0]},
    }  # fmt: skip
    cfg["measure"] = {"heldout": [1], "transitions": 100, "probe_states": 300, "noise": [16]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(path), "--print-commands"]) == 0
    names = [line.split("  # ")[1].split(",")[0] for line in capsys.readouterr().out.splitlines()]
    runs = [f"pretrain/Breakout-{a}"
            for a in ("base/seed0", "base/seed1", "smoe/seed0", "wide/seed1")]  # fmt: skip
    assert names == ["data/Breakout", *runs, "report"]
    assert main(["experiment", str(path)]) == 0
    results = tmp_path / "results"
    with open(results / "pretraining.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"]) for r in rows] == [("base", "0"), ("base", "1"), ("smoe", "0"),
                                                     ("wide", "1")]  # fmt: skip
    md = (results / "pretraining.md").read_text()
    assert "| base | 2 |" in md and "| wide | 1 |" in md
    assert (results / "pretraining_td_Breakout.png").stat().st_size > 0
    assert json.loads((results / "complete.json").read_text())["stages"] == runs
    # the held-out TD loss, by hand
    run = tmp_path / "runs" / "pretrain" / "Breakout-base" / "seed1"
    _, learner, _ = trained_learner(run)
    batch = heldout_batch(DQNReplayDataset(tmp_path / "runs" / "data" / "Breakout",
                                           checkpoints=[1]), 1, 100)  # fmt: skip
    with torch.no_grad():
        obs, action, reward, next_obs, terminal = batch[:5]
        r = learner.tasks(obs, reward).rewards.float() - learner._center
        q_next = learner.target(next_obs)[0].mean(2)  # the uniform policy's successor measure
        y = r + learner.discount * (~terminal).float()[:, None] * q_next
        rows_ = torch.arange(len(obs))

        def per_transition(x):
            return 0.5 * (y - learner.online(x)[0][rows_, :, action]).pow(2).mean(1).double()

        def loss(x):
            return float(per_transition(x).mean())

        by_hand = loss(obs)
        clean = per_transition(obs).numpy()
        # robustness: N(0, 16^2) pixel noise in s alone, rounded and clipped; clean targets
        g = torch.Generator().manual_seed(7 + 16_000)
        corrupted = (obs.float() + 16 * torch.randn(obs.shape, generator=g)).round().clamp(0, 255)
        noisy_by_hand = loss(corrupted.to(torch.uint8))
        noisy_rows = per_transition(corrupted.to(torch.uint8)).numpy()
    measured = json.loads((run / "measures.json").read_text())
    # 95% percentile bootstrap over the transitions (the pairs resampled together): SciPy's,
    # with its own draws, agrees to the resampling noise (a tenth or so of the width)
    from scipy import stats

    def ratio(a, b, axis=-1):
        return a.mean(axis) / b.mean(axis)

    pairs = {"td_ci": ((clean,), np.mean), "noise_ci/16": ((noisy_rows, clean), ratio)}
    for key, (data, stat) in pairs.items():
        ci = stats.bootstrap(data, stat, n_resamples=4000, paired=True, method="percentile",
                             random_state=1).confidence_interval  # fmt: skip
        want, got = np.array([ci.low, ci.high]), np.array(measured["heldout"][key])
        assert np.all(np.abs(got - want) <= 0.15 * (want[1] - want[0])), (key, got, want)
    lo, hi = measured["heldout"]["noise_ci/16"]
    assert lo < measured["heldout"]["noise/16"] < hi
    # scales at init (rebuilt from the seed) and trained; parameters; routing for top-k MoE
    base0 = json.loads((run.parent / "seed0" / "measures.json").read_text())
    assert base0["scales"]["init/feat_norm"] != measured["scales"]["init/feat_norm"]
    assert measured["scales"]["init/feat_norm"] != measured["scales"]["trained/feat_norm"]
    assert measured["probes_init"]["srank"] != measured["probes"]["srank"]
    # the successor-measure probe, with the run's tasks computed from the frames (the report
    # reads the outputs the run stored)
    from pvn.analysis.probes import linear_probes

    def from_frames(shard, slots, logged):
        b = held.gather(shard, slots)
        out = learner.tasks(torch.from_numpy(b.observation), torch.from_numpy(logged))
        return out.rewards.float().numpy()

    held = DQNReplayDataset(tmp_path / "runs" / "data" / "Breakout", checkpoints=[1])
    want = linear_probes(learner.online.torso, held, max_states=300, task_rewards=from_frames)
    assert measured["probes"]["successor_r2"] == pytest.approx(want["successor_r2"], rel=1e-6)
    assert measured["probes"]["successor_tasks"] == want["successor_tasks"] > 0
    assert measured["probes_init"]["successor_r2"] != want["successor_r2"]
    # the probe curve: the initial torso, then each kept checkpoint's (the first by hand)
    import pvn

    curve = measured["probe_curve"]
    assert curve["step"] == [0, 20, 40]
    assert curve["successor_r2"][0] == measured["probes_init"]["successor_r2"]
    assert curve["return_r2"][-1] == measured["probes"]["return_r2"]
    first = linear_probes(pvn.load_encoder(run / "checkpoints" / "ckpt_000000020.pt"), held,
                          max_states=300, task_rewards=from_frames)  # fmt: skip
    assert curve["successor_r2"][1] == pytest.approx(first["successor_r2"], rel=1e-6)
    assert curve["return_r2"][1] == pytest.approx(first["return_r2"], rel=1e-9)
    assert curve["return_r2"][1] != curve["return_r2"][2]
    assert "return-to-go / of the tasks' successor" in md and "| arm | 0 | 20 | 40 |" in md
    assert (results / "pretraining_probes_Breakout.png").stat().st_size > 0
    assert measured["routing"] is None and measured["aux_params"] == 0
    assert measured["active_params"] == measured["params"]
    smoe = json.loads((run.parents[1] / "Breakout-smoe" / "seed0" / "measures.json").read_text())
    assert smoe["active_params"] < smoe["params"]
    route = smoe["routing"]
    assert route["eval/td"] == pytest.approx(smoe["heldout"]["td"], rel=1e-5)
    assert route["eval/dropped_frac"] == 0 and 0 <= route["train/dropped_frac"] < 1
    # the main, scales, floor, routing, noise and probe-curve tables; base runs no routing
    assert md.count("| smoe | ") == 6 and md.count("| base | ") == 5 and "router entropy" in md
    assert measured["heldout"]["td"] == pytest.approx(by_hand, rel=1e-5)
    assert measured["heldout"]["noise/16"] == pytest.approx(noisy_by_hand / by_hand, rel=1e-5)
    assert measured["heldout"]["noise/16"] != 1.0 and "| ratio σ=16 |" in md
    assert float(rows[1]["td_heldout"]) == pytest.approx(by_hand, rel=1e-5)
    # a run with other seeds or options is another run: the seeds' losses differ
    assert rows[0]["td_heldout"] != rows[1]["td_heldout"]
    # the report is written again when what it measures changes
    from pvn.experiments import plan

    assert plan.stages(plan.load(path))[-1].done
    monkeypatch.setattr(plan, "MEASURES_VERSION", plan.MEASURES_VERSION + 1)
    assert not plan.stages(plan.load(path))[-1].done


def test_every_shipped_experiment_config_plans():
    """Each config under configs/experiment/ passes the checks and makes a stage graph."""
    from pvn.experiments.plan import load, stages

    configs = sorted((Path(__file__).parents[1] / "configs" / "experiment").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        todo = stages(load(path))
        assert todo[-1].kind == "report" and len(todo) > 2, path


def _team_config(tmp_path) -> Path:
    """Two games' logs; a joint team over both (FedAvg-M, one worker per game) and, on one
    game, three IID workers under DSGD with and without a sign-flipping Byzantine worker."""
    cfg = yaml.safe_load(Path(_config(tmp_path)).read_text())
    cfg["games"] = ["Pong", "Breakout"]
    cfg["seeds"] = [0]
    cfg["data"]["overrides"] = ["steps=1500", "num_envs=4", "capacity=600"]
    cfg["pretrain"]["overrides"] += ["data.checkpoints=[0]", "log_every=10"]
    robust = ["distributed=dsgd", "distributed.workers=3", "distributed.f=1"]
    cfg["arms"] = {
        "fed": {"encoder": "pvn", "control": False, "joint": True,
                "pretrain": ["distributed=fedavg_m", "distributed.local_steps=4",
                             "optimizer.lr=0.1"]},
        "clean": {"encoder": "pvn", "control": False, "games": ["Breakout"],
                  "pretrain": robust},
        "attacked": {"encoder": "pvn", "control": False, "games": ["Breakout"],
                     "baseline": "clean",
                     "pretrain": [*robust, "distributed.byzantine=[2]"]},
        "blowup": {"encoder": "pvn", "control": False, "games": ["Breakout"],
                   "pretrain": ["optimizer=sgd", "optimizer.lr=1e30"]},
    }  # fmt: skip
    cfg["measure"] = {"heldout": [1], "transitions": 64, "probe_states": 300}
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_team_arms_run_jointly_or_on_their_games_and_are_measured_per_game(tmp_path, capsys):
    """A ``joint`` arm is one team over every game's log (worker i on game i, its own head);
    an arm with ``games`` runs on those alone; the report measures the joint run once per game
    as that game's worker, and an arm with a ``baseline`` by its deflection from it, which is
    checked here by hand: |m - m0| / |m0 - x0| for the honest workers' mean models. A run
    that diverges is the arm's outcome: listed in the report, the experiment goes on."""
    import torch

    from pvn.analysis.heldout import heldout_batch, trained_learner
    from pvn.checkpoint import load_checkpoint, resolve_checkpoint
    from pvn.experiments.plan import load, stages
    from pvn.pretraining import PretrainConfig, build
    from pvn.replay import DQNReplayDataset
    from pvn.settings import section

    path = _team_config(tmp_path)
    todo = {s.name: s for s in stages(load(path))}
    runs = tmp_path / "runs"
    joint = todo["pretrain/Pong+Breakout-fed/seed0"]
    assert joint.after == ["data/Pong", "data/Breakout"]
    paths = f"data.path=[{runs / 'data' / 'Pong'},{runs / 'data' / 'Breakout'}]"
    assert paths in joint.argv and "distributed.partition=games" in joint.argv
    assert list(todo)[-2:] == [joint.name, "report"]  # after every game's log
    assert {"pretrain/Breakout-clean/seed0", "pretrain/Breakout-attacked/seed0"} < set(todo)
    assert not any(n.startswith("pretrain/Pong-") for n in todo)
    assert main(["experiment", str(path)]) == 0
    results = tmp_path / "results"
    with open(results / "pretraining.csv") as f:
        rows = {(r["game"], r["arm"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("Pong", "fed"), ("Breakout", "fed"), ("Breakout", "clean"),
                         ("Breakout", "attacked")}  # fmt: skip
    # the joint run, measured on Breakout as worker 1: Breakout's 4 actions, its own loss
    _, learner, actions = trained_learner(joint.run_dir, worker=1)
    assert actions == 4 and trained_learner(joint.run_dir, worker=0)[2] == 6
    batch = heldout_batch(DQNReplayDataset(runs / "data" / "Breakout", checkpoints=[1]), 1, 64)
    with torch.no_grad():
        obs, action, reward, next_obs, terminal = batch[:5]
        r = learner.tasks(obs, reward).rewards.float() - learner._center
        y = r + learner.discount * (~terminal).float()[:, None] * learner.target(next_obs)[0].mean(
            2
        )
        q = learner.online(obs)[0][torch.arange(len(obs)), :, action]
        by_hand = float(0.5 * (y - q).pow(2).mean())
    assert float(rows[("Breakout", "fed")]["td_heldout"]) == pytest.approx(by_hand, rel=1e-5)

    def torso_grad(worker, game):  # worker's TD-loss gradient on its game's first 256 held out
        learner = trained_learner(joint.run_dir, worker=worker)[1]
        ds = DQNReplayDataset(runs / "data" / game, checkpoints=[1])
        obs, action, reward, next_obs, terminal = heldout_batch(ds, 1, 64)[:5]
        with torch.no_grad():
            r = learner.tasks(obs, reward).rewards.float() - learner._center
            q_next = learner.target(next_obs)[0].mean(2)
            y = r + learner.discount * (~terminal).float()[:, None] * q_next
        q = learner.online(obs)[0][torch.arange(len(obs)), :, action]
        (0.5 * (y - q).pow(2).mean()).backward()
        return torch.cat([p.grad.reshape(-1) for p in learner.online.torso.parameters()])

    cos = torch.nn.functional.cosine_similarity(torso_grad(0, "Pong"), torso_grad(1, "Breakout"),
                                                dim=0)  # fmt: skip
    for game in ("Pong", "Breakout"):
        assert float(rows[(game, "fed")]["grad_cos"]) == pytest.approx(float(cos), abs=1e-5)
    assert rows[("Breakout", "fed")]["rule"] == "fedavg_m"
    assert rows[("Breakout", "clean")]["workers"] == "3"

    def honest(run, byzantine=()):  # the honest workers' mean online network, by hand
        ws = load_checkpoint(resolve_checkpoint(run))["workers"]
        flat = [torch.cat([v.double().reshape(-1) for v in w["learner"]["online"].values()])
                for w in ws if w["id"] not in byzantine]  # fmt: skip
        return sum(flat) / len(flat)

    clean = todo["pretrain/Breakout-clean/seed0"].run_dir
    m = honest(todo["pretrain/Breakout-attacked/seed0"].run_dir, byzantine=(2,))
    m0 = honest(clean, byzantine=(2,))  # the same workers in the attack-free run
    from omegaconf import OmegaConf

    net = build(section(PretrainConfig, OmegaConf.load(clean / "config.yaml")), 4).online
    x0 = torch.cat([v.double().reshape(-1) for v in net.state_dict().values()])
    want = float((m - m0).norm() / (m0 - x0).norm())
    assert want > 0
    assert float(rows[("Breakout", "attacked")]["deflection"]) == pytest.approx(want, rel=1e-6)
    assert rows[("Breakout", "clean")]["deflection"] == ""
    md = (results / "pretraining.md").read_text()
    assert "Multi-worker runs" in md and "| attacked | dsgd | 3 |" in md
    assert "not measured): blowup seed 0 (non-finite loss at update " in md
    every = json.loads((results / "pretraining.json").read_text())
    td = {arm: float(rows[("Breakout", arm)]["td_train"]) for arm in ("clean", "attacked")}
    got = every["pretrain/Breakout-attacked/seed0"]["td_vs_baseline"]
    assert got == pytest.approx(td["attacked"] / td["clean"], rel=1e-6)
    # the report again, over the measures kept in the runs (a joint run's per game)
    assert main(["experiment", str(path), "--report"]) == 0
    assert (results / "pretraining.md").read_text() == md
    capsys.readouterr()
    assert main(["experiment", str(path), "--status"]) == 0
    assert "  diverged pretrain/Breakout-blowup/seed0" in capsys.readouterr().out
    # retrying the divergence (its marker removed) runs it again and re-makes the report
    blowup = todo["pretrain/Breakout-blowup/seed0"].run_dir
    (blowup / "diverged.json").unlink()
    (results / "pretraining.md").unlink()
    assert main(["experiment", str(path)]) == 0
    assert (blowup / "diverged.json").is_file() and (results / "complete.json").is_file()
    assert (results / "pretraining.md").read_text() == md
    assert ("Breakout", "blowup") not in rows and (results / "complete.json").is_file()
    assert todo["pretrain/Breakout-blowup/seed0"].done
    assert (results / "pretraining_deflection_Breakout.png").stat().st_size > 0


def test_bad_team_arm_configs_are_refused(tmp_path, capsys):
    path = _team_config(tmp_path)
    for arm, key, value, words in [
        ("fed", "games", ["Qbert"], "arms.fed.games=['Qbert']: give a list of the"),
        ("fed", "pretrain", ["optimizer.lr=0.1"], "arms.fed.joint=true: one run over several"),
        ("attacked", "baseline", "fed", "arms.attacked.baseline='fed': the baseline runs on"),
        ("attacked", "baseline", "attacked", "arms.attacked.baseline='attacked': name another"),
        ("fed", "baseline", "clean", "arms.fed.joint=true: a joint run needs two or more games"),
        ("fed", "games", ["Pong"], "arms.fed.joint=true: a joint run needs two or more games"),
        ("attacked", "seeds", [0, 1], "arms.attacked.baseline='clean': the baseline lacks"),
    ]:
        cfg = yaml.safe_load(path.read_text())
        cfg["arms"][arm][key] = value
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(cfg))
        assert main(["experiment", str(bad)]) == 2
        assert words in capsys.readouterr().err


def test_a_learning_agents_log_is_the_data_and_its_evaluations_the_reference(tmp_path):
    """``data.kind: agent``: the data stage is a learning agent's run with its replay logged;
    the report's ``data_agents.md`` lists that agent's greedy evaluations (mean ± sd, distinct
    returns, HNS of the mean), recomputed here from its ``results.json``."""
    cfg = yaml.safe_load(Path(_config(tmp_path)).read_text())
    cfg["data"] = {
        "kind": "agent",
        "overrides": [
            "encoder=random",
            "torso.feature_dim=32",
            "steps=600",
            "num_envs=2",
            "agent.min_replay=100",
            "replay_log_capacity=500",
            "eval_episodes=2",
            "eval_every=300",
            "eval_max_steps=40",
        ],
    }
    cfg["arms"] = {"random": cfg["arms"]["random"]}
    cfg["seeds"], cfg["torsos"] = [0], False  # fmt: skip
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(config)]) == 0
    agent = tmp_path / "runs" / "data" / "Breakout" / "agent"
    assert (tmp_path / "runs" / "data" / "Breakout" / "replay_logs").is_dir()
    res = load_results(agent)
    assert [e["step"] for e in res["evaluations"]] == [0, 300, 600]
    table = (tmp_path / "results" / "data_agents.md").read_text().splitlines()[4:]
    assert len(table) == 3
    for row, ev in zip(table, res["evaluations"], strict=True):
        r = ev["returns"]
        mean = sum(r) / len(r)
        sd = (sum((x - mean) ** 2 for x in r) / len(r)) ** 0.5
        hns = (mean - 1.7) / (30.5 - 1.7)  # Breakout's random and human scores (Atari-57)
        assert row == (f"| Breakout | {ev['step']:,} | 2 | {mean:.1f} ± {sd:.1f} "
                       f"({len(set(r))}) | {hns:.3f} |")  # fmt: skip
