"""The harness the study scripts share (``study_local.py``, ``study_optim_moe.py``,
``study_distributed.py``): collecting the study's log once, the common
options and the resumable pretraining of every (arm, seed) of a single-log study, loading a
finished run's learner, the held-out batch and its TD losses, and writing the results as data --
``docs/<study>_results.json`` (every number) and ``docs/<study>_tables.md`` (plain tables, one
caption line each). The docs pages that discuss them are written by hand."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN_CKPT, HELDOUT_CKPT = 0, 1  # the study trains on checkpoint 0 and holds checkpoint 1 out


def log(msg: str) -> None:
    print(
        f"[{Path(sys.argv[0]).stem} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True
    )


def rel(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def collect_data(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """One log of random play with >= 2 full checkpoints; reused if already there."""
    summary_file = data_dir / "collect.json"
    capacity = int(args.collect_steps * 0.45)
    cmd = [
        sys.executable,
        "-m",
        "pvn",
        "collect",
        f"game={args.game}",
        f"steps={args.collect_steps}",
        f"out={data_dir}",
        "num_envs=8",
        "seed=0",
        f"capacity={capacity}",
        "progress=false",
    ]
    wall_file = data_dir / "study_collect_wall.json"
    if not (summary_file.is_file() and wall_file.is_file()):
        if data_dir.exists():
            shutil.rmtree(data_dir)  # a half-written log of an interrupted run
        log("collect: " + shlex.join(cmd[3:]))
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env())
        wall_file.write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    summary = json.loads(summary_file.read_text())
    summary["wall_s"] = json.loads(wall_file.read_text())["wall_s"]
    if len(summary["checkpoints"]) < 2:
        raise SystemExit(f"{data_dir}: fewer than 2 replay checkpoints; raise --collect-steps")
    shown = [a.replace(f"out={data_dir}", f"out={rel(data_dir)}") for a in cmd[3:]]
    summary["command"] = "pvn " + shlex.join(shown)
    summary["capacity"] = capacity
    return summary


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model or platform.processor()}, {os.cpu_count()} logical CPUs (shared), "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread, "
        f"Python {platform.python_version()}"
    )


# ---------------------------------------------------------------------------------------------
# single-log pretraining studies (study_local.py, study_optim_moe.py): options and runs
# ---------------------------------------------------------------------------------------------


def study_parser(doc: str, name: str, reference: str) -> argparse.ArgumentParser:
    """The options of a study that pretrains every arm on checkpoint 0 of one log and evaluates
    it on checkpoint 1; the script adds its own (``--arms`` and the like)."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--game", default="Pong", help="ALE game to log (default: Pong)")
    ap.add_argument(
        "--collect-steps",
        type=int,
        default=24_000,
        help="agent steps of random play to log; the checkpoint capacity is 45%% of it, so two "
        "full disjoint checkpoints (train, held out) are written (default: 24000)",
    )
    ap.add_argument("--steps", type=int, default=1000, help="updates per run (default: 1000)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch per update (default: 32)")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="seeds of every arm (default: 0)"
    )
    ap.add_argument(
        "--yardstick-seeds",
        type=int,
        nargs="*",
        default=[1, 2],
        help=f"extra seeds of the reference arm ({reference}) whose spread is the seed-noise "
        "yardstick (default: 1 2; none: pass the flag alone)",
    )
    ap.add_argument(
        "--eval-transitions",
        type=int,
        default=2048,
        help="held-out transitions for the held-out TD losses (default: 2048)",
    )
    ap.add_argument(
        "--probe-states", type=int, default=4000, help="states per probe fit (default: 4000)"
    )
    ap.add_argument("--log-every", type=int, default=50, help="updates between logs (default: 50)")
    ap.add_argument(
        "--final-logs",
        type=int,
        default=4,
        help="logs averaged into the final training losses (default: 4, i.e. the last 200 "
        "updates at --log-every 50)",
    )
    ap.add_argument(
        "--out",
        default=str(REPO / "runs" / name),
        help=f"work folder: data/, cache/, runs/, results.json (default: runs/{name})",
    )
    ap.add_argument(
        "--docs",
        default=str(REPO / "docs"),
        help=f"where {name}_tables.md, {name}_results.json and the PNGs go (default: docs/)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument("--force", action="store_true", help="redo runs found finished in --out")
    return ap


def parse_study_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = ap.parse_args(argv)
    if args.steps <= 100:
        ap.error("--steps: must exceed the 100 warm-up updates of the default config")
    if args.collect_steps < 2000:
        ap.error("--collect-steps: too few for two replay checkpoints with whole episodes")
    return args


def pretrain_overrides(
    args: argparse.Namespace, seed: int, data_dir: Path, run_dir: Path, arm: list[str]
) -> list[str]:
    """``pvn pretrain`` overrides of one run: checkpoint 0 of the study's log, the study's
    budget, and the arm's own options (``arm``)."""
    return [
        f"data.path={data_dir}",
        f"data.checkpoints=[{TRAIN_CKPT}]",
        f"data.cache_dir={Path(args.out) / 'cache'}",
        f"run_dir={run_dir}",
        f"steps={args.steps}",
        f"batch_size={args.batch_size}",
        f"seed={seed}",
        *arm,
        f"log_every={args.log_every}",
        f"checkpoint_every={args.steps}",
        "keep_checkpoints=1",
        "progress=false",
    ]


def pretrain_run(args: argparse.Namespace, label: str, ov: list[str], run_dir: Path) -> dict:
    """Pretrain one run with overrides ``ov``, or reuse it when it finished with the same
    overrides; returns its wall time (``study_timing.json``)."""
    from pvn.checkpoint import list_checkpoints
    from pvn.commands.pretrain import pretrain
    from pvn.config import load_config

    timing = run_dir / "study_timing.json"
    finished = (
        timing.is_file()
        and json.loads(timing.read_text()).get("overrides") == ov
        and any(p.name == f"ckpt_{args.steps:09d}.pt" for p in list_checkpoints(run_dir))
    )
    if finished and not args.force:
        return json.loads(timing.read_text())
    if run_dir.exists():  # interrupted, other settings, or forced: start clean (whole wall time)
        shutil.rmtree(run_dir)
    cfg = load_config("pretrain", ov)
    log(f"pretrain {label}: {args.steps} updates")
    t0 = time.perf_counter()
    pretrain(cfg)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "updates_per_s": args.steps / wall, "overrides": ov}
    timing.write_text(json.dumps(out, indent=1))
    log(f"  done in {wall:.0f} s ({args.steps / wall:.1f} upd/s)")
    return out


def run_arms(
    args: argparse.Namespace,
    reference: str,
    arm_overrides: Callable[[str], list[str]],
    evaluate: Callable[..., dict],
) -> SimpleNamespace:
    """The study's runs: collect the log, pretrain every arm on every seed of ``--seeds`` (and
    ``reference`` on the yardstick seeds too), evaluate each with ``evaluate(run_dir, ds_eval,
    batch, wall)``. Finished runs and evaluations are reused. Returns ``out``, ``data_dir``,
    ``summary`` (the log), ``plan`` ((arm, seed) pairs), ``ref_seeds``, ``ds_eval``, ``batch``
    (the held-out transitions), ``results`` (arm -> seed -> evaluation) and ``t_start``."""
    from pvn.analysis.heldout import heldout_batch
    from pvn.replay import DQNReplayDataset

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out = Path(args.out).resolve()
    args.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    summary = collect_data(args, data_dir)
    ref_seeds = []
    if reference in args.arms:
        ref_seeds = list(dict.fromkeys(args.seeds + list(args.yardstick_seeds)))
    plan = [(arm, s) for s in args.seeds for arm in args.arms]
    plan += [(reference, s) for s in ref_seeds if s not in args.seeds]
    # decompress both checkpoints into the memmap cache now, so no run's wall time includes it
    DQNReplayDataset(data_dir, checkpoints=[TRAIN_CKPT, HELDOUT_CKPT], cache_dir=out / "cache")
    walls = {}
    for arm, s in plan:
        run_dir = out / "runs" / f"{arm}_s{s}"
        ov = pretrain_overrides(args, s, data_dir, run_dir, arm_overrides(arm))
        walls[(arm, s)] = pretrain_run(args, f"{arm} seed {s}", ov, run_dir)
    ds_eval = DQNReplayDataset(data_dir, checkpoints=[HELDOUT_CKPT], cache_dir=out / "cache")
    batch = heldout_batch(ds_eval, HELDOUT_CKPT, args.eval_transitions)
    results: dict[str, dict[int, dict]] = {arm: {} for arm in dict.fromkeys(args.arms)}
    for arm, s in plan:
        log(f"evaluate {arm} seed {s}")
        run_dir = out / "runs" / f"{arm}_s{s}"
        results[arm][s] = evaluate(run_dir, ds_eval, batch, walls[(arm, s)])
    return SimpleNamespace(
        out=out,
        data_dir=data_dir,
        summary=summary,
        plan=plan,
        ref_seeds=ref_seeds,
        ds_eval=ds_eval,
        batch=batch,
        results=results,
        t_start=t_start,
    )


def records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl``, one dict per log."""
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def td_rate(recs: list[dict[str, Any]], wall: dict[str, Any]) -> float:
    """Median logged update rate of the TD phase (excludes start-up: config, data, checkpoint);
    the whole run's rate when none was logged."""
    ups = [r["updates_per_s"] for r in recs if "td_loss" in r and "updates_per_s" in r]
    return float(np.median(ups)) if ups else wall["updates_per_s"]


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that ran this study (``argv``: the arguments, default ``sys.argv[1:]``)."""
    argv_txt = shlex.join(sys.argv[1:] if argv is None else argv)
    return f"OMP_NUM_THREADS=1 .venv/bin/python scripts/{script} {argv_txt}".strip()


def keyed(results: dict[str, dict[int, Any]]) -> dict[str, dict[str, Any]]:
    """arm -> seed -> value with the seeds as JSON keys (strings)."""
    return {a: {str(s): e for s, e in r.items()} for a, r in results.items()}


# ---------------------------------------------------------------------------------------------
# results as data: numbers, tables, figures
# ---------------------------------------------------------------------------------------------


def fmt(values: float | Sequence[float | None] | None, digits: int = 3, sci: bool = False) -> str:
    """A number, or mean ± sd over several (seeds); ``—`` when none is finite. ``sci``: ``digits``
    significant digits instead of decimals."""
    if values is None or not isinstance(values, Sequence):
        values = [values]
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return "—"

    def f(v: float) -> str:
        return f"{v:.{digits}g}" if sci else f"{v:.{digits}f}"

    if len(vals) == 1:
        return f(vals[0])
    return f"{f(float(np.mean(vals)))} ± {f(float(np.std(vals, ddof=1)))}"


def table(caption: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table under its one-line caption (what the rows and columns are)."""
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    docs: Path, stem: str, script: str, title: str, tables: list[str], data: dict, out: Path
) -> Path:
    """``docs/<stem>_results.json`` (every number: ``data``, plus the machine and date) and
    ``docs/<stem>_tables.md`` (``tables`` under ``title``), the numbers the hand-written page
    ``docs/<stem>.md`` discusses; the JSON also goes to the run folder ``out`` as
    ``results.json``. Returns the tables' path."""
    docs = Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), **data}
    js = docs / f"{stem}_results.json"
    js.write_text(json.dumps(data, indent=1, default=str) + "\n")
    shutil.copyfile(js, Path(out) / "results.json")
    path = docs / f"{stem}_tables.md"
    head = (
        f"# {title}: tables\n\nWritten by `scripts/{script}` on {data['date']} (every number: "
        f"`{js.name}`; the reading: `{stem}.md`)."
    )
    path.write_text(head + "\n\n" + "\n\n".join(tables) + "\n")
    log(f"wrote {rel(path)} and {rel(js)}")
    return path


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
