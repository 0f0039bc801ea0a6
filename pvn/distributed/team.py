"""The workers one ``pvn pretrain`` process trains, and the rule that couples them.

:func:`pvn.pretraining.train` is the one pretraining loop; it sees a :class:`Team`. A plain run
is a team of one worker under :class:`~pvn.distributed.algorithms.Single`. With
``distributed=<rule>`` it is this process's workers (all N simulated in one process with
``distributed.backend=simulate``, or its own rank under ``torchrun --nproc_per_node=N -m pvn
pretrain distributed=<rule> ...``; gloo on CPU, NCCL on GPU) under that rule.

All workers start from the same networks (the run's seed); each samples its own data:
``distributed.partition=iid`` (every worker all checkpoints, its own sampler seed),
``checkpoints`` (worker i the checkpoints i, i+N, ...: non-IID when they were logged by different
policies) or ``games`` (worker i the game ``data.games[i % G]``, with its own head and tasks; only
the torso is shared). Every worker's optimizer is the configured one, over every trainable
parameter (the local-learning auxiliary networks among them); the rules other than ``ddp`` define
their local step as plain SGD on their own direction, so they refuse any other optimizer. Rank 0
writes metrics and checkpoints holding every worker's state (networks, optimizers, tasks, sampler,
momentum and control variates). A worker that dies makes the others' collectives fail within
``distributed.timeout_s`` and the job exits non-zero; the restarted job resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from pvn.distributed.aggregators import AGGREGATORS, ATTACKS
from pvn.distributed.algorithms import DDP, Algorithm, FedAvgM, Gossip, Single, Worker
from pvn.distributed.comm import Comm, SimulatedComm, TorchComm, in_torchrun
from pvn.errors import require
from pvn.learner import PVNLearner
from pvn.replay import LoggedData

FEDAVG = ("fedavg_m", "scaffold_m", "fedavg_m_vr", "scaffold_m_vr")
RULES = ("ddp", *FEDAVG, *AGGREGATORS)
PARTITIONS = ("iid", "checkpoints", "games")

#: ``open_data(path, checkpoints, seed) -> dataset`` and ``build(num_actions, task_seed)``
OpenData = Callable[[str, "list[int] | None", int], LoggedData]
Build = Callable[[LoggedData, "int | None"], PVNLearner]


@dataclass(frozen=True)
class TeamConfig:
    """What a team takes from a pretraining run's config, as plain values (the core does not
    read the command's config tree).

    Args:
        data_path: one replay directory, or with ``partition: games`` one per game.
        checkpoints: the checkpoints every worker reads (None: all).
        seed: the run's seed (networks, samplers, the rules' own draws).
        device: where collectives run (``cpu``: gloo, ``cuda``: NCCL).
        optimizer: the run's optimizer option (``name``, ``lr``, ``momentum``, ...).
        rule: the ``distributed`` option: ``name`` and that rule's own keys
            (``configs/distributed/<name>.yaml``, where their defaults live).
    """

    data_path: str | list[str]
    checkpoints: list[int] | None
    seed: int
    device: str
    optimizer: dict[str, Any]
    rule: dict[str, Any]


@dataclass
class Team:
    """This process's workers, their data and the rule; ``comm`` is None for a plain run."""

    workers: list[Worker]
    datasets: list[LoggedData]
    rule: Algorithm
    comm: Comm | None = None

    @property
    def rank(self) -> int:
        return 0 if self.comm is None else self.comm.rank

    @property
    def world(self) -> int:
        return 1 if self.comm is None else self.comm.world

    def first_bad(self, per_worker: torch.Tensor) -> int:
        """The first update at which any worker's loss was non-finite (-1: none); a collective,
        so that every rank stops at the same update."""
        if self.comm is not None:
            with self._uncounted():
                n = len(self.workers)
                per_worker = self.comm.all_gather([per_worker[j : j + 1] for j in range(n)])
        bad = per_worker[per_worker >= 0]
        return int(bad.min()) if bad.numel() else -1

    def any_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds in any process (a collective)."""
        if self.comm is None:
            return flag
        with self._uncounted():
            flags = [torch.tensor([float(flag)])] * len(self.workers)
            return float(self.comm.all_reduce_sum(flags)) > 0

    def params_finite(self) -> bool:
        """Whether every worker's network parameters are finite (a collective)."""
        ok = [  # one host sync per worker
            bool(torch.stack([p.isfinite().all() for p in w.learner.online.parameters()]).all())
            for w in self.workers
        ]
        if self.comm is None:
            return all(ok)
        with self._uncounted():
            total = float(self.comm.all_reduce_sum([torch.tensor([float(not o)]) for o in ok]))
        return total == 0.0

    @contextmanager
    def _uncounted(self):
        """Collectives of the loop's own (guards, logging), left out of ``bytes_sent``, which
        counts the rule's traffic only."""
        sent = self.comm.bytes_sent
        try:
            yield
        finally:
            self.comm.bytes_sent = sent

    def state(self, feeds: list) -> dict[str, Any] | None:
        """The checkpoint's training state (rank 0; None elsewhere). A plain run keeps its one
        learner and sampler; a team adds every worker's and the rule's state."""
        parts = [
            {"id": w.id, "learner": w.learner.state_dict(), "sampler": f.state_dict()}
            for w, f in zip(self.workers, feeds, strict=True)
        ]
        if self.comm is None:
            return {"learner": parts[0]["learner"], "sampler": parts[0]["sampler"]}
        parts = self.comm.gather_objects(parts)
        rules = self.comm.gather_objects([self.rule.state_dict()])
        sent = self.comm.gather_objects([self.comm.bytes_sent])  # a resumed run counts on
        if self.comm.rank != 0:
            return None
        return {"learner": parts[0]["learner"], "workers": parts, "algorithm": rules,
                "bytes_sent": sent}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.comm is None:
            self.workers[0].learner.load_state_dict(state["learner"])
            self.datasets[0].load_state_dict(state["sampler"])
            return
        by_id = {s["id"]: s for s in state["workers"]}
        for w, ds in zip(self.workers, self.datasets, strict=True):
            w.learner.load_state_dict(by_id[w.id]["learner"])
            ds.load_state_dict(by_id[w.id]["sampler"])
        self.rule.load_state_dict(state["algorithm"][self.comm.rank])
        # (checkpoints older than the count: it restarts from 0)
        self.comm.bytes_sent = int(
            state.get("bytes_sent", [0] * (self.comm.rank + 1))[self.comm.rank]
        )

    def metrics(self, outs: list[dict[str, Any]]) -> dict[str, float]:
        """A team's own metrics (a collective; {} for a plain run): each worker's TD loss and
        distance to the honest workers' mean, the honest mean TD loss (as ``td_loss``), the
        rule's traffic since the start (``comm_bytes_per_worker``, not counting these logging
        collectives) and the rule's own numbers."""
        comm = self.comm
        if comm is None:
            return {}
        sent = comm.bytes_sent
        td = torch.full((len(self.workers),), float("nan"))
        for j, out in enumerate(outs):  # one per local worker ({} when it sat the round out)
            if "td_loss" in out:
                td[j] = float(out["td_loss"])
        with self._uncounted():
            all_td = comm.all_gather([td[j : j + 1] for j in range(len(self.workers))]).view(-1)
            vecs = comm.all_gather([w.vector() for w in self.workers])
        byzantine = getattr(self.rule, "byzantine", [])
        honest = [i for i in range(comm.world) if i not in byzantine]
        center = vecs[honest].mean(0)
        live = all_td[honest][~torch.isnan(all_td[honest])]
        values = {"td_loss": float(live.mean()) if len(live) else float("nan")}
        for i in range(comm.world):
            values[f"workers/td_loss_{i}"] = float(all_td[i])
            values[f"workers/dist_to_honest_mean_{i}"] = float((vecs[i] - center).norm())
        values["comm_bytes_per_worker"] = float(sent)
        values.update(getattr(self.rule, "last", {}))
        return {k: v for k, v in values.items() if v == v}  # drop NaN (non-participants)

    def close(self) -> None:
        if self.comm is not None:
            self.comm.close()


def single_team(cfg: TeamConfig, open_data: OpenData, build: Build) -> Team:
    """A plain run: one worker on ``data.path``, sampled with the run's seed."""
    ds = open_data(cfg.data_path, cfg.checkpoints, cfg.seed)
    worker = Worker(0, build(ds, None))
    return Team([worker], [ds], Single(None, [worker]))


def distributed_team(cfg: TeamConfig, open_data: OpenData, build: Build) -> Team:
    """This process's workers under ``distributed=<rule>``, their data and the rule."""
    d = cfg.rule
    backend = d["backend"] if d["backend"] != "auto" else ("torch" if in_torchrun() else "simulate")
    require(backend in ("torch", "simulate"), "distributed.backend", d["backend"],
            "choose auto, torch or simulate")  # fmt: skip
    comm = (TorchComm(cfg.device, d["timeout_s"]) if backend == "torch"
            else SimulatedComm(d["workers"]))  # fmt: skip
    try:
        _validate(cfg, comm.world)
        seed = cfg.seed
        paths = _game_paths(cfg)
        datasets = []
        for wid in comm.local:
            path = paths[wid % len(paths)]
            ds = open_data(path, cfg.checkpoints, seed + 1000 * (wid + 1))
            if d["partition"] == "checkpoints":
                mine = ds.shards[wid :: comm.world]
                require(bool(mine), "distributed.partition", "checkpoints",
                        f"{len(ds.shards)} checkpoints for {comm.world} workers")  # fmt: skip
                ds = open_data(path, mine, seed + 1000 * (wid + 1))
            datasets.append(ds)
        games = d["partition"] == "games"
        byzantine = set(d.get("byzantine") or [])
        workers = []
        for wid, ds in zip(comm.local, datasets, strict=True):
            learner = build(ds, game_task_seed(seed, wid % len(paths)) if games else None)
            workers.append(Worker(wid, learner, byzantine=wid in byzantine, torso_only=games))
        return Team(workers, datasets, _rule(cfg, comm, workers), comm)
    except BaseException:
        comm.close()
        raise


def game_task_seed(seed: int, game: int) -> int:
    """The seed of the tasks and head of the workers on game ``game`` (its index in
    ``data.path``) under ``partition=games``; the torso stays the run's seed's."""
    return seed + 7919 * (game + 1)


def _validate(cfg: TeamConfig, world: int) -> None:
    d, name = cfg.rule, cfg.rule["name"]
    require(name in RULES, "distributed", name, f"choose one of none, {', '.join(RULES)}")
    require(world >= 1, "distributed.workers", world, "must be >= 1")
    require(d["partition"] in PARTITIONS, "distributed.partition", d["partition"],
            f"choose one of {', '.join(PARTITIONS)}")  # fmt: skip
    if name != "ddp":
        o = cfg.optimizer
        plain = o["name"] == "sgd" and not o.get("momentum") and not o.get("nesterov")
        require(plain, "optimizer", o["name"],
                f"distributed={name} steps its workers by plain SGD on the rule's own direction "
                "(its momentum included): use optimizer=plain_sgd (the rule's default) and set "
                "optimizer.lr")  # fmt: skip
    byz = list(d.get("byzantine") or [])
    require(all(0 <= r < world for r in byz), "distributed.byzantine", byz, "ranks out of range")
    if name in AGGREGATORS:
        require(2 * d["f"] < world, "distributed.f", d["f"], f"needs 2f < n = {world} workers")
        require(d["attack"] in ATTACKS, "distributed.attack", d["attack"],
                f"choose one of {ATTACKS}")  # fmt: skip
    if name in FEDAVG:
        require(1 <= d["participants"] <= world, "distributed.participants", d["participants"],
                f"must be in 1..{world}")  # fmt: skip
        require(0 < d["beta"] <= 1, "distributed.beta", d["beta"], "must be in (0, 1]")


def _game_paths(cfg: TeamConfig) -> list[str]:
    """``data.path``: one replay directory, or with ``partition=games`` a list, one per game."""
    path = cfg.data_path
    if cfg.rule["partition"] != "games":
        require(isinstance(path, str), "data.path", path, "a list needs partition=games")
        return [path]
    paths = [path] if isinstance(path, str) else list(path)
    require(len(paths) >= 1, "data.path", paths, "partition=games needs one path per game")
    return paths


def _rule(cfg: TeamConfig, comm: Comm, workers: list[Worker]) -> Algorithm:
    d, name, seed = cfg.rule, cfg.rule["name"], cfg.seed
    if name == "ddp":
        return DDP(comm, workers)
    if name in FEDAVG:
        return FedAvgM(
            comm,
            workers,
            beta=d["beta"],
            eta=float(cfg.optimizer["lr"]),
            gamma=d["server_lr"],
            local_steps=d["local_steps"],
            participants=d["participants"],
            seed=seed,
            scaffold=name.startswith("scaffold"),
            vr=name.endswith("_vr"),
        )
    return Gossip(
        comm,
        workers,
        rule=name,
        f=d["f"],
        beta=d["beta"],
        byzantine=list(d["byzantine"]),
        attack=d["attack"],
        scale=d["attack_scale"],
        seed=seed,
    )
