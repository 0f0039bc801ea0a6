"""The experiment's plan: its config, checked, and the stage graph it makes.

An experiment is a list of stages, each one ``pvn`` command with its own run directory and the
stages it needs first (:func:`stages`); which are done is the store's business
(:mod:`pvn.experiments.store`), running them the launcher's (:mod:`pvn.experiments.launchers`).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pvn.errors import ConfigError

ARM_ENCODERS = ("pvn", "random", "e2e")
DATA_KINDS = ("agent", "collect", "dataset")
#: how the report measures the pretrainings (``measure:``): on these log checkpoints (those the
#: pretraining holds out with ``data.checkpoints``; empty: the whole log), this many held-out
#: transitions for the TD loss, this many states for the probes, the training TD loss as the
#: mean of the last ``final_logs`` logged windows, and the TD loss under pixel noise of each
#: std in ``noise`` (uint8 units; empty: none)
MEASURE: dict[str, Any] = {"heldout": [], "transitions": 2048, "probe_states": 4000,
                           "final_logs": 4, "noise": []}  # fmt: skip


@dataclass
class Stage:
    name: str
    argv: list[str]  # arguments of the `pvn` command
    run_dir: Path
    kind: str  # data | pretrain | eval | report
    done_file: str  # the file whose presence marks the stage complete
    after: list[str] = field(default_factory=list)  # stages that must be complete first
    digest: str = ""  # a report's: the commands of the runs it covers (and how it measures them)
    kept: Path | None = None  # where its record outlives out (pvn.experiments.kept), if kept

    @property
    def done(self) -> bool:
        path = self.run_dir / self.done_file
        if self.diverged:  # a pretraining arm's divergence is its outcome (the report says so)
            return True
        if self.kind != "report" or not path.is_file():
            return path.is_file()
        try:  # a report is done when it covers every run the config now has, as they are now
            covered = json.loads(path.read_text())  # (a report older than digests: by names)
            names = covered.get("stages", covered.get("evaluations"))
            return names == self.after and covered.get("digest", self.digest) == self.digest
        except (OSError, ValueError, AttributeError):
            return False

    @property
    def diverged(self) -> bool:
        """A pretraining arm's run that stopped on a non-finite loss (``pvn pretrain`` left
        ``diverged.json``): a result of the arm, where any other stage's failure stops the
        experiment."""
        return is_pretraining_arm(self) and (self.run_dir / "diverged.json").is_file()

    def command(self) -> str:
        return shlex.join(["pvn", *self.argv])


def load(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The experiment config, checked: one line naming the key when something is wrong.

    Args:
        path: the experiment's YAML file.
        overrides: ``key=value`` strings over it (``launcher=slurm`` for ``launcher.kind``).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such experiment config")
    conf = OmegaConf.load(p)
    dots = [f"launcher.kind={o.split('=', 1)[1]}" if o.startswith("launcher=") else o
            for o in overrides or []]  # fmt: skip
    try:
        conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(dots))
    except Exception as e:  # a value of the wrong shape for its key: OmegaConf's own words
        raise ConfigError(f"{p}: overrides {dots}: {str(e).splitlines()[0]}") from None
    cfg = OmegaConf.to_container(conf, resolve=True)
    for key in ("name", "out", "results", "games", "seeds", "data", "pretrain", "arms"):
        if key not in cfg:
            raise ConfigError(f"{p}: missing key '{key}'")
    for game in cfg["games"]:  # run names are <game>[+<game>]-<arm>
        if not isinstance(game, str) or "-" in game or "+" in game:
            raise ConfigError(f"{p}: games: {game!r}: an ALE game name (no '-' or '+')")
    kind = cfg["data"].get("kind")
    if kind not in DATA_KINDS:
        raise ConfigError(f"{p}: data.kind={kind!r}: choose one of {DATA_KINDS}")
    if kind == "dataset" and not cfg["data"].get("path"):
        raise ConfigError(f"{p}: data.kind=dataset needs data.path (a directory of <game>/ logs)")
    for arm, spec in cfg["arms"].items():
        if spec.get("encoder") not in ARM_ENCODERS:
            raise ConfigError(
                f"{p}: arms.{arm}.encoder={spec.get('encoder')!r}: choose one of {ARM_ENCODERS}"
            )
        seeds = spec.get("seeds", cfg["seeds"])
        if not isinstance(seeds, list) or not all(isinstance(x, int) for x in seeds):
            raise ConfigError(f"{p}: arms.{arm}.seeds={seeds!r}: give a list of integers")
        if "pretrain" in spec and spec["encoder"] != "pvn":
            raise ConfigError(f"{p}: arms.{arm}.pretrain: only an arm with encoder: pvn pretrains")
        if spec.get("control", True) is not True:
            if spec.get("control") is not False:
                raise ConfigError(f"{p}: arms.{arm}.control={spec['control']!r}: true or false")
            if spec["encoder"] != "pvn" or "overrides" in spec:
                raise ConfigError(f"{p}: arms.{arm}.control=false: a pretraining arm (encoder: "
                                  "pvn, its own pretrain: overrides) has no control runs to "
                                  "override")  # fmt: skip
        _check_pretraining_keys(p, cfg, arm, spec)
    for key in ("probes", "torsos"):
        if not isinstance(cfg.get(key, False), bool):
            raise ConfigError(f"{p}: {key}={cfg[key]!r}: true or false")
    measure = {**MEASURE, **(cfg.get("measure") or {})}
    if set(measure) - set(MEASURE):
        bad = sorted(set(measure) - set(MEASURE))[0]
        raise ConfigError(f"{p}: measure.{bad}: unknown; choose from {sorted(MEASURE)}")
    if not isinstance(measure["heldout"], list) or not all(
        isinstance(c, int) for c in measure["heldout"]
    ):
        raise ConfigError(f"{p}: measure.heldout={measure['heldout']!r}: give a list of log "
                          "checkpoint ids (empty: the whole log)")  # fmt: skip
    if not isinstance(measure["noise"], list) or not all(
        isinstance(x, (int, float)) and x > 0 for x in measure["noise"]
    ):
        raise ConfigError(f"{p}: measure.noise={measure['noise']!r}: give a list of pixel-noise "
                          "stds > 0 (uint8 units)")  # fmt: skip
    cfg["measure"] = measure
    return cfg


def _check_pretraining_keys(p: Path, cfg: dict[str, Any], arm: str, spec: dict[str, Any]) -> None:
    """A pretraining arm's own keys: ``games`` (the experiment's games it runs on), ``joint``
    (one multi-worker run over all of them) and ``baseline`` (the arm its deflection is read
    against)."""
    pretraining = spec.get("control", True) is False
    for key in ("games", "joint", "baseline"):
        if key in spec and not pretraining:
            raise ConfigError(f"{p}: arms.{arm}.{key}: only a pretraining arm (control: false) "
                              "has it")  # fmt: skip
    games = spec.get("games", cfg["games"])
    if not isinstance(games, list) or not games or not set(games) <= set(cfg["games"]):
        raise ConfigError(f"{p}: arms.{arm}.games={games!r}: give a list of the experiment's "
                          f"games {cfg['games']}")  # fmt: skip
    if spec.get("joint", False) not in (True, False):
        raise ConfigError(f"{p}: arms.{arm}.joint={spec['joint']!r}: true or false")
    if spec.get("joint") and (len(set(games)) < 2 or "baseline" in spec):
        raise ConfigError(f"{p}: arms.{arm}.joint=true: a joint run needs two or more games "
                          "and takes no baseline (its workers' heads differ in size)")  # fmt: skip
    overrides = [*cfg["pretrain"].get("overrides", []), *spec.get("pretrain", [])]
    if spec.get("joint") and not any(o.startswith("distributed=") for o in overrides):
        raise ConfigError(f"{p}: arms.{arm}.joint=true: one run over several games is a team "
                          "(distributed.partition=games); name its rule in pretrain: "
                          "(distributed=<rule>)")  # fmt: skip
    base = spec.get("baseline")
    if base is not None:
        other = cfg["arms"].get(base, {})
        if other.get("control", True) is not False or base == arm:
            raise ConfigError(f"{p}: arms.{arm}.baseline={base!r}: name another pretraining arm "
                              "(control: false)")  # fmt: skip
        where = (other.get("games", cfg["games"]), other.get("joint", False))
        if where != (games, spec.get("joint", False)):
            raise ConfigError(f"{p}: arms.{arm}.baseline={base!r}: the baseline runs on other "
                              "games (its games: and joint: must be this arm's)")  # fmt: skip
        if not set(spec.get("seeds", cfg["seeds"])) <= set(other.get("seeds", cfg["seeds"])):
            raise ConfigError(f"{p}: arms.{arm}.baseline={base!r}: the baseline lacks some of "
                              "this arm's seeds")  # fmt: skip


def data_dir(cfg: dict[str, Any], game: str) -> Path:
    """The game's log: made by the data stage, or given (``data.kind: dataset``)."""
    if cfg["data"]["kind"] == "dataset":
        return Path(cfg["data"]["path"]) / game
    return Path(cfg["out"]) / "data" / game


def _pretrain_stage(
    out: Path, name: str, data: Path | list[Path], seed: int, overrides: list[str],
    after: list[str]
) -> Stage:  # fmt: skip
    """A ``pvn pretrain`` run on one log, or jointly on several games' (``data.path=[...]``:
    a team whose workers each learn one game, ``distributed.partition=games``)."""
    run = out / "pretrain" / name
    if isinstance(data, list):
        paths = ["data.path=[" + ",".join(map(str, data)) + "]", "distributed.partition=games"]
    else:
        paths = [f"data.path={data}"]
    argv = ["pretrain", *paths, f"run_dir={run}", f"seed={seed}", "progress=false"]
    return Stage(f"pretrain/{name}", [*argv, *overrides], run, "pretrain", "done.json", after)


def arm_games(cfg: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The games an arm runs on: its own ``games:``, or the experiment's."""
    return spec.get("games", cfg["games"])


def run_games(stage: Stage) -> tuple[list[str], str, int]:
    """A pretraining's games (several for a joint run), arm and seed: a pretraining arm's run
    ``pretrain/<game>[+<game>...]-<arm>/seed<k>``, a knob's ``pretrain/<game>-<arm>`` (named by
    its first arm), and the control arms' PVN ``pretrain/<game>`` (arm ``pretrain``, after the
    config's section); the seed in its name, else the one its command runs with."""
    parts = stage.name.split("/")
    games, _, arm = parts[1].partition("-")
    if len(parts) == 3:  # a pretraining arm's run: the seed its name (and stage) is for
        return games.split("+"), arm, int(parts[2][len("seed") :])
    seed = [a for a in stage.argv if a.startswith("seed=")][-1]  # the last one counts
    return games.split("+"), arm or "pretrain", int(seed[len("seed=") :])


def _pretraining_arms(cfg: dict[str, Any], game: str | None) -> list[Stage]:
    """The pretraining arms' runs (one per seed): on ``game``'s log those of the arms that run
    on it apart; with ``game`` None, the joint arms' (one team over all their games' logs)."""
    out, base = Path(cfg["out"]), cfg["pretrain"].get("overrides", [])
    todo = []
    for arm, spec in cfg["arms"].items():
        games = arm_games(cfg, spec)
        if spec.get("control", True) or bool(spec.get("joint")) != (game is None):
            continue
        if game is not None and game not in games:
            continue
        mine = games if game is None else [game]
        data = [data_dir(cfg, g) for g in mine]
        needs = [f"data/{g}" for g in mine] if cfg["data"]["kind"] != "dataset" else []
        for seed in spec.get("seeds", cfg["seeds"]):
            name = f"{'+'.join(mine)}-{arm}/seed{seed}"
            todo.append(_pretrain_stage(out, name, data if game is None else data[0], seed,
                                        [*base, *spec.get("pretrain", [])], needs))  # fmt: skip
    return todo


#: the version of what the report measures of a pretraining (pvn.experiments.measures): a run
#: measured, or a report written, by an older one is measured and written again
MEASURES_VERSION = 8


def _data_stage(cfg: dict[str, Any], game: str, seed: int) -> list[Stage]:
    """The stage that makes ``game``'s log: a learning agent's play (``kind: agent``, its replay
    logged) or a policy's (``kind: collect``); none for an existing dataset."""
    data, extra = data_dir(cfg, game), cfg["data"].get("overrides", [])
    if cfg["data"]["kind"] == "agent":
        run = data / "agent"
        argv = ["evaluate", f"game={game}", f"run_dir={run}", f"replay_log={data}"]
        argv += [f"seed={seed}", "progress=false", *extra]
        return [Stage(f"data/{game}", argv, run, "data", "results.json")]
    if cfg["data"]["kind"] == "collect":
        argv = ["collect", f"game={game}", f"out={data}", f"seed={seed}", "progress=false"]
        return [Stage(f"data/{game}", [*argv, *extra], data, "data", "collect.json")]
    return []


def stages(
    cfg: dict[str, Any], config_path: str | Path | None = None, overrides: list[str] | None = None
) -> list[Stage]:
    """Every stage of the experiment, in an order that respects their dependencies.

    The data and pretraining of every game come first, then the evaluations seed by seed (seed
    0 of every game and arm, then seed 1, ...), so an interrupted experiment has whole paired
    seeds of every game to compare; end-to-end arms run last: each costs about ten linear arms,
    and the question the experiment asks (PVN features against random ones) is answered by the
    linear stages.
    """
    out, results = Path(cfg["out"]), Path(cfg["results"])
    seed0 = int(cfg.get("seed", 0))
    todo: list[Stage] = []
    linear: list[tuple[int, Stage]] = []  # (seed's position, stage)
    e2e: list[tuple[int, Stage]] = []
    for game in cfg["games"]:
        data = data_dir(cfg, game)
        todo += _data_stage(cfg, game, seed0)
        needs_data = [f"data/{game}"] if cfg["data"]["kind"] != "dataset" else []
        base = cfg["pretrain"].get("overrides", [])
        game_pvn = _pretrain_stage(out, game, data, seed0, base, needs_data)
        if any(s["encoder"] == "pvn" and not s.get("pretrain") and s.get("control", True)
               for s in cfg["arms"].values()):  # fmt: skip
            todo.append(game_pvn)  # the game's PVN, when a control arm reads it
        todo += _pretraining_arms(cfg, game)
        knobs: dict[tuple[str, ...], Stage] = {}  # control arms with the same knob share it
        for arm, spec in cfg["arms"].items():
            encoder, after = spec["encoder"], []
            if not spec.get("control", True):  # a pretraining arm: _pretraining_arms
                continue
            if encoder == "pvn":
                pre = game_pvn
                if spec.get("pretrain"):  # a knob: its own pretraining, named by its first arm
                    pre = knobs.get(tuple(spec["pretrain"]))
                    if pre is None:
                        knob = [*base, *spec["pretrain"]]
                        pre = _pretrain_stage(out, f"{game}-{arm}", data, seed0, knob, needs_data)
                        knobs[tuple(spec["pretrain"])] = pre
                        todo.append(pre)
                encoder, after = str(pre.run_dir), [pre.name]
            for seed in spec.get("seeds", cfg["seeds"]):  # the arm's own seeds, or all
                # ordered by the seed's place in the experiment's seeds (paired seeds together)
                k = cfg["seeds"].index(seed) if seed in cfg["seeds"] else len(cfg["seeds"]) + seed
                run = out / "eval" / game / arm / f"seed{seed}"
                argv = ["evaluate", f"encoder={encoder}", f"game={game}", f"run_dir={run}"]
                argv += [f"seed={seed}", "progress=false", *spec.get("overrides", [])]
                stage = Stage(f"eval/{game}/{arm}/seed{seed}", argv, run, "eval", "results.json",
                              after)  # fmt: skip
                (e2e if spec["encoder"] == "e2e" else linear).append((k, stage))
    todo += _pretraining_arms(cfg, None)  # joint runs, once every game's log is there
    evals = [st for _, st in sorted(linear, key=lambda x: x[0])]  # stable: game, arm order
    evals += [st for _, st in sorted(e2e, key=lambda x: x[0])]
    # the report is `pvn experiment CONFIG --report` once every evaluation is done
    # (with the command line's overrides: as a job, it reads the config as the command did)
    argv = [] if config_path is None else ["experiment", str(config_path), "--report",
                                           *(overrides or [])]  # fmt: skip
    covered = [*[st for st in todo if st.kind == "pretrain"], *evals]
    made = [st.command() for st in covered]
    if len(covered) > len(evals):  # pretrainings: measured as measure: says, by this code,
        # against their baselines (not which runs diverged: the plan is made before they run)
        baselines = {a: s["baseline"] for a, s in cfg["arms"].items() if "baseline" in s}
        made.append(json.dumps({**cfg["measure"], "version": MEASURES_VERSION,
                                "baselines": baselines}, sort_keys=True))  # fmt: skip
    digest = hashlib.sha1("\n".join(made).encode()).hexdigest()[:16]
    report = Stage("report", argv, results, "report", "complete.json",
                   [st.name for st in covered], digest)  # fmt: skip
    for st in [*todo, *evals]:  # data, the PVNs control arms read, evaluations: not a
        if not is_pretraining_arm(st):  # pretraining arm (its measures read other runs)
            st.kept = results / "kept" / st.name
    return [*todo, *evals, report]


def is_pretraining_arm(stage: Stage) -> bool:
    """A pretraining arm's run (``pretrain/<game>-<arm>/seed<k>``): its divergence is its
    outcome, where a control arm's pretraining must finish."""
    return stage.kind == "pretrain" and stage.name.count("/") == 2
