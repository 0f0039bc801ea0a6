"""Optimizer step time: Adan (pvn.optim.Adan) vs torch.optim.AdamW (prints JSON).

Side by side, in interleaved rounds, on the parameters of a torso (default: the impala torso,
2.1M parameters in 32 tensors) with fixed random gradients, each function being one
``optimizer.step()``:
  * adamw_foreach: ``torch.optim.AdamW(foreach=True)``, the reference;
  * adan_foreach: ``Adan(foreach=True)`` (the ``torch._foreach_*`` path);
  * adan_single: ``Adan(foreach=False)`` (one parameter at a time);
  * adan_foreach_clip: ``Adan(foreach=True, max_grad_norm=1.0)`` (adds the global-norm clip);
  * kozistr_adan: pytorch-optimizer's ``Adan(foreach=True)``, an independent port, for scale
    (only when the package is installed: it is in the ``dev`` extra).
All apply weight decay (AdamW 0.01, Adan 0.02). ``step_time_vs_adamw`` is each step's time as a
multiple of AdamW's; the goal for adan_foreach is <= 1.5. Unfused, an Adan step is 12
elementwise passes moving ~33 parameter-sized arrays (four state buffers: m, v, n, previous
gradient) to AdamW's 8 passes and ~20 arrays, so where memory bandwidth bounds the step
(large tensors, CPU) expect ~1.65.

    python scripts/bench_adan.py [--device cpu] [--torso impala] [--width 1] [--threads 1]
    python scripts/bench_adan.py --device cuda --width 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import compare, emit

from pvn.networks.torsos import build_torso
from pvn.optim import Adan


def stepper(opt: torch.optim.Optimizer, device: str):
    def step() -> int:
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return 1

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--torso", default="impala", help="torso registry name")
    ap.add_argument("--width", type=int, default=1, help="impala channel multiplier")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per function")
    ap.add_argument("--seconds", type=float, default=1.0, help="time per function per round")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    kwargs = {"width": args.width} if args.torso == "impala" else {}
    gen = torch.Generator().manual_seed(0)
    template = build_torso(args.torso, gen, **kwargs)

    def params() -> list[torch.Tensor]:
        ps = [p.detach().clone().to(args.device).requires_grad_() for p in template.parameters()]
        g = torch.Generator().manual_seed(1)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(args.device)
        return ps

    opts = {
        "adamw_foreach": torch.optim.AdamW(params(), lr=1e-4, weight_decay=0.01, foreach=True),
        "adan_foreach": Adan(params(), lr=1e-4, weight_decay=0.02, foreach=True),
        "adan_single": Adan(params(), lr=1e-4, weight_decay=0.02, foreach=False),
        "adan_foreach_clip": Adan(
            params(), lr=1e-4, weight_decay=0.02, max_grad_norm=1.0, foreach=True
        ),
    }
    try:
        from pytorch_optimizer import Adan as KozistrAdan

        opts["kozistr_adan"] = KozistrAdan(params(), lr=1e-4, weight_decay=0.02, foreach=True)
    except ImportError:
        print("pytorch-optimizer not installed: no kozistr_adan row", file=sys.stderr)
    r = compare(
        {k: stepper(o, args.device) for k, o in opts.items()},
        rounds=args.rounds,
        seconds=args.seconds,
    )
    ps = list(template.parameters())
    results = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "torso": args.torso,
        "width": args.width,
        "param_tensors": len(ps),
        "params": sum(p.numel() for p in ps),
        "steps_per_s": {k: r[f"{k}_per_s"] for k in opts},
        # AdamW's rate over each one's rate, per round (median): the step time in AdamW steps
        "step_time_vs_adamw": {k: r[f"adamw_foreach_vs_{k}"] for k in list(opts)[1:]},
    }
    results["goal_adan_foreach_le_1.5x_adamw"] = (
        results["step_time_vs_adamw"]["adan_foreach"] <= 1.5
    )
    emit(results)


if __name__ == "__main__":
    main()
