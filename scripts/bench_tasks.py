"""Frozen task outputs per state: the RND indicators' random nets, two ways (prints JSON).

Computing the 100 RND tasks' frozen outputs (10 random Nature-DQN nets) for every logged state is
most of the cost of a task cache on CPU: a 1M-transition log holds 1M states, each 10 Nature
forward passes (~240 MFLOP). Side by side, in interleaved rounds, on stacks of real frames:
  * per_net: ``RandomConvNets.forward`` -- the first convolution once for all nets (they share
    the input), the later ones net by net on slices of the grouped weights;
  * grouped: the same weights run as stored, as grouped convolutions (``groups=M``).
Both give the same values; the bench checks it (``same_values``, exact equality) before timing.

    python scripts/bench_tasks.py [--batches 32 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import compare, emit, real_frames

from pvn.auxiliary.random_nets import RandomConvNets


def grouped_forward(nets: RandomConvNets, obs: torch.Tensor) -> torch.Tensor:
    """The stored grouped layers applied as they are (the implementation before per-net)."""
    x = nets.convs(obs.float().div_(255.0)).view(obs.shape[0], nets.M, -1)
    out = torch.einsum("bmf,mfk->bmk", x, nets.dense_w) + nets.dense_b
    return out.reshape(obs.shape[0], -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 256], help="states per call")
    ap.add_argument("--nets", type=int, default=10, help="random nets (PVN: 10 of 10 tasks)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per function")
    ap.add_argument("--seconds", type=float, default=1.0, help="time per function per round")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    frames = real_frames("Breakout", steps=max(args.batches) + 3)
    idx = np.arange(3, len(frames))[:, None] + np.arange(-3, 1)
    stacks = torch.from_numpy(frames[idx])
    nets = RandomConvNets(args.nets, 10, torch.Generator().manual_seed(0), final_relu=False)
    results = {"torch": torch.__version__, "threads": args.threads, "nets": args.nets}
    with torch.no_grad():
        for b in args.batches:
            obs = stacks[:b]
            same = torch.equal(nets(obs), grouped_forward(nets, obs))

            def timed(fn, obs=obs):
                return lambda: (fn(obs), len(obs))[1]

            r = compare(
                {"per_net": timed(nets), "grouped": timed(lambda o: grouped_forward(nets, o))},
                rounds=args.rounds,
                seconds=args.seconds,
            )
            results[f"batch_{b}"] = {
                "same_values": same,
                "states_per_s": {"per_net": r["per_net_per_s"], "grouped": r["grouped_per_s"]},
                "per_net_speedup": r["per_net_vs_grouped"],
            }
    emit(results)


if __name__ == "__main__":
    main()
