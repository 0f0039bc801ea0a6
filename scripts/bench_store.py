"""The compressed store against the raw frames and the gzip files, side by side in one run
(prints JSON; ``docs/store.md`` has the numbers and the choices they made).

For each DQN Replay log given (a learning agent's and a random-play one, each of at least 5
checkpoints of real play):

  * disk: the store's bytes against the source's gzip files and the raw frames;
  * conversion: ``replay.store.convert`` with 1 worker and with one per core, against just
    gunzipping the same files (Python's gzip, i.e. zlib, and ISA-L, which pvn reads them with;
    read and discarded) on 1 and on all cores, and
    against building the raw cache pvn built before the store (the frames written raw);
  * sampling: stacked 4-frame transitions at batch 256 from ``DQNReplayDataset`` over the
    store, against the same log stored raw (the raw memory-mapped frames the cache held
    before) and the store drawn in windows of 4 and 8 consecutive slots
    (``data.sample_run``), in interleaved rounds; then 1..cores processes sampling the store
    at once;
  * RAM: a sampler process over the whole store: its resident memory after one batch and
    after 400 more, and what grew: file-backed (pages of the store, at most its size) and
    anonymous (decode buffers, batches).

``--grid`` also measures chunk length x dictionary x level on one checkpoint: size against
the gzip file, and sampling speed.

    python scripts/bench_store.py LOG [LOG ...] [--seconds 0.5] [--grid] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import compare, emit, rate, significant

from pvn.replay import DQNReplayDataset
from pvn.replay.dataset import resolve_log_dir
from pvn.replay.dopamine_format import checkpoint_files, find_checkpoints
from pvn.replay.frames import DEFAULT_CODEC, FrameCodec, set_decode_threads
from pvn.replay.gunzip import open_gzip
from pvn.replay.store import convert

BATCH = 256
MB = 1e6


def _gunzip(path: Path, isal: bool) -> int:
    n = 0
    with open_gzip(path) if isal else gzip.open(path, "rb") as f:
        while data := f.read(1 << 22):
            n += len(data)
    return n


def gunzip_rate(log: Path, workers: int, isal: bool = False) -> float:
    """Decompressed MB/s of just gunzipping every file of the log (``workers`` processes), with
    Python's gzip (zlib) or with ISA-L (what pvn reads them with)."""
    files = [p for c in find_checkpoints(log) for p in checkpoint_files(log, c).values()]
    t = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        total = sum(pool.map(_gunzip, files, [isal] * len(files)))
    return total / MB / (time.perf_counter() - t)


def convert_rate(log: Path, dst: Path, workers: int, codec: FrameCodec = DEFAULT_CODEC) -> dict:
    t = time.perf_counter()
    s = convert(log, dst, codec=codec, workers=workers)
    seconds = time.perf_counter() - t
    return {**s, "seconds": seconds, "mb_per_s": s["raw_bytes"] / MB / seconds}


def _sample_for(path: str, seconds: float, seed: int) -> int:
    os.sched_setaffinity(0, {seed % (os.cpu_count() or 1)})
    ds = DQNReplayDataset(path, seed=seed)
    ds.sample(BATCH)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        ds.sample(BATCH)
        n += BATCH
    return n


def parallel_rates(store: Path, seconds: float) -> dict[str, float]:
    """Transitions/s of 1..cores processes sampling the store at once (summed), and of one
    process decoding with one thread per core (``data.decode_threads``)."""
    cores = os.cpu_count() or 1
    set_decode_threads(cores)
    ds = DQNReplayDataset(store, seed=0)
    out = {f"1_process_{cores}_decode_threads_per_s": rate(lambda: ds.sample(BATCH) and BATCH,
                                                            seconds)}  # fmt: skip
    set_decode_threads(1)
    for p in range(1, cores + 1):
        with ProcessPoolExecutor(p) as pool:
            counts = list(pool.map(_sample_for, [str(store)] * p, [seconds] * p, range(p)))
        out[f"{p}_processes_per_s"] = significant(sum(counts) / seconds)
    return out


_RSS = """
import sys
from pathlib import Path
def rss():
    f = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines())
    return {k: int(f[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile")}
from pvn.replay import DQNReplayDataset
ds = DQNReplayDataset(sys.argv[1])
ds.sample(256)
before = rss()
for _ in range(int(sys.argv[2])):
    ds.sample(256)
after = rss()
print(before["VmRSS"], after["VmRSS"], after["RssAnon"] - before["RssAnon"],
      after["RssFile"] - before["RssFile"])
"""


def resident(store: Path, batches: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _RSS, str(store), str(batches)],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    before, after, anon, file = (int(x) / MB for x in out)
    return {"batches": batches, "rss_after_one_batch_mb": round(before, 1),
            "rss_mb": round(after, 1), "growth_anon_mb": round(anon, 1),
            "growth_file_backed_mb": round(file, 1)}  # fmt: skip


def grid(log: Path, work: Path, seconds: float) -> list[dict]:
    """Chunk length x dictionary x level on the log's first checkpoint."""
    c = find_checkpoints(log)[0]
    gz = sum(p.stat().st_size for p in checkpoint_files(log, c).values())
    rows = []
    for chunk, dictionary, level in [(4, True, 3), (4, False, 3), (4, True, 1), (8, True, 1),
                                     (8, True, 3), (16, False, 3), (16, True, 3),
                                     (32, False, 3)]:  # fmt: skip
        codec = FrameCodec(level=level, chunk=chunk, dictionary=dictionary)
        dst = work / f"grid-{chunk}-{dictionary}-{level}"
        t = time.perf_counter()
        s = convert(log, dst, checkpoints=[c], codec=codec, workers=1)
        secs = time.perf_counter() - t
        ds = DQNReplayDataset(dst, seed=0)
        rate = compare({"store": lambda ds=ds: ds.sample(BATCH) and BATCH}, 3, seconds)
        rows.append({"chunk": chunk, "dictionary": dictionary, "level": level,
                     "vs_gzip": round(s["store_bytes"] / gz, 3),
                     "raw_vs_store": round(s["raw_bytes"] / s["store_bytes"], 1),
                     "convert_mb_per_s": round(s["raw_bytes"] / MB / secs),
                     "sample_per_s": rate["store_per_s"]})  # fmt: skip
    return rows


def bench_log(log: Path, work: Path, seconds: float, with_grid: bool) -> dict:
    cores = os.cpu_count() or 1
    store, raw = work / "store", work / "raw"
    one = convert_rate(log, work / "store-1worker", 1)
    many = convert_rate(log, store, cores)
    raw_build = convert_rate(log, raw, cores, FrameCodec(codec="raw"))  # the cache pvn built before
    gz1, gzn = gunzip_rate(log, 1), gunzip_rate(log, cores)
    isal1, isaln = gunzip_rate(log, 1, isal=True), gunzip_rate(log, cores, isal=True)
    ds_store, ds_raw = DQNReplayDataset(store, seed=0), DQNReplayDataset(raw, seed=0)
    runs = {k: DQNReplayDataset(store, seed=0) for k in (4, 8)}  # data.sample_run=k
    for k, ds in runs.items():
        ds.sample_run = k
    sampling = compare({"store": lambda: ds_store.sample(BATCH) and BATCH,
                        "raw": lambda: ds_raw.sample(BATCH) and BATCH,
                        **{f"store_run{k}": lambda ds=ds: ds.sample(BATCH) and BATCH
                           for k, ds in runs.items()}}, 5, seconds)  # fmt: skip
    out = {
        "log": str(log),
        "checkpoints": many["checkpoints"],
        "transitions": len(ds_store),
        "disk": {"gzip_mb": round(many["source_bytes"] / MB, 1),
                 "store_mb": round(many["store_bytes"] / MB, 1),
                 "raw_mb": round(many["raw_bytes"] / MB, 1),
                 "store_vs_gzip": round(many["store_bytes"] / many["source_bytes"], 3),
                 "raw_vs_store": round(many["raw_bytes"] / many["store_bytes"], 1)},
        "conversion_mb_per_s": {"convert_1_worker": round(one["mb_per_s"]),
                                f"convert_{cores}_workers": round(many["mb_per_s"]),
                                "gunzip_1_process": round(gz1),
                                f"gunzip_{cores}_processes": round(gzn),
                                "gunzip_isal_1_process": round(isal1),
                                f"gunzip_isal_{cores}_processes": round(isaln),
                                f"raw_cache_{cores}_workers": round(raw_build["mb_per_s"]),
                                "convert_vs_gunzip_1": round(one["mb_per_s"] / gz1, 2),
                                f"convert_vs_gunzip_{cores}": round(many["mb_per_s"] / gzn, 2),
                                "convert_vs_gunzip_isal_1": round(one["mb_per_s"] / isal1, 2),
                                f"convert_vs_raw_cache_{cores}":
                                    round(many["mb_per_s"] / raw_build["mb_per_s"], 2)},
        "sampling_batch_256": {**sampling, **parallel_rates(store, 4 * seconds)},
        "ram": {**resident(store, 400), "store_mb": round(many["store_bytes"] / MB, 1)},
    }  # fmt: skip
    if with_grid:
        out["grid"] = grid(log, work, seconds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("logs", nargs="+", help="DQN Replay directories (replay_logs or its parent)")
    ap.add_argument("--seconds", type=float, default=0.5, help="length of each timed round")
    ap.add_argument("--grid", action="store_true", help="also the chunk/dictionary/level grid")
    ap.add_argument("--keep", help="write the stores here (default: a temporary directory)")
    args = ap.parse_args()
    results = []
    for i, log in enumerate(args.logs):
        # each log's stores and raw caches (GBs: the raw frames) deleted once it is measured
        with tempfile.TemporaryDirectory(prefix="bench_store-") as tmp:
            work = Path(args.keep or tmp) / f"log{i}"
            work.mkdir(parents=True, exist_ok=True)
            results.append(bench_log(resolve_log_dir(log), work, args.seconds, args.grid))
    emit({"cores": os.cpu_count(), "logs": results})


if __name__ == "__main__":
    main()
