"""``pvn experiment CONFIG.yaml``: games x seeds x arms, each stage run once, resumable.

An experiment is a list of stages, each one ``pvn`` command with its own run directory:

1. ``data/<game>``: the log to pretrain on -- a learning agent's training run logged with
   ``replay_log=`` (``data.kind: agent``; e.g. ``eval_preset=dopamine_dqn``) or ``pvn collect``
   (``data.kind: collect``); with ``data.kind: dataset`` the logs already exist, one DQN Replay
   directory per game under ``data.path`` (the official dataset, another experiment's logs),
   and there is no data stage;
2. ``pretrain/<game>``: a PVN pretrained on that log; an arm with its own ``pretrain:``
   overrides (a knob: more tasks, another firing rate, longer) gets its own,
   ``pretrain/<game>-<arm>``, the experiment's overrides followed by the arm's;
3. ``eval/<game>/<arm>/seed<k>``: each arm (``encoder: pvn`` -- the game's pretrained PVN --,
   ``random`` or ``e2e``, with its own overrides) at each seed (the experiment's ``seeds``, or
   the arm's own ``seeds:``, e.g. one seed of a costly end-to-end arm);
4. ``report``: ``pvn report`` over every evaluation, each run labelled by its arm (and offline
   probes per game), the per-run CSV and the config, under ``results``.

Several runners may share ``out``: runners of one experiment (one per core or machine), or of
experiments that share stages (a knob study reusing another experiment's logs, PVN and baseline
runs: a stage is the same run wherever its command is the same). Each stage is locked while it
runs (:func:`claim`), so the runners split the stages between them and never run one twice at
once; a runner with nothing left to start waits for the others' stages it still needs. A runner
notes each stage's command in its run dir (``stage.json``) and refuses an ``out`` whose stage
was made by another command (:func:`check_commands`): same name, other settings.

A stage whose output is complete is skipped; one that was killed is re-run with the same command,
and every ``pvn`` command resumes from its own checkpoints, so the experiment continues across
interruptions and machines. A failed stage stops the runner with one line naming the stage and
its command. ``--print-commands`` prints the commands instead (one per line, in order), for a
cluster launcher; ``--status`` prints which stages are done and left; ``--report`` writes the
report over the evaluations finished so far (``stages.txt`` beside it says which), without
marking the report stage done.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from omegaconf import OmegaConf

from pvn.checkpoint import list_checkpoints
from pvn.errors import ConfigError
from pvn.files import write_text_atomic

ARM_ENCODERS = ("pvn", "random", "e2e")
DATA_KINDS = ("agent", "collect", "dataset")
POLL_SECONDS = 5  # how often a runner waiting for other runners' stages looks again


@dataclass
class Stage:
    name: str
    argv: list[str]  # arguments of the `pvn` command
    run_dir: Path
    kind: str  # data | pretrain | eval | report
    done_file: str  # the file whose presence marks the stage complete
    after: list[str] = field(default_factory=list)  # stages that must be complete first

    @property
    def done(self) -> bool:
        path = self.run_dir / self.done_file
        if self.kind != "report" or not path.is_file():
            return path.is_file()
        try:  # a report is done when it covers every evaluation the config now has
            return json.loads(path.read_text()).get("evaluations") == self.after
        except (OSError, ValueError, AttributeError):
            return False

    def command(self) -> str:
        return shlex.join(["pvn", *self.argv])


def load(path: str | Path) -> dict[str, Any]:
    """The experiment config, checked: one line naming the key when something is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such experiment config")
    cfg = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    for key in ("name", "out", "results", "games", "seeds", "data", "pretrain", "arms"):
        if key not in cfg:
            raise ConfigError(f"{p}: missing key '{key}'")
    kind = cfg["data"].get("kind")
    if kind not in DATA_KINDS:
        raise ConfigError(f"{p}: data.kind={kind!r}: choose one of {DATA_KINDS}")
    if kind == "dataset" and not cfg["data"].get("path"):
        raise ConfigError(f"{p}: data.kind=dataset needs data.path (a directory of <game>/ logs)")
    for arm, spec in cfg["arms"].items():
        if spec.get("encoder") not in ARM_ENCODERS:
            raise ConfigError(
                f"{p}: arms.{arm}.encoder={spec.get('encoder')!r}: choose one of {ARM_ENCODERS}"
            )
        seeds = spec.get("seeds", cfg["seeds"])
        if not isinstance(seeds, list) or not all(isinstance(x, int) for x in seeds):
            raise ConfigError(f"{p}: arms.{arm}.seeds={seeds!r}: give a list of integers")
        if "pretrain" in spec and spec["encoder"] != "pvn":
            raise ConfigError(f"{p}: arms.{arm}.pretrain: only an arm with encoder: pvn pretrains")
    return cfg


def data_dir(cfg: dict[str, Any], game: str) -> Path:
    """The game's log: made by the data stage, or given (``data.kind: dataset``)."""
    if cfg["data"]["kind"] == "dataset":
        return Path(cfg["data"]["path"]) / game
    return Path(cfg["out"]) / "data" / game


def _pretrain_stage(
    out: Path, name: str, data: Path, seed: int, overrides: list[str], after: list[str]
) -> Stage:
    run = out / "pretrain" / name
    argv = ["pretrain", f"data.path={data}", f"run_dir={run}", f"seed={seed}", "progress=false"]
    return Stage(f"pretrain/{name}", [*argv, *overrides], run, "pretrain", "done.json", after)


def stages(cfg: dict[str, Any]) -> list[Stage]:
    """Every stage of the experiment, in an order that respects their dependencies.

    The data and pretraining of every game come first, then the evaluations seed by seed (seed
    0 of every game and arm, then seed 1, ...), so an interrupted experiment has whole paired
    seeds of every game to compare; end-to-end arms run last: each costs about ten linear arms,
    and the question the experiment asks (PVN features against random ones) is answered by the
    linear stages.
    """
    out, results = Path(cfg["out"]), Path(cfg["results"])
    seed0 = int(cfg.get("seed", 0))
    todo: list[Stage] = []
    linear: list[tuple[int, Stage]] = []  # (seed's position, stage)
    e2e: list[tuple[int, Stage]] = []
    for game in cfg["games"]:
        data = data_dir(cfg, game)
        if cfg["data"]["kind"] == "agent":
            run = data / "agent"
            argv = ["evaluate", f"game={game}", f"run_dir={run}", f"replay_log={data}"]
            argv += [f"seed={seed0}", "progress=false", *cfg["data"].get("overrides", [])]
            todo.append(Stage(f"data/{game}", argv, run, "data", "results.json"))
        elif cfg["data"]["kind"] == "collect":
            argv = ["collect", f"game={game}", f"out={data}", f"seed={seed0}", "progress=false"]
            argv += cfg["data"].get("overrides", [])
            todo.append(Stage(f"data/{game}", argv, data, "data", "collect.json"))
        needs_data = [f"data/{game}"] if cfg["data"]["kind"] != "dataset" else []
        base = cfg["pretrain"].get("overrides", [])
        game_pvn = _pretrain_stage(out, game, data, seed0, base, needs_data)
        todo.append(game_pvn)
        for arm, spec in cfg["arms"].items():
            encoder, after = spec["encoder"], []
            if encoder == "pvn":
                pre = game_pvn
                if spec.get("pretrain"):  # a knob: the arm's own pretraining
                    knob = [*base, *spec["pretrain"]]
                    pre = _pretrain_stage(out, f"{game}-{arm}", data, seed0, knob, needs_data)
                    todo.append(pre)
                encoder, after = str(pre.run_dir), [pre.name]
            for seed in spec.get("seeds", cfg["seeds"]):  # the arm's own seeds, or all
                # ordered by the seed's place in the experiment's seeds (paired seeds together)
                k = cfg["seeds"].index(seed) if seed in cfg["seeds"] else len(cfg["seeds"]) + seed
                run = out / "eval" / game / arm / f"seed{seed}"
                argv = ["evaluate", f"encoder={encoder}", f"game={game}", f"run_dir={run}"]
                argv += [f"seed={seed}", "progress=false", *spec.get("overrides", [])]
                stage = Stage(f"eval/{game}/{arm}/seed{seed}", argv, run, "eval", "results.json",
                              after)  # fmt: skip
                (e2e if spec["encoder"] == "e2e" else linear).append((k, stage))
    evals = [st for _, st in sorted(linear, key=lambda x: x[0])]  # stable: game, arm order
    evals += [st for _, st in sorted(e2e, key=lambda x: x[0])]
    report = Stage("report", [], results, "report", "complete.json", [e.name for e in evals])
    return [*todo, *evals, report]


STAGE_FILE = "stage.json"  # in a stage's run dir: the command a runner ran there


def _record_command(stage: Stage) -> None:
    """Note in the stage's run dir the command that makes it, before running it."""
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stage.run_dir / STAGE_FILE, json.dumps({"argv": stage.argv}))


def check_commands(todo: list[Stage]) -> None:
    """Refuse an ``out`` whose stages were made by other commands than this experiment's.

    A stage is known by its run dir, and a finished one is skipped: an experiment that shares
    ``out`` with another one but changes a stage's settings (more data steps, another task
    count under the same arm name) would otherwise take the other experiment's run for its own.
    Stages no runner recorded (run from ``--print-commands``, or by hand) are trusted.
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
                f"{s.run_dir}: stage {s.name} was made by `{shlex.join(['pvn', *made])}`, not "
                f"this experiment's `{s.command()}`; give the experiment its own out, or remove "
                "that directory"
            )


def _die_with_parent() -> None:
    """In the stage's process: receive SIGKILL when the runner dies (Linux), so a killed runner
    leaves no stage running on to finish behind the next runner's back."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_stage(stage: Stage) -> None:
    """Run one stage as a `pvn` subprocess (its own thread plan; a crash stays its own)."""
    rc = subprocess.call([sys.executable, "-m", "pvn", *stage.argv], preexec_fn=_die_with_parent)
    if rc != 0:
        raise ConfigError(f"stage {stage.name} failed (exit {rc}): {stage.command()}")
    if stage.kind == "pretrain":  # pretrain resumes into the same dir; mark it complete
        ckpts = list_checkpoints(stage.run_dir)
        (stage.run_dir / "done.json").write_text(
            json.dumps({"checkpoint": ckpts[-1].name if ckpts else None})
        )


def write_report(cfg: dict[str, Any], todo: list[Stage], config_path: Path) -> None:
    """The report stage: ``pvn report`` over every finished evaluation, per-game probes on the
    logs, the raw per-run CSV, the experiment config and ``stages.txt`` (which stages the report
    covers), under ``results``. ``complete.json`` marks a report over every stage; ``pvn
    experiment CONFIG --report`` writes one over the stages finished so far without it."""
    from pvn.report import final_score, load_results, report

    results = Path(cfg["results"])
    evals = [s for s in todo if s.kind == "eval" and s.done]
    if not evals:
        raise ConfigError(f"{config_path}: no evaluation stage has finished yet; nothing to report")
    results.mkdir(parents=True, exist_ok=True)
    (results / "complete.json").unlink(missing_ok=True)
    shutil.copyfile(config_path, results / "experiment.yaml")
    arms = [s.name.split("/")[2] for s in evals]  # each run is labelled by its arm
    report([str(s.run_dir) for s in evals], results, methods=arms)
    for game in cfg["games"]:
        mine = [i for i, s in enumerate(evals) if s.name.startswith(f"eval/{game}/")]
        if cfg.get("probes", True) and mine:
            dirs, labels = [str(evals[i].run_dir) for i in mine], [arms[i] for i in mine]
            report(dirs, results / f"probes_{game}", data=data_dir(cfg, game), methods=labels)
    rows = []
    for s in evals:
        res = load_results(s.run_dir)
        score, scored_by = final_score(res)
        _, game, arm, seed = s.name.split("/")
        final_eval = res["evaluations"][-1]["returns"] if res.get("evaluations") else []
        rows.append([game, int(seed[4:]), arm, res["method"], score, scored_by,
                     len(res["episodes"]), json.dumps(final_eval)])  # fmt: skip
    tmp = results / ".runs.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["game", "seed", "arm", "method", "final_score", "scored_by",
                    "training_episodes", "final_evaluation_returns"])  # fmt: skip
        w.writerows(rows)
    tmp.replace(results / "runs.csv")
    if all(s.done for s in todo if s.kind != "report"):
        covered = {"evaluations": [s.name for s in evals]}  # what Stage.done compares
        (results / "complete.json").write_text(json.dumps(covered, indent=1) + "\n")
    (results / "stages.txt").write_text(status_table(todo) + "\n")


def _times_file(cfg: dict[str, Any]) -> Path:
    return Path(cfg["out"]) / "stage_times.json"


def _runners(cfg: dict[str, Any]) -> Path:
    return Path(cfg["out"]) / "runners"


def _runner_file(cfg: dict[str, Any]) -> Path:
    """This runner's note of the stage it is running (one file per runner process)."""
    return _runners(cfg) / f"{cfg['name']}.{os.getpid()}.json"


def _try_lock(cfg: dict[str, Any], stage: Stage) -> IO[str] | None:
    """The stage's lock, held until the returned file is closed; None when another runner holds
    it. The kernel drops a lock when its holder dies, so a killed runner leaves none behind."""
    path = Path(cfg["out"]) / ".locks" / (stage.name.replace("/", "__") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w")  # noqa: SIM115 (held across the stage's run)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def claim(cfg: dict[str, Any], todo: list[Stage]) -> tuple[Stage | None, IO[str] | None, bool]:
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
        lock = _try_lock(cfg, s)
        if lock is None:
            held = True
        elif s.done:  # another runner finished it just now
            lock.close()
            done.add(s.name)
        else:
            return s, lock, held
    return None, None, held


def stage_times(cfg: dict[str, Any]) -> dict[str, float]:
    """Wall seconds of every stage finished by a runner (kept across runners and sessions)."""
    f = _times_file(cfg)
    return json.loads(f.read_text()) if f.is_file() else {}


def _record_time(cfg: dict[str, Any], name: str, seconds: float) -> None:
    """Add a finished stage's time to ``stage_times.json``; runners sharing ``out`` take turns
    (a blocking lock), so none overwrites another's entry."""
    lock = Path(cfg["out"]) / ".locks" / "stage_times.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        times = {**stage_times(cfg), name: round(seconds, 1)}
        write_text_atomic(_times_file(cfg), json.dumps(times, indent=1))


def _file_time(stage: Stage) -> float | None:
    """A finished stage's time from its files (its config.yaml is written when it starts, its
    done file when it ends), for stages no runner timed (run from ``--print-commands``); an
    underestimate when the stage was resumed (the config is written again)."""
    start, end = stage.run_dir / "config.yaml", stage.run_dir / stage.done_file
    if not (stage.done and start.is_file()):
        return None
    dt = end.stat().st_mtime - start.stat().st_mtime
    return dt if dt > 0 else None


def _running(cfg: dict[str, Any]) -> set[str]:
    """The stages that live runners on ``out`` (of any experiment sharing it) are running."""
    running = set()
    for f in sorted(_runners(cfg).glob("*.json")) if _runners(cfg).is_dir() else []:
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


def eta_seconds(todo: list[Stage], times: dict[str, float]) -> tuple[float, list[str]]:
    """Seconds left: each unfinished stage at the mean time of the finished stages of its kind
    (eval stages: linear or end-to-end, which costs ~10 linear ones); and the kinds with no
    finished stage yet (not counted)."""

    def kind(s: Stage) -> str:
        if s.kind != "eval":
            return s.kind
        return "eval/e2e" if "encoder=e2e" in s.argv else "eval/linear"

    by_kind: dict[str, list[float]] = {}
    for s in todo:
        t = times.get(s.name) or _file_time(s)
        if t is not None:
            by_kind.setdefault(kind(s), []).append(t)
    left, unknown = 0.0, []
    for s in todo:
        if s.done or s.kind == "report":
            continue
        if kind(s) in by_kind:
            left += sum(by_kind[kind(s)]) / len(by_kind[kind(s)])
        elif kind(s) not in unknown:
            unknown.append(kind(s))
    return left, unknown


def status_table(todo: list[Stage], cfg: dict[str, Any] | None = None) -> str:
    """Which stages are done, running (by a live runner) and left, with the ETA from the
    finished stages' times."""
    done = [s for s in todo if s.done]
    running = _running(cfg) if cfg else set()
    lines = [f"{len(done)} of {len(todo)} stages done"]
    if cfg is not None and len(done) < len(todo):
        left, unknown = eta_seconds(todo, stage_times(cfg))
        note = f" (not counting {', '.join(unknown)}: no finished stage to time)" if unknown else ""
        lines[0] += f"; ETA {left / 3600:.1f} h{note}" if left else f"; ETA unknown{note}"
    for s in todo:
        state = "done" if s.done else "running" if s.name in running else "left"
        lines.append(f"  {state:7} {s.name}")
    return "\n".join(lines)


def run(
    config_path: str | Path,
    print_commands: bool = False,
    status: bool = False,
    report_now: bool = False,
) -> int:
    cfg = load(config_path)
    todo = stages(cfg)
    if not print_commands:  # the commands are printed as they are, to run anywhere
        check_commands(todo)
    if report_now:
        write_report(cfg, todo, Path(config_path))
        print(status_table(todo, cfg))
        return 0
    if print_commands:
        for s in todo:
            if s.kind == "report":
                print(f"pvn experiment {shlex.quote(str(config_path))}  # the report stage")
            else:
                print(s.command())
        return 0
    if status:
        print(status_table(todo, cfg))
        return 0
    _runners(cfg).mkdir(parents=True, exist_ok=True)
    waiting = False
    try:
        while True:
            s, lock, wait = claim(cfg, todo)
            if s is None and wait:  # another runner holds what is left (or what it needs)
                if not waiting:
                    print("pvn experiment: waiting for the other runners' stages", file=sys.stderr)
                    write_text_atomic(_runner_file(cfg), json.dumps({"pid": os.getpid()}))
                waiting = True
                time.sleep(POLL_SECONDS)
                continue
            if s is None:  # every stage is done (the stage order puts prerequisites first)
                break
            waiting = False
            with lock:
                left = [t for t in todo if not t.done]
                eta, unknown = eta_seconds(todo, stage_times(cfg))
                print(
                    f"pvn experiment: [{len(todo) - len(left) + 1}/{len(todo)}] {s.name} "
                    f"({len(left)} left{'' if unknown else f', ETA {eta / 60:.0f} min'})",
                    file=sys.stderr,
                    flush=True,
                )
                info = {"pid": os.getpid(), "stage": s.name, "started": time.time()}
                write_text_atomic(_runner_file(cfg), json.dumps(info))
                t0 = time.perf_counter()
                if s.kind == "report":  # not timed: its name is shared by experiments on out
                    write_report(cfg, todo, Path(config_path))
                else:
                    _record_command(s)
                    _run_stage(s)
                    _record_time(cfg, s.name, time.perf_counter() - t0)
    finally:
        _runner_file(cfg).unlink(missing_ok=True)
    print(status_table(todo, cfg))
    return 0
