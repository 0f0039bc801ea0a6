"""From a command's config to the objects it runs: torsos, frozen encoders, agents.

Every command builds through these functions, so a torso, an encoder or an agent is made one way
wherever it is needed (an evaluation, a collection policy, a report's probes), and loading a
trained agent always goes through the agent's own ``load_state_dict`` (which restores what the
network's state dict does not hold, e.g. a linear head's feature scale).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pvn.agents.control import EvalConfig
from pvn.agents.dqn import DQN, DQNConfig, end_to_end_dqn
from pvn.agents.linear_dqn import LinearDQN
from pvn.auxiliary import TaskFamily, build_tasks
from pvn.checkpoint import load_checkpoint, resolve_checkpoint
from pvn.encoder import load_encoder
from pvn.errors import CheckpointError, ConfigError
from pvn.networks import torso_from_spec
from pvn.settings import option_defaults, section

#: ``encoder=`` values that name no pretrained run, and their report labels (else "pvn")
METHODS = {"random": "random", "e2e": "dqn"}


def method_of(encoder: str) -> str:
    """The report's method label for an ``encoder=`` value."""
    return METHODS.get(encoder, "pvn")


def _evaluate_torso(cfg: DictConfig) -> torch.nn.Module:
    """An evaluation's own torso (``encoder=random|e2e``), drawn from ``seed + 1``: the
    torso's stream is not the head's (which draws from ``seed``)."""
    spec = OmegaConf.to_container(cfg.torso, resolve=True)
    return torso_from_spec(spec, torch.Generator().manual_seed(int(cfg.seed) + 1))


def encoder_for(cfg: DictConfig, device: torch.device) -> torch.nn.Module | None:
    """The frozen encoder an evaluate config names.

    Args:
        cfg: a ``pvn evaluate`` config (``encoder``, ``torso``, ``seed``).
        device: where the encoder runs.

    Returns:
        A pretrained torso (``encoder=RUN_DIR|CKPT``), a frozen random torso
        (``encoder=random``), or ``None`` for end-to-end DQN (``encoder=e2e``: its torso is part
        of the agent).
    """
    if cfg.encoder == "e2e":
        return None
    if cfg.encoder == "random":
        return _evaluate_torso(cfg).to(device).eval().requires_grad_(False)
    return load_encoder(cfg.encoder, device)


def agent_for(
    cfg: DictConfig, encoder: torch.nn.Module | None, num_actions: int, device: torch.device
) -> DQN:
    """The learner of an evaluate config.

    Args:
        cfg: a ``pvn evaluate`` config (its ``agent`` block, ``torso`` and ``seed``).
        encoder: the frozen encoder (:func:`encoder_for`), or ``None`` for end-to-end DQN.
        num_actions: the game's action count.
        device: where the agent learns.

    Returns:
        A :class:`agents.linear_dqn.LinearDQN` on ``encoder``'s features, or an end-to-end
        :class:`agents.dqn.DQN` whose torso learns from frames.
    """
    a = section(DQNConfig, cfg.agent)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    if encoder is None:
        if a.feature_norm:
            raise ConfigError(
                "agent.feature_norm=true scales a linear head's frozen features; encoder=e2e "
                "learns its torso (drop agent.feature_norm)"
            )
        return end_to_end_dqn(_evaluate_torso(cfg), num_actions, a, gen).to(device)
    return LinearDQN(encoder.feature_dim, num_actions, a, gen).to(device)


def control_config(cfg: DictConfig) -> EvalConfig:
    """The control loop's schedule from an evaluate config (its top-level keys, the fields of
    :class:`agents.control.EvalConfig`).

    Args:
        cfg: a ``pvn evaluate`` config.

    Returns:
        The :class:`agents.control.EvalConfig` the loop runs with.
    """
    names = [f.name for f in dataclasses.fields(EvalConfig)]
    return section(EvalConfig, {k: cfg[k] for k in names})


def trained_agent(
    run_dir: str | Path, num_actions: int, device: torch.device
) -> tuple[DQN, torch.nn.Module | None]:
    """The finished agent of a ``pvn evaluate`` run and its frozen encoder, as it acted.

    Args:
        run_dir: the evaluation's run directory (its ``config.yaml`` and final checkpoint).
        num_actions: the action count of the game it will play (checked against the agent's).
        device: where the agent acts.

    Returns:
        ``(agent, encoder)``: the agent restored by its own ``load_state_dict`` (a linear head
        keeps its feature scale), in eval mode; ``encoder`` is ``None`` for end-to-end DQN.
    """
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{config}: missing; checkpoint= must be a `pvn evaluate` run dir")
    cfg = OmegaConf.load(config)
    encoder = encoder_for(cfg, device)
    state = load_checkpoint(resolve_checkpoint(run_dir)).get("agent")
    if state is None:
        raise CheckpointError(f"{run_dir}: holds no finished agent (is the evaluation complete?)")
    actions = state["network"]["head.bias" if encoder is None else "bias"].shape[0]
    if actions != num_actions:
        raise CheckpointError(f"{run_dir}: agent has {actions} actions, this game {num_actions}")
    agent = agent_for(cfg, encoder, num_actions, device)
    agent.load_state_dict(state)
    agent.network.eval()
    return agent, encoder


def tasks_option(name: str, gen: torch.Generator, **overrides) -> TaskFamily:
    """The ``tasks=<name>`` option's family for Python callers: its values from
    ``configs/tasks/<name>.yaml`` (their one home), ``overrides`` over them.

    Args:
        name: the option (indicator_rnd, indicator_hash, random_cumulants, reward).
        gen: the generator its random parts are drawn from.
        **overrides: values over the option's, e.g. ``num_tasks=100``.

    Returns:
        The :class:`pvn.auxiliary.TaskFamily`.
    """
    values = {**option_defaults("tasks", name), **overrides}
    values.pop("name")
    return build_tasks(name, gen, **values)
