"""Pretraining throughput: the full learner vs the bare network step (prints JSON).

Side by side, in interleaved rounds, for each torso and batch size:
  * full: ``pvn pretrain``'s inner loop -- a batch from the background ``Prefetcher``, the task
    rewards and calibration loss, online and target forward passes, backward, both optimizer
    steps and the soft target update;
  * full_in_memory: the same update on a batch already in memory (no sampling);
  * bare: forward + backward + optimizer step of the same online network on a batch already in
    memory (the limit: no sampling, no tasks, no target network).
The ratio full / bare is the goal (>= 0.85): sampling, task rewards and the target net should
be hidden or cheap.

    python scripts/bench_pretrain.py [--device cpu] [--torsos nature impala] [--batches 32 256]
    python scripts/bench_pretrain.py --device cuda --torsos impala_x8 --batches 256 --bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import compare, emit, real_frames, write_log

from pvn.config import load_config
from pvn.pretrain import build
from replay import DQNReplayDataset, Prefetcher


def bare_step(learner, batch):
    net, opt = learner.online, learner.optimizer
    obs, action = batch.observation, batch.action
    y = torch.zeros(obs.shape[0], learner.tasks.num_tasks, device=obs.device)

    def step() -> int:
        with learner._autocast(obs.device):
            q, _ = net(obs)
            idx = action.view(-1, 1, 1).expand(-1, q.shape[1], 1)
            loss = 0.5 * (q.gather(2, idx).squeeze(2).float() - y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return 1

    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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
                learner = build(cfg, num_actions=6)
                with Prefetcher(ds, b, args.device, depth=3) as pf:
                    fixed = next(pf)
                    fixed = type(fixed)(*(t.clone() for t in fixed))
                    step = [0]

                    def full(pf=pf, learner=learner, step=step) -> int:
                        learner.update(next(pf), step[0])
                        step[0] += 1
                        sync(args.device)
                        return 1

                    def in_memory(learner=learner, fixed=fixed, step=step) -> int:
                        learner.update(fixed, step[0])
                        step[0] += 1
                        sync(args.device)
                        return 1

                    bare = bare_step(learner, fixed)

                    def bare_synced(bare=bare) -> int:
                        bare()
                        sync(args.device)
                        return 1

                    r = compare(
                        {"full": full, "full_in_memory": in_memory, "bare": bare_synced},
                        rounds=3,
                        seconds=args.seconds,
                    )
                results[f"{torso}_b{b}"] = {
                    "updates_per_s_full": r["full_per_s"],
                    "updates_per_s_full_in_memory": r["full_in_memory_per_s"],
                    "updates_per_s_bare": r["bare_per_s"],
                    "full_vs_bare": r["full_vs_bare"],
                    "in_memory_vs_bare": round(r["full_vs_bare"] / r["full_vs_full_in_memory"], 2),
                }
                print(f"{torso} b{b}: {results[f'{torso}_b{b}']}", file=sys.stderr)
    emit(results)


if __name__ == "__main__":
    main()
