"""What an experiment's ``out`` remembers: each stage's command, the stage times, the locks of
stages being run, and which runner runs what.

A stage is done when its done file exists (:attr:`pvn.experiments.plan.Stage.done`); the store
adds what lets runners and sessions share ``out`` honestly: a stage's run dir notes the command
that made it (``stage.json``), so an experiment whose stage of the same name has other settings
is refused rather than handed that run (:meth:`Store.check_commands`); the stages' wall times
feed the ETA; a lock per stage keeps two runners from running one stage at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
from pathlib import Path
from typing import IO, Any

from pvn.errors import ConfigError
from pvn.experiments.plan import Stage
from pvn.files import write_text_atomic

STAGE_FILE = "stage.json"  # in a stage's run dir: the command a runner ran there


class Store:
    """The shared state under an experiment's ``out``.

    Args:
        out: the experiment's ``out`` directory.
        name: the experiment's name (runner notes are per experiment, several may share ``out``).
    """

    def __init__(self, out: str | Path, name: str) -> None:
        self.out, self.name = Path(out), name

    # -- commands ----------------------------------------------------------------------------
    @staticmethod
    def record_command(stage: Stage) -> None:
        """Note in the stage's run dir the command that makes it, before running it (not the
        report's: its ``results`` directory is shared by whatever reports there)."""
        if stage.kind == "report":
            return
        stage.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(stage.run_dir / STAGE_FILE, json.dumps({"argv": stage.argv}))

    @staticmethod
    def check_commands(todo: list[Stage]) -> None:
        """Refuse an ``out`` whose stages were made by other commands than this experiment's.

        A stage is known by its run dir, and a finished one is skipped: an experiment that
        shares ``out`` with another one but changes a stage's settings (more data steps, another
        task count under the same arm name) would otherwise take the other experiment's run for
        its own. Stages no runner recorded (run by hand from ``--print-commands``) are trusted.
        """
        for s in todo:
            path = s.run_dir / STAGE_FILE
            if s.kind == "report" or not path.is_file():
                continue
            try:
                made = json.loads(path.read_text())["argv"]
            except (OSError, ValueError, KeyError, TypeError):
                raise ConfigError(f"{path}: unreadable stage record; remove it") from None
            if made != s.argv:
                raise ConfigError(
                    f"{s.run_dir}: stage {s.name} was made by `{shlex.join(['pvn', *made])}`, "
                    f"not this experiment's `{s.command()}`; give the experiment its own out, "
                    "or remove that directory"
                )

    # -- times -------------------------------------------------------------------------------
    @property
    def _times_file(self) -> Path:
        return self.out / "stage_times.json"

    @property
    def _parts_file(self) -> Path:
        return self.out / "stage_times_stopped.json"

    def times(self, parts: bool = False) -> dict[str, float]:
        """Wall seconds of every stage finished by a runner (kept across runners, sessions);
        ``parts``: instead, the seconds that unfinished stages ran before they were stopped."""
        f = self._parts_file if parts else self._times_file
        return json.loads(f.read_text()) if f.is_file() else {}

    def record_time(self, name: str, seconds: float, finished: bool = True) -> float:
        """Add a stage's time: a part that ended with a stop (``finished`` false,
        :mod:`pvn.preemption`) is kept aside and counted in when the stage finishes, so a stage
        resumed across sessions is timed whole (a runner killed outright notes nothing). Runners
        sharing ``out`` take turns (a blocking lock), so none overwrites another's entry. Returns
        the stage's seconds so far (its whole time, when ``finished``)."""
        lock = self.out / ".locks" / "stage_times.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            parts = self.times(parts=True)
            before = parts.pop(name, 0.0)
            total = round(before + seconds, 1)
            if finished:
                times = {**self.times(), name: total}
                write_text_atomic(self._times_file, json.dumps(times, indent=1))
            else:
                parts[name] = total
            write_text_atomic(self._parts_file, json.dumps(parts, indent=1))
        return total

    @staticmethod
    def file_time(stage: Stage) -> float | None:
        """A finished stage's time from its files (its config.yaml is written when it starts,
        its done file when it ends), for stages no runner timed; an underestimate when the
        stage was resumed (the config is written again)."""
        end = stage.run_dir / ("diverged.json" if stage.diverged else stage.done_file)
        start = stage.run_dir / "config.yaml"
        if not (stage.done and start.is_file() and end.is_file()):
            return None
        dt = end.stat().st_mtime - start.stat().st_mtime
        return dt if dt > 0 else None

    # -- locks and runners -------------------------------------------------------------------
    def try_lock(self, stage: Stage) -> IO[str] | None:
        """The stage's lock, held until the returned file is closed; None when another runner
        holds it. The kernel drops a lock when its holder dies, so a killed runner leaves none
        behind."""
        path = self.out / ".locks" / (stage.name.replace("/", "__") + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "w")  # noqa: SIM115 (held across the stage's run)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        return f

    @property
    def _runners(self) -> Path:
        return self.out / "runners"

    @property
    def _runner_file(self) -> Path:
        """This runner's note (one file per runner process)."""
        return self._runners / f"{self.name}.{os.getpid()}.json"

    def note_runner(self, info: dict[str, Any]) -> None:
        """Say what this runner is doing (its pid, and the stage it runs, if any)."""
        self._runners.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self._runner_file, json.dumps({"pid": os.getpid(), **info}))

    def forget_runner(self) -> None:
        self._runner_file.unlink(missing_ok=True)

    def running(self) -> set[str]:
        """The stages that live runners on ``out`` (of any experiment sharing it) are running;
        notes of dead runners are removed."""
        running = set()
        notes = sorted(self._runners.glob("*.json")) if self._runners.is_dir() else []
        for f in notes:
            try:
                info = json.loads(f.read_text())
            except (OSError, ValueError):
                continue  # gone since the glob
            try:
                os.kill(int(info["pid"]), 0)
            except (OSError, ValueError, KeyError):  # that runner died (killed, session ended)
                f.unlink(missing_ok=True)
                continue
            running.add(info.get("stage"))
        return running
