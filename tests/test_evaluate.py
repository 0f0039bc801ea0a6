"""``pvn evaluate`` on real ALE: pretrained and random encoders, results.json, frozen torso."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pvn.agents.control import Checkpoints, EvalConfig, run_control
from pvn.agents.dqn import DQNConfig
from pvn.agents.linear_dqn import LinearDQN
from pvn.cli import main
from pvn.config import load_config
from pvn.envs import make_atari
from pvn.networks import build_torso
from pvn.replay import DQNReplayWriter

# epsilon 1: Breakout needs FIRE to launch the ball, which an untrained greedy head may never
# press; random play ends episodes in ~200 steps
SMALL = [
    "game=Breakout",
    "agent.epsilon_train=1.0",
    "steps=1000",
    "num_envs=2",
    "agent.min_replay=100",
    "agent.batch_size=8",
    "log_every=200",
    "progress=false",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, ale_episodes):
    root = tmp_path_factory.mktemp("pre")
    with DQNReplayWriter(root / "replay_logs", capacity=2000) as w:
        for ep in ale_episodes:
            w.add_episode(*ep)
    run = root / "run"
    assert (
        main(
            [
                "pretrain",
                f"data.path={root}",
                f"data.cache_dir={root / 'cache'}",
                f"run_dir={run}",
                "torso.feature_dim=32",
                "tasks.num_tasks=10",
                "steps=10",
                "batch_size=8",
                "td.warmup_steps=2",
                "progress=false",
            ]
        )
        == 0
    )
    return run


@pytest.mark.parametrize("which", ["pretrained", "random", "e2e"])
@pytest.mark.slow
def test_evaluate_writes_results(pretrained, tmp_path, which):
    encoder = str(pretrained) if which == "pretrained" else which
    run = tmp_path / "eval"
    small = ["torso.feature_dim=32", "steps=400"] if which == "e2e" else []
    assert main(["evaluate", f"encoder={encoder}", f"run_dir={run}", *SMALL, *small]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["method"] == {"pretrained": "pvn", "random": "random", "e2e": "dqn"}[which]
    steps = 400 if which == "e2e" else 1000
    assert res["game"] == "Breakout" and res["seed"] == 0 and res["steps"] >= steps
    assert len(res["episodes"]) >= 1
    steps = [e["step"] for e in res["episodes"]]
    assert steps == sorted(steps) and steps[-1] <= res["steps"]
    assert all(e["return"] >= 0 and float(e["return"]).is_integer() for e in res["episodes"])
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "loss" in records[-1] and "steps_per_s" in records[-1]
    assert (run / "config.yaml").exists() and any((run / "tb").iterdir())


@pytest.mark.slow
def test_greedy_evaluations_at_start_every_and_end(tmp_path):
    """The paper's scoring: ``eval_episodes`` episodes at step 0, every ``eval_every`` agent
    steps, and after the last step, in rounds over ``eval_num_envs`` envs."""
    run = tmp_path / "eval"
    args = [
        "evaluate",
        "encoder=random",
        f"run_dir={run}",
        *SMALL,
        "eval_episodes=3",
        "eval_num_envs=2",
        "eval_every=400",
        "eval_max_steps=60",
        "agent.epsilon_eval=1.0",
    ]
    assert main(args) == 0
    res = json.loads((run / "results.json").read_text())
    steps = [e["step"] for e in res["evaluations"]]
    # at 0, then the first step count past each 400 (envs add 1 or 2 steps at a time), and the end
    assert len(steps) == 4 and steps[0] == 0 and steps[-1] == res["steps"]
    assert all(0 <= s - e < 2 for s, e in zip(steps[1:3], [400, 800], strict=True))
    for e in res["evaluations"]:
        assert len(e["returns"]) == 3  # two rounds of 2 envs, the second cut to 1
        assert all(r >= 0 for r in e["returns"])
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval_return" in r for r in records) == 4


@pytest.mark.slow
def test_evaluations_do_not_change_the_training_run(tmp_path):
    """Evaluation plays its own envs with its own generator, both seeded by the run's seed and
    the evaluation's step: the training episodes are the same with or without evaluations, and
    the score at a step is the same whichever evaluations came before it (here: none at step 0
    and one more midway)."""
    common = ["encoder=random", *SMALL, "steps=600"]
    evals = ["eval_episodes=4", "eval_num_envs=2", "eval_max_steps=300", "agent.epsilon_eval=1.0"]
    runs = {"a": [], "b": evals, "c": [*evals, "eval_first=false", "eval_every=300"]}
    for name, extra in runs.items():
        assert main(["evaluate", f"run_dir={tmp_path / name}", *common, *extra]) == 0
    a, b, c = (json.loads((tmp_path / d / "results.json").read_text()) for d in runs)
    assert a["episodes"] == b["episodes"] == c["episodes"] and a["evaluations"] == []
    assert [e["step"] for e in b["evaluations"]] == [0, b["steps"]]
    assert c["evaluations"][0]["step"] >= 300 and len(c["evaluations"]) == 2
    assert b["evaluations"][-1] == c["evaluations"][-1]
    # random play scores: other seeds (another step) give other episodes
    assert b["evaluations"][0]["returns"] != b["evaluations"][-1]["returns"]
    assert sum(b["evaluations"][-1]["returns"]) > 0


def test_eval_every_needs_episodes(tmp_path, capsys):
    assert main(["evaluate", "encoder=random", f"run_dir={tmp_path / 'r'}", "eval_every=10"]) == 2
    assert "eval_every" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_feature_norm_needs_a_frozen_encoder(tmp_path, capsys):
    args = ["evaluate", "encoder=e2e", f"run_dir={tmp_path / 'r'}", "agent.feature_norm=true"]
    assert main(args) == 2
    assert "agent.feature_norm" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_frozen_encoder_never_changes():
    torso = build_torso("nature", torch.Generator().manual_seed(0), feature_dim=16)
    torso.requires_grad_(False)
    before = {k: v.clone() for k, v in torso.state_dict().items()}
    a = DQNConfig(lr=1e-3, n_step=3, batch_size=8, min_replay=50, capacity=2000, epsilon_train=0.5)
    agent = LinearDQN(16, 4, a, torch.Generator().manual_seed(0))
    head_before = agent.head.weight.detach().clone()
    cfg = EvalConfig(steps=400)
    with make_atari("Breakout", 2, "eval") as env:
        out = run_control(env, torso, agent, cfg, torch.device("cpu"), seed=0)
    assert out["steps"] >= 400 and out["replay_size"] >= 400
    for k, v in torso.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(head_before, agent.head.weight)  # the head did learn


def test_feature_norm_calibrates_once_when_learning_starts_and_resumes_with_its_scale():
    """``agent.feature_norm``: the loop shows the head the replay's states once, at the step
    learning starts (min_replay items, up to one step of envs more); the scale is 1 / their mean
    L2 norm; a run resumed after that point keeps the saved scale and never recalibrates."""

    seen: list[torch.Tensor] = []

    class Recording(LinearDQN):
        def calibrate(self, features):
            seen.append(features.clone())
            super().calibrate(features)

    torso = build_torso("nature", torch.Generator().manual_seed(0), feature_dim=16)
    torso.requires_grad_(False)
    cfg = EvalConfig(steps=300, checkpoint_every=150)
    a = DQNConfig(lr=1e-3, n_step=3, batch_size=8, min_replay=50, capacity=2000,
                  feature_dtype="float32", feature_norm=True)  # fmt: skip
    saved = []
    agent = Recording(16, 4, a, torch.Generator().manual_seed(0))
    with make_atari("Breakout", 2, "eval") as env:
        ckpts = Checkpoints(lambda step, state: saved.append(state), cfg.checkpoint_every, [])
        run_control(env, torso, agent, cfg, torch.device("cpu"), seed=0, callbacks=[ckpts])
        assert len(seen) == 1 and 50 <= len(seen[0]) < 52
        want = 1.0 / seen[0].norm(dim=1).mean().item()
        assert agent.feature_scale == pytest.approx(want, rel=1e-6)
        assert 0.1 < want < 100  # a random torso's features: not the unit default
        assert saved and saved[0]["step"] >= 150
        assert saved[0]["agent"]["feature_scale"] == agent.feature_scale
        seen.clear()
        resumed = Recording(16, 4, a, torch.Generator().manual_seed(1))
        run_control(env, torso, resumed, cfg, torch.device("cpu"), seed=0, resume=saved[0])
    assert seen == [] and resumed.feature_scale == agent.feature_scale


def test_end_to_end_dqn_trains_its_torso_from_frames():
    from pvn.agents.dqn import end_to_end_dqn

    torso = build_torso("nature", torch.Generator().manual_seed(0), feature_dim=16)
    before = {k: v.clone() for k, v in torso.state_dict().items()}
    a = DQNConfig(lr=1e-3, n_step=3, batch_size=8, min_replay=50, capacity=2000, epsilon_train=0.5)
    agent = end_to_end_dqn(torso, 4, a, torch.Generator().manual_seed(0))
    cfg = EvalConfig(steps=300)
    with make_atari("Breakout", 2, "eval") as env:
        out = run_control(env, None, agent, cfg, torch.device("cpu"), seed=0)
    assert out["steps"] >= 300 and out["replay_size"] >= 300
    changed = [k for k, v in torso.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)  # every torso tensor learned


def test_epsilon_greedy_statistics():
    """Non-greedy actions appear at rate epsilon * (A - 1) / A, uniformly over the others."""
    from pvn.agents.policies import epsilon_greedy

    q = torch.tensor([[0.0, 5.0, 1.0, 2.0]]).repeat(20_000, 1)  # greedy action: 1
    rng = np.random.default_rng(0)
    for eps in (0.0, 0.3, 1.0):
        counts = np.bincount(epsilon_greedy(q, eps, rng), minlength=4) / len(q)
        expected = np.full(4, eps / 4)
        expected[1] += 1 - eps
        assert np.abs(counts - expected).max() < 0.01, (eps, counts)


def test_bad_encoder_and_existing_run(tmp_path, pretrained, capsys):
    assert (
        main(["evaluate", f"encoder={tmp_path / 'nope'}", f"run_dir={tmp_path / 'r'}", *SMALL]) == 2
    )
    assert "neither a checkpoint file nor a run dir" in capsys.readouterr().err
    run = tmp_path / "eval"
    assert main(["evaluate", "encoder=random", f"run_dir={run}", *SMALL]) == 0
    assert main(["evaluate", "encoder=random", f"run_dir={run}", *SMALL]) == 2
    assert "already holds results.json" in capsys.readouterr().err


def test_report_with_offline_probes(pretrained, tmp_path, capsys):
    runs = []
    for name, enc in (("pvn", str(pretrained)), ("rand", "random")):
        runs.append(str(tmp_path / name))
        assert main(["evaluate", f"encoder={enc}", f"run_dir={runs[-1]}", *SMALL]) == 0
    capsys.readouterr()
    out = tmp_path / "rep"
    assert main(["report", *runs, "--out", str(out), "--data", str(pretrained.parent)]) == 0
    text = capsys.readouterr().out
    assert "| Breakout | pvn | 1 |" in text and "| Breakout | random | 1 |" in text
    probes = json.loads((out / "probes.json").read_text())
    assert set(probes) == {"pvn", "random"}
    for p in probes.values():
        assert p["states"] > 100 and p["return_r2"] <= 1 and p["reward_r2"] <= 1


def test_collect_with_a_trained_agent(tmp_path):
    """policy=epsilon_greedy with epsilon 0 logs exactly the agent's greedy actions."""
    from pvn.builders import encoder_for
    from pvn.replay import DQNReplayDataset

    run = tmp_path / "eval"
    assert main(["evaluate", "encoder=random", f"run_dir={run}", *SMALL]) == 0
    out = tmp_path / "data"
    assert (
        main(
            [
                "collect",
                "game=Breakout",
                "steps=200",
                "num_envs=2",
                "policy=epsilon_greedy",
                f"checkpoint={run}",
                "epsilon=0.0",
                "protocol=eval",
                f"out={out}",
                "progress=false",
            ]
        )
        == 0
    )
    from omegaconf import OmegaConf

    from pvn.checkpoint import list_checkpoints, load_checkpoint

    encoder = encoder_for(OmegaConf.load(run / "config.yaml"), torch.device("cpu"))
    head = torch.nn.Linear(encoder.feature_dim, 4)
    head.load_state_dict(load_checkpoint(list_checkpoints(run)[-1])["agent"]["network"])
    ds = DQNReplayDataset(out, cache_dir=tmp_path / "cache")
    idx = np.flatnonzero(ds.valid_mask(0))[:50]
    b = ds.gather(0, idx)
    with torch.no_grad():
        greedy = head(encoder(torch.from_numpy(b.observation))).argmax(1).numpy()
    np.testing.assert_array_equal(b.action, greedy)


def test_a_trained_policy_acts_on_the_features_its_head_learned_on(tmp_path):
    """A head trained with agent.feature_norm reads phi * c; the collection policy made from its
    run must too (it once loaded only the layer's weights and acted on phi with c = 1)."""
    from pvn.builders import encoder_for
    from pvn.checkpoint import list_checkpoints, load_checkpoint
    from pvn.commands.collect import trained_policy
    from pvn.envs import FrameStack, make_atari

    run = tmp_path / "eval"
    assert main(["evaluate", "encoder=random", f"run_dir={run}", "agent.feature_norm=true",
                 *SMALL]) == 0  # fmt: skip
    saved = load_checkpoint(list_checkpoints(run)[-1])["agent"]
    scale = saved["feature_scale"]
    assert abs(scale - 1.0) > 0.05  # the test can tell a scaled head from an unscaled one
    policy = trained_policy(str(run), 4, 0.0, 0)
    with make_atari("Breakout", 4, "eval", seed=3) as env:  # stacks of real play
        stack = FrameStack(4)
        stack.push(env.reset()[:, -1], np.ones(4, bool))
        for a in range(20):
            frames = stack.push(env.step(np.full(4, a % 4)).obs[:, -1])
    obs = torch.from_numpy(frames)
    from omegaconf import OmegaConf

    encoder = encoder_for(OmegaConf.load(run / "config.yaml"), torch.device("cpu"))
    w, b = saved["network"]["weight"], saved["network"]["bias"]
    with torch.no_grad():
        by_hand = (encoder(obs) * scale) @ w.T + b
        torch.testing.assert_close(policy.q_fn(obs), by_hand)


def test_collect_epsilon_greedy_needs_an_agent(tmp_path, capsys):
    assert main(["collect", "policy=epsilon_greedy", f"out={tmp_path / 'd'}", "steps=10"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_paper_evaluation_preset(capsys):
    assert (
        main(["evaluate", "eval_preset=paper", "encoder=random", "run_dir=x", "--cfg", "job"]) == 0
    )
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["steps"] == 1_000_000 and cfg["protocol"] == "eval" and cfg["num_envs"] == 1
    assert (cfg["eval_episodes"], cfg["eval_every"], cfg["eval_max_steps"]) == (100, 0, 27000)
    a = cfg["agent"]
    assert (a["n_step"], a["target_period"], a["batch_size"], a["update_every"]) == (5, 2000, 32, 4)
    assert (a["lr"], a["adam_eps"], a["max_grad_norm"]) == (6.25e-5, 1.5e-4, None)
    assert (a["reward_clip"], a["feature_dtype"]) == ("return", "float32")
    assert (a["min_replay"], a["capacity"], a["epsilon_train"], a["epsilon_eval"]) == (
        2000,
        1_000_000,
        0.01,
        0.001,
    )


def test_short_evaluation_preset_changes_only_the_head_speed():
    paper = load_config("evaluate", ["encoder=random", "run_dir=x"])
    short = load_config("evaluate", ["eval_preset=short", "encoder=random", "run_dir=x"])
    assert (short.agent.lr, short.agent.target_period) == (3e-3, 500)
    rest = {k: v for k, v in short.agent.items() if k not in ("lr", "target_period")}
    assert rest == {k: v for k, v in paper.agent.items() if k not in ("lr", "target_period")}
    assert (short.steps, short.protocol) == (paper.steps, paper.protocol)


@pytest.mark.slow
def test_killed_evaluation_resumes_deterministically(tmp_path, capsys):
    """SIGKILL after a checkpoint; two resumptions from the same checkpoint finish with identical
    agents and results; the episodes recorded before the checkpoint are kept."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from pvn.checkpoint import list_checkpoints, load_checkpoint

    run = tmp_path / "killed"
    args = ["encoder=random", f"run_dir={run}", *SMALL, "steps=2400", "checkpoint_every=600"]
    proc = subprocess.Popen([sys.executable, "-m", "pvn", "evaluate", *args])
    try:
        while not list_checkpoints(run) and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run / "results.json").exists(), "finished before it could be killed"
    ckpt = load_checkpoint(list_checkpoints(run)[-1])["loop"]
    at = ckpt["step"]
    # resuming under settings that compute something else would splice two runs into one
    assert main(["evaluate", *args, "agent.lr=0.5"]) == 2
    assert "different config (agent)" in capsys.readouterr().err
    assert main(["evaluate", *args, "game=Boxing", "steps=4800"]) == 2  # more steps alone: fine
    assert "different config (game)" in capsys.readouterr().err
    assert not (run / "results.json").exists()
    copies = [tmp_path / "a", tmp_path / "b"]
    for c in copies:
        shutil.copytree(run, c)
        assert main(["evaluate", *args[:1], f"run_dir={c}", *args[2:]]) == 0
    res = [json.loads((c / "results.json").read_text()) for c in copies]
    assert res[0] == res[1] and res[0]["resumed_at"] == [at] and res[0]["steps"] >= 2400
    assert res[0]["episodes"][: len(ckpt["episodes"])] == ckpt["episodes"]
    nets = [load_checkpoint(list_checkpoints(c)[-1])["agent"]["network"] for c in copies]
    for k in nets[0]:
        assert torch.equal(nets[0][k], nets[1][k]), k


def test_a_signal_stops_an_evaluation_with_a_checkpoint_where_it_stands(
    tmp_path, stop_after_first_log
):
    """SIGTERM mid-run: a checkpoint at the agent step reached (no periodic one is due), exit
    75 with one line, no results; the same command finishes the run from that step."""
    from pvn.checkpoint import list_checkpoints, load_checkpoint

    run = tmp_path / "stopped"
    args = ["encoder=random", f"run_dir={run}", *SMALL, "steps=2400", "checkpoint_every=100000"]
    rc, err = stop_after_first_log(["evaluate", *args], run)
    assert rc == 75, err
    (ckpt,) = list_checkpoints(run)
    at = load_checkpoint(ckpt)["loop"]["step"]
    assert 200 <= at < 2400 and not (run / "results.json").exists()
    assert err.strip().splitlines()[-1] == (
        f"pvn: stopped by SIGTERM at agent step {at}; the same command resumes"
    )
    assert main(["evaluate", *args]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["resumed_at"] == [at] and res["steps"] >= 2400


@pytest.mark.slow
def test_paper_preset_scores_by_its_final_evaluation(tmp_path, capsys):
    """The issue's check: ``eval_preset=paper`` with a short budget writes evaluations of
    ``eval_episodes`` greedy episodes at step 0 and after the last step, and ``pvn report``
    scores the run by the final one and says so."""
    run = tmp_path / "paper"
    args = ["evaluate", "eval_preset=paper", "encoder=random", "game=Pong", f"run_dir={run}"]
    assert main([*args, "steps=3000", "eval_episodes=10", "progress=false"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert [e["step"] for e in res["evaluations"]] == [0, 3000]  # one env: exactly 3,000 steps
    assert all(len(e["returns"]) == 10 for e in res["evaluations"])
    assert all(-21 <= r <= 21 for e in res["evaluations"] for r in e["returns"])
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 0
    final = np.mean(res["evaluations"][-1]["returns"])
    text = (out / "report.md").read_text()
    assert f"| {final:.1f} | final evaluation (10 episodes) |" in text


def test_progress_rate_counts_from_the_resume_and_again_from_learning():
    """tqdm's rate is (n - initial) / elapsed until its smoothing has samples: after a resume
    at step 400 the bar starts there (not 400 steps in no time), and when learning starts at
    ``min_replay`` (600) the warm-up's fast random steps leave the rate and the ETA."""
    import io
    from types import SimpleNamespace

    from pvn.agents.control import Progress
    from pvn.progress import bar

    pbar = bar(1000, "evaluate", "step", file=io.StringIO())
    cb = Progress(pbar)
    loop = SimpleNamespace(step=400, agent=SimpleNamespace(cfg=DQNConfig(min_replay=600)))
    cb.on_start(loop, {})
    assert (pbar.n, pbar.initial) == (400, 400)
    for _ in range(5):  # 50 envs: 450, ..., 650; learning starts within the step to 600
        loop.step += 50
        cb.on_step(loop, SimpleNamespace(live=range(50)))
        if loop.step < 600:
            assert (pbar.n, pbar.initial) == (loop.step, 400)
    assert (pbar.n, pbar.initial) == (650, 600)
    assert pbar.format_dict["rate"] is None  # no sample of the new pace yet: no stale rate
    pbar.close()
