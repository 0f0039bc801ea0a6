"""The harness of ``study_distributed.py``, the one study not yet an experiment config
(``pvn experiment``, docs/experiments.md): collecting a log once, and writing the results as data
-- ``docs/<study>_results.json`` (every number) and ``docs/<study>_tables.md`` (plain tables, one
caption line each). The docs page that discusses them is written by hand."""

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
from collections.abc import Sequence
from pathlib import Path
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
