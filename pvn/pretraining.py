"""The PVN pretraining loop (``pvn pretrain``'s core): open the data, build torso, heads and
tasks from the seed, then update; logging, diagnostics, checkpoints and progress are callbacks
(:mod:`pvn.pretrain_callbacks`). Batches are sampled on a background thread
(``replay.Prefetcher``); metrics stay on the device and are read back only every ``log_every``
updates.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING

from pvn import preemption
from pvn.auxiliary import build_tasks
from pvn.checkpoint import load_checkpoint
from pvn.diagnostics import DiagnosticsConfig
from pvn.distributed.team import Team, TeamConfig, distributed_team, single_team
from pvn.errors import ConfigError
from pvn.learner import PVNLearner, TDConfig
from pvn.local import LocalPVNLearner, build_local
from pvn.metrics import MetricsLogger
from pvn.networks import MultiTaskHead, PVNNetwork, torso_from_spec
from pvn.optim import build_optimizer
from pvn.pretrain_callbacks import Callback, Checkpoints, Metrics, NonFiniteGuard, Progress, Run
from pvn.progress import bar, byte_bars
from pvn.replay import DQNReplayDataset, LoggedData, Prefetcher, RLUDataset
from pvn.replay.frames import set_decode_threads
from pvn.replay.store import is_store, read_store, source_format
from pvn.settings import option_defaults, require_positive
from pvn.task_cache import attach_task_cache
from pvn.threads import ThreadsConfig


@dataclass
class DataConfig:
    """The ``data:`` section of ``pvn pretrain``: which logged transitions, how they are read."""

    path: Any = MISSING  # a replay_logs dir (or a dir holding one), e.g. from `pvn collect`, or
    # a store made by `pvn data convert`; format=rlu: the TFDS data dir (or the raw files' dir)
    # of RL Unplugged
    format: str = "auto"  # dopamine (DQN Replay logs) | rlu (RL Unplugged Atari) | auto: rlu
    # when path holds rlu_atari_checkpoints_ordered/ or <game>/run_<run>-* files
    game: str | None = None  # format=rlu: the game (CamelCase, e.g. Pong)
    run: int = 1  # format=rlu: the run, 1-5
    split: str = "full"  # format=rlu: full | mixed_small | mixed | weak | checkpoint_XX (the
    # official code's splits; its default: full)
    version: str = "1.0.0"  # format=rlu: the TFDS version of prepared data (official: 1.0.0)
    proportion: float = 1.0  # format=rlu, split=full: the first floor(p * episodes) of each
    # checkpoint (data_proportion_per_checkpoint)
    checkpoints: list[int] | None = None  # checkpoint ids to use, e.g. [0,1]; null: all (each
    # must be complete)
    skip_incomplete: bool = False  # skip checkpoints missing any of their six files (and say
    # which) instead of refusing the log
    keep_stale: bool = False  # also sample the slots a final partial checkpoint still holds from
    # the previous round (Dopamine's reading: those transitions are then sampled twice, once
    # from each checkpoint)
    n_step: int = 1  # update horizon (state-based tasks need 1)
    gamma: float = 0.99  # discount of the successor measure
    cache_dir: str | None = None  # where checkpoints are stored on first read, frames as zstd
    # chunks about the gzip files' size (null: $PVN_CACHE_DIR or ~/.cache/pvn/replay)
    prefetch: int = 3  # batches sampled ahead on a background thread
    sample_run: int = 1  # transitions drawn per window of consecutive slots: >1 samples a
    # compressed store ~K times faster per transition, each still drawn uniformly, but a batch
    # holds runs of neighbours (docs/store.md measures both); 1: independent draws
    decode_threads: int = 1  # threads decoding each batch's compressed frames (zstd releases
    # the GIL, the loop around it does not: 0.5-1.1x with 2 on 2 cores, docs/store.md)
    num_actions: int | None = None  # null: inferred from the data (max action + 1)
    task_cache: Any = "auto"  # frozen task outputs computed once per logged state and stored in
    # run_dir/task_outputs (auto: when steps * batch_size >= slots) | true | false

    def __post_init__(self) -> None:
        if self.task_cache not in ("auto", True, False):
            raise ValueError(f"data.task_cache={self.task_cache!r}: choose auto, true or false")
        if self.decode_threads < 1:
            raise ValueError(f"data.decode_threads={self.decode_threads}: must be >= 1")
        if self.sample_run < 1:
            raise ValueError(f"data.sample_run={self.sample_run}: must be >= 1")
        if self.format not in ("auto", "dopamine", "rlu"):
            raise ValueError(f"data.format={self.format!r}: choose auto, dopamine or rlu")
        if self.format == "rlu" and self.game is None:
            raise ValueError("data.game=None: format=rlu needs the game (e.g. data.game=Pong)")


@dataclass
class PretrainConfig:
    """``pvn pretrain``: proto-value network pretraining on logged data (Farebrother et al.
    2023). Defaults are sized for a laptop CPU; ``preset=paper`` gives the official code's."""

    torso: dict[str, Any] = field(default_factory=dict)  # group torso=
    tasks: dict[str, Any] = field(default_factory=dict)  # group tasks=
    optimizer: dict[str, Any] = field(default_factory=dict)  # group optimizer=
    local: dict[str, Any] = field(default_factory=dict)  # group local=
    moe: dict[str, Any] = field(default_factory=dict)  # group moe=
    distributed: dict[str, Any] = field(default_factory=dict)  # group distributed=
    data: DataConfig = field(default_factory=DataConfig)
    run_dir: str = MISSING  # output: config.yaml, metrics.jsonl, tb/, checkpoints/ (resumes)
    steps: int = 2000  # gradient updates
    batch_size: int = 32  # transitions per update
    seed: int = 0  # seeds networks, tasks and the sampler
    device: str = "cpu"  # cpu | cuda
    checkpoint_every: int = 500  # updates between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # most recent checkpoints kept
    log_every: int = 50  # updates between metric logs (TensorBoard and metrics.jsonl)
    progress: bool = True  # progress bar with updates/s and ETA
    bf16: bool = False  # bfloat16 autocast (CUDA)
    compile: bool = False  # torch.compile the online network (CUDA)
    td: TDConfig = field(default_factory=TDConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)

    def __post_init__(self) -> None:
        require_positive(self, "steps", "batch_size", "checkpoint_every", "log_every",
                         "keep_checkpoints")  # fmt: skip
        if not isinstance(self.data.path, str) and self.distributed.get("name") in (None, "none"):
            raise ValueError(f"data.path={self.data.path!r}: one replay directory (a list of "
                             "games needs distributed.partition=games)")  # fmt: skip


def data_format(data: DataConfig, path: str) -> str:
    """``data.format``, with ``auto`` read from ``path``: RL Unplugged when it holds a prepared
    TFDS directory, raw files of ``data.game`` or a store converted from RL Unplugged, else DQN
    Replay logs."""
    if data.format != "auto":
        return data.format
    root = Path(path)
    if is_store(root):
        return "rlu" if source_format(root) == "rlu" else "dopamine"
    rlu = (root / "rlu_atari_checkpoints_ordered").is_dir() or (
        data.game is not None and any((root / data.game).glob("run_*-of-*"))
    )
    return "rlu" if rlu else "dopamine"


def build(cfg: PretrainConfig, num_actions: int, task_seed: int | None = None) -> PVNLearner:
    """Networks, tasks and optimizers of a run, all drawn from ``cfg.seed``; with ``task_seed``,
    the tasks, head (and local auxiliary nets) from that seed instead, torso still from
    ``cfg.seed`` (workers on different games share a torso, not tasks).

    Args:
        cfg: the run's config, typed (``section(PretrainConfig, dict_config)`` from a
            command's config or a run's ``config.yaml``).
        num_actions: actions of the game (the heads' outputs per task).
        task_seed: seeds the tasks, heads and local auxiliary nets apart from the torso.

    Returns:
        The learner: online and target networks, tasks and their optimizers, on ``cfg.device``.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    torso = torso_from_spec(cfg.torso, gen, cfg.moe)
    if task_seed is not None:
        gen = torch.Generator().manual_seed(int(task_seed))
    task_cfg = dict(cfg.tasks)
    task_name, task_lr = task_cfg.pop("name"), task_cfg.pop("calibration_lr", None)
    task_optim = task_cfg.pop("calibration_optimizer", None)
    task_decay = task_cfg.pop("calibration_decay", None)
    try:
        tasks = build_tasks(task_name, gen, **task_cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"tasks: {e}") from None
    if tasks.state_based and cfg.data.n_step != 1:
        raise ConfigError(
            f"data.n_step={cfg.data.n_step}: tasks={task_name} rewards depend on the state, "
            "so transitions must be one-step (data.n_step=1)"
        )
    head = MultiTaskHead(torso.feature_dim, tasks.num_tasks, num_actions, gen)
    device = torch.device(cfg.device)
    network, tasks = PVNNetwork(torso, head).to(device), tasks.to(device)
    try:
        local = build_local(
            cfg.local,
            torso,
            cfg.torso["name"],
            tasks.num_tasks,
            num_actions,
            gen,
        )
    except (KeyError, ValueError) as e:
        raise ConfigError(str(e)) from None
    params = list(network.parameters())
    if local is not None:
        local.to(device)
        params += [p for p in local.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, params)
    task_params = [p for p in tasks.parameters() if p.requires_grad]
    task_opt = None
    if task_params:  # the paper: the main optimizer's settings; laptop default: plain SGD
        # an optimizer option by name (configs/optimizer/<name>.yaml), at the calibration's lr
        calib = cfg.optimizer if task_optim is None else option_defaults("optimizer", task_optim)
        task_opt = build_optimizer(calib, task_params, lr=task_lr)
    args = (network, tasks, optimizer, task_opt, cfg.td, cfg.data.gamma**cfg.data.n_step)
    try:
        if local is None:
            learner = PVNLearner(*args, bf16=cfg.bf16, calibration_decay=task_decay)
        else:  # each block trained by its own loss; torch.compile does not apply
            learner = LocalPVNLearner(*args, bf16=cfg.bf16, calibration_decay=task_decay,
                                      local=local)  # fmt: skip
    except ValueError as e:
        raise ConfigError(f"{e} (tasks={task_name})") from None
    if cfg.compile:
        learner.online.forward = torch.compile(learner.online.forward)
    return learner


def open_data(data: DataConfig, path: str, checkpoints: list[int] | None, seed: int,
              progress: bool, lead: bool = True) -> LoggedData:  # fmt: skip
    """The logged data at ``path`` as the run reads it (the ``data:`` section): DQN Replay logs
    or RL Unplugged (``data.format``), its sampler seeded with ``seed`` (in windows of
    ``data.sample_run`` slots); the ``lead`` process shows the conversion's ``progress`` and
    names skipped checkpoints."""
    set_decode_threads(data.decode_threads)
    if data_format(data, path) == "rlu":
        game, run = data.game, data.run
        if is_store(Path(path)) and game is None:  # a store names its game and run
            game, run = read_store(Path(path))["game"], read_store(Path(path))["run"]
        if game is None:
            raise ConfigError(f"data.path={path}: holds RL Unplugged data; name data.game")
        ds = RLUDataset(path, game, run, data.version, data.split, data.proportion,
                        checkpoints, data.n_step, data.gamma, data.cache_dir, seed,
                        progress=byte_bars(progress and lead, "ckpt"))  # fmt: skip
        ds.sample_run = data.sample_run
        return ds
    ds = DQNReplayDataset(
        path,
        checkpoints=checkpoints,
        n_step=data.n_step,
        gamma=data.gamma,
        cache_dir=data.cache_dir,
        seed=seed,
        progress=byte_bars(progress and lead),
        skip_incomplete=data.skip_incomplete,
        keep_stale=data.keep_stale,
    )
    ds.sample_run = data.sample_run
    if lead:
        for c, missing in ds.skipped.items():
            print(f"pvn: skipping incomplete checkpoint {c} ({', '.join(missing)} missing)",
                  file=sys.stderr)  # fmt: skip
    return ds


def open_team(cfg: PretrainConfig) -> Team:
    """The workers this process trains: one for a plain run, or those of ``distributed=``."""
    lead = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank 0, or a plain process

    def data(path, checkpoints, seed):
        return open_data(cfg.data, path, checkpoints, seed, cfg.progress, lead)

    def learner(ds, task_seed):
        return build(cfg, cfg.data.num_actions or ds.num_actions(), task_seed=task_seed)

    team = TeamConfig(
        data_path=cfg.data.path,  # one directory, or one per game (partition: games)
        checkpoints=cfg.data.checkpoints,
        seed=cfg.seed,
        device=cfg.device,
        optimizer=cfg.optimizer,
        rule=cfg.distributed,
    )
    if team.rule["name"] == "none":
        return single_team(team, data, learner)
    return distributed_team(team, data, learner)


def train(cfg: PretrainConfig, team: Team, run_dir: Path, resume: Path | None) -> dict[str, Any]:
    """The one pretraining loop, for one worker or many: each worker samples a batch and every
    update goes through the team's rule (:mod:`pvn.distributed.team`); the non-finite guard,
    metrics and diagnostics, checkpoints and progress are callbacks
    (:mod:`pvn.pretrain_callbacks`), the same for a plain run and a distributed one. Resumes
    from ``resume`` (a checkpoint) when given; returns the last logged metrics. The run
    directory's config is the command's to write (:mod:`pvn.commands.pretrain`)."""
    start = 0
    if resume is not None:
        state = load_checkpoint(resume)
        team.load_state_dict(state)
        start = int(state["step"])
    lead = team.rank == 0  # writes the metrics and checkpoints
    for w, ds in zip(team.workers, team.datasets, strict=True):
        attach_task_cache(w.learner, ds, cfg.data.task_cache, run_dir, cfg.steps, cfg.batch_size,
                          torch.device(cfg.device), cfg.progress and lead)  # fmt: skip
    feeds = [Prefetcher(ds, cfg.batch_size, cfg.device, depth=cfg.data.prefetch)
             for ds in team.datasets]  # fmt: skip
    run = Run(team, feeds, run_dir, cfg.steps, start)
    name = "pretrain" if team.world == 1 else f"pretrain x{team.world}"
    callbacks: list[Callback] = []
    try:
        with (bar(cfg.steps, name, "upd", cfg.progress and lead, initial=start) as pbar,
              preemption.stop_on_signals()):  # fmt: skip
            callbacks = _callbacks(cfg, team, run_dir, lead, pbar)
            for step in range(start, cfg.steps):
                run.outs = team.rule.step([next(f) for f in feeds], step)
                run.step = step + 1
                for c in callbacks:
                    c.on_update(run)
    finally:
        for f in feeds:
            f.close()
        for c in callbacks:
            c.close()
    return {"run_dir": str(run_dir), "steps": cfg.steps, "workers": team.world, **run.last}


def _callbacks(cfg: PretrainConfig, team: Team, run_dir: Path, lead: bool, pbar) -> list[Callback]:
    """The guard, metrics, checkpoints and progress of a run (in that order)."""
    first = team.workers[0].learner  # whose metrics and diagnostics are logged
    meta = {
        "torso": cfg.torso,
        "moe": cfg.moe,
        "num_actions": first.online.head.num_actions,
        "num_tasks": first.tasks.num_tasks,
    }
    guard = NonFiniteGuard(len(team.workers), cfg.device)
    logger = MetricsLogger(run_dir) if lead else None
    metrics = Metrics(guard, logger, cfg.log_every, cfg.batch_size, cfg.diagnostics,
                      first.tasks.indicator, pbar)  # fmt: skip
    checkpoints = Checkpoints(guard, cfg.checkpoint_every, cfg.keep_checkpoints, meta, team.world)
    return [guard, metrics, checkpoints, Progress(pbar)]
