"""The thread plan: cores from affinity and cgroup quota, shares per torchrun worker, the split
between the learner and envpool, overrides, and the CLI's one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from pvn.cli import main
from pvn.threads import _cgroup_quota, available_cores, plan_threads, set_wait_policy


@pytest.mark.parametrize(
    "command,cores,world,want",
    [
        ("pretrain", 2, 1, (2, 0)),  # no envs: the learner takes the share
        ("evaluate", 2, 1, (1, 1)),  # envs step while the learner updates: half each
        ("collect", 16, 1, (8, 16)),  # mostly emulation: envpool takes the share
        ("collect", 2, 1, (1, 2)),
        ("evaluate", 3, 1, (2, 1)),
        ("pretrain", 16, 4, (4, 0)),  # torchrun: 4 workers on this host share 16 cores
        ("evaluate", 16, 4, (2, 2)),
        ("pretrain", 2, 4, (1, 0)),  # never below one thread
    ],
)
def test_plan_splits_the_cores(command, cores, world, want):
    plan = plan_threads(command, cores=cores, local_world_size=world)
    assert (plan.intra_op, plan.envpool) == want
    if command != "collect":
        assert plan.intra_op + plan.envpool <= max(1, cores // world) or plan.intra_op == 1
    assert plan.inter_op == 1 and plan.wait_policy == "PASSIVE"


def test_local_world_size_comes_from_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert plan_threads("pretrain", cores=8).intra_op == 4


def test_overrides_win_and_bad_values_are_refused():
    plan = plan_threads("evaluate", cores=8, overrides={"intra_op": 3, "envpool": None})
    assert (plan.intra_op, plan.envpool) == (3, 4)
    with pytest.raises(ValueError, match=r"threads\.intra_op=0"):
        plan_threads("evaluate", cores=8, overrides={"intra_op": 0})
    with pytest.raises(ValueError, match=r"threads\.bogus"):
        plan_threads("evaluate", cores=8, overrides={"bogus": 1})
    with pytest.raises(ValueError, match="wait_policy"):
        plan_threads("evaluate", cores=8, overrides={"wait_policy": "SPIN"})


def test_cores_follow_affinity():
    """A process pinned to one core plans for one core."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to pin to fewer")
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from pvn.threads import available_cores; print(available_cores())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert available_cores() <= len(os.sched_getaffinity(0))


def test_cgroup_quota_is_read(tmp_path):
    assert _cgroup_quota(tmp_path) is None  # no cgroup files: unlimited
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert _cgroup_quota(tmp_path) == 3.0


def test_wait_policy_keeps_the_users_choice(monkeypatch):
    for var in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS"):  # restored to absent afterwards
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"  # numpy's BLAS: one thread
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["OPENBLAS_NUM_THREADS"] == "4"


def test_the_pvn_entry_point_loads_neither_torch_nor_numpy():
    """So the variables set_wait_policy sets are there when OpenMP and OpenBLAS read them."""
    import subprocess
    import sys

    code = "import sys, pvn.console; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_cli_saves_the_resolved_plan_and_refuses_bad_values(capsys):
    args = ["evaluate", "encoder=random", "run_dir=x", "threads.envpool=3", "--cfg", "job"]
    assert main(args) == 0
    t = yaml.safe_load(capsys.readouterr().out)["threads"]
    assert t["envpool"] == 3 and t["intra_op"] >= 1 and t["wait_policy"] == "PASSIVE"
    assert main(["pretrain", "data.path=x", "run_dir=y", "threads.inter_op=0"]) == 2
    assert "threads.inter_op=0: must be >= 1" in capsys.readouterr().err


def test_the_pvn_command_sets_the_wait_policy_before_torch_loads():
    """OpenMP reads OMP_WAIT_POLICY when torch loads it: the entry point must not import torch
    before setting it, and a ``threads.wait_policy=`` override must reach it."""
    from pvn.console import wait_policy_from

    code = "import sys, pvn.console; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert wait_policy_from(["pretrain", "x=1"]) == "PASSIVE"
    assert wait_policy_from(["pretrain", "threads.wait_policy=ACTIVE"]) == "ACTIVE"
    assert wait_policy_from(["threads.wait_policy=null"]) == "PASSIVE"


@pytest.mark.parametrize("flush", [True, False])
def test_the_plan_flushes_subnormals_in_every_intra_op_thread(flush):
    """Subnormal floats (|x| < 2^-126) read as 0 under the plan, in the pool's worker threads
    too (they inherit the mode from the thread that applied it): 1e-39 * 1 is 0 in every
    element of a tensor large enough to be split across two threads; without the flush, the
    IEEE product is 1e-39 everywhere."""
    code = (
        "import torch; from pvn.threads import apply, plan_threads\n"
        f"apply(plan_threads('pretrain', cores=2, overrides={{'flush_denormal': {flush}}}))\n"
        "assert torch.get_num_threads() == 2\n"
        "x = torch.full((1 << 22,), 1e-39) * 1.0\n"
        "print(int((x != 0).sum()), torch.set_flush_denormal(True))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    nonzero, supported = out.stdout.split()
    if supported != "True":
        pytest.skip("this CPU has no flush-to-zero mode")
    assert int(nonzero) == (0 if flush else 1 << 22)


def test_flush_denormal_must_be_a_bool():
    with pytest.raises(ValueError, match=r"threads\.flush_denormal='yes'"):
        plan_threads("pretrain", cores=2, overrides={"flush_denormal": "yes"})
