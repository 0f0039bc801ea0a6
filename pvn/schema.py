"""The schema of every command's config: typed dataclasses that hold each default once.

Each section is the dataclass of the core module that uses it (``td:`` is
:class:`pvn.learner.TDConfig`, ``agent:`` :class:`pvn.agents.dqn.DQNConfig`, ``threads:``
:class:`pvn.threads.ThreadsConfig`, ...); a command's schema puts its sections together with its
own top-level keys. ``pvn pretrain``'s whole config is the pretraining core's
(:class:`pvn.pretraining.PretrainConfig`, which :func:`pvn.pretraining.build` takes), so it
lives there and is re-exported here. They are registered in Hydra's ConfigStore
(``<command>_schema``), and each ``configs/<command>.yaml`` names its schema first in its
defaults list, then the group options (``torso: nature``): so the YAML files choose options and
presets, and the defaults live here.
Hydra checks the types of every override against these classes; their ``__post_init__`` checks
run once when a command's config is made (:func:`pvn.config.load_config`), and core modules
receive their section as the typed object (:func:`pvn.config.section`).

A field's trailing comment (and the comment lines under it) is its documentation:
:func:`field_docs` reads it for ``pvn COMMAND --help`` and ``docs/config_reference.md``.
"""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass, field, is_dataclass
from functools import cache
from typing import Any

from omegaconf import MISSING

from pvn.agents.control import EvalConfig
from pvn.agents.dqn import DQNConfig
from pvn.pretraining import PretrainConfig
from pvn.settings import require_positive
from pvn.threads import ThreadsConfig


@dataclass
class EvaluateConfig(EvalConfig):
    """``pvn evaluate``: linear control on frozen features (the PVN paper's evaluation, Sec. 5),
    or end-to-end DQN. Budgets are laptop-sized; ``eval_preset=paper`` is the official
    protocol. The loop's schedule is :class:`agents.control.EvalConfig` (inherited)."""

    torso: dict[str, Any] = field(default_factory=dict)  # group torso=
    encoder: str = MISSING  # a pretraining run dir or checkpoint file (linear control on its
    # frozen torso); `random` (a frozen random torso: the floor); or `e2e` (end-to-end DQN: the
    # `torso` trains with the head, from frames)
    game: str = "Pong"  # CamelCase ALE game
    num_envs: int = 8  # parallel games; one batched encoder forward per step for all
    run_dir: str = MISSING  # output: config.yaml, results.json, metrics.jsonl, tb/, checkpoints/
    seed: int = 0  # seeds envs, exploration, replay sampling, head init (and random torso)
    device: str = "cpu"  # cpu | cuda
    protocol: str = "eval"  # eval: no sticky actions (as the paper's evaluation) | dopamine
    eval_num_envs: int = 10  # envs playing the evaluation episodes at once (rounds of one each)
    keep_checkpoints: int = 1  # checkpoints kept (each holds the replay: features or frames)
    replay_log: str | None = None  # DIR: log every transition of the run as a DQN Replay dataset
    # in DIR/replay_logs (rewards clipped to [-1, 1]; DIR/log.json describes it)
    replay_log_capacity: int = 1_000_000  # slots per logged checkpoint (the DQN Replay
    # Dataset's: 1M)
    progress: bool = True  # progress bar with steps/s and ETA
    agent: DQNConfig = field(default_factory=DQNConfig)
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "eval_num_envs", "num_envs")
        if self.replay_log_capacity < 5:  # a stack of 4 frames and one more
            raise ValueError(f"replay_log_capacity={self.replay_log_capacity}: must be >= 5")


@dataclass
class CollectConfig:
    """``pvn collect``: play ALE with batched envs and log the play in the DQN Replay
    (Dopamine) format."""

    game: str = "Pong"  # CamelCase ALE game name (Pong, Breakout, SpaceInvaders, ...)
    steps: int = 10_000  # agent steps to log, over all envs (each step = 4 frames)
    out: str = MISSING  # output directory: OUT/replay_logs/ holds the checkpoints (must be new)
    policy: str = "random"  # random | epsilon_greedy (a trained agent: `pvn evaluate` run in
    # checkpoint=)
    checkpoint: str | None = None  # epsilon_greedy: the `pvn evaluate` run dir whose encoder +
    # linear head act
    epsilon: float = 0.01  # epsilon_greedy: probability of a uniform random action
    num_envs: int = 8  # parallel games
    batch_size: int | None = None  # envpool async: envs per step result (e.g. num_envs/2
    # overlaps logging and emulation, ~1.4x faster, but episode order is then
    # timing-dependent); null: num_envs (synchronous, reproducible)
    seed: int = 0  # seeds the envs (sticky actions) and the policy
    protocol: str = "dopamine"  # dopamine (sticky 0.25, as the DQN Replay data) or eval (no
    # sticky actions)
    backend: str = "envpool"  # envpool, or ale_py (ale-py's own threaded vector env)
    capacity: int | None = None  # slots per checkpoint (DQN Replay: 1,000,000); null: 1M, or
    # steps + 10% + 100 for smaller runs (Dopamine writes whole-capacity arrays)
    compresslevel: int = 1  # gzip level of checkpoint files: 1 fastest, 9 smallest (Dopamine: 9)
    progress: bool = True  # progress bar with steps/s and ETA
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)


@dataclass
class QuickstartConfig:
    """``pvn quickstart``: the demo, sized for a laptop CPU (about 7 minutes on 2 cores).
    Collects a small log with a random policy, pretrains a small PVN on it, evaluates linear
    control on PVN features and on random features for a few seeds, and reports (with offline
    linear probes). Why these values: docs/study_quickstart_boxing.md."""

    game: str = "Boxing"  # CamelCase ALE game name (Boxing: dense rewards, fixed 2-minute bouts)
    steps: int = 30_000  # agent steps to collect
    pretrain_steps: int = 2000  # PVN updates (batch 32, Nature torso, 20 RND indicator tasks at
    # p = 0.05)
    center: bool = True  # td.center: learn the successor measures of r - p (keeps the torso
    # from collapsing; false: the paper's uncentred rule)
    eval_steps: int = 45_000  # agent steps of online linear DQN per encoder and seed (3 bouts
    # per env)
    eval_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one online run per
    # encoder (PVN, random) and seed, paired by seed
    eval_preset: str = "short"  # the paper's protocol with a target copy every 500 updates
    # (none: the paper's, whose lr 6.25e-5 barely moves a head in this budget)
    feature_norm: bool = True  # agent.feature_norm for both encoders: features divided by their
    # mean norm, so the head's step is the same size on both (PVN features are 30-90x larger)
    lr: float = 1e-3  # the head's learning rate (agent.lr), chosen for scaled features at
    # this budget by configs/experiment/demo_lr.yaml (docs/results/demo_lr/)
    protocol: str = "dopamine"  # the online runs' ALE protocol: dopamine (sticky actions 0.25,
    # as the log: greedy episodes differ) or eval (none: a greedy policy replays one episode)
    eval_episodes: int = 10  # greedy episodes after the last step that score each run
    eval_max_steps: int = 4500  # cap of each greedy episode (agent steps; 5 minutes of play: a
    # Boxing bout is 2, and a Breakout policy that never serves would otherwise play 30)
    out: str = "runs/quickstart"  # output directory (the demo's previous output there is
    # replaced)
    num_envs: int = 8  # parallel games
    seed: int = 0  # seeds the log and the pretraining
    progress: bool = True  # progress bars


#: every command's schema, registered in Hydra's ConfigStore as ``<command>_schema``
SCHEMAS: dict[str, type] = {
    "pretrain": PretrainConfig,
    "evaluate": EvaluateConfig,
    "collect": CollectConfig,
    "quickstart": QuickstartConfig,
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent), where the command YAML files find
    them by name."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(name=f"{name}_schema", node=schema)


def describe(command: str) -> str:
    """``command``'s keys with their defaults and meanings, as commented YAML: the help of
    ``pvn COMMAND --help`` and the command's part of ``docs/config_reference.md``. Group
    options are listed by name (``configs/<group>/``); their keys are in the reference."""
    from omegaconf import OmegaConf

    schema = SCHEMAS[command]
    lines = [f"# {line}" for line in _docstring(schema)]
    lines += _describe(schema, OmegaConf.structured(schema), "")
    return "\n".join(lines)


def _docstring(cls: type) -> list[str]:
    text = " ".join((inspect.getdoc(cls) or "").split()).replace("``", "`")
    return textwrap.wrap(text, 98)


def _describe(cls: type, node: Any, indent: str) -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    docs, out = field_docs(cls), []
    for key in node:
        value = node._get_node(key)
        doc = docs.get(key, "")
        if isinstance(value, DictConfig) and not OmegaConf.is_missing(node, key):
            sub = OmegaConf.get_type(node, key)
            if sub is dict:  # a config group: chosen by name
                out.append(f"{indent}{key}: ...  # {doc}: configs/{key}/")
                continue
            out.append(f"{indent}{key}:" + (f"  # {doc}" if doc else ""))
            out += _describe(sub, value, indent + "  ")
            continue
        text = OmegaConf.to_yaml({key: OmegaConf.to_container(node, resolve=False)[key]})
        out.append(f"{indent}{text.strip()}" + (f"  # {doc}" if doc else ""))
    return out


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: its trailing comment and the comment lines under it, from
    the source of ``cls`` and its dataclass bases."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is object or not is_dataclass(base):
            continue
        docs.update(_own_docs(base))
    return docs


def _own_docs(cls: type) -> dict[str, str]:
    source = inspect.getsource(cls)
    tree = ast.parse(source)
    body = tree.body[0].body  # type: ignore[attr-defined]
    spans = {n.target.id: (n.lineno, n.end_lineno) for n in body if isinstance(n, ast.AnnAssign)}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    docs: dict[str, str] = {}
    for name, (first, last) in spans.items():
        parts = [comments[i] for i in range(first, last + 1) if i in comments]
        nxt = last + 1
        while nxt in comments and nxt not in code_lines:  # comment-only lines continue it
            parts.append(comments[nxt])
            nxt += 1
        docs[name] = " ".join(parts)
    return docs
