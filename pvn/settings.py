"""Config pieces the core needs: a section as its typed object, and the config tree's files.

The core modules take typed sections (:mod:`pvn.schema` puts them together into each command's
schema); :func:`section` turns a config section -- of a command's config or of a run's saved
``config.yaml`` -- into one. The group options (``configs/<group>/<option>.yaml``) are the one
home of their values; :func:`option_defaults` reads one for Python callers.
"""

from __future__ import annotations

from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pvn.errors import ConfigError

T = TypeVar("T")


def section(cls: type[T], node: Any) -> T:
    """A config section (of a command's config, or of a run's saved ``config.yaml``) as the
    typed object the core module takes: ``section(TDConfig, cfg.td)``. Keys the section does
    not set keep the class's defaults; an unknown key or a bad value is a one-line
    :class:`ConfigError`.

    Args:
        cls: the section's dataclass (its schema, :mod:`pvn.schema`).
        node: the section's values (a DictConfig or a dict).

    Returns:
        An instance of ``cls``, its ``__post_init__`` checks passed.
    """
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), node))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    except OmegaConfBaseException as e:
        raise ConfigError(" ".join(str(e).split())) from None


def config_groups() -> set[str]:
    """Names of the config groups (sub-directories of the ``configs`` package)."""
    from importlib.resources import files

    return {p.name for p in files("pvn.configs").iterdir() if p.is_dir() and p.name[0] != "_"}


def group_options(group: str) -> set[str]:
    """The options of a config group (its ``configs/<group>/*.yaml`` files)."""
    from importlib.resources import files

    return {p.name[:-5] for p in files("pvn.configs").joinpath(group).iterdir()
            if p.name.endswith(".yaml")}  # fmt: skip


def require_positive(cfg: Any, *keys: str) -> None:
    """A schema's check that each of ``keys`` of ``cfg`` is > 0 (``ValueError`` naming it)."""
    for key in keys:
        if getattr(cfg, key) <= 0:
            raise ValueError(f"{key}={getattr(cfg, key)}: must be > 0")


def option_defaults(group: str, option: str) -> dict:
    """The values of one config group option (``configs/<group>/<option>.yaml``): the one place
    its defaults live, for Python callers that build a part (e.g. an MoE block) directly."""
    from importlib.resources import files

    path = files("pvn.configs").joinpath(group, f"{option}.yaml")
    if not path.is_file():
        raise ConfigError(f"{group}={option!r}: no such option (configs/{group}/{option}.yaml)")
    cfg = OmegaConf.create(path.read_text())
    cfg.pop("defaults", None)
    return OmegaConf.to_container(cfg, resolve=True)
