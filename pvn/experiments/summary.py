"""An experiment's readings: the ETA, the status table and the report over its evaluations."""

from __future__ import annotations

import csv
import hashlib
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pvn.checkpoint import checkpoint_step, list_checkpoints
from pvn.errors import ConfigError
from pvn.experiments.cluster import LIVE
from pvn.experiments.kept import keep, keep_measures, keep_time, restored
from pvn.experiments.plan import Stage, data_dir
from pvn.experiments.store import Store
from pvn.files import write_text_atomic


def stage_progress(s: Stage) -> tuple[int, int, float] | None:
    """A started stage's progress from its run dir: (steps done, steps in all, steps per
    second), from the last line of ``metrics.jsonl`` (agent steps or updates, with the rate the
    run logs beside them) and ``steps`` of the run's ``config.yaml``; None where a run logs no
    rate (``pvn collect``) or has not logged yet."""
    metrics, config = s.run_dir / "metrics.jsonl", s.run_dir / "config.yaml"
    try:
        with open(metrics, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            last = json.loads(f.read().splitlines()[-1])
        total = int(yaml.safe_load(config.read_text())["steps"])
        rate = float(last.get("steps_per_s") or last.get("updates_per_s") or 0)
        return (int(last["step"]), total, rate) if rate > 0 else None
    except (OSError, IndexError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None


def stopped_progress(s: Stage) -> tuple[int, int, float] | None:
    """A stage stopped before its end (killed, or asked to stop: :mod:`pvn.preemption`) that
    left a checkpoint: (the step it resumes from, steps in all, its last logged rate); None
    where it left no checkpoint or no rate."""
    ckpts = list_checkpoints(s.run_dir)
    p = stage_progress(s) if ckpts else None
    return (checkpoint_step(ckpts[-1]), p[1], p[2]) if p is not None else None


def progresses(todo: list[Stage], running: set[str]) -> dict[str, tuple[int, int, float]]:
    """Each unfinished stage's progress where it has one: a running stage's as it logs it
    (:func:`stage_progress`), a stopped one's from its checkpoint (:func:`stopped_progress`)."""
    out = {}
    for s in todo:
        if not s.done and s.kind != "report":
            p = stage_progress(s) if s.name in running else stopped_progress(s)
            if p is not None:
                out[s.name] = p
    return out


def eta_seconds(
    todo: list[Stage], times: dict[str, float], progress: dict[str, tuple[int, int, float]]
) -> tuple[float, list[str]]:
    """Seconds left: each unfinished stage at the mean time of the finished stages of its kind
    (eval stages: linear or end-to-end, which costs ~10 linear ones), one with a ``progress``
    (:func:`progresses`: running, or stopped with a checkpoint) at what its rate leaves, which
    also times its kind while none of it has finished; and the kinds with no stage to time them
    (not counted)."""

    def kind(s: Stage) -> str:
        if s.kind != "eval":
            return s.kind
        return "eval/e2e" if "encoder=e2e" in s.argv else "eval/linear"

    by_kind: dict[str, list[float]] = {}
    for s in todo:
        t = times.get(s.name) or Store.file_time(s)
        if t is not None:
            by_kind.setdefault(kind(s), []).append(t)
    projected: dict[str, list[float]] = {}  # a running stage's whole time at its rate
    for s in todo:
        if (p := progress.get(s.name)) is not None:
            projected.setdefault(kind(s), []).append(p[1] / p[2])
    left, unknown = 0.0, []
    for s in todo:
        if s.done or s.kind == "report":
            continue
        known = by_kind.get(kind(s)) or projected.get(kind(s))
        if (p := progress.get(s.name)) is not None:
            left += max(p[1] - p[0], 0) / p[2]
        elif known:
            left += sum(known) / len(known)
        elif kind(s) not in unknown:
            unknown.append(kind(s))
    return left, unknown


def status_table(
    todo: list[Stage],
    store: Store | None = None,
    jobs: dict[str, tuple[dict[str, Any], str]] | None = None,
    times: dict[str, float] | None = None,
    kept: set[str] | None = None,
) -> str:
    """Which stages are done (with the time each took: ``times``, or the store's), running (by
    a live runner, with its progress), kept (``kept``: gone from ``out``, restored from their
    records when a runner starts, :mod:`pvn.experiments.kept`) and left, with the ETA (one
    runner's, and shared by the runners now busy); with ``jobs`` (a stage's job record and
    SLURM's state of it, :func:`pvn.experiments.cluster.job_states`), each unfinished stage's
    job, its state and, once it ended without finishing, its log."""
    kept = kept or set()
    done = [s for s in todo if s.done]
    recorded = store.times() if store else {}  # read once: the ETA's and the table's
    times = recorded if times is None else times
    running = store.running() if store else set()
    running |= {name for name, (_, slurm) in (jobs or {}).items() if slurm == "RUNNING"}
    progress = progresses(todo, running)
    lines = [f"{len(done)} of {len(todo)} stages done"]
    if kept:
        lines[0] += f" and {len(kept)} kept (restored when a runner starts)"
    if store is not None and len(done) < len(todo):
        left, unknown = eta_seconds([s for s in todo if s.name not in kept], recorded, progress)
        note = f" (not counting {', '.join(unknown)}: no finished stage to time)" if unknown else ""
        busy = len(running & {s.name for s in todo})  # runners on this experiment's stages
        share = f", ~{left / busy / 3600:.1f} h at {busy} runners" if busy > 1 else ""
        lines[0] += f"; ETA {left / 3600:.1f} h{share}{note}" if left else f"; ETA unknown{note}"
    for s in todo:
        state = ("diverged" if s.diverged else "done" if s.done else "kept" if s.name in kept
                 else "running" if s.name in running else "left")  # fmt: skip
        job = ""
        if jobs and s.name in jobs and not s.done:
            record, slurm = jobs[s.name]
            if slurm in LIVE:
                state = "running" if slurm == "RUNNING" else "queued"
            else:  # it ended without the stage's done file: failed, cancelled, timeout, gone
                state = slurm.lower()
            job = f"  (job {record['job_id']} {slurm}"
            job += ")" if slurm in LIVE else f"; log {record['log']})"
        p = progress.get(s.name)
        if s.done and s.name in times:
            job += f"  ({_duration(times[s.name])})"
        if p is not None and s.name in running:
            done_steps, total, rate = p
            job += (f"  ({done_steps:,} of {total:,} steps, {rate:.3g}/s: "
                    f"{max(total - done_steps, 0) / rate / 60:.0f} min left)")  # fmt: skip
        elif p is not None:
            at, total, rate = p
            job += (f"  (resumes from step {at:,} of {total:,}; {rate:.3g}/s when it stopped: "
                    f"{max(total - at, 0) / rate / 60:.0f} min left)")  # fmt: skip
        lines.append(f"  {state:7} {s.name}{job}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def write_report(cfg: dict[str, Any], todo: list[Stage], config_path: Path) -> None:
    """The report stage: ``pvn report`` over every finished evaluation, per-game probes on the
    logs, the raw per-run CSV, every pretraining measured offline
    (:mod:`pvn.experiments.measures`), the experiment config and ``stages.txt`` (which stages
    the report covers), under ``results``. ``complete.json`` marks a report over every stage;
    ``pvn experiment CONFIG --report`` writes one over the stages finished so far without it."""
    from pvn.experiments.measures import pretraining_report

    results = Path(cfg["results"])
    evals = [s for s in todo if s.kind == "eval" and s.done]
    pretrainings = [s for s in todo if s.kind == "pretrain" and s.done]
    if not evals and not pretrainings:
        raise ConfigError(f"{config_path}: no evaluation or pretraining arm has finished yet; "
                          "nothing to report")  # fmt: skip
    results.mkdir(parents=True, exist_ok=True)
    (results / "complete.json").unlink(missing_ok=True)
    times = Store(cfg["out"], cfg["name"]).times()  # each stage's wall time, stops included
    for s in todo:  # finished stages no runner of this experiment kept (another's, or older)
        if s.kept is not None and s.done and not (s.kept / "stage.json").is_file():
            keep(s)
            if s.name in times:
                keep_time(s, times[s.name])
    shutil.copyfile(config_path, results / "experiment.yaml")
    if pretrainings:
        pretraining_report(cfg, pretrainings, results)
        for s in pretrainings:  # the measures need the log: kept beside the run's record
            keep_measures(s)
    if cfg.get("torsos"):
        _export_torsos(cfg, todo, results / "torsos")
    if cfg["data"]["kind"] == "agent":
        _data_agents(todo, results)
    if evals:
        gone = {s.name.split("/")[1] for s in todo if s.kind == "data" and restored(s)}
        _control_report(cfg, evals, results, logs_gone=gone)
    if all(s.done for s in todo if s.kind != "report"):
        report_stage = next(s for s in todo if s.kind == "report")
        covered = {"stages": report_stage.after, "digest": report_stage.digest}
        (results / "complete.json").write_text(json.dumps(covered, indent=1) + "\n")
    (results / "stages.txt").write_text(status_table(todo, times=times) + "\n")


def spread(returns: list[float]) -> tuple[float, int]:
    """An evaluation's spread: the standard deviation of its episodes' returns and how many
    distinct returns they hold (is the score one episode replayed, or a sample?)."""
    return float(np.std(returns)), len(set(returns))


def _data_agents(todo: list[Stage], results: Path) -> None:
    """``data_agents.md``: the greedy evaluations of each game's logging agent (``data.kind:
    agent``) along its run, mean ± sd of the episodes' returns (distinct returns among them:
    one replayed episode or samples?) and the mean's human-normalised score: the end-to-end
    reference the linear arms meet at equal agent steps."""
    from pvn.analysis.scores import human_normalized
    from pvn.commands.report import load_results

    lines = ["# The logging agents' evaluations", "",
             "| game | agent step | episodes | return: mean ± sd (distinct) | HNS of the mean |",
             "|---|---|---|---|---|"]  # fmt: skip
    for s in todo:
        if s.kind != "data" or not s.done:
            continue
        run = load_results(s.run_dir)
        for ev in run.get("evaluations") or []:
            if r := ev["returns"]:
                mean = float(np.mean(r))
                sd, distinct = spread(r)
                lines.append(
                    f"| {run['game']} | {ev['step']:,} | {len(r)} | {mean:.1f} ± {sd:.1f} "
                    f"({distinct}) | {human_normalized(run['game'], mean):.3f} |"
                )
    write_text_atomic(results / "data_agents.md", "\n".join(lines) + "\n")


def _export_torsos(cfg: dict[str, Any], todo: list[Stage], to: Path) -> None:
    """Each game's pretrained torso (the PVN its ``encoder: pvn`` arms read) as
    ``torsos/<game>.pt``, a few MB that :func:`pvn.load_encoder` opens, and ``torsos.md``: the
    command that runs each of the experiment's arms from them at a new seed, without the logs or
    the pretraining (a random arm's torso is drawn from its run's ``seed``)."""
    from pvn.encoder import export_encoder

    lines = ["# The experiment's torsos", "",
             "Each game's PVN torso, exported from its pretraining's last checkpoint "
             "(`pvn.load_encoder(path)` opens it); a random torso is drawn from the run's "
             "`seed`. Each arm at a new seed (here 100):", ""]  # fmt: skip
    for game in cfg["games"]:
        pre = next((s for s in todo if s.name == f"pretrain/{game}" and s.done), None)
        if pre is None:  # no control arm reads a PVN of this game, or it is not pretrained yet
            continue
        path = export_encoder(pre.run_dir, to / f"{game}.pt", game=game, command=["pvn", *pre.argv])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        lines += [f"## {game}", "", f"`{path.name}` (sha256 {digest}…), made by", "",
                  f"    pvn {shlex.join(pre.argv)}", ""]  # fmt: skip
        # one evaluation per arm that needs no other pretraining: its command, at seed 100
        mine = {f"encoder={pre.run_dir}", "encoder=random", "encoder=e2e"}
        arms = {}
        for s in todo:
            if s.kind == "eval" and s.name.startswith(f"eval/{game}/") and mine & set(s.argv):
                arms.setdefault(s.name.split("/")[2], s.argv)
        for arm, argv in arms.items():
            new = [
                f"encoder={path}" if a == f"encoder={pre.run_dir}"
                else f"run_dir=runs/{game}-{arm}-seed100" if a.startswith("run_dir=")
                else "seed=100" if a.startswith("seed=") else a
                for a in argv
            ]  # fmt: skip
            lines += [f"{arm}:", "", f"    pvn {shlex.join(new)}", ""]
    write_text_atomic(to.parent / "torsos.md", "\n".join(lines))


def _control_report(
    cfg: dict[str, Any], evals: list[Stage], results: Path, logs_gone: set[str]
) -> None:
    """``pvn report`` over the finished evaluations (each run labelled by its arm), per-game
    probes (not of the games in ``logs_gone``: their data stages were restored from kept
    records, without the log) and ``runs.csv``."""
    from pvn.commands.report import final_score, load_results, report

    arms = [s.name.split("/")[2] for s in evals]
    report([str(s.run_dir) for s in evals], results, methods=arms)
    for game in cfg["games"]:
        mine = [i for i, s in enumerate(evals) if s.name.startswith(f"eval/{game}/")]
        if cfg.get("probes", True) and mine and game in logs_gone:
            print(f"pvn experiment: no probes of {game}: its log is gone (its data stage was "
                  "restored from its kept record); an earlier report's probes_" + game +
                  "/ stands", file=sys.stderr)  # fmt: skip
        elif cfg.get("probes", True) and mine:
            dirs, labels = [str(evals[i].run_dir) for i in mine], [arms[i] for i in mine]
            report(dirs, results / f"probes_{game}", data=data_dir(cfg, game), methods=labels)
    rows = []
    for s in evals:
        res = load_results(s.run_dir)
        score, scored_by = final_score(res)
        _, game, arm, seed = s.name.split("/")
        final_eval = res["evaluations"][-1]["returns"] if res.get("evaluations") else []
        rows.append([game, int(seed[4:]), arm, res["method"], score, scored_by,
                     len(res["episodes"]), json.dumps(final_eval),
                     *(spread(final_eval) if final_eval else ("", 0))])  # fmt: skip
    tmp = results / ".runs.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["game", "seed", "arm", "method", "final_score", "scored_by",
                    "training_episodes", "final_evaluation_returns",
                    # is the score one episode replayed (no sticky actions) or a sample?
                    "final_evaluation_std", "final_evaluation_distinct"])  # fmt: skip
        w.writerows(rows)
    tmp.replace(results / "runs.csv")
