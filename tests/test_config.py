"""Typed configs: ``pvn.config.configure`` (Python callers, no override strings) gives the same
config as the command line, and checks keys and types the same way, at creation and after."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pvn.config import configure, load_config
from pvn.errors import ConfigError


def test_configure_equals_the_command_lines_config():
    cli = load_config(
        "pretrain",
        ["torso=impala", "optimizer=adan", "data.path=d", "run_dir=r", "steps=7",
         "td.center=true", "tasks.num_tasks=12", "data.checkpoints=[0,2]"],
    )  # fmt: skip
    py = configure("pretrain", torso="impala", optimizer="adan", run_dir="r", steps=7,
                   data={"path": "d", "checkpoints": [0, 2]},
                   td={"center": True}, tasks={"num_tasks": 12})  # fmt: skip
    assert OmegaConf.to_container(py) == OmegaConf.to_container(cli)
    assert py.torso.name == "impala" and py.optimizer.name == "adan"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"stpes": 3}, "unknown key 'stpes'"),
        ({"td": {"centre": True}}, "unknown key 'td.centre'"),
        ({"steps": "many"}, "steps='many'"),
        ({"td": {"center": "maybe"}}, "td.center='maybe'"),
    ],
)
def test_configure_refuses_unknown_keys_and_wrong_types(values, message):
    with pytest.raises(ConfigError) as err:
        configure("pretrain", run_dir="r", data={"path": "d"}, **values)
    text = str(err.value)
    assert text.startswith("pvn pretrain: ") and message in text and "\n" not in text


def test_required_keys_are_named():
    with pytest.raises(ConfigError, match=r"required key\(s\) \['data.path', 'run_dir'\]"):
        configure("pretrain", steps=3)


def test_configs_stay_typed_after_creation():
    """The CLI's and Python's configs are one kind of object: an int key takes an int, a float
    key converts an int, a new key is refused."""
    for cfg in (configure("evaluate", encoder="random", run_dir="r"),
                load_config("evaluate", ["encoder=random", "run_dir=r"])):  # fmt: skip
        with pytest.raises(OmegaConfBaseException):
            cfg.steps = "many"
        with pytest.raises(OmegaConfBaseException):
            cfg.stpes = 10
        cfg.steps = 12
        cfg.agent.lr = 1
        assert cfg.steps == 12 and cfg.agent.lr == 1.0 and isinstance(cfg.agent.lr, float)


def test_every_default_has_one_home():
    """A command's YAML file names its schema and chooses group options, and sets no value; no
    group option (presets aside) writes outside its own group, so none sets a key a schema
    section owns; and no schema field is declared twice along a class hierarchy (a subclass
    redeclaring a field would be a second default)."""
    from importlib.resources import files

    import yaml

    from pvn.schema import SCHEMAS

    root = files("pvn.configs")
    for command, schema in SCHEMAS.items():
        text = yaml.safe_load(root.joinpath(f"{command}.yaml").read_text())
        assert set(text) == {"defaults"}, f"configs/{command}.yaml sets {set(text) - {'defaults'}}"
        assert text["defaults"][0] == f"{command}_schema"
        assert _redeclared(schema) == set(), command
    presets = {"preset", "eval_preset", "experiment"}
    for group in root.iterdir():
        if not group.is_dir() or group.name in presets or group.name.startswith("_"):
            continue
        for option in group.iterdir():
            if option.name.endswith(".yaml"):
                assert "@package" not in option.read_text(), f"{group.name}/{option.name}"


def _redeclared(cls: type) -> set[str]:
    """Fields declared by a dataclass and again by one of its dataclass bases, in ``cls`` and
    in every section it holds."""
    import inspect
    import typing
    from dataclasses import is_dataclass

    found, seen = set(), set()
    for base in cls.__mro__:
        if is_dataclass(base):
            own = set(inspect.get_annotations(base))
            found |= own & seen
            seen |= own
    for hint in typing.get_type_hints(cls).values():
        if isinstance(hint, type) and is_dataclass(hint):
            found |= _redeclared(hint)
    return found


def test_schema_checks_run_when_the_config_is_made():
    """Each section's rule, one line naming the key, at creation, from the CLI and Python."""
    with pytest.raises(ConfigError, match=r"^pvn evaluate: eval_every=5: needs eval_episodes"):
        configure("evaluate", encoder="random", run_dir="r", eval_every=5)
    with pytest.raises(ConfigError, match=r"^pvn pretrain: td.target_tau=2.0: must be in"):
        load_config("pretrain", ["data.path=d", "run_dir=r", "td.target_tau=2.0"])
    with pytest.raises(ConfigError, match=r"agent.reward_clip='clip'"):
        load_config("evaluate", ["encoder=random", "run_dir=r", "agent.reward_clip=clip"])


def test_sections_reach_the_core_typed_with_the_schema_defaults():
    """A saved config (a dict) becomes the core's object; keys it lacks keep the one default."""
    from pvn.agents.dqn import DQNConfig
    from pvn.learner import TDConfig
    from pvn.settings import section

    td = section(TDConfig, {"center": True})
    assert td == TDConfig(center=True) and td.warmup_steps == TDConfig.warmup_steps
    agent = section(DQNConfig, load_config("evaluate", ["encoder=random", "run_dir=r"]).agent)
    assert agent == DQNConfig()
    with pytest.raises(ConfigError):
        section(TDConfig, {"centre": True})


@pytest.mark.parametrize(
    "args, message",
    [
        (["stepz=10"], "unknown key 'stepz' (did you mean 'steps'?); `pvn pretrain --help`"),
        (["td.centre=true"], "unknown key 'td.centre' (did you mean 'td.center'?)"),
        (
            ["optimizer=adamm"],
            "optimizer='adamm': no such option; choose one of adam, adamw, "
            "adan, plain_sgd, sgd (did you mean 'adam' or",
        ),
        (
            ["torso=resnet"],
            "torso='resnet': no such option; choose one of impala, impala_x8, nature",
        ),
    ],
)
def test_misspelled_keys_and_options_get_one_line_with_the_closest(args, message):
    """No list of every key, no Hydra search path: the closest names, on one line."""
    with pytest.raises(ConfigError) as err:
        load_config("pretrain", ["data.path=d", "run_dir=r", *args])
    text = str(err.value)
    assert message in text and "\n" not in text and "search path" not in text, text
