"""A finished pretraining run measured on logged transitions it did not train on.

The PVN objective is a TD loss (Farebrother et al. 2023, Eq. 4: the L2 distance of each task's
prediction to its one-step bootstrap target); its value on held-out transitions of the same
log, against the run's own target network and calibrated tasks, is how well the learned
successor measures generalise beyond the batches they were fitted on. These measures are what
the pretraining studies compare across optimizers, torsos and local-learning rules
(``docs/studies.md``) and what ``pvn experiment`` reports for its pretraining arms.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from pvn.checkpoint import checkpoint_step, list_checkpoints, load_checkpoint, resolve_checkpoint
from pvn.distributed.team import game_task_seed
from pvn.encoder import load_encoder
from pvn.errors import CheckpointError
from pvn.pretraining import PretrainConfig, build
from pvn.replay import LoggedData, TorchBatch
from pvn.settings import section


def trained_learner(run_dir: str | Path, worker: int | None = None,
                    state: dict[str, Any] | None = None) -> tuple[Any, Any, int]:  # fmt: skip
    """A finished ``pvn pretrain`` run's learner as it ended (online and target networks, tasks
    with their calibration, local auxiliary nets), in eval mode.

    Args:
        run_dir: the pretraining run directory (its ``config.yaml`` and latest checkpoint).
        worker: a multi-worker run's worker (None: worker 0, the checkpoint's ``learner``);
            under ``distributed.partition=games`` it carries its game's tasks and head.
        state: the run's latest checkpoint, when the caller has loaded it already.

    Returns:
        ``(config, learner, num_actions)``.
    """
    cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
    state = load_checkpoint(resolve_checkpoint(run_dir)) if state is None else state
    num_actions, learned = int(state["meta"]["num_actions"]), state["learner"]
    if worker is not None:
        mine = [w["learner"] for w in state.get("workers", []) if w["id"] == worker]
        if not mine:
            raise CheckpointError(f"{run_dir}: its last checkpoint holds no worker {worker}")
        learned = mine[0]
    task_seed = worker_task_seed(cfg, worker)
    if task_seed is not None:  # its game's head: tasks x that game's actions
        num_actions = learned["online"]["head.weight"].shape[0] // int(cfg.tasks.num_tasks)
    learner = build(section(PretrainConfig, cfg), num_actions, task_seed=task_seed)
    learner.load_state_dict(learned)
    learner.online.eval()
    learner.target.eval()
    return cfg, learner, num_actions


def worker_task_seed(cfg: Any, worker: int | None) -> int | None:
    """The seed of ``worker``'s tasks and head in a run with config ``cfg``: its game's under
    ``distributed.partition=games``, else None (the run's seed's)."""
    if worker is None or cfg.distributed.partition != "games":
        return None
    paths = cfg.data.path if OmegaConf.is_list(cfg.data.path) else [cfg.data.path]
    return game_task_seed(int(cfg.seed), worker % len(paths))


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


def bootstrap_ratio(num: np.ndarray, den: np.ndarray | None = None, draws: int = 1000,
                    seed: int = 0) -> list[float]:  # fmt: skip
    """The 95% percentile-bootstrap interval of ``mean(num) / mean(den)`` (``den`` absent: of
    ``mean(num)``), resampling the transitions (the pairs) with replacement ``draws`` times.

    Args:
        num: per-transition values.
        den: per-transition values of the same transitions, or ``None``.
        draws: bootstrap resamples.
        seed: the resampling's seed (fixed: every run is resampled alike).

    Returns:
        ``[2.5% quantile, 97.5% quantile]``.
    """
    idx = np.random.default_rng(seed).integers(0, len(num), size=(draws, len(num)))
    stat = num[idx].mean(1) / (1.0 if den is None else den[idx].mean(1))
    return [float(np.quantile(stat, 0.025)), float(np.quantile(stat, 0.975))]


def batch_targets(learner, batch: TorchBatch, chunk: int):
    """``(rows, y)`` for each ``chunk`` transitions of ``batch``: their slice and their TD
    targets as the run's training computes them (its tasks' rewards, its target network's
    bootstrap)."""
    obs, _, reward, next_obs, terminal = batch[:5]
    for s in range(0, len(obs), chunk):
        sl = slice(s, s + chunk)
        tasks = learner.tasks(obs[sl], reward[sl])
        yield sl, learner.td_targets(tasks.rewards, next_obs[sl], terminal[sl])


@torch.no_grad()
def heldout_losses(
    learner, batch: TorchBatch, sigmas: tuple[float, ...] = (), chunk: int = 256
) -> dict[str, Any]:
    """The TD loss of ``learner`` on ``batch``, computed as its training loss is (its tasks'
    rewards, its target network's bootstrap, its loss), averaged over the transitions.

    Args:
        learner: a :class:`pvn.learner.PVNLearner` (or its local-learning subclass).
        batch: the transitions (:func:`heldout_batch`).
        sigmas: pixel-noise levels (uint8 units) at which to measure robustness as well.
        chunk: transitions per forward pass.

    Returns:
        ``td``: the final head's loss, ``td_ci`` its 95% bootstrap interval over the
        transitions (:func:`bootstrap_ratio`); for a local learner, ``local/<block>``: each
        block's auxiliary head's loss on the same targets; for the L2 loss, ``const``: the loss
        of the best per-task constant (half each task's target variance, averaged over tasks),
        the floor a head reaches without reading the state (about ``p (1 - p) / 2`` for
        Bernoulli(p) indicator rewards); per sigma, ``noise/<sigma>``: the loss with
        :func:`noisy` pixels in ``s`` alone (the targets stay clean) over the clean loss, with
        ``noise_ci/<sigma>`` its bootstrap interval (the same transitions resampled in both),
        and ``drift/<sigma>``: the features' mean relative change
        ``|phi(noisy s) - phi(s)| / |phi(s)|``.
    """
    obs, action = batch[0], batch[1]
    local = getattr(learner, "local", None)
    corrupted = {sigma: noisy(obs, sigma) for sigma in sigmas}
    rows: dict[str, list[torch.Tensor]] = {}
    targets = []

    def add(key: str, values: torch.Tensor) -> None:
        rows.setdefault(key, []).append(values.double())

    for sl, y in batch_targets(learner, batch, chunk):
        targets.append(y.float())
        q, feats = learner.online(obs[sl])
        add("td", learner.td_loss(q, action[sl], y, per_sample=True))
        for sigma, x in corrupted.items():
            qn, fn = learner.online(x[sl])
            add(f"noise/{sigma:g}", learner.td_loss(qn, action[sl], y, per_sample=True))
            add(f"drift/{sigma:g}", (fn - feats).norm(dim=1) / feats.norm(dim=1).clamp_min(1e-8))
        if local is not None:
            x = learner.online.torso.prepare(obs[sl])
            for k, block in enumerate(local.blocks[:-1]):
                x = block(x)
                loss = learner.td_loss(local(k, x), action[sl], y, per_sample=True)
                add(f"local/{local.names[k]}", loss)
    per = {k: torch.cat(v).numpy() for k, v in rows.items()}
    out: dict[str, Any] = {k: float(v.mean()) for k, v in per.items()}
    out["td_ci"] = bootstrap_ratio(per["td"])
    for sigma in sigmas:
        out[f"noise/{sigma:g}"] = out[f"noise/{sigma:g}"] / out["td"] if out["td"] else math.nan
        out[f"noise_ci/{sigma:g}"] = bootstrap_ratio(per[f"noise/{sigma:g}"], per["td"])
    if learner.cfg.loss == "l2":
        out["const"] = float(0.5 * torch.cat(targets).var(0, unbiased=False).mean())
    return out


@torch.no_grad()
def scales(initial: torch.nn.Module, trained: torch.nn.Module, obs: torch.Tensor
           ) -> dict[str, float]:  # fmt: skip
    """How large a run's features and successor-measure predictions are at initialisation
    (``initial``: the online network rebuilt from the run's config and seed) and after
    training, on ``obs``: the mean feature norm ``|phi(s)|`` and mean ``|Q(s, a)|``. Arms that
    start at different scales (a sparse layer's output, another optimizer's normalisation) are
    not compared at equal step sizes, so the report shows both."""
    out = {}
    for name, net in (("init", initial), ("trained", trained)):
        q, f = net(obs)
        out[f"{name}/feat_norm"] = float(f.norm(dim=1).mean())
        out[f"{name}/q_abs"] = float(q.abs().mean())
    return out


@torch.no_grad()
def routing(learner, batch: TorchBatch, chunk: int = 256) -> dict[str, float] | None:
    """Top-k MoE runs only (``None`` otherwise): the held-out TD loss and routing statistics
    (:func:`pvn.networks.moe.moe_stats`) as a frozen encoder computes them (eval mode: no router
    noise, no expert capacity, so nothing is dropped) and as the pretraining did (train mode:
    router noise and capacity ``ceil(capacity_factor * T * k / E)``, Switch sec. 2.2). A train
    loss well above the eval one means capacity drops shaped what the training loss saw. The
    statistics are per forward pass of ``chunk`` transitions (as the training's batches), averaged
    over the passes; the network's mode is restored."""
    from pvn.networks.moe import TopKMoE, moe_layers, moe_stats

    if not any(isinstance(m, TopKMoE) for _, m in moe_layers(learner.online)):
        return None
    obs, action = batch[0], batch[1]
    targets = list(batch_targets(learner, batch, chunk))
    was_training, out = learner.online.training, {}
    try:
        for mode in ("eval", "train"):
            learner.online.train(mode == "train")
            sums: dict[str, float] = {}
            for sl, y in targets:
                q, _ = learner.online(obs[sl])
                stats = {"td": learner.td_loss(q, action[sl], y), **moe_stats(learner.online)}
                for k in ("td", "dropped_frac", "load_max", "router_entropy"):
                    sums[k] = sums.get(k, 0.0) + float(stats[k]) * len(q)
            out.update({f"{mode}/{k}": v / len(obs) for k, v in sums.items()})
    finally:
        learner.online.train(was_training)
    return out


def _spread(x: torch.Tensor, n: int) -> torch.Tensor:
    """At most ``n`` rows of ``x`` evenly strided over it (a held-out batch is in slot order)."""
    return x[:: max(1, -(-len(x) // n))][:n]


def measure_run(
    run_dir: str | Path,
    ds: LoggedData,
    batch: TorchBatch,
    probe_states: int = 4000,
    final_logs: int = 4,
    sigmas: tuple[float, ...] = (),
    worker: int | None = None,
) -> dict[str, Any]:
    """What a pretraining study compares of one finished run.

    Args:
        run_dir: the ``pvn pretrain`` run directory.
        ds: the log to probe on (its held-out checkpoints).
        batch: the held-out transitions of the TD losses (:func:`heldout_batch`).
        probe_states: states per probe fit (:func:`pvn.analysis.probes.linear_probes`).
        final_logs: logged windows averaged into the final training TD loss.
        sigmas: pixel-noise levels of the robustness measures (:func:`heldout_losses`).
        worker: in a multi-worker run on several games (``distributed.partition=games``), the
            worker on ``ds``'s game: its tasks and head are measured, and its own training
            loss; None: worker 0's learner and the honest workers' mean training loss.

    Returns:
        ``td_train``: the mean training TD loss of the last ``final_logs`` logs; ``heldout``:
        :func:`heldout_losses`; ``probes``: linear probes of the frozen torso
        (:func:`pvn.analysis.probes.linear_probes`: return-to-go, next-reward and the run's
        tasks' successor-measure R², feature srank, dormant fraction, L1 norm),
        ``probes_init`` the same of the torso at initialisation (rebuilt from the seed: a
        random torso of the same architecture); ``probe_curve``: the return-to-go and
        successor R² of the initial torso (step 0) and of every kept checkpoint's, on the same
        states and targets (``{"step", "return_r2", "successor_r2"}``, lists); ``scales``:
        :func:`scales`;
        ``routing``: :func:`routing`; ``params``: the online network's parameter count,
        ``active_params`` what one token passes through
        (:func:`pvn.networks.moe.active_params`), ``aux_params`` a local rule's trained
        auxiliary parameters; ``updates_per_s``: the median logged update rate; ``curve``: the
        logged training TD loss against updates; ``team``: a multi-worker run's
        :func:`pvn.analysis.workers.team_measures` (None for one worker).
    """
    from pvn.analysis.probes import linear_probes, probe_targets
    from pvn.analysis.workers import team_measures
    from pvn.metrics import read_metrics
    from pvn.networks.moe import active_params
    from pvn.task_cache import task_rewards

    state = load_checkpoint(resolve_checkpoint(run_dir))
    cfg, learner, num_actions = trained_learner(run_dir, worker, state)
    key = "td_loss" if worker is None else f"workers/td_loss_{worker}"
    records = read_metrics(run_dir)
    logs = [r for r in records if key in r]
    td = [float(r[key]) for r in logs]
    rates = [float(r["updates_per_s"]) for r in logs if "updates_per_s" in r]
    # the trained torso, in eval mode: what load_encoder rebuilds from the checkpoint (worker
    # 0's: a joint run's workers' torsos differ within a round)
    torso = (learner if worker is None else trained_learner(run_dir, None, state)[1]).online.torso
    # the probes' targets: the log's returns and rewards, and the successor measures of the
    # run's tasks as trained (the same targets for the trained torso and its initialisation)
    targets = probe_targets(ds, float(cfg.data.gamma), probe_states,
                            task_rewards=task_rewards(learner.tasks, ds, run_dir))  # fmt: skip
    probes = linear_probes(torso, ds, targets=targets)
    # the same network at initialisation (rebuilt from the seed; under partition=games with the
    # measured worker's game's head): the floor the probes and the scales are read against
    initial = build(section(PretrainConfig, cfg), num_actions,
                    task_seed=worker_task_seed(cfg, worker)).online.eval()  # fmt: skip
    floor = linear_probes(initial.torso, ds, targets=targets)
    # the probe curve: every kept checkpoint's torso on the same states and targets, so a
    # reader sees whether the features still improve at the end (then: train longer)
    kept = list_checkpoints(run_dir)
    curve = [(0, floor)] + [
        (checkpoint_step(path),
         probes if path == kept[-1] else linear_probes(load_encoder(path), ds, targets=targets))
        for path in kept
    ]  # fmt: skip
    point = ("return_r2", "successor_r2")
    local = getattr(learner, "local", None)
    return {
        "td_train": float(np.mean(td[-final_logs:])) if td else float("nan"),
        "heldout": heldout_losses(learner, batch, tuple(sigmas)),
        "probes": probes,
        "probes_init": floor,
        "probe_curve": {
            "step": [k for k, _ in curve],
            **{key: [m.get(key, float("nan")) for _, m in curve] for key in point},
        },
        "scales": scales(initial, learner.online, _spread(batch.observation, 256)),
        "routing": routing(learner, batch),
        "params": int(sum(p.numel() for p in learner.online.parameters())),
        "active_params": active_params(learner.online),
        # the local rules' auxiliary networks, trained beside the torso (MAN's EMA copies,
        # which are not trained, excluded)
        "aux_params": sum(p.numel() for p in local.aux.parameters() if p.requires_grad)
        if local is not None
        else 0,
        "updates_per_s": float(np.median(rates)) if rates else float("nan"),
        "curve": {"step": [int(r["step"]) for r in logs], "td_loss": td},
        "team": team_measures(cfg, records, worker or 0),
    }
