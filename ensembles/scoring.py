"""Score an ensemble archive and the reference forecasts against the truth, as flat records.

:func:`score_forecasts` is the scorecard of :func:`ensembles.scorecard.score_archive` for one
region (global by default) as records, one per (variable, lead time, system, metric)::

    {"variable": "z500", "lead_hours": 24, "system": "fourcast", "metric": "rmse", "value": 123.4}

Systems: ``"fourcast"`` (the archive's ensemble: scores of its mean, and the ensemble scores),
``"persistence"`` and ``"climatology"``, scored by the same statistics at the same points
(:mod:`ensembles.metrics`). The truth is taken at valid time ``init_time + lead_time``, the
climatology at that valid time too; the archive is read one ``(init_time, lead_time)`` chunk
at a time, so a Dask-backed archive is never loaded whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ensembles.scorecard import ScoreOptions, score_archive, scorecard_records

Record = dict[str, Any]


def score_forecasts(
    archive: xr.Dataset,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    *,
    variables: Sequence[str] | None = None,
    lead_times: Sequence[np.timedelta64] | np.ndarray | None = None,
    options: ScoreOptions | None = None,
    region: str = "global",
) -> list[Record]:
    """Score the archive's ensemble, persistence and climatology at every variable and lead.

    Parameters
    ----------
    archive : xarray.Dataset
        Forecast archive (:func:`ensembles.archive.open_archive`): variables with dims
        ``(init_time, lead_time, member, lat, lon)``, possibly Dask-backed.
    truth : xarray.DataArray, dims (time, channel, lat, lon)
        Analyses in physical units on the archive's grid, holding every init and valid time.
    climatology : xarray.DataArray
        ``[dayofyear, hour, channel, lat, lon]`` or time-mean ``[channel, lat, lon]``: the
        reference of the anomaly correlation and the climatology forecast.
    variables : sequence of str, optional
        Archive variables to score (default all).
    lead_times : array of timedelta64, optional
        Archive lead times to score (default all).
    options : ScoreOptions, optional
        Regions, NaN policy, partial archives (default: all preset regions, fail on NaN).
    region : str
        The region whose scores are returned (one of ``options.regions``).

    Returns
    -------
    list of dict
        Records ``variable, lead_hours, system, metric, value`` of the finite scores, ordered
        by lead time, variable, system, metric (:data:`ensembles.metrics.METRICS`).

    Raises
    ------
    ScoringError
        As :func:`ensembles.scorecard.score_archive`.
    """
    scorecard = score_archive(
        archive, truth, climatology, options or ScoreOptions(), variables=variables, lead_times=lead_times
    )
    return scorecard_records(scorecard, region)
