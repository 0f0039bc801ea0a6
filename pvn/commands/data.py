"""Plain-text rendering of a replay log summary (``pvn data info``)."""

from __future__ import annotations

from pathlib import Path
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


def rlu_summary(path: str, game: str, run: int, version: str) -> str:
    """``pvn data info PATH --game G``: one row per checkpoint of an RL Unplugged run."""
    from pvn.replay.rlu import checkpoint_summary, locate

    source = locate(path, game, run, version)
    rows = [checkpoint_summary(source, c) for c in source.checkpoints]
    header = f"{'ckpt':>5} {'episodes':>9} {'steps':>10} {'terminal':>9} {'mean return':>12}"
    lines = [f"RL Unplugged: {game} run {run} ({source.kind}, {source.root})", "", header]
    for r in rows:
        mean = "-" if r["return"]["mean"] is None else f"{r['return']['mean']:.2f}"
        lines.append(f"{r['checkpoint']:>5} {r['episodes']:>9} {r['steps']:>10} "
                     f"{r['terminal_episodes']:>9} {mean:>12}")  # fmt: skip
    lines += ["", f"checkpoints: {len(rows)}   episodes: {sum(r['episodes'] for r in rows)}   "
                  f"steps: {sum(r['steps'] for r in rows)}"]  # fmt: skip
    return "\n".join(lines)


def run_verify(path: str, checkpoints: list[int] | None) -> int:
    """``pvn data verify``: a progress bar in MB/s over the compressed bytes, then one row per
    checkpoint; 2 when anything is wrong."""
    import time

    from pvn.progress import bar
    from pvn.replay.dataset import resolve_log_dir
    from pvn.replay.store import is_store, verify_store
    from pvn.replay.verify import verify

    log_dir = resolve_log_dir(path)
    if is_store(log_dir):  # every chunk decoded against its checksum
        data_files, check = list(log_dir.glob("ckpt.*/frames.zst")), verify_store
    else:
        data_files = [
            f for f in log_dir.glob("*_ckpt.*.gz") if not f.name.startswith("episode_end")
        ]
        check = verify
    total = sum(f.stat().st_size for f in data_files) if log_dir.is_dir() else 0
    t0 = time.perf_counter()
    with bar(total, "verify", "B", unit_divisor=1024) as b:
        rows = check(log_dir, checkpoints, progress=b.update)
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


def run_convert(src: str, dst: str, checkpoints: list[int] | None, workers: int | None,
                codec_args: dict[str, Any], rlu: dict[str, Any] | None = None) -> int:  # fmt: skip
    """``pvn data convert``: a progress bar with rate and ETA (over the decompressed bytes of
    DQN Replay logs, over the checkpoints of RL Unplugged), then the sizes: source, store, raw
    frames."""
    import time

    from pvn.progress import bar
    from pvn.replay.dataset import resolve_log_dir
    from pvn.replay.frames import FrameCodec
    from pvn.replay.rlu_dataset import convert_rlu
    from pvn.replay.store import convert

    bars = []

    def progress(desc: str, total: int):
        bars.append(bar(total, desc, "B", unit_divisor=1024))
        return bars[-1].update

    codec = FrameCodec(**codec_args)
    t0 = time.perf_counter()
    try:
        if rlu is not None:
            s = convert_rlu(src, rlu["game"], rlu["run"], Path(dst), rlu["version"], checkpoints,
                            codec, workers, progress)  # fmt: skip
        else:
            s = convert(resolve_log_dir(src), Path(dst), checkpoints, codec, workers, progress)
    finally:
        for b in bars:
            b.close()
    seconds = time.perf_counter() - t0
    mb = 1e6
    if rlu is not None:
        print(f"store: {dst}  {rlu['game']} run {rlu['run']}, checkpoints {s['checkpoints']}\n"
              f"source {_size(s['source_bytes'])}, store {_size(s['store_bytes'])} "
              f"({s['store_bytes'] / max(s['source_bytes'], 1):.2f}x the source); "
              f"{seconds:.1f} s")  # fmt: skip
        return 0
    print(
        f"store: {dst}  checkpoints {s['checkpoints']}\n"
        f"source {_size(s['source_bytes'])} (gzip), store {_size(s['store_bytes'])} "
        f"({s['store_bytes'] / max(s['source_bytes'], 1):.2f}x the source), raw "
        f"{_size(s['raw_bytes'])} ({s['raw_bytes'] / max(s['store_bytes'], 1):.1f}x the "
        f"store); {seconds:.1f} s, {s['raw_bytes'] / mb / max(seconds, 1e-9):.0f} MB/s "
        "decompressed"
    )
    return 0


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.1f} kB"


def run_export(store: str, dst: str, checkpoints: list[int] | None) -> int:
    """``pvn data export``: the store's checkpoints as a DQN Replay directory."""
    from pvn.replay.store import export

    ids = export(Path(store), Path(dst), checkpoints)
    print(f"wrote checkpoints {ids} of {store} to {dst} in the DQN Replay format")
    return 0
