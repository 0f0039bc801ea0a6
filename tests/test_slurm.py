"""``pvn experiment`` through submitit: on a real one-node SLURM that the tests start
(``scripts/slurm_start.sh``, as root), and with submitit's local executor.

Where SLURM cannot start (not root, no packages and no apt) the cluster tests skip with the
reason; CI sets ``PVN_REQUIRE_SLURM=1`` so that they fail there instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pvn.cli import main
from pvn.errors import ConfigError
from pvn.experiments.cluster import Resources, _signal_delay_s, parse_launcher
from pvn.experiments.summary import status_table

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ["batch_size=8", "torso.feature_dim=32", "tasks.num_tasks=10", "td.warmup_steps=5"]


def _config(tmp_path: Path, dopamine_fixture: Path, kind: str, **launcher) -> str:
    """Pretraining on the Dopamine fixture's log, a PVN arm after it, and the report."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    if not (logs / "Breakout").exists():
        (logs / "Breakout").symlink_to(dopamine_fixture / "replay_logs")
    cfg = {
        "name": "tiny", "out": str(tmp_path / "runs"), "results": str(tmp_path / "results"),
        "games": ["Breakout"], "seeds": [0], "probes": False,
        "data": {"kind": "dataset", "path": str(logs)},
        "pretrain": {"overrides": ["steps=20", "checkpoint_every=10", *PRETRAIN]},
        "arms": {"pvn": {"encoder": "pvn", "overrides": [
            "steps=200", "num_envs=2", "agent.min_replay=100", "eval_episodes=1",
            "eval_max_steps=50"]}},
        "launcher": {"kind": kind, "folder": str(tmp_path / "jobs"),
                     "resources": {"default": {"cpus": 1, "mem_gb": 1, "time_min": 10}},
                     **launcher},
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def slurm():
    """A running one-node SLURM on localhost (installed and started by the script)."""
    required = os.environ.get("PVN_REQUIRE_SLURM") == "1"
    why = None
    if os.geteuid() != 0:
        why = "starting SLURM needs root"
    else:
        out = subprocess.run([str(ROOT / "scripts" / "slurm_start.sh")], capture_output=True,
                             text=True)  # fmt: skip
        if out.returncode != 0:
            why = f"SLURM did not start: {(out.stderr or out.stdout).strip()[-300:]}"
    if why:
        if required:
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def cluster(slurm):
    """The cluster, emptied of this test's jobs afterwards."""
    yield
    subprocess.run(["scancel", "-u", "root"], capture_output=True)


def _jobs(tmp_path: Path) -> dict[str, str]:
    """Stage -> job id, from the experiment's job records."""
    records = (tmp_path / "runs" / "jobs").glob("*.json")
    return {f.stem.replace("__", "/"): json.loads(f.read_text())["job_id"] for f in records}


def _scontrol(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _until(cond, seconds: float, what: str) -> None:
    end = time.time() + seconds
    while not cond():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_stages_run_as_dependent_jobs_and_a_cancelled_one_is_resubmitted(
    cluster, tmp_path, dopamine_fixture, capsys
):
    config = _config(tmp_path, dopamine_fixture, "slurm")
    cfg = yaml.safe_load(Path(config).read_text())
    cfg["seeds"] = [0, 1]
    Path(config).write_text(yaml.safe_dump(cfg))
    assert main(["experiment", config]) == 0
    first = _jobs(tmp_path)
    seeds = ["eval/Breakout/pvn/seed0", "eval/Breakout/pvn/seed1"]
    assert set(first) == {"pretrain/Breakout", *seeds, "report"}
    # the plan's edges are SLURM dependencies: the arm after its PVN, the report after the arm
    # and the PVN (which it measures); the arm's seeds (one kind, the same prerequisite) are one
    # job array
    ev = [_scontrol(first[s]) for s in seeds]
    assert ev[0]["ArrayJobId"] == ev[1]["ArrayJobId"] and first[seeds[1]].endswith("_1")
    assert all(e["Dependency"].startswith(f"afterok:{first['pretrain/Breakout']}") for e in ev)
    assert set(re.findall(r"afterok:(\w+)", _scontrol(first["report"])["Dependency"])) == {
        first[s] for s in ["pretrain/Breakout", *seeds]
    }
    capsys.readouterr()
    assert main(["experiment", config]) == 0  # all queued or running: nothing twice
    assert "nothing to submit" in capsys.readouterr().err and _jobs(tmp_path) == first

    subprocess.run(["scancel", first["pretrain/Breakout"]], check=True)
    _until(lambda: _scontrol(first["report"])["JobState"] == "CANCELLED", 30, "the dependents")
    assert main(["experiment", config, "--status"]) == 0
    table, job = capsys.readouterr().out, first["pretrain/Breakout"]
    assert f"cancelled pretrain/Breakout  (job {job} CANCELLED; log " in table

    assert main(["experiment", config, "--wait"]) == 0  # resubmits all four and follows them
    second = _jobs(tmp_path)
    assert not set(second.values()) & set(first.values())
    assert "4 of 4 stages done" in capsys.readouterr().out
    pvn_done = (tmp_path / "runs" / "pretrain" / "Breakout" / "done.json").stat().st_mtime
    for seed in (0, 1):  # the dependency held
        arm = tmp_path / "runs" / "eval" / "Breakout" / "pvn" / f"seed{seed}" / "config.yaml"
        assert pvn_done <= arm.stat().st_mtime
    assert main(["experiment", config]) == 0
    assert "nothing to submit" in capsys.readouterr().err and _jobs(tmp_path) == second


def test_a_stage_at_its_time_limit_is_requeued_and_resumes(cluster, tmp_path, dopamine_fixture):
    """SLURM's warning signal before the time limit (USR2, sent here by hand as submitit's own
    tests do) makes submitit requeue the job; first the stage's command, passed the signal,
    writes a checkpoint where it stands (no periodic one is due), and the requeued job resumes
    from it."""
    config = _config(tmp_path, dopamine_fixture, "slurm")
    cfg = yaml.safe_load(Path(config).read_text())
    cfg["pretrain"]["overrides"] = ["steps=600", "checkpoint_every=1000", "log_every=5",
                                    *PRETRAIN]  # fmt: skip
    Path(config).write_text(yaml.safe_dump(cfg))
    assert main(["experiment", config]) == 0
    job = _jobs(tmp_path)["pretrain/Breakout"]
    run = tmp_path / "runs" / "pretrain" / "Breakout"
    metrics = run / "metrics.jsonl"
    _until(lambda: metrics.is_file() and metrics.read_text(), 120, "the first updates")
    subprocess.run(["scancel", job, "--signal", "USR2"], check=True)
    _until(lambda: _scontrol(job).get("Restarts") == "1", 60, "the requeue")
    _until(lambda: (run / "done.json").is_file(), 240, "the resumed stage")
    log = Path(json.loads((tmp_path / "runs/jobs/pretrain__Breakout.json").read_text())["log"])
    text = log.read_text()
    stop = re.search(r"pvn: stopped by SIG\w+ at update (\d+); the same command resumes", text)
    assert stop and 0 < int(stop[1]) < 600, text[-2000:]
    assert re.search(rf"pvn: resuming pretraining from .*ckpt_0*{stop[1]}\.pt", text)


def test_a_distributed_pretraining_is_one_job_of_two_tasks_equal_to_one_process(
    cluster, tmp_path, dopamine_fixture
):
    """``resources.pretrain.tasks: 2``: each task one worker, torch.distributed initialised
    from SLURM's environment; the workers end where the same run simulated in one process
    ends (which tests/test_distributed.py shows equal to torchrun's real processes)."""
    from pvn.checkpoint import list_checkpoints, load_checkpoint
    from pvn.experiments.plan import load, stages

    config = _config(tmp_path, dopamine_fixture, "slurm")
    cfg = yaml.safe_load(Path(config).read_text())
    rule = ["distributed=monna", "distributed.f=0", "steps=6", "checkpoint_every=6"]
    cfg["pretrain"]["overrides"] = [*PRETRAIN, *rule]
    cfg["launcher"]["resources"]["pretrain"] = {"tasks": 2}
    Path(config).write_text(yaml.safe_dump(cfg))
    assert main(["experiment", config]) == 0
    assert _scontrol(_jobs(tmp_path)["pretrain/Breakout"])["NumTasks"] == "2"
    real = tmp_path / "runs" / "pretrain" / "Breakout"
    _until(lambda: (real / "done.json").is_file(), 240, "the distributed pretraining")
    subprocess.run(["scancel", "-u", "root"], check=True)
    (stage,) = [s for s in stages(load(config)) if s.kind == "pretrain"]
    sim = tmp_path / "sim"
    argv = [f"run_dir={sim}" if a.startswith("run_dir=") else a for a in stage.argv]
    assert main([*argv, "distributed.workers=2"]) == 0
    a, b = (load_checkpoint(list_checkpoints(r)[-1]) for r in (sim, real))
    assert len(b["workers"]) == 2
    for wa, wb in zip(a["workers"], b["workers"], strict=True):
        for k, v in wa["learner"]["online"].items():
            torch.testing.assert_close(v, wb["learner"]["online"][k], rtol=1e-5, atol=1e-6)


def test_a_failed_stage_names_its_job_and_log(cluster, tmp_path, dopamine_fixture, capsys):
    config = _config(tmp_path, dopamine_fixture, "slurm")
    cfg = yaml.safe_load(Path(config).read_text())
    cfg["arms"] = {"random": {"encoder": "random", "overrides": ["agent.lr=-1"]}}
    Path(config).write_text(yaml.safe_dump(cfg))
    assert main(["experiment", config, "--wait"]) == 2
    job = _jobs(tmp_path)["eval/Breakout/random/seed0"]
    err = capsys.readouterr().err.strip().splitlines()[-1]
    log = tmp_path / "jobs" / job / f"{job}_0_log.err"
    assert err == f"pvn: error: stage eval/Breakout/random/seed0: job {job} ended FAILED without " \
                  f"finishing; log: {log}"  # fmt: skip
    assert "agent.lr" in log.read_text()  # the stage's own one-line error is in its log


def test_a_refused_submission_keeps_what_was_submitted(cluster, tmp_path, dopamine_fixture, capsys):
    """sbatch refuses the arm (an unknown partition) after the PVN was submitted: exit 2 with
    one line; the next run submits the arm and the report, and not the PVN again."""
    config = _config(tmp_path, dopamine_fixture, "slurm")
    assert main(["experiment", config, "launcher.resources.eval.partition=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pvn: error: stage eval/Breakout/pvn/seed0: sbatch refused the job: ")
    assert "partition" in err.lower()
    first = _jobs(tmp_path)
    assert list(first) == ["pretrain/Breakout"]
    assert main(["experiment", config]) == 0
    second = _jobs(tmp_path)
    assert second["pretrain/Breakout"] == first["pretrain/Breakout"] and len(second) == 3


def test_submitit_local_runs_the_stages_in_order(tmp_path, dopamine_fixture, capsys):
    """The same jobs through submitit's local executor: the submitit path of every CI run."""
    config = _config(tmp_path, dopamine_fixture, "submitit_local")
    assert main(["experiment", config]) == 0
    assert "3 of 3 stages done" in capsys.readouterr().out
    assert (tmp_path / "results" / "complete.json").is_file()


def test_no_sbatch_is_one_line(tmp_path, dopamine_fixture, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["experiment", _config(tmp_path, dopamine_fixture, "slurm")]) == 2
    assert "launcher.kind=slurm: no sbatch on PATH" in capsys.readouterr().err


def test_launcher_config_is_checked_and_merged():
    spec = parse_launcher({"kind": "slurm", "resources": {
        "default": {"cpus": 4, "time_min": 60, "sbatch": {"qos": "low"}},
        "pretrain": {"gpus": 1, "sbatch": {"constraint": "a100"}}}}, "x.yaml")  # fmt: skip
    pre, ev = spec.for_stage("pretrain"), spec.for_stage("eval")
    assert (pre.cpus, pre.gpus, pre.time_min) == (4, 1, 60)
    assert pre.sbatch == {"qos": "low", "constraint": "a100"}
    assert ev == Resources(cpus=4, time_min=60, sbatch={"qos": "low"})
    for raw, msg in [({"kind": "pbs"}, "launcher.kind='pbs'"),
                     ({"resources": {"train": {}}}, "launcher.resources.train"),
                     ({"resources": {"eval": {"gpu": 1}}}, "gpu: unknown (did you mean 'gpus'?)"),
                     ({"resources": {"eval": {"cpus": 0}}}, "launcher.resources.eval: cpus, tasks"),
                     ({"resources": {"eval": {"tasks": 2}}}, "only pretraining runs as several"),
                     ({"nodes": 2}, "launcher.nodes")]:  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(msg)):
            parse_launcher(raw, "x.yaml")


def test_the_warning_comes_early_enough_to_requeue():
    """slurmctld sends the warning at its 30 s check once within the delay, so it may come up
    to 30 s early (docs/cluster.md): delay + 30 s leaves the job time to start and save."""
    for minutes in (1, 2, 5, 60, 24 * 60):
        delay = _signal_delay_s(minutes)
        assert delay >= 5 and delay + 30 <= minutes * 60 * 0.75
    assert _signal_delay_s(24 * 60) == 90  # submitit's default on long jobs


def test_status_shows_each_jobs_state_and_the_log_of_an_ended_one(tmp_path):
    from pvn.experiments.plan import Stage

    a = Stage("pretrain/X", [], tmp_path / "a", "pretrain", "done.json")
    b = Stage("eval/X/pvn/seed0", [], tmp_path / "b", "eval", "results.json", [a.name])
    jobs = {a.name: ({"job_id": "7", "log": "/l/7_0_log.err"}, "TIMEOUT"),
            b.name: ({"job_id": "8", "log": "/l/8_0_log.err"}, "PENDING")}  # fmt: skip
    table = status_table([a, b], None, jobs).splitlines()
    assert table[1:] == ["  timeout pretrain/X  (job 7 TIMEOUT; log /l/7_0_log.err)",
                         "  queued  eval/X/pvn/seed0  (job 8 PENDING)"]  # fmt: skip


def test_submitit_logs_to_the_streams_of_the_moment():
    """Imported by pvn, submitit binds no handler to the streams of its import (a test's or a
    notebook cell's, closed soon after): a later submitit warning raises nothing."""
    code = (
        "import io, sys\n"
        "sys.stderr = io.StringIO()\n"
        "from pvn.experiments.cluster import _submitit\n"
        "_submitit()\n"
        "sys.stderr.close(); sys.stderr = sys.__stderr__\n"
        "import logging; logging.getLogger('submitit').warning('still here')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "Logging error" not in out.stderr
    assert "still here" in out.stderr
