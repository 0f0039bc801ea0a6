"""One thread plan per process, so pvn stays fast on a busy machine.

PyTorch's defaults take every core the machine has and let OpenMP workers spin while they wait
for each other. When another process holds one of those cores, every parallel region waits for
the descheduled worker (measured in docs/threads.md). pvn therefore decides, once, from the
cores this process may use (CPU affinity, then the cgroup CPU quota) and, under torchrun, the
number of workers on this host:

* ``intra_op``: PyTorch's intra-op threads, the process's share of the cores;
* ``inter_op``: PyTorch's inter-op threads (1: pvn runs no parallel graphs);
* ``envpool``: envpool's emulator threads (``evaluate`` steps envs *while* the learner updates,
  so the two pools split the share rather than each taking all of it; ``collect`` is mostly
  emulation, so envpool takes the share and the policy half of it);
* ``wait_policy``: ``OMP_WAIT_POLICY`` (``PASSIVE``: idle workers sleep instead of spinning, the
  fix for the slowdown above; it must be set before OpenMP starts, i.e. before ``import torch``,
  which :func:`set_wait_policy` does for the ``pvn`` command);
* ``flush_denormal``: treat subnormal floats as zero (FTZ/DAZ), as TensorFlow and XLA do on CPU
  by default, hence as Dopamine's DQN ran. Optimizer state of dead units decays through the
  subnormal range (RMSProp's ``ms`` by 0.95 per update), where x86 is far slower: late in a long
  DQN run this made the optimizer step several times slower (measured in docs/threads.md).

Every value can be overridden (``threads.*`` in each command's config); the plan is logged at
start and saved with the run's config.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: commands whose envs step while the learner works, so envpool gets a share of the cores
ENV_COMMANDS = ("evaluate",)
#: commands that are mostly emulation (the policy is one forward pass per step, if any)
EMULATION_COMMANDS = ("collect",)


@dataclass
class ThreadsConfig:
    """The ``threads:`` section of a command's config: ``None`` decides from the cores this
    process may use (affinity, cgroup quota, torchrun's local workers)."""

    intra_op: int | None = None  # PyTorch intra-op threads
    inter_op: int | None = None  # PyTorch inter-op threads
    envpool: int | None = None  # envpool emulator threads (evaluate, collect)
    wait_policy: str | None = None  # OMP_WAIT_POLICY of `pvn`: PASSIVE (default) | ACTIVE
    flush_denormal: bool | None = None  # subnormal floats read and written as 0 (default: true)
    cores: int | None = None  # not set by hand: a resolved plan's record of the cores it shared


@dataclass(frozen=True)
class ThreadPlan:
    cores: int  # cores this process may use (its share under torchrun)
    intra_op: int
    inter_op: int
    envpool: int
    wait_policy: str
    flush_denormal: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2/v1 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup (``cpu.max`` or ``cpu.cfs_quota_us``), None when unlimited."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q = root / "cpu" / "cpu.cfs_quota_us"
        p = root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota_us = int(q.read_text())
            return None if quota_us <= 0 else quota_us / int(p.read_text())
    except (OSError, ValueError):
        return None
    return None


def plan_threads(
    command: str,
    cores: int | None = None,
    local_world_size: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> ThreadPlan:
    """The plan for ``command`` on ``cores`` (default: :func:`available_cores`) shared by
    ``local_world_size`` processes (default: torchrun's ``LOCAL_WORLD_SIZE``, else 1).
    ``overrides`` (``threads.*``; ``None`` values mean "decide") win over every choice.

    Args:
        command: the ``pvn`` command the plan is for (``pretrain``, ``evaluate``, ``collect``).
        cores: cores this process may use; ``None``: :func:`available_cores`.
        local_world_size: processes sharing them; ``None``: torchrun's, else 1.
        overrides: ``threads.*`` values that win over every choice.

    Returns:
        The :class:`ThreadPlan`; a bad override raises ``ValueError`` naming the key.
    """
    cores = available_cores() if cores is None else cores
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, cores // max(1, local_world_size))
    envs = command in ENV_COMMANDS
    if command in EMULATION_COMMANDS:  # the emulators take the share; the policy, half of it
        intra_op, envpool = max(1, share // 2), share
    elif envs:  # the emulators get half the share and the learner the rest (>= 1 each)
        intra_op, envpool = max(1, share - share // 2), max(1, share // 2)
    else:
        intra_op, envpool = share, 0
    plan = {
        "cores": share,
        "intra_op": intra_op,
        "inter_op": 1,
        "envpool": envpool,
        "wait_policy": "PASSIVE",
        "flush_denormal": True,
    }
    for key, value in (overrides or {}).items():
        if key == "cores":  # a resolved plan's record of its share: decided, never set
            continue
        if key not in plan:
            raise ValueError(f"threads.{key}: unknown; choose from intra_op, inter_op, envpool, "
                             "wait_policy, flush_denormal")  # fmt: skip
        if value is not None:
            plan[key] = value
    if plan["wait_policy"] not in ("PASSIVE", "ACTIVE"):
        raise ValueError(f"threads.wait_policy={plan['wait_policy']!r}: choose PASSIVE or ACTIVE")
    if not isinstance(plan["flush_denormal"], bool):
        raise ValueError(f"threads.flush_denormal={plan['flush_denormal']!r}: choose true or false")
    for key in ("intra_op", "inter_op"):
        if int(plan[key]) < 1:
            raise ValueError(f"threads.{key}={plan[key]}: must be >= 1")
    return ThreadPlan(**plan)


def set_wait_policy(policy: str = "PASSIVE") -> None:
    """Set ``OMP_WAIT_POLICY`` unless the user did; only effective before ``import torch``.

    Also numpy's own BLAS (OpenBLAS, a separate pool from PyTorch's, read once when numpy
    loads) to one thread unless ``OPENBLAS_NUM_THREADS`` is set: its threads spin while they
    wait, and a probe's SVD (2560 x 512) with 2 threads took 1.8-2.9 s against 0.35-0.42 s
    with one while two other processes held the 2 cores (docs/threads.md). pvn's numpy linear
    algebra (the probes, the reports) is small; PyTorch's has the plan's threads."""
    os.environ.setdefault("OMP_WAIT_POLICY", policy)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def apply(plan: ThreadPlan) -> None:
    """Apply the PyTorch part of ``plan`` to this process (once, before any parallel work:
    PyTorch refuses to change its inter-op pool after it has started).

    Args:
        plan: the plan from :func:`plan_threads`.
    """
    import torch

    # before the intra-op pool starts: new threads inherit the floating-point mode (POSIX)
    torch.set_flush_denormal(bool(plan.flush_denormal))
    torch.set_num_threads(int(plan.intra_op))
    # fails once the pool has started (a second command in one process): that pool stays
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(int(plan.inter_op))


def plan_for(threads: Mapping[str, Any], command: str, cores: int | None = None) -> ThreadPlan:
    """The plan of a command's ``threads:`` section (``None`` values: decide) resolved;
    a bad value is a one-line :class:`pvn.errors.ConfigError`.

    Args:
        threads: the section (a :class:`ThreadsConfig`'s keys, or a saved plan's).
        command: the command the plan is for.
        cores: the cores it may use (default: :func:`available_cores`).

    Returns:
        The :class:`ThreadPlan`.
    """
    from pvn.errors import ConfigError

    try:
        return plan_threads(command, cores, overrides=dict(threads))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def settle(cfg: Any, command: str, run: bool = True, cores: int | None = None) -> None:
    """Decide ``cfg.threads`` (a command's config with a ``threads:`` section) once, before any
    parallel work: write the resolved plan back into it, so that it is saved with the run and
    announced, and apply it to this process unless ``run`` is false (``--cfg job`` only
    prints). The CLI does this for the command it runs, and a composite command (``pvn
    quickstart``) for each command it runs in its own process.

    Args:
        cfg: the command's config (an OmegaConf ``DictConfig``).
        command: the command the plan is for.
        run: apply the plan (false: only resolve it).
        cores: the cores the command may use (default: :func:`available_cores`; a composite
            command running several at once gives each its share).
    """
    from omegaconf import open_dict

    plan = plan_for(cfg.threads, command, cores)
    with open_dict(cfg):
        cfg.threads = plan.as_dict()
    if run:
        apply(plan)


def announce(threads: Mapping[str, Any]) -> None:
    """Log the run's plan (a config's resolved ``threads:`` section) at start, on stderr, once
    its command has checked the config: a bad value still gets its one-line error and nothing
    else."""
    import sys

    print(f"pvn: threads {dict(threads)}", file=sys.stderr)
