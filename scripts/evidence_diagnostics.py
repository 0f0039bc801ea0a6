"""Did the experiment's PVNs learn anything? Per game, from the pretraining run and its log.

For each game of an experiment config whose pretraining has finished (``pvn experiment``), on
``--n`` transitions drawn uniformly from the game's log (the data the PVN was trained on:
in-sample, so this asks whether the heads use the state at all, not whether they generalise):

* ``td``: the run's TD loss (its own target network and calibrated tasks, as in training);
* ``const``: the loss of the best per-task constant on the same targets (half the targets'
  variance, averaged over tasks): a head that ignores the state reaches it;
* ``td / const``: below 1, the features predict the tasks' successor measures better than a
  constant; about 1, they carry nothing the heads can use;
* the features' effective rank (srank, Kumar et al. 2021), dormant fraction and mean L1 norm on
  those states, for the PVN torso and for a random torso of the same architecture (the
  random-features arm). The norm matters to the linear arms: an Adam step moves each head
  weight by about lr, so a head's Q-values move by about lr times the features' L1 norm per
  update -- larger features are a larger effective step at the same config;
* the return probe (:func:`pvn.analysis.probes.linear_probes`): held-out R^2 of the logging
  policy's discounted return-to-go, PVN vs random torso -- the same target for every run;
* the successor-measure probe: for each of the PVN's tasks, the logging policy's discounted
  future occupancy of its indicator, ``G_k(t) = sum_j gamma^j r_k(s_{t+j})``, computed along the
  log's complete episodes; ridge regression from the features (PVN or random torso) fit on the
  earlier episodes, R^2 on the later ones (:mod:`pvn.analysis.probes`), mean over tasks. It asks
  the question PVN's pretraining is for: do the features span the tasks' successor measures
  better than random features do? (The PVN learns the measures of the ``td.aggregate`` policy
  off-policy; the logging policy's are the ones the log can check without a model.)

    .venv/bin/python scripts/evidence_diagnostics.py configs/experiment/evidence_cpu.yaml

writes ``<results>/diagnostics.json`` and prints a Markdown table (the results page quotes it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pvn.analysis.heldout import heldout_losses, trained_learner


def sample(ds, n: int, seed: int = 2024):
    """``n`` valid transitions drawn uniformly over the log's checkpoints (seeded)."""
    from pvn.replay import TorchBatch

    rng = np.random.default_rng(seed)
    keys = [(c, i) for c in ds.checkpoints for i in np.flatnonzero(ds.valid_mask(c))]
    pick = sorted(rng.choice(len(keys), min(n, len(keys)), replace=False))
    parts = {}
    for j in pick:
        c, i = keys[j]
        parts.setdefault(c, []).append(i)
    batches = [ds.gather(c, np.asarray(idx)) for c, idx in parts.items()]
    cat = [np.concatenate([getattr(b, f) for b in batches]) for f in
           ("observation", "action", "reward", "next_observation", "terminal")]  # fmt: skip
    return TorchBatch(*(torch.from_numpy(a) for a in cat))


@torch.no_grad()
def feature_stats(torso, obs: torch.Tensor, tau: float) -> dict[str, float]:
    from pvn.diagnostics import dormant_fraction, srank

    feats = torch.cat([torso(obs[s : s + 256]) for s in range(0, len(obs), 256)])
    return {
        "srank": int(srank(feats)),
        "dormant": float(dormant_fraction(feats, tau)),
        "l1": float(feats.abs().sum(dim=1).mean()),
    }


def task_returns(learner, ds, gamma: float):
    """(keys, G) of every valid state inside a complete episode: ``G`` (n, tasks) the
    discounted future task rewards along the log (invalid slots inside an episode count 0)."""
    from pvn.analysis.probes import discounted_to_go

    keys, gs = [], []
    for c in ds.shards:
        log = ds.logged(c)
        order = log.order
        valid = ds.valid_mask(c)[order]
        r = np.zeros((len(order), learner.tasks.num_tasks))
        pos = np.flatnonzero(valid)
        for s in range(0, len(pos), 1024):
            b = ds.gather(c, order[pos[s : s + 1024]])
            out = learner.tasks(torch.from_numpy(b.observation), torch.from_numpy(b.reward))
            r[pos[s : s + 1024]] = out.rewards.float().numpy()
        g, complete = discounted_to_go(r, log.terminal, gamma)
        keep = valid & complete
        keys += [(c, int(i)) for i in order[keep]]
        gs.append(g[keep])
    return keys, np.concatenate(gs)


@torch.no_grad()
def sm_probe(torsos: dict, ds, keys, g, states: int, seed: int = 0) -> dict[str, float]:
    """Mean over tasks of the held-out R^2 (later 20% of the episodes) of each torso's features."""
    from pvn.analysis.probes import choose_l2, ridge_r2

    split = int(len(keys) * 0.8)
    rng = np.random.default_rng(seed)
    tr = np.sort(rng.choice(split, min(split, int(states * 0.8)), replace=False))
    te = np.sort(split + rng.choice(len(keys) - split, min(len(keys) - split, states // 5),
                                    replace=False))  # fmt: skip
    out = {}
    for name, torso in torsos.items():
        x = []
        for idx in (tr, te):
            obs = np.stack([ds.gather(keys[i][0], [keys[i][1]]).observation[0] for i in idx])
            x.append(torch.cat([torso(torch.from_numpy(obs[s : s + 256]))
                                for s in range(0, len(obs), 256)]).double().numpy())  # fmt: skip
        r2 = [ridge_r2(x[0], g[tr, k], x[1], g[te, k], choose_l2(x[0], g[tr, k]))[0]
              for k in range(g.shape[1]) if g[te, k].std() > 0]  # fmt: skip
        out[name] = float(np.mean(r2)) if r2 else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="the experiment config (configs/experiment/NAME.yaml)")
    ap.add_argument("--n", type=int, default=2048, help="transitions per game (default 2048)")
    ap.add_argument("--probe-states", type=int, default=3000,
                    help="states of the successor-measure probe (default 3000)")  # fmt: skip
    ap.add_argument(
        "--games",
        nargs="*",
        help="only these games (default: every game whose pretraining has finished, or none "
        "with --run); results of other games in diagnostics.json are kept",
    )
    ap.add_argument("--run", action="append", default=[], metavar="GAME=RUN_DIR",
                    help="also diagnose another pretraining run on GAME's log (e.g. a knob "
                         "variant), reported as 'GAME (RUN_DIR)'")  # fmt: skip
    args = ap.parse_args()
    from pvn.analysis.probes import linear_probes
    from pvn.experiments.plan import data_dir
    from pvn.networks import build_torso
    from pvn.replay import DQNReplayDataset

    cfg = OmegaConf.load(args.config)
    out, results = Path(cfg.out), Path(cfg.results)
    saved = results / "diagnostics.json"
    rows = json.loads(saved.read_text()) if saved.is_file() else {}
    games = args.games if args.games is not None else ([] if args.run else cfg.games)
    todo = [(g, out / "pretrain" / g, g) for g in games]
    todo = [t for t in todo if (t[1] / "done.json").is_file()]
    for spec in args.run:
        game, run = spec.split("=", 1)
        todo.append((game, Path(run), f"{game} ({run})"))
    for game, run, label in todo:
        pre, learner, _ = trained_learner(run)
        ds = DQNReplayDataset(data_dir(cfg, game), cache_dir=pre.data.cache_dir, seed=0)
        batch = sample(ds, args.n)
        losses = heldout_losses(learner, batch)
        tau = float(pre.diagnostics.dormant_tau)
        pvn_stats = feature_stats(learner.online.torso, batch.observation, tau)
        spec = dict(OmegaConf.to_container(pre.torso, resolve=True))
        gen = torch.Generator().manual_seed(0)
        moe = OmegaConf.to_container(pre.moe, resolve=True)
        rand = build_torso(spec.pop("name"), gen, moe=moe, **spec).eval()
        rand_stats = feature_stats(rand, batch.observation, tau)
        keys, g = task_returns(learner, ds, float(pre.data.gamma))
        probe = sm_probe({"pvn": learner.online.torso, "random": rand}, ds, keys, g,
                         args.probe_states)  # fmt: skip
        ret = {k: linear_probes(t, ds, gamma=float(pre.data.gamma))["return_r2"]
               for k, t in (("pvn", learner.online.torso), ("random", rand))}  # fmt: skip
        rows[label] = {"transitions": len(batch.observation), **losses,
                      "ratio": losses["td"] / losses["const"],
                      "pvn": {**pvn_stats, "sm_r2": probe["pvn"], "return_r2": ret["pvn"]},
                      "random": {**rand_stats, "sm_r2": probe["random"],
                                 "return_r2": ret["random"]}}  # fmt: skip
    results.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(rows, indent=1) + "\n")
    print("| run | TD loss | best constant | SM probe R² PVN / random | return probe R² PVN / "
          "random | srank PVN / random | dormant PVN / random "
          "| L1 norm PVN / random |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for game, r in rows.items():
        p, q = r["pvn"], r["random"]
        print(f"| {game} | {r['td']:.4f} | {r['const']:.4f} | {p['sm_r2']:.3f} / "
              f"{q['sm_r2']:.3f} | {p.get('return_r2', float('nan')):.3f} / "
              f"{q.get('return_r2', float('nan')):.3f} | {p['srank']} / {q['srank']} | "
              f"{p['dormant']:.2f} / {q['dormant']:.2f} | "
              f"{p.get('l1', float('nan')):.0f} / {q.get('l1', float('nan')):.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
