"""Reference forecasts, laid out like an archive's ensemble mean so the same code scores them.

Each returns an :class:`xarray.Dataset` with one variable per lexicon id and dims
``(init_time, lead_time, lat, lon)`` (:data:`FORECAST_DIMS`): what ``archive.mean("member")``
gives for a forecast archive. They are lazy where their input is (broadcast, not copied).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from ensembles.errors import ScoringError
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, TIME

#: Dimension order of a deterministic forecast variable (an ensemble mean or a baseline).
FORECAST_DIMS = (INIT_TIME, LEAD_TIME, LAT, LON)


def persistence_forecast(
    truth: xr.DataArray,
    init_times: np.ndarray,
    lead_times: np.ndarray,
    variables: Sequence[str],
) -> xr.Dataset:
    """The state at init time, forecast unchanged for every lead time.

    Parameters
    ----------
    truth : xarray.DataArray, dims (time, channel, lat, lon)
        Analyses in physical units, holding every init time and variable.
    init_times : numpy.ndarray of datetime64, shape (init_time,)
        Initialisation times, labels of the ``init_time`` dim.
    lead_times : numpy.ndarray of timedelta64, shape (lead_time,)
        Lead times, labels of the ``lead_time`` dim.
    variables : sequence of str
        Channel ids to forecast.

    Returns
    -------
    xarray.Dataset
        ``variable[init_time, lead_time, lat, lon]`` with ``truth(init_time)`` at every lead.

    Raises
    ------
    ScoringError
        If ``truth`` lacks a variable or an init time (all missing ones are named).
    """
    require_labels(truth, CHANNEL, np.asarray(variables), "truth")
    require_labels(truth, TIME, np.asarray(init_times), "truth")
    at_init = truth.sel({TIME: init_times}).rename({TIME: INIT_TIME})
    return _over_leads(at_init, lead_times, variables)


def climatology_forecast(
    climatology: xr.DataArray,
    init_times: np.ndarray,
    lead_times: np.ndarray,
    variables: Sequence[str],
) -> xr.Dataset:
    """The climatological mean state, forecast for every init and lead time.

    Parameters
    ----------
    climatology : xarray.DataArray, dims (channel, lat, lon)
        Time-mean state in physical units (constant in time).
    init_times, lead_times, variables
        As for :func:`persistence_forecast`.

    Returns
    -------
    xarray.Dataset
        ``variable[init_time, lead_time, lat, lon]``, the climatology broadcast.
    """
    require_labels(climatology, CHANNEL, np.asarray(variables), "climatology")
    per_init = climatology.expand_dims({INIT_TIME: np.asarray(init_times)})
    return _over_leads(per_init, lead_times, variables)


def require_labels(array: xr.DataArray, dim: str, wanted: np.ndarray, what: str) -> None:
    """Raise :class:`ScoringError` naming the labels of ``wanted`` that ``array[dim]`` lacks."""
    if dim not in array.dims:
        raise ScoringError(f"{what}: expected a {dim!r} dim, found dims {array.dims}")
    wanted = np.atleast_1d(wanted)
    missing = wanted[~np.isin(wanted, array[dim].values)]
    if missing.size:
        shown = ", ".join(str(m) for m in missing[:10]) + (" …" if missing.size > 10 else "")
        raise ScoringError(
            f"{what} lacks {missing.size} of the {wanted.size} {dim} labels needed: {shown}; "
            f"it holds {array.sizes[dim]} labels {array[dim].values[0]} … {array[dim].values[-1]}"
        )


def _over_leads(per_init: xr.DataArray, lead_times: np.ndarray, variables: Sequence[str]) -> xr.Dataset:
    """Repeat a ``(init_time, channel, lat, lon)`` field over lead times, one variable per channel."""
    fields = per_init.expand_dims({LEAD_TIME: np.asarray(lead_times)})
    return xr.Dataset({str(v): fields.sel({CHANNEL: v}, drop=True).transpose(*FORECAST_DIMS) for v in variables})
