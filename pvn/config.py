"""Hydra configs for every command: compose, type-check, validate, reject unknown keys, save.

A command's schema (:mod:`pvn.schema`: typed dataclasses, each default once) comes first in its
``configs/<command>.yaml``; the YAML files choose group options and presets. Configs are composed
with Hydra's compose API, so overrides use Hydra's grammar (``key=value``, ``group=option``,
lists as ``[0,1]``). On top of Hydra, an override of a key the command's config does not have is
rejected naming the closest keys, and a group choice that is no option with the options (Hydra's
own message ends in its search path); each value must have the type of its default (an int stays
an int, ``auto`` defaults also take true/false), and the schema's own checks run once, when the
config is made: every error is one line naming the key.
"""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

from pvn.errors import ConfigError
from pvn.schema import SCHEMAS, register
from pvn.settings import config_groups, group_options


def _compose(name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    register()
    try:
        with initialize_config_module(config_module="pvn.configs", version_base=None):
            return compose(config_name=name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"pvn {name}: {msg}") from None


def _leaves(cfg, prefix: str = ""):
    for key, value in cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else []:
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _type_ok(default, value) -> bool:
    if default is None or value is None or default == "???":
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):  # an ``auto`` default also takes true/false
        return isinstance(value, str) or (default == "auto" and isinstance(value, bool))
    if isinstance(default, ListConfig):
        return isinstance(value, (ListConfig, list))
    return True


def load_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose ``configs/<name>.yaml`` with ``overrides`` and validate keys and value types.

    Group choices (``torso=impala``) are applied first, so the keys of the chosen options
    (``torso.width``) are known when the other overrides are checked. The result is typed
    (:func:`_typed`): the CLI and Python callers (:func:`configure`) hold the same object.

    Args:
        name: the command (``collect``, ``pretrain``, ``evaluate``, ``quickstart``).
        overrides: Hydra override strings (``key=value``, ``group=option``).

    Returns:
        The resolved, checked config; a bad key or value raises a one-line
        :class:`pvn.errors.ConfigError` naming it.
    """
    cfg = _load(name, overrides)
    _require_complete(name, cfg)
    validate(name, cfg)
    return cfg


def configure(command: str, **values: Any) -> DictConfig:
    """The config of ``pvn <command>`` for Python callers, without override strings.

    Keyword arguments named after a config group choose its option (``torso="impala"``,
    ``optimizer="adan"``); the others set values, sections as nested dicts::

        cfg = configure("pretrain", torso="impala", steps=2000, run_dir="runs/pvn",
                        data={"path": "data/pong"}, td={"center": True})
        pvn.commands.pretrain.pretrain(cfg)

    The defaults are the schema's (:mod:`pvn.schema`, their one home, documented in the config
    reference);
    unknown keys and values of the wrong type are one-line :class:`ConfigError` s, as on the
    command line. The object stays typed: ``cfg.steps = "many"`` or ``cfg.stpes = 10`` raises.

    Args:
        command: the command whose config this is (``pretrain``, ``evaluate``, ...).
        **values: group choices and values, sections as nested dicts.

    Returns:
        The command's config, as the CLI would resolve it.
    """
    groups = config_groups()
    choices = [f"{k}={v}" for k, v in values.items() if k in groups and isinstance(v, str)]
    cfg = _load(command, choices)
    rest = {k: v for k, v in values.items() if f"{k}={v}" not in choices}
    try:
        pairs = _flatten(cfg, rest, command)
    except ConfigError as e:
        raise ConfigError(f"pvn {command}: {e}") from None
    for path, value in pairs:
        try:
            OmegaConf.update(cfg, path, value, merge=False)
        except OmegaConfBaseException as e:
            why = str(e).splitlines()[0]
            raise ConfigError(f"pvn {command}: {path}={value!r}: {why}") from None
    _require_complete(command, cfg)
    validate(command, cfg)
    return cfg


def _flatten(cfg: DictConfig, values: dict[str, Any], name: str) -> list[tuple[str, Any]]:
    """(dotted key, value) pairs of nested ``values``; a dict recurses where the config has a
    section, and an unknown key is an error naming the valid ones."""
    leaves = {p for p, _ in _leaves(cfg)}
    sections = {p.rsplit(".", i)[0] for p in leaves for i in range(1, p.count(".") + 1)}
    out = []

    def walk(values: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and path in sections:
                walk(value, path + ".")
            elif path in leaves:
                out.append((path, value))
            else:
                raise ConfigError(f"unknown key '{path}'{did_you_mean(path, leaves)}; "
                                  f"`pvn {name} --help` lists the keys")  # fmt: skip

    walk(values, "")
    return out


def _load(name: str, overrides: list[str]) -> DictConfig:
    groups = config_groups()
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"pvn {name}: '{ov}' is not key=value")
    choices = [ov for ov in overrides if ov.split("=", 1)[0].lstrip("+~") in groups]
    for ov in choices:
        group, option = ov.split("=", 1)
        _check_option(name, group.lstrip("+~"), option)
    base = _compose(name, choices)
    keys = {path for path, _ in _leaves(base)}
    defaults = dict(_leaves(base))
    for key, value in _parsed(name, overrides):
        if key not in keys and key not in groups and key not in base:
            raise ConfigError(f"pvn {name}: unknown key '{key}'{did_you_mean(key, keys)}; "
                              f"`pvn {name} --help` lists the keys")  # fmt: skip
        if key in defaults and not _type_ok(defaults[key], value):
            want = type(defaults[key]).__name__
            raise ConfigError(f"pvn {name}: {key}={value!r} is not a valid {want}")
    return _typed(_compose(name, overrides), defaults)


def did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _check_option(name: str, group: str, option: str) -> None:
    """A group choice names an option file of the group (``configs/<group>/<option>.yaml``),
    else one line with the options and the closest (Hydra's own message ends in its search
    path)."""
    options = group_options(group)
    if option not in options:
        listed = ", ".join(sorted(options))
        raise ConfigError(f"pvn {name}: {group}={option!r}: no such option; choose one of "
                          f"{listed}{did_you_mean(option, options)}")  # fmt: skip


def _parsed(name: str, overrides: list[str]) -> list[tuple[str, Any]]:
    """(key, value) of each override, parsed by Hydra's grammar (``null``, ``[0,1]``, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"pvn {name}: {' '.join(str(e).split())}") from None
    return [(o.key_or_group.lstrip("+~"), o.value()) for o in parsed]


def validate(name: str, cfg: DictConfig) -> Any:
    """Run the checks of ``name``'s schema (:mod:`pvn.schema`, each section's
    ``__post_init__``) on a complete config; a bad value is a one-line :class:`ConfigError`.
    Returns the config as the schema's typed object (what a core module takes)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SCHEMAS[name]), cfg))
    except ValueError as e:
        raise ConfigError(f"pvn {name}: {e}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"pvn {name}: {' '.join(str(e).split())}") from None


def _typed(cfg: DictConfig, defaults: dict[str, Any]) -> DictConfig:
    """``cfg`` with each value in a node of its *default's* type (int, float, bool, str; any
    for null, ``auto``, ``???`` and lists), in struct mode: assigning a value of the wrong type,
    or to a key that does not exist, raises -- the checks the CLI makes of overrides."""

    def node(path: str, value: Any) -> Any:
        if isinstance(value, (ListConfig, list)):
            return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        d = defaults.get(path)
        if isinstance(d, bool):
            return BooleanNode(value)
        if isinstance(d, int):
            return IntegerNode(value)
        if isinstance(d, float):
            return FloatNode(value)
        if isinstance(d, str) and d not in ("auto", "???"):
            return StringNode(value)
        return AnyNode(value)

    def walk(section: DictConfig, prefix: str) -> dict[str, Any]:
        return {
            k: walk(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else node(f"{prefix}{k}", v)
            for k, v in section.items_ex(resolve=False)
        }

    typed = OmegaConf.create(walk(cfg, ""))
    OmegaConf.set_struct(typed, True)
    return typed


def _require_complete(name: str, cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hint = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(f"pvn {name}: required key(s) {missing} not set; add {hint}")
