"""``pvn evaluate``: linear control on a frozen encoder (a pretraining run, or random features).

Wires the pieces the CLI owns (config, encoder loading, run directory, logging) around
:func:`agents.evaluation.run_linear_control`. Writes ``run_dir/results.json`` with the game,
seed, steps and every episode's return with the agent step at which it ended.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from agents.evaluation import EvalConfig, run_linear_control
from agents.linear_dqn import LinearDQN, LinearDQNConfig
from envs import make_atari
from pvn.checkpoint import save_checkpoint
from pvn.config import require, require_device, save_config
from pvn.encoder import load_encoder
from pvn.errors import ConfigError
from pvn.files import write_text_atomic
from pvn.metrics import MetricsLogger
from pvn.networks import build_torso
from pvn.progress import bar


def method_of(encoder: str) -> str:
    """The report's method label for an ``encoder=`` value."""
    return "random" if encoder == "random" else "pvn"


def encoder_for(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The frozen encoder an evaluate config names: a pretrained one, or a random torso."""
    if cfg.encoder == "random":
        torso_cfg = dict(cfg.torso)
        gen = torch.Generator().manual_seed(int(cfg.seed) + 1)  # not the head's stream
        torso = build_torso(torso_cfg.pop("name"), gen, **torso_cfg)
        return torso.to(device).eval().requires_grad_(False)
    return load_encoder(cfg.encoder, device)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    a = cfg.agent
    require(cfg.steps > 0, "steps", cfg.steps, "must be > 0")
    require_device(cfg.device)
    require(
        a.feature_dtype in ("float16", "float32"),
        "agent.feature_dtype",
        a.feature_dtype,
        "choose float16 or float32",
    )
    run_dir = Path(cfg.run_dir)
    if (run_dir / "results.json").exists():
        raise ConfigError(f"{run_dir}: already holds results.json; choose a new run_dir")
    device = torch.device(cfg.device)
    encoder = encoder_for(cfg, device)
    env = make_atari(cfg.game, cfg.num_envs, cfg.protocol, int(cfg.seed))
    eval_env = None
    if cfg.eval_every > 0:  # its own envs and seeds, so evaluation never disturbs training
        eval_env = make_atari(cfg.game, cfg.num_envs, cfg.protocol, int(cfg.seed) + 10_000)
    try:
        save_config(cfg, run_dir)
        gen = torch.Generator().manual_seed(int(cfg.seed))
        agent = LinearDQN(
            encoder.feature_dim,
            env.num_actions,
            LinearDQNConfig(a.lr, a.adam_eps, a.max_grad_norm, a.target_period),
            gen,
        ).to(device)
        ecfg = EvalConfig(
            steps=cfg.steps,
            n_step=a.n_step,
            gamma=a.gamma,
            batch_size=a.batch_size,
            update_every=a.update_every,
            min_replay=a.min_replay,
            capacity=a.capacity,
            epsilon_train=a.epsilon_train,
            feature_dtype=getattr(torch, a.feature_dtype),
            log_every=cfg.log_every,
            eval_every=cfg.eval_every,
            epsilon_eval=a.epsilon_eval,
            eval_max_steps=cfg.eval_max_steps,
        )
        logger = MetricsLogger(run_dir)
        try:
            with bar(cfg.steps, f"evaluate {cfg.game}", "step", cfg.progress) as pbar:
                out = run_linear_control(
                    env, encoder, agent, ecfg, device, int(cfg.seed), logger.log, pbar, eval_env
                )
        finally:
            logger.close()
    finally:
        env.close()
        if eval_env is not None:
            eval_env.close()
    save_checkpoint(run_dir, out["steps"], {"agent": agent.state_dict()}, keep=1)
    results = {
        "game": cfg.game,
        "seed": int(cfg.seed),
        "steps": out["steps"],
        "encoder": str(cfg.encoder),
        "method": method_of(str(cfg.encoder)),
        "protocol": cfg.protocol,
        "episodes": out["episodes"],
        "evaluations": out["evaluations"],
    }
    write_text_atomic(run_dir / "results.json", json.dumps(results, indent=1))
    rets = [e["return"] for e in out["episodes"]]
    return {
        "run_dir": str(run_dir),
        "episodes": len(rets),
        "mean_return_last_10": float(np.mean(rets[-10:])) if rets else None,
    }
