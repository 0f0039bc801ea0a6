"""A finished pretraining run measured on logged transitions it did not train on.

The PVN objective is a TD loss (Farebrother et al. 2023, Eq. 4: the L2 distance of each task's
prediction to its one-step bootstrap target); its value on held-out transitions of the same
log, against the run's own target network and calibrated tasks, is how well the learned
successor measures generalise beyond the batches they were fitted on. These measures are what
the pretraining studies compare across optimizers, torsos and local-learning rules
(``docs/studies.md``) and what ``pvn experiment`` reports for its pretraining arms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from pvn.checkpoint import load_checkpoint, resolve_checkpoint
from pvn.pretraining import PretrainConfig, build
from pvn.replay import LoggedData, TorchBatch
from pvn.settings import section


def trained_learner(run_dir: str | Path) -> tuple[Any, Any, int]:
    """A finished ``pvn pretrain`` run's learner as it ended (online and target networks, tasks
    with their calibration, local auxiliary nets), in eval mode.

    Args:
        run_dir: the pretraining run directory (its ``config.yaml`` and latest checkpoint).

    Returns:
        ``(config, learner, num_actions)``.
    """
    cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
    state = load_checkpoint(resolve_checkpoint(run_dir))
    num_actions = int(state["meta"]["num_actions"])
    learner = build(section(PretrainConfig, cfg), num_actions)
    learner.load_state_dict(state["learner"])
    learner.online.eval()
    learner.target.eval()
    return cfg, learner, num_actions


def heldout_batch(ds: LoggedData, checkpoint: int, n: int, seed: int = 2024) -> TorchBatch:
    """``n`` valid transitions of log checkpoint ``checkpoint`` (all of them if fewer), drawn
    once without replacement and in slot order: every run measured on this batch sees the same
    transitions.

    Args:
        ds: the log (its ``valid_mask`` says which slots hold a transition).
        checkpoint: the held-out checkpoint's id.
        n: how many transitions.
        seed: the draw's seed.

    Returns:
        The transitions as tensors (observation, action, reward, next observation, terminal).
    """
    valid = np.flatnonzero(ds.valid_mask(checkpoint))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(valid, min(n, len(valid)), replace=False))
    b = ds.gather(checkpoint, idx)
    return TorchBatch(
        torch.from_numpy(b.observation),
        torch.from_numpy(b.action),
        torch.from_numpy(b.reward),
        torch.from_numpy(b.next_observation),
        torch.from_numpy(b.terminal),
    )


def noisy(obs: torch.Tensor, sigma: float, seed: int = 7) -> torch.Tensor:
    """Observations corrupted by Gaussian pixel noise, the same for every run measured.

    Args:
        obs: uint8 observations.
        sigma: the noise's std in uint8 units (0: ``obs`` itself).
        seed: with ``sigma`` and the shape, all the noise depends on.

    Returns:
        ``obs`` plus N(0, sigma^2) per pixel, rounded and clipped to [0, 255], as uint8.
    """
    if sigma == 0:
        return obs
    g = torch.Generator().manual_seed(seed + round(sigma * 1000))
    eps = torch.randn(obs.shape, generator=g)
    return (obs.float() + sigma * eps).round_().clamp_(0, 255).to(torch.uint8)


@torch.no_grad()
def heldout_losses(
    learner, batch: TorchBatch, sigmas: tuple[float, ...] = (), chunk: int = 256
) -> dict[str, float]:
    """The TD loss of ``learner`` on ``batch``, computed as its training loss is (its tasks'
    rewards, its target network's bootstrap, its loss), averaged over the transitions.

    Args:
        learner: a :class:`pvn.learner.PVNLearner` (or its local-learning subclass).
        batch: the transitions (:func:`heldout_batch`).
        sigmas: pixel-noise levels (uint8 units) at which to measure robustness as well.
        chunk: transitions per forward pass.

    Returns:
        ``td``: the final head's loss; for a local learner, ``local/<block>``: each block's
        auxiliary head's loss on the same targets; for the L2 loss, ``const``: the loss of the
        best per-task constant (half each task's target variance, averaged over tasks), the floor
        a head reaches without reading the state (about ``p (1 - p) / 2`` for Bernoulli(p)
        indicator rewards); per sigma, ``noise/<sigma>``: the loss with :func:`noisy` pixels in
        ``s`` alone (the targets stay clean) over the clean loss, and ``drift/<sigma>``: the
        features' mean relative change ``|phi(noisy s) - phi(s)| / |phi(s)|``.
    """
    obs, action, reward, next_obs, terminal = batch[:5]
    local = getattr(learner, "local", None)
    corrupted = {sigma: noisy(obs, sigma) for sigma in sigmas}
    sums: dict[str, float] = {}
    targets = []

    def add(key: str, value: float, b: int) -> None:
        sums[key] = sums.get(key, 0.0) + value * b

    for s in range(0, len(obs), chunk):
        sl = slice(s, s + chunk)
        b = len(obs[sl])
        tasks = learner.tasks(obs[sl], reward[sl])
        y = learner.td_targets(tasks.rewards, next_obs[sl], terminal[sl])
        targets.append(y.float())
        q, feats = learner.online(obs[sl])
        add("td", float(learner.td_loss(q, action[sl], y)), b)
        for sigma, x in corrupted.items():
            qn, fn = learner.online(x[sl])
            add(f"noise/{sigma:g}", float(learner.td_loss(qn, action[sl], y)), b)
            drift = (fn - feats).norm(dim=1) / feats.norm(dim=1).clamp_min(1e-8)
            add(f"drift/{sigma:g}", float(drift.mean()), b)
        if local is not None:
            x = learner.online.torso.prepare(obs[sl])
            for k, block in enumerate(local.blocks[:-1]):
                x = block(x)
                add(
                    f"local/{local.names[k]}", float(learner.td_loss(local(k, x), action[sl], y)), b
                )
    out = {k: v / len(obs) for k, v in sums.items()}
    for sigma in sigmas:
        out[f"noise/{sigma:g}"] /= out["td"]
    if learner.cfg.loss == "l2":
        out["const"] = float(0.5 * torch.cat(targets).var(0, unbiased=False).mean())
    return out


def measure_run(
    run_dir: str | Path,
    ds: LoggedData,
    batch: TorchBatch,
    probe_states: int = 4000,
    final_logs: int = 4,
    sigmas: tuple[float, ...] = (),
) -> dict[str, Any]:
    """What a pretraining study compares of one finished run.

    Args:
        run_dir: the ``pvn pretrain`` run directory.
        ds: the log to probe on (its held-out checkpoints).
        batch: the held-out transitions of the TD losses (:func:`heldout_batch`).
        probe_states: states per probe fit (:func:`pvn.analysis.probes.linear_probes`).
        final_logs: logged windows averaged into the final training TD loss.
        sigmas: pixel-noise levels of the robustness measures (:func:`heldout_losses`).

    Returns:
        ``td_train``: the mean training TD loss of the last ``final_logs`` logs; ``heldout``:
        :func:`heldout_losses`; ``probes``: linear probes of the frozen torso (return-to-go and
        next-reward R², feature srank, dormant fraction); ``params``: the online network's
        parameter count; ``updates_per_s``: the median logged update rate; ``curve``: the
        logged training TD loss against updates.
    """
    from pvn.analysis.probes import linear_probes
    from pvn.metrics import read_metrics

    cfg, learner, _ = trained_learner(run_dir)
    logs = [r for r in read_metrics(run_dir) if "td_loss" in r]
    td = [float(r["td_loss"]) for r in logs]
    rates = [float(r["updates_per_s"]) for r in logs if "updates_per_s" in r]
    # the trained torso, in eval mode: what load_encoder would rebuild from the checkpoint
    probes = linear_probes(
        learner.online.torso, ds, gamma=float(cfg.data.gamma), max_states=probe_states
    )
    return {
        "td_train": float(np.mean(td[-final_logs:])) if td else float("nan"),
        "heldout": heldout_losses(learner, batch, tuple(sigmas)),
        "probes": probes,
        "params": int(sum(p.numel() for p in learner.online.parameters())),
        "updates_per_s": float(np.median(rates)) if rates else float("nan"),
        "curve": {"step": [int(r["step"]) for r in logs], "td_loss": td},
    }
