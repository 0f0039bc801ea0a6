"""``pvn pretrain distributed=...``: PVN pretraining over N workers.

Launch with ``torchrun --nproc_per_node=N -m pvn pretrain distributed=<rule> ...`` (one worker
per process; gloo on CPU, NCCL on GPU) or in one process with ``distributed.backend=simulate
distributed.workers=N``. All workers start from the same networks (the run's seed); each samples
its own data: ``distributed.partition=iid`` (every worker all checkpoints, its own sampler seed),
``checkpoints`` (worker i the checkpoints i, i+N, ...: non-IID when they were logged by
different policies) or ``games`` (worker i the game ``data.games[i % G]``, with its own head and
tasks; only the torso is shared). Rank 0 writes metrics and checkpoints holding every worker's state
(networks, optimizers, tasks, sampler, momentum and control variates); re-running the same
command resumes. A worker that dies makes the others' collectives fail within
``distributed.timeout_s`` and the job exits non-zero; the restarted job resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pvn.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from pvn.config import require, save_config
from pvn.distributed.aggregators import AGGREGATORS, ATTACKS
from pvn.distributed.algorithms import DDP, Algorithm, FedAvgM, Gossip, Worker
from pvn.distributed.comm import SimulatedComm, TorchComm, in_torchrun
from pvn.metrics import MetricsLogger
from pvn.progress import bar
from pvn.task_cache import attach_task_cache
from replay import DQNReplayDataset, Prefetcher

FEDAVG = ("fedavg_m", "scaffold_m", "fedavg_m_vr", "scaffold_m_vr")
RULES = ("ddp", *FEDAVG, *AGGREGATORS)
PARTITIONS = ("iid", "checkpoints", "games")


def _validate(d: DictConfig, world: int) -> None:
    require(d.name in RULES, "distributed", d.name, f"choose one of none, {', '.join(RULES)}")
    require(world >= 1, "distributed.workers", world, "must be >= 1")
    require(
        d.partition in PARTITIONS,
        "distributed.partition",
        d.partition,
        f"choose one of {', '.join(PARTITIONS)}",
    )
    byz = list(d.get("byzantine") or [])
    require(all(0 <= r < world for r in byz), "distributed.byzantine", byz, "ranks out of range")
    if d.name in AGGREGATORS:
        require(2 * d.f < world, "distributed.f", d.f, f"needs 2f < n = {world} workers")
        require(d.attack in ATTACKS, "distributed.attack", d.attack, f"choose one of {ATTACKS}")
    if d.name in FEDAVG:
        require(
            1 <= d.participants <= world,
            "distributed.participants",
            d.participants,
            f"must be in 1..{world}",
        )
        require(0 < d.beta <= 1, "distributed.beta", d.beta, "must be in (0, 1]")


def _game_paths(cfg: DictConfig, d: DictConfig) -> list[str]:
    """``data.path``: one replay directory, or with ``partition=games`` a list, one per game."""
    path = cfg.data.path
    if d.partition != "games":
        require(isinstance(path, str), "data.path", path, "a list needs partition=games")
        return [path]
    paths = [path] if isinstance(path, str) else list(path)
    require(len(paths) >= 1, "data.path", paths, "partition=games needs one path per game")
    return paths


def _algorithm(d: DictConfig, comm, workers: list[Worker], seed: int) -> Algorithm:
    if d.name == "ddp":
        return DDP(comm, workers)
    for w in workers:  # the rule owns the direction; the workers apply it by plain SGD
        w.learner.optimizer = torch.optim.SGD(w.learner.online.parameters(), lr=d.lr)
    if d.name in FEDAVG:
        return FedAvgM(
            comm,
            workers,
            beta=d.beta,
            eta=d.lr,
            gamma=d.server_lr,
            local_steps=d.local_steps,
            participants=d.participants,
            seed=seed,
            scaffold=d.name.startswith("scaffold"),
            vr=d.name.endswith("_vr"),
        )
    return Gossip(
        comm,
        workers,
        rule=d.name,
        f=d.f,
        beta=d.beta,
        byzantine=list(d.byzantine),
        attack=d.attack,
        scale=d.attack_scale,
        seed=seed,
    )


def pretrain_distributed(cfg: DictConfig, build, infer_num_actions) -> dict[str, Any]:
    d = cfg.distributed
    backend = d.backend if d.backend != "auto" else ("torch" if in_torchrun() else "simulate")
    require(
        backend in ("torch", "simulate"),
        "distributed.backend",
        d.backend,
        "choose auto, torch or simulate",
    )
    comm = TorchComm(cfg.device, d.timeout_s) if backend == "torch" else SimulatedComm(d.workers)
    try:
        return _run(cfg, d, comm, build, infer_num_actions)
    finally:
        comm.close()


def _run(cfg, d, comm, build, infer_num_actions) -> dict[str, Any]:
    _validate(d, comm.world)
    run_dir = Path(cfg.run_dir)
    seed = int(cfg.seed)
    byzantine = set(d.get("byzantine") or [])
    workers, datasets = [], []
    paths = _game_paths(cfg, d)
    for wid in comm.local:
        data = dict(
            n_step=cfg.data.n_step,
            gamma=cfg.data.gamma,
            cache_dir=cfg.data.cache_dir,
            seed=seed + 1000 * (wid + 1),
            skip_incomplete=bool(cfg.data.skip_incomplete),
            keep_stale=bool(cfg.data.keep_stale),
        )
        path = paths[wid % len(paths)]
        chosen = None if cfg.data.checkpoints is None else list(cfg.data.checkpoints)
        ds = DQNReplayDataset(path, checkpoints=chosen, **data)
        if d.partition == "checkpoints":
            mine = ds.checkpoints[wid :: comm.world]
            require(
                bool(mine),
                "distributed.partition",
                "checkpoints",
                f"{len(ds.checkpoints)} checkpoints for {comm.world} workers",
            )
            ds = DQNReplayDataset(path, checkpoints=mine, **data)
        datasets.append(ds)
    games = d.partition == "games"
    for wid, ds in zip(comm.local, datasets, strict=True):
        num_actions = cfg.data.num_actions or infer_num_actions(ds)
        game = wid % len(paths)  # per-game tasks and head; the torso from the run's seed
        learner = build(cfg, num_actions, task_seed=seed + 7919 * (game + 1) if games else None)
        workers.append(Worker(wid, learner, byzantine=wid in byzantine, torso_only=games))
    num_actions = workers[0].learner.online.head.num_actions
    alg = _algorithm(d, comm, workers, seed)
    start = 0
    found = list_checkpoints(run_dir)
    if found:
        state = load_checkpoint(found[-1])
        by_id = {s["id"]: s for s in state["workers"]}
        for w, ds in zip(workers, datasets, strict=True):
            w.learner.load_state_dict(by_id[w.id]["learner"])
            ds.load_state_dict(by_id[w.id]["sampler"])
        alg.load_state_dict(state["algorithm"][comm.rank])
        start = int(state["step"])
    if comm.rank == 0:
        save_config(cfg, run_dir)
    for w, ds in zip(workers, datasets, strict=True):
        attach_task_cache(w.learner, ds, cfg, cfg.progress and comm.rank == 0)
    meta = {
        "torso": OmegaConf.to_container(cfg.torso, resolve=True),
        "moe": OmegaConf.to_container(cfg.moe, resolve=True),
        "num_actions": num_actions,
        "num_tasks": workers[0].learner.tasks.num_tasks,
    }
    logger = MetricsLogger(run_dir) if comm.rank == 0 else None
    feeds = [Prefetcher(ds, cfg.batch_size, cfg.device, depth=cfg.data.prefetch) for ds in datasets]
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        with bar(
            cfg.steps,
            f"pretrain x{comm.world}",
            "upd",
            cfg.progress and comm.rank == 0,
            initial=start,
        ) as pbar:
            for step in range(start, cfg.steps):
                outs = alg.step([next(f) for f in feeds], step)
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.steps:
                    last = _log(comm, workers, outs, alg, logger, done, t0, cfg.log_every)
                    t0 = time.perf_counter()
                if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                    parts = comm.gather_objects(
                        [
                            {
                                "id": w.id,
                                "learner": w.learner.state_dict(),
                                "sampler": f.state_dict(),
                            }
                            for w, f in zip(workers, feeds, strict=True)
                        ]
                    )
                    algs = comm.gather_objects([alg.state_dict()])
                    if comm.rank == 0:
                        state = {
                            "format": 1,
                            "step": done,
                            "workers": parts,
                            "algorithm": algs,
                            "learner": parts[0]["learner"],
                            "meta": meta,
                        }
                        save_checkpoint(run_dir, done, state, cfg.keep_checkpoints)
                pbar.update(1)
    finally:
        for f in feeds:
            f.close()
        if logger is not None:
            logger.close()
    return {"run_dir": str(run_dir), "steps": cfg.steps, "workers": comm.world, **last}


def _log(comm, workers, outs, alg, logger, step, t0, n) -> dict[str, float]:
    """Per-worker TD loss (gathered), the honest mean, distances and bytes; rank 0 writes.
    ``comm_bytes_per_worker`` counts the training rule's traffic since the start, not these
    logging collectives'."""
    sent = comm.bytes_sent
    td = torch.full((len(workers),), float("nan"))
    for j, out in enumerate(outs):  # one per local worker ({} when it sat the round out)
        if "td_loss" in out:
            td[j] = float(out["td_loss"])
    all_td = comm.all_gather([td[j : j + 1] for j in range(len(workers))]).view(-1)
    vecs = comm.all_gather([w.vector() for w in workers])
    honest = [i for i in range(comm.world) if not _is_byz(alg, i)]
    center = vecs[honest].mean(0)
    live = all_td[honest][~torch.isnan(all_td[honest])]
    values = {"td_loss": float(live.mean()) if len(live) else float("nan")}
    for i in range(comm.world):
        values[f"workers/td_loss_{i}"] = float(all_td[i])
        values[f"workers/dist_to_honest_mean_{i}"] = float((vecs[i] - center).norm())
    comm.bytes_sent = sent
    values["comm_bytes_per_worker"] = float(sent)
    values["updates_per_s"] = n / (time.perf_counter() - t0)
    values.update(getattr(alg, "last", {}))
    values = {k: v for k, v in values.items() if v == v}  # drop NaN (non-participants)
    if logger is not None:
        logger.log(step, values)
    return values


def _is_byz(alg: Algorithm, i: int) -> bool:
    return i in getattr(alg, "byzantine", [])
