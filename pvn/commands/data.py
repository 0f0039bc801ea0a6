"""Plain-text rendering of a replay log summary (``pvn data info``)."""

from __future__ import annotations

from typing import Any


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"replay: {s['path']}", "(mean ret: clipped return of the complete episodes ending in "
             "the checkpoint's new slots)", ""]  # fmt: skip
    lines.append(
        f"{'ckpt':>5} {'capacity':>9} {'add_count':>10} {'full':>5} {'new':>9} {'valid':>9} "
        f"{'episodes':>9} {'mean ret':>9}"
    )
    for r in s["checkpoints"]:
        mean = "-" if r["return_mean"] is None else f"{r['return_mean']:.2f}"
        lines.append(
            f"{r['checkpoint']:>5} {r['capacity']:>9} {r['add_count']:>10} {r['full']!s:>5} "
            f"{r['new_slots']:>9} {r['valid']:>9} {r['episodes_ended']:>9} {mean:>9}"
        )
    for c, missing in s.get("skipped_incomplete", {}).items():
        lines.append(f"skipped incomplete checkpoint {c}: missing {', '.join(missing)}")
    ret = s["clipped_return"]
    lines += [
        "",
        f"checkpoints: {len(s['checkpoints'])}   slots logged: {s['slots']}   "
        f"valid transitions (stack 4, n=1): {s['valid']}",
        f"episodes ended: {s['episodes_ended']}   complete episodes: {s['complete_episodes']}",
    ]
    if ret["mean"] is not None:
        lines.append(
            f"clipped return per complete episode: mean {ret['mean']:.2f}  "
            f"min {ret['min']:.1f}  max {ret['max']:.1f}"
        )
    return "\n".join(lines)


def run_verify(path: str, checkpoints: list[int] | None) -> int:
    """``pvn data verify``: a progress bar in MB/s over the compressed bytes, then one row per
    checkpoint; 2 when anything is wrong."""
    import time

    from pvn.progress import bar
    from pvn.replay.dataset import resolve_log_dir
    from pvn.replay.verify import verify

    log_dir = resolve_log_dir(path)
    data_files = [f for f in log_dir.glob("*_ckpt.*.gz") if not f.name.startswith("episode_end")]
    total = sum(f.stat().st_size for f in data_files) if log_dir.is_dir() else 0
    t0 = time.perf_counter()
    with bar(total, "verify", "B", unit_divisor=1024) as b:
        rows = verify(log_dir, checkpoints, progress=b.update)
    seconds = time.perf_counter() - t0
    lines = [f"replay: {log_dir}", "", f"{'ckpt':>5}  status"]
    for r in rows:
        status = "ok" if not r["problems"] else "; ".join(r["problems"])
        lines.append(f"{r['checkpoint']:>5}  {status}")
    bad = sum(bool(r["problems"]) for r in rows)
    lines += ["", f"{len(rows) - bad} of {len(rows)} checkpoints ok; read {total / 1e6:.1f} MB "
                  f"compressed in {seconds:.1f} s"]  # fmt: skip
    print("\n".join(lines))
    return 2 if bad else 0
