"""Network building blocks: torsos (named block sequences), multi-task heads."""

from pvn.networks.heads import MultiTaskHead, PVNNetwork
from pvn.networks.torsos import TORSOS, Torso, build_torso, impala, nature, torso_from_spec

__all__ = [
    "TORSOS",
    "MultiTaskHead",
    "PVNNetwork",
    "Torso",
    "build_torso",
    "impala",
    "nature",
    "torso_from_spec",
]
