"""What an experiment keeps of each finished stage under its ``results``, so that losing ``out``
costs only the stages that were running.

``out`` holds whole runs: logs of millions of transitions, replay buffers, checkpoints, tens
of GB on the disk of the machine that made them. A scratch file system purged, a preempted
cloud machine, a cluster node gone: the experiment would start again from its first stage.
``results`` is what gets committed or copied home, so when a stage finishes its record and its
product are copied to ``results/kept/<stage name>/`` (:func:`keep`), a few MB at most:

* every stage: its command (``stage.json``), its done file and its wall time (``time.json``);
* a learning agent's data stage and an evaluation: ``results.json`` and ``config.yaml``, what
  the report reads of them;
* a pretraining that control arms read: its torso (``torso.pt``,
  :func:`pvn.encoder.export_encoder`), ``config.yaml``, ``metrics.jsonl`` and, once a report
  has measured it, its measures (``measures.json``: the measures need the log, which is not
  kept).

:func:`restore` copies a kept stage back into its run dir when that dir is gone and the record
holds this experiment's command, and the stage is done again: an evaluation reads a restored
pretraining's torso (:func:`pvn.checkpoint.resolve_checkpoint`), the report reads the restored
records. What a restored stage cannot give is not faked:

* a pretraining is restored only once a report has measured it (else it runs again, on its
  log);
* a data stage only when every stage that reads its log is done or restored: the log is not
  kept, and the report's per-game probes, which read it, skip its game and say so;
* a pretraining arm's run (``control: false``) is not kept: its outcome is its measures
  against other runs' checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from pvn.checkpoint import TORSO_FILE as TORSO
from pvn.experiments.plan import Stage
from pvn.experiments.store import Store
from pvn.files import failed_write, write_text_atomic

RESTORED = "restored.json"  # in a run dir restored from results: where from
_RECORD = ("config.yaml", "results.json", "collect.json", "done.json")  # stage.json: last
_MEASURES = "measures*.json"


def keep(stage: Stage) -> None:
    """Copy the finished ``stage``'s record and product to its place (module docstring), as a
    new record: whatever an earlier run of the stage kept is removed first, and the command is
    written last, so a record cut short is incomplete, never stale."""
    if stage.kept is None:
        return
    to = stage.kept
    with failed_write(to):
        shutil.rmtree(to, ignore_errors=True)
        to.mkdir(parents=True)
        if stage.kind == "pretrain":
            from pvn.encoder import export_encoder

            export_encoder(stage.run_dir, to / TORSO, game=stage.name.split("/")[1],
                           command=["pvn", *stage.argv])  # fmt: skip
        extra = ["metrics.jsonl"] if stage.kind == "pretrain" else []
        for name in [*_RECORD, *extra, "stage.json"]:
            if (stage.run_dir / name).is_file():
                _copy(stage.run_dir / name, to / name)


def _copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (a temp file, then a rename)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def keep_time(stage: Stage, seconds: float) -> None:
    """Keep a finished stage's wall time beside its record (restored into the stage times)."""
    if stage.kept is not None and (stage.kept / "stage.json").is_file():
        write_text_atomic(stage.kept / "time.json", json.dumps({"seconds": round(seconds, 1)}))


def keep_measures(stage: Stage) -> None:
    """Keep the measures a report made of a kept pretraining (they need the log to remake)."""
    if stage.kept is not None and (stage.kept / "stage.json").is_file():
        for path in stage.run_dir.glob(_MEASURES):
            _copy(path, stage.kept / path.name)


def _complete(stage: Stage) -> bool:
    """The stage's kept record is whole, and of this experiment's command."""
    src = stage.kept
    if src is None:
        return False
    try:
        if json.loads((src / "stage.json").read_text())["argv"] != stage.argv:
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not (src / stage.done_file).is_file():
        return False
    return stage.kind != "pretrain" or ((src / TORSO).is_file() and any(src.glob(_MEASURES)))


def restorable(todo: list[Stage]) -> list[Stage]:
    """The kept stages whose run dir is gone and that :func:`restore` would bring back."""
    gone = [s for s in todo if s.kept is not None and not s.run_dir.exists()]
    ok = {s.name for s in gone if s.kind != "data" and _complete(s)}
    done = {s.name for s in todo if s.done} | ok
    for s in gone:  # a data stage: only when nothing left to run reads its log
        readers = [t.name for t in todo if s.name in t.after]
        if s.kind == "data" and _complete(s) and set(readers) <= done:
            ok.add(s.name)
    return [s for s in gone if s.name in ok]


def restore(todo: list[Stage], store: Store) -> list[Stage]:
    """Copy back into ``out`` every kept stage whose run dir is gone (module docstring), with
    its wall time into the store's stage times; returns the stages restored."""
    back = restorable(todo)
    for s in back:
        assert s.kept is not None
        # made aside, then renamed into place: all or nothing, and a runner restoring it at
        # the same moment finds it there and drops its own copy
        tmp = s.run_dir.with_name(f".{s.run_dir.name}.restoring-{os.getpid()}")
        with failed_write(s.run_dir):
            tmp.mkdir(parents=True)
            for path in s.kept.iterdir():
                if path.name != "time.json":
                    shutil.copyfile(path, tmp / path.name)
            (tmp / RESTORED).write_text(json.dumps({"from": str(s.kept)}))
            try:
                os.replace(tmp, s.run_dir)
            except OSError:
                if not s.run_dir.is_dir():
                    raise
                shutil.rmtree(tmp)
        if (s.kept / "time.json").is_file():
            store.record_time(s.name, json.loads((s.kept / "time.json").read_text())["seconds"])
    if back:
        print(f"pvn experiment: {len(back)} finished stage(s) restored from their kept records "
              f"(their runs in out were gone): {', '.join(s.name for s in back)}",
              file=sys.stderr)  # fmt: skip
    return back


def restored(stage: Stage) -> bool:
    """Whether ``stage``'s run dir was restored from its kept record (a data stage's log is
    then gone)."""
    return (stage.run_dir / RESTORED).is_file()
