"""Communication of the multi-worker rules (prints JSON):

* bytes each worker sends per update, by rule, for the nature and impala networks (counted by
  the collectives of ``pvn.distributed.comm``: ring all-gather (n-1) d, ring all-reduce
  2 (n-1) d / n, 4-byte floats), at n = 2, 8, 16, 64 workers;
* measured time of one gloo collective between --procs real processes on this machine
  (``torch.distributed``, loopback), per parameter count;
* a cost model t = latency * steps + bytes / bandwidth fitted to those measurements,
  extrapolated to 8, 16 and 64 workers (on one host; across a network use its bandwidth);
* aggregation compute per honest worker (nearest-neighbour averaging is O(n d)).

  python scripts/bench_distributed.py [--procs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import emit, significant

from pvn.distributed.aggregators import AGGREGATORS
from pvn.networks import build_torso

SIZES = {
    name: sum(p.numel() for p in build_torso(name, torch.Generator().manual_seed(0)).parameters())
    for name in ("nature", "impala")
}
# per update: ddp all-reduces gradients; the gossip rules all-gather parameters; fedavg-style
# rules all-reduce once per round of K local steps (plus SCAFFOLD's control variates)
PER_UPDATE = {
    "ddp": lambda n, d, K: 2 * (n - 1) * d / n,
    "fedavg_m": lambda n, d, K: 2 * (n - 1) * d / n / K,
    "scaffold_m": lambda n, d, K: 2 * 2 * (n - 1) * d / n / K,
    "monna": lambda n, d, K: (n - 1) * d,
}


def _worker(d: int, reps: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    v = torch.randn(d)
    out = [torch.empty_like(v) for _ in range(dist.get_world_size())]
    times = {}
    for name, fn in (
        ("all_reduce", lambda: dist.all_reduce(v)),
        ("all_gather", lambda: dist.all_gather(out, v)),
    ):
        fn()
        dist.barrier()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        times[name] = (time.perf_counter() - t) / reps
    if dist.get_rank() == 0:
        print(json.dumps(times))
    dist.destroy_process_group()


def measure(procs: int, d: int, reps: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={procs}",
        __file__,
        "--worker",
        str(d),
        "--reps",
        str(reps),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--procs", type=int, default=2, help="real gloo processes to time")
    ap.add_argument("--reps", type=int, default=20, help="collectives timed per size")
    ap.add_argument("--local-steps", type=int, default=4, help="K of the fedavg-style rules")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args.worker, args.reps)
    result: dict = {"params": SIZES}
    result["bytes_per_worker_per_update_MB"] = {
        net: {
            rule: {n: significant(f(n, d, args.local_steps) * 4 / 1e6) for n in (2, 8, 16, 64)}
            for rule, f in PER_UPDATE.items()
        }
        for net, d in SIZES.items()
    }
    timed = {net: measure(args.procs, d, args.reps) for net, d in SIZES.items()}
    result[f"gloo_seconds_{args.procs}_procs"] = {
        net: {k: significant(v) for k, v in t.items()} for net, t in timed.items()
    }
    # latency from a 1k-float message, bandwidth from the impala-sized one (ring all-reduce)
    n, d_big = args.procs, SIZES["impala"]
    t_tiny = measure(args.procs, 1024, args.reps)["all_reduce"]
    latency = t_tiny / (2 * (n - 1))
    per_byte = (timed["impala"]["all_reduce"] - t_tiny) / (2 * (n - 1) / n * 4 * d_big)
    result["cost_model"] = {
        "bandwidth_GB_s": significant(1 / per_byte / 1e9),
        "latency_s": significant(latency),
    }
    result["modelled_all_reduce_s"] = {
        net: {
            w: significant(2 * (w - 1) * latency + 2 * (w - 1) / w * 4 * d * per_byte)
            for w in (8, 16, 64)
        }
        for net, d in SIZES.items()
    }
    agg = {}
    d = SIZES["impala"]
    for w in (8, 16, 64):
        V = torch.randn(w, d)
        for rule, fn in AGGREGATORS.items():
            t = time.perf_counter()
            fn(V, 0, (w - 1) // 2)
            agg[f"{rule}_n{w}_s"] = significant(time.perf_counter() - t)
    result["aggregation_seconds_impala_per_worker"] = agg
    emit(result)


if __name__ == "__main__":
    main()
