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
