"""Pretraining throughput: the full learner vs the bare network step (prints JSON).

Side by side, in interleaved rounds, for each torso and batch size:
  * full: ``pvn pretrain``'s inner loop -- a batch from the background ``Prefetcher``, the task
    rewards and calibration loss, online and target forward passes, backward, both optimizer
    steps and the soft target update;
  * full_in_memory: the same update on a batch already in memory (no sampling);
  * bare: forward + backward + optimizer step of the same online network on a batch already in
    memory (the issue's limit: no sampling, no tasks, no target network);
  * bare_td: bare plus the target network's forward pass on s' -- the compute TD learning cannot
    avoid (the target changes every update), so the limit of any TD learner.
The full learner runs with the frozen task outputs stored per slot (``data.task_cache``, what
``pvn pretrain`` does when a run draws more samples than the data holds) and, for reference,
computed per batch (full_uncached). The goal is full / bare >= 0.85: sampling, task rewards and
the target net should be hidden or cheap.

    python scripts/bench_pretrain.py [--device cpu] [--torsos nature impala] [--batches 32 256]
    python scripts/bench_pretrain.py --device cuda --torsos impala_x8 --batches 256 --bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from itertools import repeat
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import compare, emit, real_frames, write_log

from pvn.config import load_config
from pvn.pretraining import PretrainConfig, build
from pvn.replay import DQNReplayDataset, Prefetcher
from pvn.settings import section
from pvn.task_cache import build_task_cache


def bare_step(learner, batch):
    net, opt = learner.online, learner.optimizer
    obs, action = batch.observation, batch.action
    y = torch.zeros(obs.shape[0], learner.tasks.num_tasks, device=obs.device)

    def step() -> int:
        with learner.autocast(obs.device):
            q, _ = net(obs)
            idx = action.view(-1, 1, 1).expand(-1, q.shape[1], 1)
            loss = 0.5 * (q.gather(2, idx).squeeze(2).float() - y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return 1

    return step


def bare_td_step(learner, batch):
    step, nxt = bare_step(learner, batch), batch.next_observation

    def td_step() -> int:
        with torch.no_grad(), learner.autocast(nxt.device):
            learner.target(nxt)
        return step()

    return td_step


def synced(fn, device: str):
    """``fn`` followed by a device synchronisation (so CUDA work is timed, not queued)."""

    def run() -> int:
        n = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return n

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--torsos", nargs="+", default=["nature", "impala"])
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 256])
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per run (3 rounds each)")
    args = ap.parse_args()
    results = {"device": args.device, "bf16": args.bf16, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_log(tmp / "replay_logs", real_frames(steps=3000), 10_000, 10_000)
        ds = DQNReplayDataset(tmp / "replay_logs", cache_dir=tmp / "cache")
        for torso in args.torsos:
            for b in args.batches:
                cfg = load_config(
                    "pretrain",
                    [
                        f"torso={torso}",
                        "data.path=x",
                        "run_dir=x",
                        "td.warmup_steps=0",
                        f"device={args.device}",
                        f"bf16={str(args.bf16).lower()}",
                    ],
                )
                learner = build(section(PretrainConfig, cfg), num_actions=6)
                cache = build_task_cache(
                    ds,
                    learner.tasks,
                    tmp / f"task_outputs_{torso}_{b}",
                    args.device,
                    learner.autocast(torch.device(args.device)),
                )
                with Prefetcher(ds, b, args.device, depth=3) as pf:
                    fixed = next(pf)
                    fixed = type(fixed)(*(t.clone() for t in fixed))
                    step = [0]

                    def update(batches, cached, learner=learner, cache=cache, step=step):
                        def run() -> int:
                            learner.task_cache = cache if cached else None
                            learner.update(next(batches), step[0])
                            step[0] += 1
                            return 1

                        return run

                    r = compare(
                        {
                            "full": synced(update(pf, True), args.device),
                            "full_uncached": synced(update(pf, False), args.device),
                            "full_in_memory": synced(update(repeat(fixed), True), args.device),
                            "bare": synced(bare_step(learner, fixed), args.device),
                            "bare_td": synced(bare_td_step(learner, fixed), args.device),
                        },
                        rounds=3,
                        seconds=args.seconds,
                    )
                results[f"{torso}_b{b}"] = {
                    **{f"updates_per_s_{k[:-6]}": v for k, v in r.items() if k.endswith("_per_s")},
                    "full_vs_bare": r["full_vs_bare"],
                    "full_vs_bare_td": r["full_vs_bare_td"],
                    "uncached_vs_bare": round(r["full_vs_bare"] / r["full_vs_full_uncached"], 2),
                    "in_memory_vs_bare": round(r["full_vs_bare"] / r["full_vs_full_in_memory"], 2),
                }
                print(f"{torso} b{b}: {results[f'{torso}_b{b}']}", file=sys.stderr)
    emit(results)


if __name__ == "__main__":
    main()
