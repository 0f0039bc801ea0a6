"""Pieces the study scripts share (``study_local.py``, ``study_optim_moe.py``,
``study_distributed.py``): collecting the study's log once, loading a finished run's learner, the
held-out batch and its TD losses, the machine line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN_CKPT, HELDOUT_CKPT = 0, 1  # the study trains on checkpoint 0 and holds checkpoint 1 out


def log(msg: str) -> None:
    print(
        f"[{Path(sys.argv[0]).stem} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True
    )


def rel(path: Path) -> str:
    """``path`` relative to the repository when inside it (for the doc)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def collect_data(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """One log of random play with >= 2 full checkpoints; reused if already there."""
    summary_file = data_dir / "collect.json"
    capacity = int(args.collect_steps * 0.45)
    cmd = [
        sys.executable,
        "-m",
        "pvn",
        "collect",
        f"game={args.game}",
        f"steps={args.collect_steps}",
        f"out={data_dir}",
        "num_envs=8",
        "seed=0",
        f"capacity={capacity}",
        "progress=false",
    ]
    wall_file = data_dir / "study_collect_wall.json"
    if not (summary_file.is_file() and wall_file.is_file()):
        if data_dir.exists():
            shutil.rmtree(data_dir)  # a half-written log of an interrupted run
        log("collect: " + shlex.join(cmd[3:]))
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env())
        wall_file.write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    summary = json.loads(summary_file.read_text())
    summary["wall_s"] = json.loads(wall_file.read_text())["wall_s"]
    if len(summary["checkpoints"]) < 2:
        raise SystemExit(f"{data_dir}: fewer than 2 replay checkpoints; raise --collect-steps")
    shown = [a.replace(f"out={data_dir}", f"out={rel(data_dir)}") for a in cmd[3:]]
    summary["command"] = "pvn " + shlex.join(shown)
    summary["capacity"] = capacity
    return summary


def load_learner(run_dir: Path):
    """The run's learner (online, target, tasks, local aux nets) at its final checkpoint."""
    from omegaconf import OmegaConf

    from pvn.checkpoint import load_checkpoint, resolve_checkpoint
    from pvn.pretrain import build

    cfg = OmegaConf.load(run_dir / "config.yaml")
    state = load_checkpoint(resolve_checkpoint(run_dir))
    learner = build(cfg, int(state["meta"]["num_actions"]))
    learner.load_state_dict(state["learner"])
    learner.online.eval()
    learner.target.eval()
    return cfg, learner, int(state["meta"]["num_actions"])


def heldout_transitions(ds, n: int, seed: int = 2024):
    """``n`` valid transitions of the held-out checkpoint, drawn once (sorted slots)."""
    from replay import TorchBatch

    valid = np.flatnonzero(ds.valid_mask(HELDOUT_CKPT))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(valid, min(n, len(valid)), replace=False))
    b = ds.gather(HELDOUT_CKPT, idx)
    return TorchBatch(
        torch.from_numpy(b.observation),
        torch.from_numpy(b.action),
        torch.from_numpy(b.reward),
        torch.from_numpy(b.next_observation),
        torch.from_numpy(b.terminal),
    )


@torch.no_grad()
def heldout_losses(learner, batch, chunk: int = 256) -> dict[str, float]:
    """TD loss on held-out transitions of the final head (``td``) and, for a local learner, of
    each block's auxiliary head (``local/<block>``), all against the run's own targets (its
    target network, its calibrated tasks), the way the training loss is computed.

    ``const``: the loss of the best per-task constant on the same targets (the L2 loss of
    predicting each task's mean target: half its variance, averaged over tasks) -- the floor a
    head reaches without using the state at all. With Bernoulli(p) indicator rewards it is about
    ``p (1 - p) / 2``."""
    obs, action, reward, next_obs, terminal = batch[:5]
    local = getattr(learner, "local", None)
    sums: dict[str, float] = {}
    ys = []
    n = 0
    for s in range(0, len(obs), chunk):
        sl = slice(s, s + chunk)
        b = len(obs[sl])
        tasks = learner.tasks(obs[sl], reward[sl])
        y = learner.td_targets(tasks.rewards, next_obs[sl], terminal[sl])
        ys.append(y.float())
        q, _ = learner.online(obs[sl])
        sums["td"] = sums.get("td", 0.0) + float(learner.td_loss(q, action[sl], y)) * b
        if local is not None:
            x = learner.online.torso.prepare(obs[sl])
            for k, block in enumerate(local.blocks[:-1]):
                x = block(x)
                key = f"local/{local.names[k]}"
                loss = float(learner.td_loss(local(k, x), action[sl], y))
                sums[key] = sums.get(key, 0.0) + loss * b
        n += b
    out = {k: v / n for k, v in sums.items()}
    if learner.cfg.loss == "l2":
        out["const"] = float(0.5 * torch.cat(ys).var(0, unbiased=False).mean())
    return out


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model or platform.processor()}, {os.cpu_count()} logical CPUs (shared), "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread, "
        f"Python {platform.python_version()}"
    )
