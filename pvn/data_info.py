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
