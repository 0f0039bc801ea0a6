"""How an experiment's stages get run: the :class:`Launcher` seam and the local launcher.

A launcher is handed the stage graph (:func:`pvn.experiments.plan.stages`: each stage a ``pvn``
command, its run dir and the stages it needs first) and the store of ``out``, and runs every
stage that is not done, each after the stages it needs. The local launcher runs them as
subprocesses on this machine; several local launchers (one per core, or per machine sharing a
file system) may share ``out``, splitting the stages through the store's per-stage locks
(:func:`claim`). A cluster launcher submits the same commands as jobs with the same
dependencies.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from typing import IO, Protocol

from pvn import preemption
from pvn.checkpoint import list_checkpoints
from pvn.errors import DIVERGED_EXIT, PREEMPTED_EXIT, ConfigError, PVNError
from pvn.experiments.kept import keep, keep_time
from pvn.experiments.plan import Stage, is_pretraining_arm
from pvn.experiments.store import Store
from pvn.experiments.summary import eta_seconds, progresses

POLL_SECONDS = 5  # how often a runner waiting for other runners' stages looks again


class Launcher(Protocol):
    """Runs every stage of ``todo`` that is not done, each after the stages it needs."""

    def launch(self, todo: list[Stage], store: Store) -> None: ...


def claim(store: Store, todo: list[Stage]) -> tuple[Stage | None, IO[str] | None, bool]:
    """The first stage, in order, that is not done, whose prerequisites are done and that no
    other runner holds: ``(stage, its held lock, _)``. Without one, ``(None, None, wait)``:
    ``wait`` when another runner holds a stage this one could still need, rather than nothing
    being left. Runners sharing ``out`` (several of one experiment, or experiments sharing
    stages) so split the stages between them and never run one twice at once."""
    done = {s.name for s in todo if s.done}
    held = False
    for s in todo:
        if s.name in done or not set(s.after) <= done:
            continue
        lock = store.try_lock(s)
        if lock is None:
            held = True
        elif s.done:  # another runner finished it just now
            lock.close()
            done.add(s.name)
        else:
            return s, lock, held
    return None, None, held


def _die_with_parent() -> None:
    """In the stage's process: receive SIGKILL when the runner dies (Linux), so a killed runner
    leaves no stage running on to finish behind the next runner's back."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_stage_process: subprocess.Popen | None = None  # the stage command running in this process


def run_stage(stage: Stage, mark_done: bool = True) -> None:
    """Run one stage as a ``pvn`` subprocess (its own thread plan; a crash stays its own);
    ``mark_done``: false in the other workers of a multi-task job (rank 0 marks it). Polled,
    not waited on, so that a signal handler may stop it (:func:`stop_stage`)."""
    global _stage_process
    argv = [sys.executable, "-m", "pvn", *stage.argv]
    _stage_process = subprocess.Popen(argv, preexec_fn=_die_with_parent)
    if preemption.requested():  # asked to stop while it started
        stop_stage()
    try:
        while (rc := _stage_process.poll()) is None:
            time.sleep(0.2)
    finally:
        _stage_process = None
    if rc == DIVERGED_EXIT and is_pretraining_arm(stage):  # its outcome: reported, not retried
        print(f"pvn experiment: {stage.name} diverged; the report lists it", file=sys.stderr)
        return
    if rc == PREEMPTED_EXIT:
        why = f"stage {stage.name} stopped with a checkpoint (exit {rc}); the same command resumes"
        raise preemption.Preempted(why)
    if rc != 0:
        raise ConfigError(f"stage {stage.name} failed (exit {rc}): {stage.command()}")
    if stage.kind == "pretrain" and mark_done:  # it resumes into the same dir: mark it complete
        ckpts = list_checkpoints(stage.run_dir)
        done = {"checkpoint": ckpts[-1].name if ckpts else None}
        (stage.run_dir / "done.json").write_text(json.dumps(done))
    if mark_done:  # its record outlives out (pvn.experiments.kept)
        keep(stage)


def stop_stage(signum: int = signal.SIGTERM, wait_s: float = 0.0) -> None:
    """Pass ``signum`` to the stage command running in this process, if any, and wait up to
    ``wait_s`` for it to exit: asked to stop, a stage's loop writes a checkpoint where it
    stands and exits (:mod:`pvn.preemption`)."""
    proc = _stage_process
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signum)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(wait_s)


class LocalLauncher:
    """Runs the stages here, one at a time, as subprocesses; waits for stages that other local
    launchers sharing ``out`` hold. A failed stage stops it with one line naming the stage and
    its command. A stop signal (:data:`pvn.preemption.SIGNALS`: ``kill``, a cluster's warning)
    goes on to the running stage, which checkpoints where it stands; the runner then exits 75
    without starting another stage, and the same command resumes."""

    def launch(self, todo: list[Stage], store: Store) -> None:
        try:
            with preemption.stop_on_signals(also=stop_stage):
                self._loop(todo, store)
        finally:
            store.forget_runner()

    def _loop(self, todo: list[Stage], store: Store) -> None:
        waiting = False
        while True:
            if preemption.requested():  # between stages: nothing running to checkpoint
                raise preemption.stopped("between stages")
            s, lock, wait = claim(store, todo)
            if s is None and wait:  # another runner holds what is left (or what it needs)
                if not waiting:
                    print("pvn experiment: waiting for the other runners' stages",
                          file=sys.stderr)  # fmt: skip
                    store.note_runner({})
                waiting = True
                time.sleep(POLL_SECONDS)
                continue
            if s is None:  # every stage is done (prerequisites come first in the order)
                return
            waiting = False
            with lock:
                try:
                    self._run(s, todo, store)
                except PVNError:
                    if preemption.requested():  # the stage stopped (or died) on our signal
                        raise preemption.stopped(f"in stage {s.name}") from None
                    raise

    @staticmethod
    def _run(s: Stage, todo: list[Stage], store: Store) -> None:
        left = [t for t in todo if not t.done]
        eta, unknown = eta_seconds(todo, store.times(), progresses(todo, store.running()))
        print(
            f"pvn experiment: [{len(todo) - len(left) + 1}/{len(todo)}] {s.name} "
            f"({len(left)} left{'' if unknown else f', ETA {eta / 60:.0f} min'})",
            file=sys.stderr,
            flush=True,
        )
        store.note_runner({"stage": s.name, "started": time.time()})
        t0 = time.perf_counter()
        store.record_command(s)
        if s.kind != "report":  # a stage that runs again (a retried divergence) stales the report
            report = todo[-1]
            (report.run_dir / report.done_file).unlink(missing_ok=True)
        try:
            run_stage(s)
        except preemption.Preempted:  # stopped with a checkpoint: its time so far counts
            if s.kind != "report":
                store.record_time(s.name, time.perf_counter() - t0, finished=False)
            raise
        if not s.done:  # it ran to the end, so it must count as done: never run it again
            raise ConfigError(f"stage {s.name} exited 0 but is not done ({s.run_dir / s.done_file} "
                              "missing or, for a report, not covering this plan)")  # fmt: skip
        if s.kind != "report":  # not timed: its name is shared by experiments on out
            total = store.record_time(s.name, time.perf_counter() - t0)  # stopped parts too
            keep_time(s, total)
