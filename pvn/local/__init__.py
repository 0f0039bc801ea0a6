"""Local learning of the torso: ``local=dgl|man|man_pp|auglocal`` (see :mod:`pvn.local.methods`)."""

from pvn.local.blocks import DEFAULT_CUTS, split_units, torso_units
from pvn.local.learner import LocalPVNLearner
from pvn.local.methods import LocalAux, auglocal_depths, auglocal_indices, build_local

__all__ = [
    "DEFAULT_CUTS",
    "LocalAux",
    "LocalPVNLearner",
    "auglocal_depths",
    "auglocal_indices",
    "build_local",
    "split_units",
    "torso_units",
]
