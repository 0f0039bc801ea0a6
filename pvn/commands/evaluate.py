"""``pvn evaluate``: linear control on a frozen encoder (a pretraining run, or random features),
or end-to-end DQN (``encoder=e2e``), under one protocol.

Wires the pieces the CLI owns (config, encoder loading, run directory, logging, checkpoints)
around :func:`agents.control.run_control`. Writes ``run_dir/results.json`` with the game,
seed, steps and every episode's return with the agent step at which it ended. Re-running with the
same ``run_dir`` resumes from its latest checkpoint (``checkpoint_every`` agent steps).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from pvn import preemption
from pvn.agents.control import (
    Callback,
    Checkpoints,
    Evaluations,
    Logs,
    Progress,
    ReplayLog,
    run_control,
)
from pvn.builders import agent_for, control_config, encoder_for, method_of
from pvn.checkpoint import (
    resumed_env_seed,
    save_checkpoint,
)
from pvn.config import validate
from pvn.envs import make_atari
from pvn.errors import ConfigError, require_device
from pvn.files import write_text_atomic
from pvn.metrics import MetricsLogger
from pvn.progress import bar
from pvn.replay import DQNReplayWriter
from pvn.replay.episode_log import EpisodeLog
from pvn.run_dir import RunDir
from pvn.schema import EvaluateConfig
from pvn.threads import announce, plan_for


def _replay_log(cfg: DictConfig, env, resume: dict[str, Any] | None) -> EpisodeLog | None:
    """The DQN Replay log of ``replay_log=DIR`` (``DIR/replay_logs``), continued on resume."""
    if cfg.replay_log is None:
        return None
    state = None
    if resume is not None:
        state = resume.get("replay_log")
        if state is None:
            raise ConfigError(
                f"{cfg.run_dir}: was started without replay_log=; resume it without, or start a "
                "new run_dir"
            )
    log_dir = Path(cfg.replay_log) / "replay_logs"
    writer = DQNReplayWriter(log_dir, int(cfg.replay_log_capacity), resume=state)
    return EpisodeLog(writer, env.num_envs)


def _close_log(
    log: EpisodeLog, cfg: DictConfig, out: dict[str, Any], num_actions: int
) -> dict[str, Any]:
    """Write the episodes in flight as truncated, close the log, and describe it beside it."""
    truncated = log.close(write_in_flight=True)
    info = {
        "source": "pvn evaluate",
        "run_dir": str(cfg.run_dir),
        "game": cfg.game,
        "protocol": cfg.protocol,
        "num_actions": num_actions,  # the game's minimal action set, as the data's actions index
        "encoder": str(cfg.encoder),
        "agent_steps": out["steps"],
        "slots": log.writer.add_count,
        "capacity": log.writer.capacity,
        "checkpoints": log.writer.checkpoints_written,
        "unfinished_episodes_logged_as_truncated": truncated,
        "resumed_at": out["resumed_at"],
    }
    write_text_atomic(Path(cfg.replay_log) / "log.json", json.dumps(info, indent=1))
    return info


def _results(cfg: DictConfig, out: dict[str, Any]) -> dict[str, Any]:
    """What ``results.json`` holds: the run's identity and :func:`run_control`'s summary."""
    results = {
        "game": cfg.game,
        "seed": int(cfg.seed),
        "steps": out["steps"],
        "encoder": str(cfg.encoder),
        "method": method_of(str(cfg.encoder)),
        "protocol": cfg.protocol,
        "resumed_at": out["resumed_at"],
        "episodes": out["episodes"],
        "evaluations": out["evaluations"],
    }
    if "replay_log" in out:
        results["replay_log"] = out["replay_log"]
    return results


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) ``pvn evaluate`` from a resolved config; returns a short summary and
    writes ``results.json`` (module docstring)."""
    validate("evaluate", cfg)
    require_device(cfg.device)
    run = RunDir(Path(cfg.run_dir), "evaluation", "results.json", schema=EvaluateConfig)
    run_dir = run.path
    run.refuse_finished()
    resume = run.resume(cfg, "loop")
    device = torch.device(cfg.device)
    encoder = encoder_for(cfg, device)
    env_seed = resumed_env_seed(cfg.seed, int(resume["step"]) if resume else 0)
    env_threads = plan_for(cfg.threads, "evaluate").envpool
    env = make_atari(cfg.game, cfg.num_envs, cfg.protocol, env_seed, num_threads=env_threads)
    make_eval_env = None
    if cfg.eval_episodes > 0:  # its own envs and seeds, so evaluation never disturbs training
        n_eval = min(cfg.eval_episodes, cfg.eval_num_envs)

        def make_eval_env(seed: int):
            return make_atari(cfg.game, n_eval, cfg.protocol, seed, num_threads=env_threads)

    try:
        agent = agent_for(cfg, encoder, env.num_actions, device)
        replay_log = _replay_log(cfg, env, resume)
        run.save_config(cfg)
        announce(cfg.threads)
        ecfg = control_config(cfg)

        def checkpoint(at: int, state: dict[str, Any]) -> None:
            save_checkpoint(run_dir, at, {"loop": state}, keep=cfg.keep_checkpoints)

        logger = MetricsLogger(run_dir)
        try:
            with bar(cfg.steps, f"evaluate {cfg.game}", "step", cfg.progress) as pbar:
                callbacks: list[Callback] = []
                if make_eval_env is not None:
                    callbacks.append(Evaluations(make_eval_env, encoder, device, ecfg,
                                                 int(cfg.seed), logger.log))  # fmt: skip
                callbacks += [Logs(logger.log, ecfg.log_every), Progress(pbar)]
                if replay_log is not None:
                    callbacks.append(ReplayLog(replay_log))
                stops = ecfg.checkpoint_every > 0  # a signal then stops it with a checkpoint
                if stops:
                    callbacks.append(Checkpoints(checkpoint, ecfg.checkpoint_every, callbacks,
                                                 preemption.requested))  # fmt: skip
                with preemption.stop_on_signals() if stops else nullcontext():
                    out = run_control(env, encoder, agent, ecfg, device, int(cfg.seed),
                                      callbacks, resume)  # fmt: skip
                    if out["stopped"]:
                        raise preemption.stopped(f"at agent step {out['steps']}")
            if replay_log is not None:
                out["replay_log"] = _close_log(replay_log, cfg, out, env.num_actions)
        finally:
            logger.close()
    finally:
        env.close()
    save_checkpoint(run_dir, out["steps"], {"agent": agent.state_dict()}, keep=1)
    run.finish(_results(cfg, out))
    rets = [e["return"] for e in out["episodes"]]
    return {
        "run_dir": str(run_dir),
        "episodes": len(rets),
        "mean_return_last_10": float(np.mean(rets[-10:])) if rets else None,
    }
