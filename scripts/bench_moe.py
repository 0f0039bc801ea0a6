"""MoE feature blocks vs the dense feature block they replace: forward + backward (prints JSON).

On the nature torso's conv output ``(B, 64, 7, 7)`` (ReLU'd, requiring grad as inside a torso),
side by side in interleaved rounds for each batch size, train mode (routing noise on):
  * dense: the block replaced, ``Flatten -> Linear(3136, 512) -> ReLU``;
  * dense_tokens_h{H}: the MoE block's architecture with every MoE layer swapped for one dense
    token MLP ``d -> H -> d`` (residual + LayerNorm). This is the equal-active-parameter
    baseline: a top-k layer runs k experts of hidden h per token, i.e. H = k * h of active MLP
    weights (H = 256 for the top-2, hidden-128 configs), and a Soft MoE layer runs ~T slots
    (E * ceil(T / E) = 52 for T = 49) through one expert of hidden h each, i.e. H = h (128);
  * one block per ``configs/moe/*.yaml`` (same ``Dense(3136, 512)`` after the tokens).
The block replaced cannot be matched exactly: every MoE block keeps its ``Dense(3136, 512)`` and
adds token layers, so ``dense`` is the floor and ``dense_tokens_h*`` the matched comparison.
Reported per block: updates/s, ``dense_vs_<block>`` (how many times faster dense is), total and
active parameters (those one token -- one sample for the flat dense -- passes through).

    python scripts/bench_moe.py [--device cpu] [--batches 32 256] [--seconds 0.5] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import compare, emit

from pvn.networks.moe import (
    MoEFeatures,
    SMoEStack,
    active_params,
    moe_aux_loss,
    moe_features_block,
    token_shape,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "moe"
IN_SHAPE = (64, 7, 7)
FEATURE_DIM = 512


class TokenMLP(nn.Module):
    """A dense stand-in for an MoE layer: one MLP ``d -> hidden -> d`` on every token."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def dense_tokens(hidden: int, layers: int, gen: torch.Generator) -> MoEFeatures:
    _, d = token_shape(IN_SHAPE, "per_pixel")
    stack = SMoEStack([TokenMLP(d, hidden) for _ in range(layers)], d)
    return MoEFeatures(IN_SHAPE, "per_pixel", stack, FEATURE_DIM, gen)


def step_fn(block: nn.Module, x: torch.Tensor, device: str) -> Callable[[], int]:
    def step() -> int:
        y = block(x)
        loss = y.square().mean() + moe_aux_loss(block)
        loss.backward()
        block.zero_grad(set_to_none=True)
        x.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        return 1

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 256])
    ap.add_argument(
        "--configs", nargs="+", default=["smoe", "momentum_smoe", "adam_smoe", "soft_moe"]
    )
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per block")
    ap.add_argument("--seconds", type=float, default=0.5, help="time per block per round")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    cfgs = {
        name: yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text()) for name in args.configs
    }
    layers = max(c.get("layers", 2) for c in cfgs.values())
    blocks: dict[str, nn.Module] = {
        "dense": nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU()),
        "dense_tokens_h256": dense_tokens(256, layers, gen),
        "dense_tokens_h128": dense_tokens(128, layers, gen),
    }
    for name, cfg in cfgs.items():
        blocks[name] = moe_features_block(cfg, IN_SHAPE, FEATURE_DIM, gen)
    results: dict = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "in_shape": list(IN_SHAPE),
        "params": {k: sum(p.numel() for p in b.parameters()) for k, b in blocks.items()},
        "active_params": {k: active_params(b) for k, b in blocks.items()},
    }
    for b in blocks.values():
        b.to(args.device).train()
    for batch in args.batches:
        x = torch.randn(batch, *IN_SHAPE, generator=gen).relu().to(args.device)
        x.requires_grad_(True)
        fns = {k: step_fn(b, x, args.device) for k, b in blocks.items()}
        r = compare(fns, rounds=args.rounds, seconds=args.seconds)
        results[f"b{batch}"] = r
        print(f"b{batch}: {r}", file=sys.stderr)
    emit(results)


if __name__ == "__main__":
    main()
