"""Analysis of results and representations, used by ``pvn report`` and :mod:`pvn.plots`.

* :mod:`pvn.analysis.scores`: human normalisation (``data/atari57_scores.csv``) and aggregate
  metrics with stratified-bootstrap CIs;
* :mod:`pvn.analysis.probes`: offline linear probes of a frozen representation on logged data;
* :mod:`pvn.analysis.heldout`: a finished pretraining run's TD loss on held-out transitions.

None acts in an environment, so they sit in the pvn core, below ``agents`` (see
``docs/layout.md``, "Layers").
"""
