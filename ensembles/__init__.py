"""Ensemble forecasts and their verification: perturb → run → archive → score.

Modules: :mod:`~ensembles.protocols` (the seams it consumes), :mod:`~ensembles.perturbations`,
:mod:`~ensembles.runner`, :mod:`~ensembles.archive`, :mod:`~ensembles.metrics`,
:mod:`~ensembles.baselines`, :mod:`~ensembles.scoring`, :mod:`~ensembles.errors`.
Imports only :mod:`ingest` of fourcast's packages.
"""
