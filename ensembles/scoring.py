"""Score an ensemble archive and the reference forecasts against the truth.

:func:`score_forecasts` returns flat records, one per (variable, lead time, system, metric)::

    {"variable": "z500", "lead_hours": 24, "system": "fourcast", "metric": "rmse", "value": 123.4}

Systems: ``"fourcast"`` (the archive; rmse/acc of its ensemble mean, fair crps and ssr of the
ensemble), ``"persistence"`` and ``"climatology"`` (rmse, acc), all scored by the same
functions of :mod:`ensembles.metrics` at the same points. The truth is taken at valid time
``init_time + lead_time``, selected by label. The archive is read one (variable, lead time)
at a time, so a Dask-backed archive is never loaded whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ensembles.baselines import climatology_forecast, persistence_forecast, require_labels
from ensembles.errors import ScoringError
from ensembles.metrics import acc, crps, ensemble_mean_rmse, rmse, spread_skill_ratio
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER, TIME

FOURCAST = "fourcast"
PERSISTENCE = "persistence"
CLIMATOLOGY = "climatology"

Record = dict[str, Any]


def score_forecasts(
    archive: xr.Dataset,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    *,
    variables: Sequence[str] | None = None,
    lead_times: Sequence[np.timedelta64] | np.ndarray | None = None,
) -> list[Record]:
    """Score the archive's ensemble, persistence and climatology at every variable and lead.

    Parameters
    ----------
    archive : xarray.Dataset
        Forecast archive (:func:`ensembles.archive.open_archive`): variables with dims
        ``(init_time, lead_time, member, lat, lon)``, possibly Dask-backed.
    truth : xarray.DataArray, dims (time, channel, lat, lon)
        Analyses in physical units on the archive's grid, holding every init and valid time.
    climatology : xarray.DataArray, dims (channel, lat, lon)
        Time-mean state: the reference of the anomaly correlation and the climatology forecast.
    variables : sequence of str, optional
        Archive variables to score (default all).
    lead_times : array of timedelta64, optional
        Archive lead times to score (default all).

    Returns
    -------
    list of dict
        Records ``variable, lead_hours, system, metric, value``, ordered by lead time, then
        variable. ``rmse`` and ``acc`` for every system; ``crps`` (fair) and ``ssr``
        (spread-skill ratio) for ``fourcast`` when it has at least 2 members. The ACC of the
        climatology forecast is 0.0 by convention: its anomaly is identically zero, so the
        correlation is undefined (0/0) and it carries no anomaly signal.

    Raises
    ------
    ScoringError
        If archive, truth and climatology grids differ, the truth lacks a variable or an
        init/valid time (the missing ones are named), or NaNs appear in a forecast or the
        truth (the variable and lead are named).
    """
    variables = _variables(archive, variables)
    leads = _lead_times(archive, lead_times, variables[0])
    init_times = archive[INIT_TIME].values
    truth = _on_archive_grid(truth, archive, "truth")
    climatology = _on_archive_grid(climatology, archive, "climatology")
    require_labels(truth, CHANNEL, np.asarray(variables), "truth")
    valid_times = init_times[:, None] + leads[None, :]
    require_labels(truth, TIME, np.union1d(init_times, valid_times.ravel()), "truth")
    persistence = persistence_forecast(truth, init_times, leads, variables)
    climate = climatology_forecast(climatology, init_times, leads, variables)
    records: list[Record] = []
    for i_lead, lead in enumerate(leads):
        valid = xr.DataArray(valid_times[:, i_lead], dims=INIT_TIME, coords={INIT_TIME: init_times})
        truth_at = truth.sel({TIME: valid}).drop_vars(TIME)
        for variable in variables:
            baselines = {PERSISTENCE: persistence[variable], CLIMATOLOGY: climate[variable]}
            records += _score_at_lead(variable, lead, archive[variable], truth_at, climatology, baselines)
    return records


def _score_at_lead(
    variable: str,
    lead: np.timedelta64,
    ensemble: xr.DataArray,
    truth_at: xr.DataArray,
    climatology: xr.DataArray,
    baselines: dict[str, xr.DataArray],
) -> list[Record]:
    """Load one variable at one lead time (the only data read at once) and score every system.

    ``ensemble`` is ``(init_time, lead_time, member, lat, lon)``, ``truth_at`` the truth at the
    valid times of this lead ``(init_time, channel, lat, lon)``, ``baselines`` the reference
    forecasts ``(init_time, lead_time, lat, lon)`` by system name.
    """
    hours = _lead_hours(lead)
    where = f"{variable} at lead {hours} h"
    observed = _loaded(truth_at.sel({CHANNEL: variable}, drop=True), f"truth for {where}")
    clim = _loaded(climatology.sel({CHANNEL: variable}, drop=True), f"climatology of {variable}")
    members = _loaded(ensemble.sel({LEAD_TIME: lead}, drop=True), f"forecast of {where}")
    references = {
        system: _loaded(forecast.sel({LEAD_TIME: lead}, drop=True), f"{system} forecast of {where}")
        for system, forecast in baselines.items()
    }
    scores = _score_ensemble(members, observed, clim) + _score_baselines(references, observed, clim)
    return [
        {"variable": variable, "lead_hours": hours, "system": system, "metric": metric, "value": value}
        for system, metric, value in scores
    ]


def _score_ensemble(ensemble: xr.DataArray, truth: xr.DataArray, clim: xr.DataArray) -> list[tuple[str, str, float]]:
    """RMSE and ACC of the ensemble mean; fair CRPS and SSR when there are 2 members or more."""
    scores = [
        (FOURCAST, "rmse", float(ensemble_mean_rmse(ensemble, truth))),
        (FOURCAST, "acc", float(acc(ensemble.mean(MEMBER), truth, clim))),
    ]
    if ensemble.sizes[MEMBER] >= 2:
        scores += [
            (FOURCAST, "crps", float(crps(ensemble, truth, kind="fair"))),
            (FOURCAST, "ssr", float(spread_skill_ratio(ensemble, truth))),
        ]
    return scores


def _score_baselines(
    fields: dict[str, xr.DataArray], truth: xr.DataArray, clim: xr.DataArray
) -> list[tuple[str, str, float]]:
    scores = []
    for system, forecast in fields.items():
        scores.append((system, "rmse", float(rmse(forecast, truth))))
        # the climatology forecast has no anomaly: ACC is 0/0, reported as 0.0 by convention
        scores.append((system, "acc", 0.0 if system == CLIMATOLOGY else float(acc(forecast, truth, clim))))
    return scores


def _variables(archive: xr.Dataset, variables: Sequence[str] | None) -> list[str]:
    available = [str(v) for v in archive.data_vars]
    chosen = available if variables is None else [str(v) for v in variables]
    unknown = [v for v in chosen if v not in available]
    if unknown or not chosen:
        raise ScoringError(f"cannot score variables {unknown or chosen}: the archive holds {available}")
    return chosen


def _lead_times(
    archive: xr.Dataset, lead_times: Sequence[np.timedelta64] | np.ndarray | None, variable: str
) -> np.ndarray:
    if lead_times is None:
        return archive[LEAD_TIME].values.astype("timedelta64[ns]")
    leads = np.atleast_1d(np.asarray(lead_times).astype("timedelta64[ns]"))
    require_labels(archive[variable], LEAD_TIME, leads, "archive")
    return leads


def _on_archive_grid(field: xr.DataArray, archive: xr.Dataset, what: str) -> xr.DataArray:
    """``field`` relabelled with the archive's lat/lon after checking they agree to rounding."""
    for dim in (LAT, LON):
        if dim not in field.dims:
            raise ScoringError(f"{what}: expected a {dim!r} dim, found dims {field.dims}")
        expected, found = archive[dim].values, field[dim].values
        if expected.shape != found.shape or not np.allclose(expected, found):
            raise ScoringError(
                f"{what} {dim} differs from the archive's: expected {expected.size} values "
                f"{expected[:1]}…{expected[-1:]}, found {found.size} values {found[:1]}…{found[-1:]}"
            )
    return field.assign_coords({LAT: archive[LAT].values, LON: archive[LON].values})


def _loaded(field: xr.DataArray, what: str) -> xr.DataArray:
    """Compute ``field`` in float64 (scores do not depend on the storage precision) and refuse NaNs."""
    field = field.load().astype(np.float64)
    n_nan = int(field.isnull().sum())
    if n_nan:
        raise ScoringError(f"{what} has {n_nan} NaN values of {field.size} (unwritten or missing data)")
    return field


def _lead_hours(lead: np.timedelta64) -> int | float:
    hours = float(lead / np.timedelta64(1, "h"))
    return int(hours) if hours.is_integer() else hours
