"""Memory and step time of local learning vs end-to-end backprop (prints JSON), on real frames:

  * saved: peak bytes autograd holds for backward during one training step
    (``pvn.memory.SavedTensorMeter``; on CUDA also ``torch.cuda.max_memory_allocated``);
  * state: parameters + gradients + optimizer state, auxiliary nets included;
  * rss: peak RSS of a fresh process that builds the learner and takes 3 steps;
  * step time relative to end-to-end, measured side by side in interleaved rounds;
  * with --pretrain: peak RSS of whole ``pvn pretrain torso=... local=... batch_size=...`` runs
    on a small collected dataset.
Goal: >= 40% less peak activation memory than end-to-end for impala with K >= 4 blocks, at
<= 1.3x the step time.

    python scripts/bench_memory.py [--torso impala] [--batch 32] [--pretrain --pretrain-batch 256]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import compare, emit, real_frames

from pvn.config import load_config
from pvn.memory import SavedTensorMeter, state_bytes
from pvn.pretraining import PretrainConfig, build
from pvn.settings import section

METHODS = ["none", "dgl", "man", "man_pp", "auglocal"]
MiB = 2**20


def _learner(torso: str, local: str, device: str):
    overrides = [f"torso={torso}", f"local={local}", "data.path=x", "run_dir=x"]
    overrides += ["td.warmup_steps=0", f"device={device}"]
    return build(section(PretrainConfig, load_config("pretrain", overrides)), num_actions=6)


def _batches(batch: int, device: str, n: int = 4):
    frames = real_frames("Pong", 4 * batch + 400)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        i = rng.integers(0, len(frames) - 5, batch)
        stack = np.stack([frames[i + k] for k in range(5)], 1)  # (B, 5, 84, 84)
        t = torch.from_numpy(stack).to(device)
        out.append(
            (
                t[:, :4],
                torch.from_numpy(rng.integers(0, 6, batch)).to(device),
                torch.zeros(batch, device=device),
                t[:, 1:],
                torch.zeros(batch, dtype=torch.bool, device=device),
            )
        )
    return out


def child(torso: str, local: str, batch: int, device: str) -> None:
    """Build, take 3 steps, print the process's peak RSS (bytes)."""
    learner = _learner(torso, local, device)
    for step, b in enumerate(_batches(batch, device, 3)):
        learner.update(b, step)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _rss(args: list[str]) -> int:
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def pretrain_rss(torso: str, batch: int) -> dict[str, float]:
    """Peak RSS (MiB) of whole `pvn pretrain` runs, one fresh process per method."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run(
            [sys.executable, "-m", "pvn", "collect", "game=Pong", "steps=3000",
             f"out={data}", "progress=false"],
            check=True, capture_output=True,
        )  # fmt: skip
        out = {}
        for local in METHODS:
            args = [f"data.path={data}", f"data.cache_dir={tmp}/cache", f"run_dir={tmp}/{local}",
                    f"torso={torso}", f"local={local}", f"batch_size={batch}", "steps=3",
                    "td.warmup_steps=0", "progress=false"]  # fmt: skip
            code = (
                "import resource, sys; from pvn.cli import main; "
                f"assert main(['pretrain', *{args!r}]) == 0; "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
            )
            out[local] = round(_rss([sys.executable, "-c", code]) / MiB, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--torso", default="impala", help="torso config (nature | impala | impala_x8)")
    ap.add_argument("--batch", type=int, default=32, help="batch size of the measured step")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--pretrain", action="store_true", help="also measure whole pvn pretrain runs")
    ap.add_argument("--pretrain-batch", type=int, default=256, help="batch of those runs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.torso, args.child, args.batch, args.device)
    batches = _batches(args.batch, args.device)
    result: dict = {"torso": args.torso, "batch": args.batch, "device": args.device}
    learners, steps = {}, {}
    for local in METHODS:
        learner = learners[local] = _learner(args.torso, local, args.device)
        learner.update(batches[0], 0)
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with SavedTensorMeter() as meter:
            learner.update(batches[1], 1)
        modules = [learner.online] + ([learner.local] if local != "none" else [])
        st = state_bytes(*modules, optimizer=learner.optimizer)
        row = {
            "saved_mib": round(meter.peak / MiB, 2),
            "state_mib": round(sum(st.values()) / MiB, 1),
            "aux_params": sum(p.numel() for p in learner.local.parameters())
            if local != "none"
            else 0,
        }
        child_args = ["--child", local, "--torso", args.torso, "--batch", str(args.batch)]
        rss = _rss([sys.executable, __file__, *child_args, "--device", args.device])
        row["rss_mib"] = round(rss / MiB, 1)
        if args.device == "cuda":
            row["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MiB, 1)
        result[local] = row

        def step(learner=learner, counter=[0]) -> int:  # noqa: B006 (a step counter)
            counter[0] += 1
            learner.update(batches[counter[0] % len(batches)], counter[0])
            if args.device == "cuda":
                torch.cuda.synchronize()
            return 1

        steps[local] = step
    timing = compare(steps, rounds=args.rounds, seconds=1.0)
    e2e = result["none"]["saved_mib"]
    for local in METHODS[1:]:
        result[local]["saved_vs_e2e"] = round(result[local]["saved_mib"] / e2e, 2)
        result[local]["step_time_vs_e2e"] = timing[f"none_vs_{local}"]
    if args.pretrain:
        result["pretrain_peak_rss_mib"] = pretrain_rss(args.torso, args.pretrain_batch)
    emit(result)


if __name__ == "__main__":
    main()
