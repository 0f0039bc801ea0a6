"""Multi-worker pretraining: aggregation rules by hand, DDP = one worker with an N-times batch,
FedAvg-M against the FedAvg and momentum-SGD rules written out, every rule through the CLI
(simulated), exact resume, and torchrun (real gloo processes) = simulation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from pvn.checkpoint import list_checkpoints, load_checkpoint
from pvn.cli import main
from pvn.config import load_config
from pvn.distributed import DDP, FedAvgM, SimulatedComm, Worker
from pvn.distributed.aggregators import (
    alie_z,
    craft,
    mean,
    median,
    nearest_neighbour_average,
    trimmed_mean,
)
from pvn.pretraining import PretrainConfig, build
from pvn.replay import DQNReplayDataset, Prefetcher, TorchBatch
from pvn.settings import section
from tests.test_pretrain import _args, _assert_same, log_dir  # noqa: F401 (fixture)

RULES = [
    "ddp",
    "fedavg_m",
    "scaffold_m",
    "fedavg_m_vr",
    "scaffold_m_vr",
    "dsgd",
    "monna",
    "trimmed_mean",
    "median",
]


def test_aggregation_rules_by_hand():
    V = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [-9.0, 4.0]])
    # nearest to row 0, n - f = 3: rows 0, 1, 2 (distances 0, 1, 1; then 97, 145)
    torch.testing.assert_close(nearest_neighbour_average(V, 0, 2), torch.tensor([1 / 3, 1 / 3]))
    torch.testing.assert_close(nearest_neighbour_average(V, 3, 0), mean(V))  # f = 0: averaging
    # coordinate-wise: x sorted -9, 0, 0, 1, 10; y sorted 0, 0, 1, 4, 10
    torch.testing.assert_close(trimmed_mean(V, f=1), torch.tensor([1 / 3, 5 / 3]))
    torch.testing.assert_close(median(V), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(median(V[:4]), torch.tensor([0.5, 0.5]))  # mean of middle two
    # ALIE: n = 5, f = 1: s = floor(3.5) - 1 = 2, z = Phi^-1(3/5) = 0.253347
    assert abs(alie_z(5, 1) - 0.2533471) < 1e-6
    honest, ref = V[:3], torch.zeros(2)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(craft("sign_flip", honest, ref, 5, 1, 0.1, g), -honest.mean(0))
    torch.testing.assert_close(craft("foe", honest, ref, 5, 1, 0.1, g), -0.1 * honest.mean(0))
    want = honest.mean(0) - alie_z(5, 1) * honest.std(0)
    torch.testing.assert_close(craft("alie", honest, ref, 5, 1, 0.1, g), want)


def _workers(n, extra=()):
    overrides = ["data.path=x", "run_dir=x", "torso.feature_dim=16", "tasks.num_tasks=10"]
    cfg = load_config("pretrain", [*overrides, "td.warmup_steps=0", *extra])
    return cfg, [Worker(i, build(section(PretrainConfig, cfg), num_actions=4)) for i in range(n)]


def _batches(log_dir, n, B=4):  # noqa: F811
    ds = DQNReplayDataset(log_dir, cache_dir=log_dir.parent / "cache")
    with Prefetcher(ds, B * n) as feed:
        big = [next(feed) for _ in range(3)]
    split = [[TorchBatch(*(t[i * B : (i + 1) * B] for t in b)) for i in range(n)] for b in big]
    return big, split


def test_ddp_equals_one_worker_with_an_n_times_batch(log_dir):  # noqa: F811
    big, split = _batches(log_dir, 2)
    _, (single,) = _workers(1)
    _, workers = _workers(2)
    ddp = DDP(SimulatedComm(2), workers)
    for step in range(3):
        single.learner.update(big[step], step)
        ddp.step(split[step], step)
    for w in workers:
        torch.testing.assert_close(w.vector(), single.vector(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "beta, K, vr", [(1.0, 2, False), (0.5, 1, False), (1.0, 2, True), (0.5, 1, True)]
)
def test_fedavg_m_follows_its_rules(log_dir, beta, K, vr):  # noqa: F811
    """beta = 1: FedAvg (local SGD, then x <- x - gamma mean(x - x_i) / (eta K)), with or without
    VR; K = 1 with all workers: momentum SGD on the mean gradient, g <- beta mean(grad) +
    (1 - beta) g, and for VR STORM on it: g <- mean(grad) + (1 - beta)(g - mean(grad(x_prev)))
    with the same batches at the previous server model."""
    eta, gamma, n = 0.05, 0.08, 2
    _, split = _batches(log_dir, n)
    _, workers = _workers(n)
    _, ref = _workers(n)
    for w in workers + ref:
        w.learner.optimizer = torch.optim.SGD(w.params, lr=eta)
    fed = FedAvgM(
        SimulatedComm(n),
        workers,
        beta=beta,
        eta=eta,
        gamma=gamma,
        local_steps=K,
        participants=n,
        seed=0,
        scaffold=False,
        vr=vr,
    )
    x, g = ref[0].vector(), torch.zeros_like(ref[0].vector())
    x_prev = x.clone()
    for step in range(2 * K if K > 1 else 3):
        fed.step(split[step % 3], step)
        if step % K == 0:
            for w in ref:
                w.load_vector(x)
        grads, olds = [], []
        for w, b in zip(ref, split[step % 3], strict=True):
            if vr:
                here = w.vector()
                w.load_vector(x_prev)
                w.learner.backward(b, step)
                olds.append(w.grads())
                w.load_vector(here)
            out = w.learner.backward(b, step)
            grads.append(w.grads())
            d = beta * grads[-1] + (1 - beta) * g
            if vr:
                d = d + (1 - beta) * (grads[-1] - olds[-1])
            w.set_grads(d)
            w.learner.apply(step, out)
        if step % K == K - 1:
            g_new = torch.stack([x - w.vector() for w in ref]).sum(0) / (eta * n * K)
            if K == 1:  # the same g by the momentum-SGD (or STORM) rule on the mean gradient
                want = beta * torch.stack(grads).mean(0) + (1 - beta) * g
                if vr:
                    want = torch.stack(grads).mean(0) + (1 - beta) * (g - torch.stack(olds).mean(0))
                torch.testing.assert_close(g_new, want, rtol=1e-4, atol=1e-6)
            g = g_new
            x_prev, x = x, x - gamma * g
            torch.testing.assert_close(fed.x, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_pretrains_simulated(log_dir, tmp_path, rule):  # noqa: F811
    run = tmp_path / rule
    extra = [f"distributed={rule}", "distributed.workers=3", "steps=8", "checkpoint_every=4"]
    if rule.startswith(("fedavg", "scaffold")):
        extra += ["distributed.local_steps=2"]
    if rule == "monna":
        extra += ["distributed.f=1", "distributed.byzantine=[2]", "distributed.attack=alie"]
    if rule == "ddp":  # non-IID: worker i samples only checkpoint i of the three
        extra += ["distributed.partition=checkpoints"]
    assert main(_args(log_dir, run, *extra)) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "td_loss" in records[-1] and any(k.startswith("workers/td_loss_") for k in records[-1])
    assert "workers/dist_to_honest_mean_0" in records[-1]
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert sorted(s["id"] for s in state["workers"]) == [0, 1, 2]
    if rule == "fedavg_m":  # 4 rounds, each one ring all-reduce of the float32 parameters
        P = sum(v.numel() for v in state["workers"][0]["learner"]["online"].values())
        assert records[-1]["comm_bytes_per_worker"] == 4 * (2 * 2 * P * 4 // 3)
    import pvn

    assert pvn.load_encoder(run)(torch.zeros(1, 4, 84, 84, dtype=torch.uint8)).shape == (1, 32)


def test_distributed_resume_is_exact(log_dir, tmp_path):  # noqa: F811
    extra = ["distributed=scaffold_m", "distributed.workers=3", "distributed.participants=2"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(_args(log_dir, full, *extra, "steps=16", "checkpoint_every=8")) == 0
    assert main(_args(log_dir, split, *extra, "steps=8", "checkpoint_every=8")) == 0
    assert main(_args(log_dir, split, *extra, "steps=16", "checkpoint_every=8")) == 0
    a, b = (load_checkpoint(list_checkpoints(r)[-1]) for r in (full, split))
    _assert_same(a["workers"], b["workers"])
    _assert_same(a["algorithm"], b["algorithm"])
    assert a["bytes_sent"] == b["bytes_sent"] and a["bytes_sent"][0] > 0  # traffic counts on


def test_monna_refuses_2f_ge_n(log_dir, tmp_path, capsys):  # noqa: F811
    args = ["distributed=monna", "distributed.workers=4", "distributed.f=2"]
    assert main(_args(log_dir, tmp_path / "r", *args)) == 2
    assert "2f < n" in capsys.readouterr().err


def _torchrun(args: list[str], procs: int = 2) -> list[str]:
    """``torchrun --standalone --nproc_per_node=procs -m pvn ARGS`` (real gloo processes)."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*run, f"--nproc_per_node={procs}", "-m", "pvn", *args]


@pytest.mark.slow
def test_torchrun_gloo_equals_simulation(log_dir, tmp_path):  # noqa: F811
    extra = ["distributed=monna", "distributed.f=0", "steps=6", "checkpoint_every=6"]
    sim = tmp_path / "sim"
    assert main(_args(log_dir, sim, *extra, "distributed.workers=2")) == 0
    real = tmp_path / "real"
    args = _args(log_dir, real, *extra)
    cmd = _torchrun(args)
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    a, b = (load_checkpoint(list_checkpoints(r)[-1]) for r in (sim, real))
    for wa, wb in zip(a["workers"], b["workers"], strict=True):
        for k, v in wa["learner"]["online"].items():
            torch.testing.assert_close(v, wb["learner"]["online"][k], rtol=1e-5, atol=1e-6)


def _final_td(log_dir, run, *extra):  # noqa: F811
    args = ["distributed.workers=5", "steps=10", "checkpoint_every=10", "log_every=5", *extra]
    assert main(_args(log_dir, run, *args)) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    honest = [last.get(f"workers/td_loss_{i}", float("nan")) for i in range(4)]  # workers 0-3
    return {"td_loss": sum(honest) / 4, "byzantine_kept": last.get("byzantine_kept")}


GAUSS = [
    "distributed.byzantine=[4]",
    "distributed.attack=gaussian",
    "distributed.attack_scale=10.0",
]


def test_monna_holds_under_attack_where_averaging_breaks(log_dir, tmp_path, capsys):  # noqa: F811
    """5 workers, worker 4 Byzantine, sending Gaussian vectors: plain averaging (dsgd) is wrecked
    -- its loss turns non-finite and the guard stops it -- while MoNNA (f = 1) drops the
    attacker's vector every time and stays within 10% of the honest run's TD loss. (Sign
    flipping and ALIE move parameters too little in a test-sized run to separate the rules; that
    comparison belongs to the robustness study.)"""
    honest = _final_td(log_dir, tmp_path / "honest", "distributed=monna", "distributed.f=1")
    m = _final_td(log_dir, tmp_path / "monna_g", "distributed=monna", "distributed.f=1", *GAUSS)
    assert abs(m["td_loss"] - honest["td_loss"]) <= 0.1 * honest["td_loss"]
    assert m["byzantine_kept"] == 0.0
    args = ["distributed=dsgd", "distributed.workers=5", "steps=10", *GAUSS]
    capsys.readouterr()
    assert main(_args(log_dir, tmp_path / "dsgd_g", *args)) == 3  # diverged
    assert "non-finite loss at update" in capsys.readouterr().err


def test_non_finite_loss_stops_a_distributed_run_keeping_the_last_good_checkpoint(
    log_dir,  # noqa: F811
    tmp_path,
    capsys,
):
    """The one loop's guard under a rule: D-SGD wrecked by a Gaussian attacker stops with exit 3
    naming the update whose loss was non-finite; every checkpoint it kept holds finite
    parameters for every worker and was written before that update; re-running the command
    resumes from the last good one and stops at the same update."""
    import re

    run = tmp_path / "run"
    args = _args(log_dir, run, "distributed=dsgd", "distributed.workers=5", *GAUSS,
                 "steps=20", "checkpoint_every=2", "log_every=1")  # fmt: skip
    outcomes = []
    for _ in range(2):
        assert main(args) == 3
        err = capsys.readouterr().err
        outcomes.append(int(re.search(r"non-finite loss at update (\d+)", err).group(1)))
        kept = list_checkpoints(run)
        assert kept, "no good checkpoint was kept"
        for path in kept:
            state = load_checkpoint(path)
            assert state["step"] <= outcomes[-1]
            for w in state["workers"]:
                assert all(torch.isfinite(v).all() for v in w["learner"]["online"].values())
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("rule", RULES)
def test_local_learning_trains_its_auxiliary_nets_under_every_rule(log_dir, tmp_path, rule):  # noqa: F811
    """local=dgl under each rule: every worker's optimizer is the configured one (plain SGD for
    the rules that supply their own momentum, Adam for ddp) over the network *and* the
    auxiliary nets, and the auxiliary nets move away from their initial weights."""
    run = tmp_path / rule
    extra = [f"distributed={rule}", "distributed.workers=2", "local=dgl", "steps=4",
             "checkpoint_every=4", "td.warmup_steps=0"]  # fmt: skip
    if rule.startswith(("fedavg", "scaffold")):
        extra += ["distributed.local_steps=2"]
    assert main(_args(log_dir, run, *extra)) == 0
    initial = build(section(PretrainConfig, OmegaConf.load(run / "config.yaml")), num_actions=4)
    n_params = len(list(initial.online.parameters())) + len(list(initial.local.parameters()))
    start = initial.local.state_dict()
    state = load_checkpoint(list_checkpoints(run)[-1])
    for w in state["workers"]:
        group = w["learner"]["optimizer"]["param_groups"][0]
        assert len(group["params"]) == n_params
        assert ("momentum" in group and group["momentum"] == 0.0) == (rule != "ddp")
        aux = w["learner"]["local"]
        moved = [
            k for k, v in start.items() if v.is_floating_point() and not torch.equal(aux[k], v)
        ]
        assert moved, f"{rule}: worker {w['id']}'s auxiliary nets never trained"


def test_a_rule_refuses_an_optimizer_it_cannot_honour(log_dir, tmp_path, capsys):  # noqa: F811
    args = _args(log_dir, tmp_path / "run", "distributed=monna", "optimizer=adam")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "optimizer" in err and "plain SGD" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_killed_worker_ends_the_job_cleanly_and_the_restart_resumes(log_dir, tmp_path):  # noqa: F811
    """torchrun with 2 gloo workers; SIGKILL one worker after a checkpoint: the job exits
    non-zero within 60 s (no hang); the same command then resumes from the last checkpoint."""
    import os
    import signal
    import time

    run = tmp_path / "run"
    args = _args(log_dir, run, "distributed=ddp", "steps=60", "checkpoint_every=5", "log_every=5")
    cmd = _torchrun(args)
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not list_checkpoints(run) and job.poll() is None:
            time.sleep(0.1)
        assert job.poll() is None, "finished before a worker could be killed"
        children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True)
        worker = int(children.stdout.split()[-1])
        os.kill(worker, signal.SIGKILL)
        t0 = time.monotonic()
        code = job.wait(timeout=60)
        assert code != 0 and time.monotonic() - t0 < 60
    finally:
        if job.poll() is None:
            job.kill()
    at = load_checkpoint(list_checkpoints(run)[-1])["step"]
    assert at < 60
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == 60


@pytest.mark.slow
def test_a_signal_to_one_worker_stops_the_team_at_one_update_with_a_checkpoint(log_dir, tmp_path):  # noqa: F811
    """torchrun with 2 gloo workers; SIGTERM to one of them mid-run: both stop after the same
    update (they agree at a collective), the lead writes the checkpoint there, and the same
    command resumes from it to the end."""
    import os
    import re
    import signal
    import time

    from pvn.pretrain_callbacks import STOP_SYNC_EVERY

    run = tmp_path / "run"
    args = _args(log_dir, run, "distributed=ddp", "steps=400", "checkpoint_every=1000",
                 "log_every=5")  # fmt: skip
    cmd = _torchrun(args)
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        metrics = run / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text()) and job.poll() is None:
            time.sleep(0.05)
        children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True)
        os.kill(int(children.stdout.split()[-1]), signal.SIGTERM)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    stops = re.findall(r"pvn: stopped by (.+?) at update (\d+);", err)
    assert len(stops) == 2, err[-3000:]
    assert sorted(who for who, _ in stops) == ["SIGTERM", "another worker's signal"]
    (at,) = {int(n) for _, n in stops}
    assert at % STOP_SYNC_EVERY == 0 and at < 400
    assert [load_checkpoint(c)["step"] for c in list_checkpoints(run)] == [at]
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == 400


def test_ddp_keeps_local_learning_workers_identical(log_dir):  # noqa: F811
    """With local=man, DDP averages the auxiliary nets' gradients too: workers fed different
    batches stay identical (networks, aux nets and their EMA copies)."""
    _, split = _batches(log_dir, 2)
    _, workers = _workers(2, ("local=man",))
    ddp = DDP(SimulatedComm(2), workers)
    for step in range(3):
        ddp.step(split[step], step)
    a, b = (w.learner.local.state_dict() for w in workers)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.testing.assert_close(workers[0].vector(), workers[1].vector(), rtol=0, atol=0)


def test_reward_flip_poisons_the_byzantine_workers_tasks(log_dir):  # noqa: F811
    """attack=reward_flip: the Byzantine worker learns from 1 - r (indicators); the vectors it
    sends are its own, uncrafted."""
    from pvn.distributed import Gossip

    _, split = _batches(log_dir, 3)
    _, workers = _workers(3)
    for w in workers:
        w.byzantine = w.id == 2
    gossip = Gossip(
        SimulatedComm(3),
        workers,
        rule="monna",
        f=1,
        beta=0.9,
        byzantine=[2],
        attack="reward_flip",
        scale=0.1,
        seed=0,
    )
    obs, _, reward, *_ = split[0][0]
    honest, poisoned = (w.learner.tasks(obs, reward).rewards for w in (workers[0], workers[2]))
    assert torch.equal(poisoned, 1.0 - honest) and honest.sum() > 0
    gossip.step(split[0], 0)
    # the mean over the 2 honest workers of whether each kept the Byzantine vector
    assert gossip.last["byzantine_kept"] in (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def pong_log(tmp_path_factory):
    """A second game: real Pong play (6 actions, Breakout has 4) logged by ``pvn collect``."""
    out = tmp_path_factory.mktemp("pong") / "run"
    args = ["collect", "game=Pong", "steps=600", "num_envs=2", f"out={out}", "progress=false"]
    assert main(args) == 0
    return out / "replay_logs"


@pytest.mark.parametrize("rule", ["ddp", "fedavg_m"])
def test_games_partition_shares_the_torso_only(log_dir, pong_log, tmp_path, rule):  # noqa: F811
    """Workers on different games: each its own head (its game's actions) and task nets, the
    torso shared -- identical across workers after every DDP update and every FedAvg round."""
    run = tmp_path / "run"
    extra = [
        f"distributed={rule}",
        "distributed.workers=4",
        "distributed.partition=games",
        "steps=8",
        "checkpoint_every=8",
        "td.warmup_steps=2",
    ]
    if rule == "fedavg_m":
        extra += ["distributed.local_steps=2", "distributed.participants=4"]
    args = _args(log_dir, run, *extra)
    args[1] = f"data.path=[{log_dir},{pong_log}]"
    assert main(args) == 0
    workers = {s["id"]: s["learner"] for s in load_checkpoint(list_checkpoints(run)[-1])["workers"]}
    heads = {i: w["online"]["head.weight"] for i, w in workers.items()}
    assert heads[0].shape[0] == 10 * 4 and heads[1].shape[0] == 10 * 6  # Breakout, Pong
    torsos = {
        i: torch.cat([v.reshape(-1) for k, v in w["online"].items() if k.startswith("torso.")])
        for i, w in workers.items()
    }
    for i in (1, 2, 3):
        assert torch.equal(torsos[i], torsos[0])
    tasks = {i: w["tasks"] for i, w in workers.items()}
    conv = next(k for k in tasks[0] if k.endswith("weight"))
    assert torch.equal(tasks[0][conv], tasks[2][conv])  # same game, same tasks
    assert not torch.equal(tasks[0][conv], tasks[1][conv])  # other game, other tasks
    assert not torch.equal(heads[0], heads[2])  # same game, own data: heads trained apart


def test_a_list_of_games_needs_the_games_partition(log_dir, tmp_path, capsys):  # noqa: F811
    args = _args(log_dir, tmp_path / "run", "distributed=ddp")
    args[1] = f"data.path=[{log_dir},{log_dir}]"
    assert main(args) == 2
    assert "data.path" in capsys.readouterr().err
