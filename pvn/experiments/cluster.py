"""An experiment's stages as jobs through submitit: SLURM (``launcher.kind: slurm``) or submitit's
local executor (``submitit_local``, the same code path without a cluster).

On SLURM every stage that is not done becomes one job (like stages, one kind with the same
prerequisites, one job array), submitted with the plan's edges as ``afterok`` dependencies
(data -> pretraining -> its arms -> report), so the whole experiment is queued at once and
SLURM starts each stage when its prerequisites succeed.
Each submission is recorded at once in ``<out>/jobs/<stage>.json`` (the job id, its log files),
so a command killed half-way through submitting, or re-run after jobs were cancelled, failed or
timed out, submits exactly the stages that are neither done nor queued or running: never one
twice. A job that reaches its time limit (or is preempted) is requeued by submitit (its
``checkpoint``): SLURM's warning is passed on to the stage's ``pvn`` command, which writes a
checkpoint where it stands (:mod:`pvn.preemption`), and the requeued job resumes from it.

Job states come from SLURM itself (``squeue``, then ``sacct`` where accounting runs), never
from submitit's watcher: without accounting that watcher never learns that a job was cancelled
or killed, and its ``result()`` waits forever (measured with submitit 1.5.4 on SLURM 22.05).
pvn's done files stay the only proof that a stage finished.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvn.config import did_you_mean
from pvn.errors import ConfigError
from pvn.experiments.plan import Stage
from pvn.experiments.store import Store
from pvn.files import write_text_atomic

KINDS = ("local", "slurm", "submitit_local")
STAGE_KINDS = ("data", "pretrain", "eval", "report")
#: SLURM states of a job that will still run (or is running): its stage is not resubmitted
LIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                  "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED",
                  "RESV_DEL_HOLD"})  # fmt: skip
POLL_SECONDS = 2.0


@dataclass
class Resources:
    """What one stage's job asks SLURM for (``launcher.resources.<kind>``, over ``default``).

    Args:
        cpus: CPUs per task.
        tasks: tasks per node; more than one only for a ``distributed=`` pretraining, one
            worker per task.
        nodes: nodes of the job.
        gpus: GPUs per node.
        mem_gb: memory per node.
        time_min: the time limit; at it the job is requeued and its stage resumes.
        partition: the SLURM partition (``None``: the cluster's default).
        account: the account charged (``None``: the user's default).
        sbatch: any other sbatch option, ``{option: value}`` (``{qos: high}``).
    """

    cpus: int = 2  # CPUs per task
    tasks: int = 1  # tasks per node: a `distributed=` pretraining runs one worker per task
    nodes: int = 1
    gpus: int = 0  # GPUs per node
    mem_gb: float = 8.0
    time_min: int = 24 * 60  # time limit; a stage that reaches it is requeued and resumes
    partition: str | None = None
    account: str | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option: {qos: high}


@dataclass
class LauncherSpec:
    """The ``launcher:`` section of an experiment config."""

    kind: str = "local"
    folder: str | None = None  # submitit's files and the jobs' logs; default <out>/jobs/logs
    max_requeues: int = 3  # time-outs (or preemptions) a stage may be requeued after
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # by stage kind, default

    def for_stage(self, kind: str) -> Resources:
        """The stage kind's resources: its own keys over ``default``'s over :class:`Resources`'s
        (``sbatch`` options merged key by key)."""
        base, own = self.resources.get("default", {}), self.resources.get(kind, {})
        sbatch = {**base.get("sbatch", {}), **own.get("sbatch", {})}
        return Resources(**{**base, **own, "sbatch": sbatch})


def parse_launcher(raw: Any, where: str) -> LauncherSpec:
    """The experiment's ``launcher:`` section, checked: one line naming the key when wrong."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: launcher: give a mapping (kind, folder, resources)")
    known = set(LauncherSpec.__dataclass_fields__)
    if bad := sorted(set(raw) - known):
        raise ConfigError(f"{where}: launcher.{bad[0]}: unknown{did_you_mean(bad[0], known)}; "
                          f"choose from {sorted(known)}")  # fmt: skip
    spec = LauncherSpec(**{**raw, "resources": {}})
    if spec.kind not in KINDS:
        raise ConfigError(f"{where}: launcher.kind={spec.kind!r}: choose one of {KINDS}")
    fields = set(Resources.__dataclass_fields__)
    for kind, res in (raw.get("resources") or {}).items():
        if kind not in ("default", *STAGE_KINDS):
            hint = did_you_mean(kind, ("default", *STAGE_KINDS))
            raise ConfigError(f"{where}: launcher.resources.{kind}: unknown{hint}; choose "
                              f"default or one of {STAGE_KINDS}")  # fmt: skip
        if bad := sorted(set(res or {}) - fields):
            hint = did_you_mean(bad[0], fields)
            raise ConfigError(f"{where}: launcher.resources.{kind}.{bad[0]}: unknown{hint}; "
                              f"choose from {sorted(fields)}")  # fmt: skip
        spec.resources[kind] = dict(res or {})
    for kind in STAGE_KINDS:
        r = spec.for_stage(kind)
        if min(r.cpus, r.tasks, r.nodes, r.time_min) < 1 or r.gpus < 0 or r.mem_gb <= 0:
            raise ConfigError(f"{where}: launcher.resources.{kind}: cpus, tasks, nodes and "
                              "time_min >= 1, gpus >= 0 and mem_gb > 0")  # fmt: skip
        if r.tasks * r.nodes > 1 and kind != "pretrain":
            why = "only pretraining runs as several tasks (distributed=: a worker per task)"
            raise ConfigError(f"{where}: launcher.resources.{kind}: {why}")
    return spec


class StageJob:
    """What a job runs: one stage's ``pvn`` command (:func:`run_stage`). Requeued at its time
    limit (submitit calls :meth:`checkpoint`): the command, stopped with a checkpoint where it
    stood, resumes from it.

    In a job of several tasks (``resources.pretrain.tasks``/``nodes``) every task runs the
    command as one worker of a ``distributed=`` pretraining: torch.distributed's environment
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` = the first node, ``MASTER_PORT`` from the job
    id, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) is set from SLURM's, as torchrun would set it,
    and rank 0 marks the stage done."""

    def __init__(self, stage: Stage, grace_s: float = 1.0) -> None:
        self.stage, self.grace_s = stage, grace_s

    def __call__(self) -> str:
        import submitit

        from pvn.experiments.launchers import run_stage

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # GPUs stay visible: pvn picks cuda:LOCAL_RANK itself
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True
            )
        run_stage(self.stage, mark_done=env.global_rank == 0)
        return self.stage.name

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On SLURM's warning (rank 0): stop the stage's command, which writes a checkpoint
        where it stands (:mod:`pvn.preemption`), waiting up to ``grace_s`` for it, before
        submitit requeues the job; a team's other workers stop with it at the same update."""
        import submitit

        from pvn.experiments.launchers import stop_stage

        stop_stage(wait_s=self.grace_s)
        return submitit.helpers.DelayedSubmission(StageJob(self.stage, self.grace_s))


def _submitit() -> Any:
    """submitit, imported without its logging set-up unless the user asked for one
    (``SUBMITIT_LOG_LEVEL``): at import it binds handlers to the ``sys.stdout`` and
    ``sys.stderr`` of that moment, which in a notebook cell or a test are streams closed soon
    after, so every later submitit log line raised. Its jobs, started afresh, still log."""
    if "submitit" not in sys.modules and "SUBMITIT_LOG_LEVEL" not in os.environ:
        os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
        try:
            import submitit
        finally:
            del os.environ["SUBMITIT_LOG_LEVEL"]
    import submitit

    return submitit


def _signal_delay_s(time_min: int) -> int:
    """Seconds before the limit at which SLURM warns the job (USR2: checkpoint and requeue).
    slurmctld sends it at its 30 s periodic check once within the delay, so the warning can
    come up to 30 s early: delay + 30 s must stay well inside the limit."""
    return max(5, min(90, time_min * 60 // 4))


def _grace_s(time_min: int) -> float:
    """How long, after the warning, the stage may take to checkpoint before the job requeues:
    the warning's lead less 5 s, so that the requeue comes before the limit's SIGTERM."""
    return max(1.0, _signal_delay_s(time_min) - 5.0)


class SlurmQueue:
    """Job states as SLURM reports them: ``squeue`` for the jobs slurmctld holds (pending,
    running, and finished ones for ``MinJobAge``), then ``sacct`` for older ones where
    accounting runs. A job neither knows is ``GONE``."""

    @staticmethod
    def states(job_ids: list[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        out = subprocess.run(["squeue", "-h", "-t", "all", "-r", "-u", getpass.getuser(),
                              "-o", "%i|%T"], capture_output=True, text=True)  # fmt: skip
        held = dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)
        states = {j: held[j] for j in job_ids if j in held}
        missing = [j for j in job_ids if j not in states]
        if missing and shutil.which("sacct"):
            acct = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State",
                                   *(f"-j{j}" for j in missing)],
                                  capture_output=True, text=True)  # fmt: skip
            for line in acct.stdout.split() if acct.returncode == 0 else []:
                job, _, state = line.partition("|")
                if job in missing:
                    states[job] = state.split()[0] if state else "UNKNOWN"
        return {j: states.get(j, "GONE") for j in job_ids}


class JobBook:
    """The jobs submitted for an experiment's stages, one record per stage under
    ``<out>/jobs``, written the moment its job is submitted."""

    def __init__(self, store: Store) -> None:
        self.dir = store.out / "jobs"

    def _path(self, stage: Stage) -> Path:
        return self.dir / (stage.name.replace("/", "__") + ".json")

    def get(self, stage: Stage) -> dict[str, Any] | None:
        path = self._path(stage)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise ConfigError(f"{path}: unreadable job record; remove it") from None

    def put(self, stage: Stage, record: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self._path(stage), json.dumps(record))


def job_states(todo: list[Stage], store: Store) -> dict[str, tuple[dict[str, Any], str]]:
    """Each stage with a recorded job: ``(its record, SLURM's state of that job)``."""
    book = JobBook(store)
    records = {s.name: r for s in todo if (r := book.get(s)) is not None}
    states = SlurmQueue.states(sorted({r["job_id"] for r in records.values()}))
    return {name: (r, states[r["job_id"]]) for name, r in records.items()}


class SubmititLauncher:
    """Runs the stages as submitit jobs: all queued at once with dependencies on SLURM (and,
    with ``wait``, followed until they end), one after another with submitit's local
    executor.

    Args:
        spec: the experiment's ``launcher:`` section (:func:`parse_launcher`).
        wait: on SLURM, follow the jobs until every stage is done (a job that ends without
            finishing its stage is a one-line :class:`pvn.errors.ConfigError`).
    """

    def __init__(self, spec: LauncherSpec, wait: bool = False) -> None:
        self.spec, self.wait = spec, wait

    def _executor(self, store: Store, cluster: str) -> Any:
        submitit = _submitit()
        folder = Path(self.spec.folder) if self.spec.folder else store.out / "jobs" / "logs"
        kwargs = {"slurm_max_num_timeout": self.spec.max_requeues} if cluster == "slurm" else {}
        return submitit.AutoExecutor(folder=folder / "%j", cluster=cluster, **kwargs)

    def _params(self, stage: Stage, after: list[str]) -> dict[str, Any]:
        r = self.spec.for_stage(stage.kind)
        params: dict[str, Any] = {
            "name": f"pvn:{stage.name}", "timeout_min": r.time_min, "cpus_per_task": r.cpus,
            "mem_gb": r.mem_gb, "slurm_signal_delay_s": _signal_delay_s(r.time_min),
            "slurm_additional_parameters": {
                **r.sbatch, **({"dependency": "afterok:" + ":".join(after)} if after else {})},
        }  # fmt: skip
        if r.tasks * r.nodes > 1:
            params.update(tasks_per_node=r.tasks, nodes=r.nodes)
        if r.gpus:
            params["gpus_per_node"] = r.gpus
        if r.partition:
            params["slurm_partition"] = r.partition
        if r.account:
            params["slurm_account"] = r.account
        return params

    def launch(self, todo: list[Stage], store: Store) -> None:
        if self.spec.kind == "submitit_local":
            self._run_locally(todo, store)
            return
        if shutil.which("sbatch") is None:
            raise ConfigError("launcher.kind=slurm: no sbatch on PATH (is this a SLURM login "
                              "node?)")  # fmt: skip
        submitted = self._submit(todo, store)
        if self.wait:
            self._follow(store, submitted)

    def _submit(self, todo: list[Stage], store: Store) -> list[Stage]:
        """Submit every stage that is neither done nor queued or running, each depending on the
        jobs of its unfinished prerequisites; like stages (one kind, the same prerequisites:
        an arm's seeds after their PVN) go as one job array. Returns the stages with a live
        job."""
        book, executor = JobBook(store), self._executor(store, "slurm")
        live: dict[str, str] = {}  # stage -> job id, queued or running
        for name, (record, state) in job_states(todo, store).items():
            if state in LIVE:
                live[name] = record["job_id"]
        done = {s.name for s in todo if s.done}
        groups: dict[tuple[str, tuple[str, ...]], list[Stage]] = {}
        for s in todo:  # in order of first appearance: prerequisites come first (see below)
            if s.name not in done and s.name not in live:
                groups.setdefault((s.kind, tuple(s.after)), []).append(s)
        # A group's stages share their prerequisites, which precede its first stage in the
        # plan's order, so their own groups were submitted before it.
        for (_, needs), group in groups.items():
            after = [live[a] for a in needs if a in live]
            if missing := [a for a in needs if a not in live and a not in done]:
                raise ConfigError(f"stage {group[0].name}: needs {missing[0]}, which is neither "
                                  "done nor queued")  # fmt: skip
            executor.update_parameters(**self._params(group[0], after))
            for s in group:
                store.record_command(s)
            try:
                with executor.batch():  # one job array (a single job when alone)
                    grace = _grace_s(self.spec.for_stage(group[0].kind).time_min)
                    jobs = [executor.submit(StageJob(s, grace)) for s in group]
            except Exception as e:  # sbatch refused: its own words, on one line
                why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise ConfigError(f"stage {group[0].name}: sbatch refused the job: {why}") from None
            for s, job in zip(group, jobs, strict=True):
                live[s.name] = job.job_id
                book.put(s, {"job_id": job.job_id, "log": str(job.paths.stderr),
                             "submitted": time.time(), "after": after})  # fmt: skip
                print(f"pvn experiment: submitted {s.name} as job {job.job_id}"
                      + (f" (after {' '.join(after)})" if after else ""),
                      file=sys.stderr)  # fmt: skip
        if not groups:
            print("pvn experiment: nothing to submit (every stage is done, queued or running)",
                  file=sys.stderr)  # fmt: skip
        return [s for s in todo if s.name in live]

    @staticmethod
    def _follow(store: Store, stages: list[Stage]) -> None:
        """Wait until every submitted stage is done; a job that ends without its stage's done
        file stops the wait with one line naming the stage, the job and its log."""
        while True:
            left = [s for s in stages if not s.done]
            if not left:
                return
            states = job_states(left, store)
            for s in left:
                record, state = states[s.name]
                if state not in LIVE and not s.done:
                    raise ConfigError(f"stage {s.name}: job {record['job_id']} ended {state} "
                                      f"without finishing; log: {record['log']}")  # fmt: skip
            time.sleep(POLL_SECONDS)

    def _run_locally(self, todo: list[Stage], store: Store) -> None:
        """submitit's local executor, one stage after another (it knows no dependencies)."""
        executor = self._executor(store, "local")
        for s in todo:
            if s.done:
                continue
            r = self.spec.for_stage(s.kind)
            executor.update_parameters(timeout_min=r.time_min, gpus_per_node=r.gpus,
                                       tasks_per_node=r.tasks * r.nodes,
                                       name=f"pvn:{s.name}")  # fmt: skip
            store.record_command(s)
            job = executor.submit(StageJob(s, _grace_s(r.time_min)))
            print(f"pvn experiment: {s.name} as local job {job.job_id}", file=sys.stderr)
            while not job.done():
                time.sleep(POLL_SECONDS / 4)
            if not s.done:
                raise ConfigError(f"stage {s.name}: local job {job.job_id} ended without "
                                  f"finishing; log: {job.paths.stderr}")  # fmt: skip
