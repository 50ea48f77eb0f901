"""Ensemble forecasts and their verification: perturb → run → archive → score.

Modules: :mod:`~ensembles.protocols` (the seams it consumes), :mod:`~ensembles.perturbations`,
:mod:`~ensembles.runner` (members in batches; :func:`~ensembles.runner.run_campaign` over ranks),
:mod:`~ensembles.campaign` (work items, resumable multi-rank archive), :mod:`~ensembles.archive`,
:mod:`~ensembles.export` (WeatherBench 2 schema), :mod:`~ensembles.metrics` (statistics +
finalisers), :mod:`~ensembles.regions`, :mod:`~ensembles.baselines`, :mod:`~ensembles.scorecard`
(batch scoring with Dask), :mod:`~ensembles.streaming` (scoring while members are produced),
:mod:`~ensembles.scoring` (scorecard records of one region), :mod:`~ensembles.errors`.
Imports only :mod:`ingest` of fourcast's packages.
"""
