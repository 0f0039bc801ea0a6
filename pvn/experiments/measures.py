"""The report of an experiment's pretrainings: each finished one measured offline on the log,
side by side per game: the pretraining arms' (``control: false``) and the PVNs the control arms
read (``pretrain``, and a knob's, named by its first arm).

A pretraining study (optimizers, torsos, local-learning rules, MoE layers) compares what the
pretraining itself produced, with no control run: the TD loss of the PVN objective (Farebrother
et al. 2023, Eq. 4) on the training batches and on held-out transitions of the same log, and
linear probes of the frozen torso (:mod:`pvn.analysis.heldout`). A control experiment reads the
same measures of its PVNs beside the linear arms' scores: whether the features carry the tasks'
successor measures, and the logging policy's values, better than the random torso does.

Each run's measures are kept in its run directory (``measures.json``, with the settings they
were made under), so a report re-written over more runs measures only the new ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pvn.experiments.plan import MEASURES_VERSION, Stage, data_dir, run_games
from pvn.files import write_text_atomic


def _measures(stage: Stage, data: Path, spec: dict[str, Any], held: dict,
              worker: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The stage's run measured under ``spec`` on the log ``data`` (cached in its
    ``measures.json``; a joint run's per game, ``measures_<game>.json``, as ``worker``)."""
    from pvn.analysis.heldout import measure_run

    key = {"data": str(data), **spec, "measures": MEASURES_VERSION, "worker": worker}
    cache = stage.run_dir / ("measures.json" if worker is None else f"measures_{data.name}.json")
    if cache.is_file():
        kept = json.loads(cache.read_text())
        if kept.get("settings") == key:
            return kept
    _held(held, data, spec)
    out = {"settings": key, **measure_run(stage.run_dir, held["ds"], held["batch"],
                                          spec["probe_states"], spec["final_logs"],
                                          tuple(spec["noise"]), worker)}  # fmt: skip
    write_text_atomic(cache, json.dumps(out, indent=1))
    return out


def _held(held: dict, data: Path, spec: dict[str, Any]) -> dict:
    """``held``, with the log ``data`` (its held-out checkpoints) and its held-out batch read
    into it unless they are already there (once per game and report)."""
    from pvn.analysis.heldout import heldout_batch
    from pvn.replay import DQNReplayDataset

    if "ds" not in held:
        ds = DQNReplayDataset(data, checkpoints=spec["heldout"] or None)
        n, k = spec["transitions"], len(ds.checkpoints)  # split evenly over the checkpoints
        parts = [heldout_batch(ds, c, n // k + (i < n % k)) for i, c in enumerate(ds.checkpoints)]
        held["ds"], held["batch"] = ds, _concat(parts)
    return held


def _concat(batches: list):
    """The held-out batches of several checkpoints as one."""
    import torch

    from pvn.replay import TorchBatch

    return TorchBatch(*[torch.cat([b[i] for b in batches]) for i in range(5)])


def _cell(values: list[float], digits: int = 4, ci: list | None = None) -> str:
    """Mean over seeds, with the sample sd when there are several (n in the arm's row); one
    value with ``ci`` (its 95% bootstrap interval over transitions), ``value [lo, hi]``."""
    vals = [v for v in values if np.isfinite(v)]
    if not vals:
        return "—"
    if len(vals) == 1:
        span = f" [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]" if ci else ""
        return f"{vals[0]:.{digits}g}{span}"
    return f"{np.mean(vals):.{digits}g} ± {np.std(vals, ddof=1):.2g}"


def _params(m: dict) -> str:
    """The online network's parameters, with what one token passes through when a sparse
    layer makes that fewer, and a local rule's trained auxiliary parameters."""
    text = f"{m['params']:,}"
    if m["active_params"] != m["params"]:
        text += f" ({m['active_params']:,} active)"
    if m["aux_params"]:
        text += f" + {m['aux_params']:,} aux"
    return text


def pretraining_report(cfg: dict[str, Any], runs: list[Stage], results: Path) -> str:
    """Measure every finished pretraining and write ``pretraining.md`` (a table per
    game and the training TD-loss curves), ``pretraining.csv`` (a row per run) and
    ``pretraining.json`` (every number) under ``results``; returns the Markdown.

    Args:
        cfg: the experiment config (:func:`pvn.experiments.plan.load`), its ``measure:``.
        runs: the finished pretraining stages (:func:`pvn.experiments.plan.run_games`).
        results: the report's directory.
    """
    from pvn.plots import plot_deflection, plot_td_curves

    spec = cfg["measure"]
    where = (f"log checkpoints {spec['heldout']}, held out of the pretraining"
             if spec["heldout"] else "the whole log (the pretraining's own data)")  # fmt: skip
    text = [
        "# Pretrainings",
        "",
        f"Each run measured on {where}: the TD loss on {spec['transitions']} of its "
        "transitions against the run's own targets (and the best per-task constant's, the "
        "floor of a head that ignores the state), linear probes of the frozen torso on up to "
        f"{spec['probe_states']} states (R² of return-to-go, next reward and the run's tasks' "
        "successor measures on later episodes), "
        f"the training TD loss as the mean of the last {spec['final_logs']} logs. Cells: mean "
        "over seeds ± sd when n > 1; a single run's held-out TD loss and noise ratios carry "
        "[95% bootstrap intervals] over the held-out transitions.",
    ]
    rows: list[list] = []
    by_game, diverged, every = _measure_runs(cfg, runs)
    for game in cfg["games"]:
        by_arm = by_game.get(game, {})
        if by_arm or diverged.get(game):
            rows += _csv_rows(game, by_arm)
            tables = _game_tables(by_arm, spec["noise"], bool(spec["heldout"])) if by_arm else []
            text += ["", f"## {game}", *tables]
        if diverged.get(game):
            text += [
                "",
                "Diverged (stopped on a non-finite loss; not measured): "
                + "; ".join(f"{a} seed {k} ({e})" for a, k, e in diverged[game])
                + ".",
            ]
        grid = _deflections(cfg, by_arm, [a for a, _, _ in diverged.get(game, [])])
        if grid:
            plot_deflection(
                grid,
                results / f"pretraining_deflection_{game}.png",
                f"{game}: deflection from the baseline arm",
            )
            text += ["", f"![deflection, {game}](pretraining_deflection_{game}.png)"]
        if by_arm:
            curves = {arm: [m["curve"] for _, m in ms] for arm, ms in by_arm.items()}
            plot_td_curves(curves, results / f"pretraining_td_{game}.png", game)
            text += ["", f"![training TD loss, {game}](pretraining_td_{game}.png)"]
            text += _probe_curve(game, by_arm, results)
    header = ("game,arm,seed,td_train,td_heldout,td_constant,return_r2,reward_r2,successor_r2,"
              "successor_r2_init,feat_l1,feat_l1_init,srank,dormant,"
              "params,active_params,aux_params,feat_norm_init,feat_norm_trained,"
              "updates_per_s,rule,workers,deflection,grad_cos\n")  # fmt: skip
    write_text_atomic(results / "pretraining.csv",
                      header + "".join(",".join(map(str, r)) + "\n" for r in rows))  # fmt: skip
    write_text_atomic(results / "pretraining.json", json.dumps(every, indent=1))
    md = "\n".join(text) + "\n"
    write_text_atomic(results / "pretraining.md", md)
    return md


_PROBE_CURVE = ("The probes along each pretraining, on the same states and targets: the "
                "torso at initialisation (step 0) and at each kept checkpoint; cells: held-out "
                "R² of the return-to-go / of the tasks' successor measures, mean over seeds. "
                "Still rising at the end: the pretraining was stopped early.")  # fmt: skip


def _probe_curve(game: str, by_arm: dict[str, list[tuple[int, dict]]], results: Path
                 ) -> list[str]:  # fmt: skip
    """The probe curve's table and plot, where a run kept more than its last checkpoint."""
    from pvn.plots import plot_probe_curves

    curves = {arm: [m["probe_curve"] for _, m in ms] for arm, ms in by_arm.items()}
    if not any(len(c["step"]) > 2 for runs in curves.values() for c in runs):
        return []
    steps = sorted({k for runs in curves.values() for c in runs for k in c["step"]})

    def cell(runs: list[dict], step: int) -> str:  # the seeds' mean at ``step``
        at = [(c, c["step"].index(step)) for c in runs if step in c["step"]]
        keys = ("return_r2", "successor_r2")
        return " / ".join(_cell([c[k][i] for c, i in at], 3) for k in keys) if at else "—"

    rows = {arm: [cell(runs, step) for step in steps] for arm, runs in curves.items()}
    plot_probe_curves(curves, results / f"pretraining_probes_{game}.png", game)
    return [*_table(_PROBE_CURVE, [f"{k:,}" for k in steps], rows), "",
            f"![probe curve, {game}](pretraining_probes_{game}.png)"]  # fmt: skip


def _measure_runs(cfg: dict[str, Any], runs: list[Stage]) -> tuple[dict, dict, dict]:
    """Every run measured per game it learned: ``(by_game, diverged, every)``, per game the
    measures of each arm's seeds (``{arm: [(seed, measures)]}``) and the (arm, seed, error) of
    the runs that stopped on a non-finite loss, and every run's measures by stage name (a
    joint run's by ``name:game``)."""
    spec, every = cfg["measure"], {}
    held: dict[str, dict[str, Any]] = {}  # per game: its log and held-out batch, read once
    by_game: dict[str, dict[str, list[tuple[int, dict]]]] = {}
    diverged: dict[str, list[tuple[str, int, str]]] = {}
    for game in cfg["games"]:
        for s in runs:
            games, arm, seed = run_games(s)
            if game in games and s.diverged:
                error = json.loads((s.run_dir / "diverged.json").read_text())["error"]
                diverged.setdefault(game, []).append((arm, seed, error.split(";")[0]))
                every[s.name] = {"diverged": error}
            elif game in games:  # a joint run: measured per game, as the worker on it
                worker = games.index(game) if len(games) > 1 else None
                m = _measures(s, data_dir(cfg, game), spec, held.setdefault(game, {}), worker)
                by_game.setdefault(game, {}).setdefault(arm, []).append((seed, m))
                every[s.name if worker is None else f"{s.name}:{game}"] = m
    _across_runs(cfg, runs, by_game, held)
    return by_game, diverged, every


def _deflections(cfg: dict[str, Any], by_arm: dict[str, list[tuple[int, dict]]],
                 diverged: list[str]) -> dict[str, dict[str, float | str]]:  # fmt: skip
    """The arms with a baseline, as a grid: baseline -> {the arm's name past the ``-``-parts
    it shares with the baseline's (``dsgd-alie`` against ``dsgd-none``: ``alie``): its mean
    deflection over seeds, or why there is none}."""
    grid: dict[str, dict[str, float | str]] = {}
    for arm, spec in cfg["arms"].items():
        base = spec.get("baseline")
        if base is None or (arm not in by_arm and arm not in diverged):
            continue
        a, b = arm.split("-"), base.split("-")
        shared = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                      min(len(a), len(b)))  # fmt: skip
        label = "-".join(a[shared:]) or arm
        values = [m["deflection"] for _, m in by_arm.get(arm, []) if "deflection" in m]
        why = ("diverged" if arm in diverged else "baseline diverged" if base in diverged
               else "baseline not done")  # fmt: skip
        grid.setdefault(base, {})[label] = float(np.mean(values)) if values else why
    return grid


def _csv_rows(game: str, by_arm: dict[str, list[tuple[int, dict]]]) -> list[list]:
    """A row of ``pretraining.csv`` per measured run of ``game``."""
    rows = []
    for arm, ms in by_arm.items():
        for seed, m in ms:
            p, team = m["probes"], m["team"] or {}
            rows.append([game, arm, seed, m["td_train"], m["heldout"]["td"],
                         m["heldout"].get("const", ""), p["return_r2"], p["reward_r2"],
                         p["successor_r2"], m["probes_init"]["successor_r2"], p["l1"],
                         m["probes_init"]["l1"], p["srank"], p["dormant"], m["params"],
                         m["active_params"],
                         m["aux_params"], m["scales"]["init/feat_norm"],
                         m["scales"]["trained/feat_norm"], m["updates_per_s"],
                         team.get("rule", "none"), team.get("workers", 1),
                         m.get("deflection", ""), m.get("grad_cos", "")])  # fmt: skip
    return rows


def _across_runs(
    cfg: dict[str, Any],
    runs: list[Stage],
    by_game: dict[str, dict[str, list[tuple[int, dict]]]],
    held: dict,
) -> None:
    """The readings that take more than one run or game, added to each run's measures: an arm
    with a ``baseline:``, its ``deflection`` from the baseline's run of the same seed and its
    training TD loss over that run's (``td_vs_baseline``); a joint run, its games'
    torso-gradient cosine (``grad_cos``) on their held-out batches."""
    from pvn.analysis.workers import deflection, torso_gradient_cosine

    def of_seed(game: str, arm: str, seed: int) -> dict:
        return next(m for k, m in by_game[game][arm] if k == seed)

    by_name = {s.name: s for s in runs if not s.diverged}
    for s in by_name.values():
        games, arm, seed = run_games(s)
        base_arm = cfg["arms"].get(arm, {}).get("baseline")
        base = by_name.get(f"pretrain/{games[0]}-{base_arm}/seed{seed}")  # (not joint: one game)
        if base is not None:  # the arm names a baseline, and its run of this seed is done
            m = of_seed(games[0], arm, seed)
            m["deflection"] = deflection(s.run_dir, base.run_dir)
            m["td_vs_baseline"] = m["td_train"] / of_seed(games[0], base_arm, seed)["td_train"]
        if len(games) > 1:
            batches = [_held(held.setdefault(g, {}), data_dir(cfg, g), cfg["measure"])["batch"]
                       for g in games]  # fmt: skip
            cos = torso_gradient_cosine(s.run_dir, batches)
            for game in games:
                of_seed(game, arm, seed)["grad_cos"] = cos


def _table(intro: str, header: list[str], rows: dict[str, list[str]]) -> list[str]:
    """A Markdown table with a row per arm, after its introducing sentence."""
    out = ["", intro, ""] if intro else [""]
    out += ["| " + " | ".join(["arm", *header]) + " |", "|---" * (len(header) + 1) + "|"]
    return out + [f"| {arm} | " + " | ".join(cells) + " |" for arm, cells in rows.items()]


def _vals(ms: list[tuple[int, dict]], group: str, key: str) -> list[float]:
    """``m[group][key]`` of each seed's measures."""
    return [m[group][key] for _, m in ms]


def _ci(ms: list[tuple[int, dict]], key: str) -> list | None:
    """A lone run's bootstrap interval ``heldout[key]`` (several runs show their spread)."""
    return ms[0][1]["heldout"][key] if len(ms) == 1 else None


def _main_row(ms: list[tuple[int, dict]]) -> list[str]:
    """An arm's losses, probes, parameters and speed (a single run's held-out loss with its
    bootstrap interval)."""
    first = ms[0][1]
    const = [m["heldout"].get("const", float("nan")) for _, m in ms]
    return [str(len(ms)), _cell([m["td_train"] for _, m in ms]),
            _cell(_vals(ms, "heldout", "td"), ci=_ci(ms, "td_ci")), _cell(const),
            *[_cell(_vals(ms, "probes", k), d)
              for k, d in (("return_r2", 3), ("reward_r2", 3), ("srank", 3), ("dormant", 2))],
            _params(first), _cell([m["updates_per_s"] for _, m in ms], 3)]  # fmt: skip


_SCALES = ("Scale of the features |φ(s)| and the predictions |Q(s, a)| (mean over up to 256 "
           "of the measured states, spread over the batch) at initialisation (the network "
           "rebuilt from the run's seed) and after training:")  # fmt: skip
_FLOOR = ("The probes against a random torso: the same torso at initialisation (rebuilt from "
          "each run's seed, no pretraining) on the same states and targets. R² successor: the "
          "held-out R² of the logging policy's discounted future occupancy of each of the "
          "run's task indicators (what the PVN's heads predict, under the log's policy), each "
          "task fit alone, pooled over tasks (the share of their total variance explained); "
          "\\|φ\\|₁: the features' mean L1 norm, the scale a linear head's Adam steps act at:"
          )  # fmt: skip
_ROUTING = ("Top-k MoE routing on the held-out transitions: as a frozen encoder runs (eval: no "
            "router noise, nothing dropped) and as the pretraining ran (train: router noise, "
            "expert capacity); dropped: the fraction of top-k assignments over capacity; load "
            "max: the busiest expert's share × E (1: balanced); each a mean over batches of "
            "256:")  # fmt: skip
_TEAMS = (
    "Multi-worker runs (the TD losses above: a joint run's worker on this game, its probes "
    "the run's encoder, worker 0's torso; otherwise the honest workers' mean in training, "
    "worker 0 held out): the rule, its workers, drift (the mean logged distance of a "
    "worker's model to the honest workers' mean within a round), the rule's traffic, the "
    "Byzantine vectors among the neighbours MoNNA averaged per honest worker and update, "
    "the training TD loss over the baseline arm's, deflection (the honest workers' mean "
    "model's distance to the same workers' mean in the baseline's run, over the baseline's "
    "distance from initialisation) and, for a joint run, the cosine between its games' "
    "torso gradients on their held-out transitions:"
)
_NOISE = (
    "Held-out TD loss with Gaussian pixel noise of std σ in s alone (clean targets), over "
    "the clean loss; the features' relative drift |φ(noisy s) − φ(s)| / |φ(s)|:"
)


def _team_row(ms: list[tuple[int, dict]]) -> list[str]:
    """A multi-worker arm's row: its rule's cost, what it let through (MoNNA's count of the
    Byzantine vectors among the neighbours it averaged), and the readings against its
    baseline and across its games."""
    team = ms[0][1]["team"]
    kept = (_cell(_vals(ms, "team", "byzantine_kept"), 2) if team["rule"] == "monna"
            else "—")  # fmt: skip
    return [team["rule"], str(team["workers"]), _cell(_vals(ms, "team", "drift"), 3),
            _cell(_vals(ms, "team", "mb_per_update"), 3), kept,
            *(_cell([m.get(k, np.nan) for _, m in ms], 3)
              for k in ("td_vs_baseline", "deflection", "grad_cos"))]  # fmt: skip


def _game_tables(by_arm: dict[str, list[tuple[int, dict]]], noise: list[float],
                 held_out: bool = True) -> list[str]:  # fmt: skip
    """One game's Markdown tables: the arms' losses and probes, scales and the probes' floor;
    with top-k MoE, routing; with local learning, each block's auxiliary head's held-out loss;
    with ``noise``, the robustness ratios and drifts."""
    measured = "TD loss, held out" if held_out else "TD loss, log sample"  # (in-sample)
    text = _table("", ["n", "TD loss, train", measured, "constant's", "R² return",
                       "R² reward", "srank", "dormant", "params", "upd/s"],
                  {arm: _main_row(ms) for arm, ms in by_arm.items()})  # fmt: skip
    scale_keys = ("init/feat_norm", "trained/feat_norm", "init/q_abs", "trained/q_abs")
    text += _table(_SCALES, ["\\|φ\\| at init", "\\|φ\\| trained", "\\|Q\\| at init",
                             "\\|Q\\| trained"],
                   {arm: [_cell(_vals(ms, "scales", k), 3) for k in scale_keys]
                    for arm, ms in by_arm.items()})  # fmt: skip
    floor = (("return_r2", "R² return", 3), ("reward_r2", "R² reward", 3),
             ("successor_r2", "R² successor", 3), ("l1", "\\|φ\\|₁", 3))  # fmt: skip
    text += _table(_FLOOR, [f"{name}, {when}" for _, name, _ in floor
                            for when in ("init", "trained")],
                   {arm: [_cell(_vals(ms, g, k), d) for k, _, d in floor
                          for g in ("probes_init", "probes")]
                    for arm, ms in by_arm.items()})  # fmt: skip
    routed = {arm: ms for arm, ms in by_arm.items() if ms[0][1]["routing"]}
    if routed:  # top-k MoE: what a frozen encoder computes against what the training saw
        keys = (("eval/td", 4), ("train/td", 4), ("train/dropped_frac", 2),
                ("eval/load_max", 3), ("eval/router_entropy", 3))  # fmt: skip
        text += _table(_ROUTING, ["TD held out, eval", "TD held out, train mode",
                                  "dropped, train mode", "load max, eval",
                                  "router entropy, eval"],
                       {arm: [_cell(_vals(ms, "routing", k), d) for k, d in keys]
                        for arm, ms in routed.items()})  # fmt: skip
    blocks = {arm: sorted({k for _, m in ms for k in m["heldout"] if k.startswith("local/")})
              for arm, ms in by_arm.items()}  # fmt: skip
    if any(blocks.values()):  # local learning: each block's auxiliary head, held out
        text += ["", "Held-out TD loss of each block's auxiliary head (local learning):", "",
                 f"| arm | block | {measured} |", "|---|---|---|"]  # fmt: skip
        for arm, keys in blocks.items():
            for k in keys:
                vals = [m["heldout"][k] for _, m in by_arm[arm]]
                text.append(f"| {arm} | {k[len('local/') :]} | {_cell(vals)} |")
    teams = {arm: ms for arm, ms in by_arm.items() if ms[0][1]["team"]}
    if teams:  # multi-worker runs: the rule's cost and what it kept out
        text += _table(_TEAMS, ["rule", "workers", "drift", "MB sent / worker / update",
                                "Byzantine kept (MoNNA)", "TD train ÷ baseline's",
                                "deflection", "grad cos"],
                       {arm: _team_row(ms) for arm, ms in teams.items()})  # fmt: skip
    if noise:  # robustness: the loss with noisy pixels in s over the clean loss
        sig = [f"{x:g}" for x in noise]
        text += _table(_NOISE, [*(f"ratio σ={x}" for x in sig), *(f"drift σ={x}" for x in sig)],
                       {arm: [*(_cell(_vals(ms, "heldout", f"noise/{x}"), 3,
                                      _ci(ms, f"noise_ci/{x}")) for x in sig),
                              *(_cell(_vals(ms, "heldout", f"drift/{x}"), 3) for x in sig)]
                        for arm, ms in by_arm.items()})  # fmt: skip
    return text
