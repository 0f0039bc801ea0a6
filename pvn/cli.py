"""The ``pvn`` command line: ``pvn COMMAND [key=value ...]``.

Every command takes Hydra-style overrides, prints its resolved config with ``--cfg job``, rejects
unknown keys and saves the resolved config in its output directory. Errors a user can cause print
one line (``pvn: error: ...``) and exit with status 2 (3: a pretraining whose loss stopped being
finite). A run asked to stop by a signal (SIGTERM, SIGUSR1/2: ``kill``, a cluster's warning)
writes a checkpoint where it stands and exits 75; the same command resumes (:mod:`pvn.preemption`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from omegaconf import OmegaConf

from pvn.errors import PREEMPTED_EXIT, USER_ERRORS, ConfigError

USAGE = """usage: pvn COMMAND [key=value ...] [--cfg job] [--help]   |   pvn --version

Proto-value networks: learn RL representations from logged Atari data.

commands:
  collect      play ALE with batched envs and log it in the DQN Replay format
                 pvn collect game=Pong steps=50000 out=data/pong num_envs=8 seed=0
  data info    checkpoints, transitions, valid transitions, episodes, returns of a log
                 pvn data info data/pong
  data verify  read every byte of a log once and check it (after a download or a copy)
                 pvn data verify data/pong
  data convert a log into a compressed store (~the gzip files' size; read like the log)
                 pvn data convert data/pong data/pong.store
  pretrain     proto-value network pretraining on a DQN Replay log (resumes in run_dir)
                 pvn pretrain data.path=data/pong run_dir=runs/pvn steps=2000 seed=0
  evaluate     linear control on a frozen encoder (a pretraining run, or random features)
                 pvn evaluate encoder=runs/pvn game=Pong steps=20000 run_dir=runs/eval seed=0
  report       Markdown table, CSV and curves from evaluate runs (HNS, IQM with 95% CIs)
                 pvn report runs/eval_* --out report
  quickstart   the demo: collect a small Boxing log, pretrain a small PVN, compare linear
                 control on its features and on random features over 3 seeds (~8 min)
  experiment   games x seeds x arms from a config, each stage run once, resumable
                 pvn experiment configs/experiment/evidence_cpu.yaml [--status|--report]
                 pvn experiment CONFIG launcher=slurm [--wait]   (SLURM, docs/cluster.md)

Overrides use Hydra's grammar (key=value, lists as [0,1]). `pvn COMMAND --help` lists a command's
keys with their defaults and meaning; `--cfg job` prints the resolved config and exits.

Exit status: 0 done; 2 a bad input (one line names it); 3 a pretraining that diverged; 75 stopped
by SIGTERM/SIGUSR1/SIGUSR2 with a checkpoint where it stood (run the same command to resume).
"""


def _config_help(name: str) -> str:
    """The command's group choices (its YAML file) and every key with its default and meaning
    (its schema, :func:`pvn.schema.describe`)."""
    from importlib.resources import files

    from pvn.schema import describe

    choices = files("pvn.configs").joinpath(f"{name}.yaml").read_text()
    return f"{describe(name)}\n\n# group options and presets (configs/{name}.yaml):\n{choices}"


def _run_configured(name: str, args: list[str], fn: Callable) -> int:
    from pvn.config import load_config

    if "--help" in args or "-h" in args:
        print(f"usage: pvn {name} [key=value ...] [--cfg job]\n\nkeys (defaults):\n")
        print(_config_help(name))
        return 0
    show = False
    if "--cfg" in args:
        i = args.index("--cfg")
        if args[i + 1 : i + 2] != ["job"]:
            raise ConfigError("--cfg: only '--cfg job' is supported")
        args = args[:i] + args[i + 2 :]
        show = True
    cfg = load_config(name, args)
    if "threads" in cfg:  # decided once, before any parallel work; saved with the config
        from pvn import threads

        # announced by the command once its config is checked (threads.announce)
        threads.settle(cfg, name, run=not show)
    if show:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    result = fn(cfg)
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0


def _collect(cfg):
    from pvn.commands.collect import collect

    return collect(cfg)


def _pretrain(cfg):
    from pvn.commands.pretrain import pretrain

    return pretrain(cfg)


def _evaluate(cfg):
    from pvn.commands.evaluate import evaluate

    return evaluate(cfg)


REPORT_USAGE = """usage: pvn report RUN_DIR... [--out DIR] [--window N] [--data LOG_DIR]

Per game and method (pvn, random, dqn; an experiment's arms): the final and best mean return
over seeds and the human-normalised score (HNS); across games, IQM, median and mean HNS with
stratified bootstrap 95% CIs (rliable's rules), and the probability of improvement between
methods. A run is scored by its final greedy evaluation when it made evaluations
(eval_episodes > 0), else by the mean of its last N training episodes. A run with no finished
episode has no score: its row says so and a warning names it (on the terminal and at the top
of report.md); an arm left out of the aggregates is named with why. With one seed per game an
interval would resample nothing, so the report prints the estimate and "n=1: no interval";
curves have bands only over 2 or more seeds.

options:
  --out DIR        where the report goes (default: report)
  --window N       training episodes averaged when a run has no evaluations (default: 10)
  --data LOG_DIR   also fit offline linear probes (return and reward R^2, srank, dormant
                   units) of each run's frozen encoder on this replay log; slow: it encodes
                   up to a few thousand logged states per encoder

writes, under DIR:
  report.md                       warnings, the tables and the figures (Markdown)
  report.csv                      one row per game and method
  curves.png                      per game, return against agent steps, each method
  iqm_curve.png                   IQM of HNS against the fraction of training
  performance_profile.png         fraction of runs above each HNS threshold
  probability_of_improvement.png  P(X > Y) for each pair of methods, with 95% CIs
  probes.json                     with --data: the probes per run"""


def _report(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(REPORT_USAGE)
        return 0 if args else 2
    out, window, data, dirs = "report", 10, None, []
    it = iter(args)
    for a in it:
        if a in ("--out", "--window", "--data"):
            value = next(it, None)
            if value is None:
                raise ConfigError(f"pvn report: {a} needs a value (see `pvn report --help`)")
            if a == "--out":
                out = value
            elif a == "--data":
                data = value
            elif not value.isdigit() or int(value) < 1:
                raise ConfigError(f"pvn report: --window {value!r}: a whole number >= 1")
            else:
                window = int(value)
        elif a.startswith("--"):
            raise ConfigError(f"pvn report: unknown option {a}; see `pvn report --help`")
        else:
            dirs.append(a)
    from pvn.commands.report import report

    print(report(dirs, out, window, data))
    return 0


DATA_USAGE = """usage: pvn data {info,verify,convert,export} ... [--help]

info     summarise a replay_logs directory (or a directory holding one, or a store) from its
         small arrays: no frames are decompressed, so it is instant. A checkpoint missing any of
         its six files is an error unless --skip-incomplete (which lists the ones it skipped).
         With --game, PATH is RL Unplugged: episodes, steps and returns per checkpoint, read
         from the records without decoding a frame.
verify   read every byte of every checkpoint once (gzip integrity, dtypes and shapes, add_count
         against invalid_range, rewards, terminals and episode padding); of a store, decode
         every chunk against its checksum. Prints a table; exits 2 if anything is wrong.
convert  turn DQN Replay checkpoints (official, or logged by pvn) into a store: frames as zstd
         chunks of K consecutive frames (default 8, level 1, a dictionary trained per
         checkpoint), about the gzip files' size where a raw cache takes ~30x more
         (docs/store.md). Every command reads DST wherever it reads a replay_logs directory,
         with the same transitions bit for bit. Parallel over checkpoints (--workers, default:
         the CPUs); a stopped conversion resumes, never redoing a converted checkpoint.
         With --game, SRC is RL Unplugged (a TFDS data dir or the raw files' dir) and run R
         (default 1) of GAME is decoded; pretraining reads that store with its game and run.
export   write a store's checkpoints back out in the DQN Replay format (for Dopamine, TorchRL,
         d4rl-atari).

`pvn data SUBCOMMAND --help` lists a subcommand's options."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake raised as pvn's one-line error (exit 2) instead of its usage
    block."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}; see `{self.prog} --help`")


_DATA_PATHS = {
    "info": {"PATH": "a replay_logs directory (or its parent), a store, or RL Unplugged's"},
    "verify": {"PATH": "a replay_logs directory (or its parent) or a store"},
    "convert": {
        "SRC": "a replay_logs directory (or its parent), or RL Unplugged's (--game)",
        "DST": "the store to write (or to resume writing)",
    },
    "export": {"STORE": "a store", "DST": "the directory to write replay_logs/ into"},
}


def _data_parser(cmd: str) -> argparse.ArgumentParser:
    """``pvn data CMD``'s options; its description is its paragraph of :data:`DATA_USAGE`."""
    about, mine = [], False
    for line in DATA_USAGE.split("\n\n")[1].splitlines():  # from its name to the next one's
        if line[:1] != " ":
            mine = line.startswith(f"{cmd} ")
            line = line[len(cmd) :] if mine else line
        if mine:
            about.append(line.strip())
    p = _Parser(prog=f"pvn data {cmd}", description=" ".join(about), allow_abbrev=False)
    for path, meaning in _DATA_PATHS[cmd].items():
        p.add_argument(path, help=meaning)
    if cmd == "info":
        p.add_argument("--skip-incomplete", action="store_true",
                       help="list checkpoints missing a file instead of stopping")  # fmt: skip
    else:
        p.add_argument("--checkpoints", nargs="+", type=int, metavar="N",
                       help="these checkpoints only (default: all)")  # fmt: skip
    if cmd == "convert":
        p.add_argument("--workers", type=int, metavar="N", help="processes (default: the CPUs)")
        p.add_argument("--chunk", type=int, metavar="K", help="frames per zstd chunk (default 8)")
        p.add_argument("--level", type=int, metavar="L", help="zstd level, 1-22 (default 1)")
        p.add_argument("--no-dictionary", action="store_true",
                       help="compress without a dictionary per checkpoint")  # fmt: skip
        p.add_argument("--raw", action="store_true", help="store the frames uncompressed")
    if cmd in ("info", "convert"):
        p.add_argument("--game", help="PATH/SRC is RL Unplugged: this game's data")
        p.add_argument("--run", type=int, help="RL Unplugged's run, 1-5 (default 1)")
        p.add_argument("--version", help="the TFDS dataset version (default 1.0.0)")
    return p


def _ids_last(args: list[str]) -> list[str]:
    """``--checkpoints`` and its ids moved to the end: a path after the ids stays a path (with
    ``nargs="+"`` argparse would read it as one more id)."""
    if "--checkpoints" not in args:
        return args
    i = j = args.index("--checkpoints")
    j += 1
    while j < len(args) and args[j].lstrip("-").isdigit():
        j += 1
    return args[:i] + args[j:] + args[i:j]


def _data(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(DATA_USAGE)
        return 0 if args else 2
    if args[0] not in _DATA_PATHS:
        raise ConfigError(f"pvn data: unknown subcommand {args[0]!r}; expected info, verify, "
                          "convert or export (see `pvn data --help`)")  # fmt: skip
    cmd, parser = args[0], _data_parser(args[0])
    if "-h" in args[1:] or "--help" in args[1:]:  # (argparse's own would exit the process)
        print(parser.format_help())
        return 0
    a = parser.parse_args(_ids_last(args[1:]))
    rlu = None
    if getattr(a, "game", None) is not None:
        rlu = {"game": a.game, "run": 1 if a.run is None else a.run,
               "version": "1.0.0" if a.version is None else a.version}  # fmt: skip
    elif getattr(a, "run", None) is not None or getattr(a, "version", None) is not None:
        raise ConfigError(f"pvn data {cmd}: --run and --version are for RL Unplugged; add --game")
    if cmd == "info" and rlu is not None:
        from pvn.commands.data import rlu_summary

        print(rlu_summary(a.PATH, **rlu))
        return 0
    if cmd == "info":
        from pvn.commands.data import format_summary
        from pvn.replay.summary import summarize

        print(format_summary(summarize(a.PATH, skip_incomplete=a.skip_incomplete)))
        return 0
    from pvn.commands import data

    if cmd == "verify":
        return data.run_verify(a.PATH, a.checkpoints)
    if cmd == "export":
        return data.run_export(a.STORE, a.DST, a.checkpoints)
    codec = {"codec": "raw" if a.raw else "zstd", "dictionary": not a.no_dictionary}
    codec |= {k: v for k, v in (("chunk", a.chunk), ("level", a.level)) if v is not None}
    return data.run_convert(a.SRC, a.DST, a.checkpoints, a.workers, codec, rlu)


def _experiment(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        from pvn.commands import experiment

        print("usage: pvn experiment CONFIG.yaml [key=value ...] [--status] [--print-commands] "
              "[--report] [--wait]\n")  # fmt: skip
        print(experiment.__doc__)
        return 0 if args else 2
    flags = {a for a in args if a.startswith("--")}
    overrides = [a for a in args if not a.startswith("--") and "=" in a]
    paths = [a for a in args if not a.startswith("--") and "=" not in a]
    unknown = flags - {"--status", "--print-commands", "--report", "--wait"}
    if unknown or len(paths) != 1:
        raise ConfigError(f"pvn experiment: expected CONFIG.yaml, key=value overrides and flags; "
                          f"got {args}")  # fmt: skip
    from pvn.commands.experiment import run

    return run(paths[0], "--print-commands" in flags, "--status" in flags, "--report" in flags,
               overrides, "--wait" in flags)  # fmt: skip


def _quickstart(args: list[str]) -> int:
    from pvn.commands.quickstart import quickstart

    return _run_configured("quickstart", args, quickstart)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--version"], ["-V"]):
        from pvn import __version__

        print(f"pvn {__version__}")
        return 0
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    try:
        if cmd == "collect":
            return _run_configured("collect", rest, _collect)
        if cmd == "pretrain":
            return _run_configured("pretrain", rest, _pretrain)
        if cmd == "evaluate":
            return _run_configured("evaluate", rest, _evaluate)
        if cmd == "report":
            return _report(rest)
        if cmd == "data":
            return _data(rest)
        if cmd == "quickstart":
            return _quickstart(rest)
        if cmd == "experiment":
            return _experiment(rest)
        raise ConfigError(f"unknown command '{cmd}'; see `pvn --help`")
    except USER_ERRORS as e:
        code = getattr(e, "exit_code", 2)  # 3: a pretraining that diverged; 75: stopped
        print(f"pvn: {'' if code == PREEMPTED_EXIT else 'error: '}{e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("pvn: interrupted", file=sys.stderr)
        return 130
