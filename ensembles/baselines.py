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
from ingest.climatology import climatology_at as select_climatology
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, TIME
from ingest.errors import StoreSchemaError
from ingest.schema import CLIMATOLOGY_DIMS, DAYOFYEAR, HOUR

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
    """The climatology at each forecast's valid time ``init_time + lead_time``.

    Parameters
    ----------
    climatology : xarray.DataArray
        ``climatology[dayofyear, hour, channel, lat, lon]`` of the climatology store, or a
        time-mean ``climatology[channel, lat, lon]``, in physical units
        (:func:`climatology_at`).
    init_times, lead_times, variables
        As for :func:`persistence_forecast`.

    Returns
    -------
    xarray.DataArray
        ``variable[init_time, lead_time, lat, lon]``, lazy where the climatology is.
    """
    require_labels(climatology, CHANNEL, np.asarray(variables), "climatology")
    init_times = np.asarray(init_times).astype("datetime64[ns]")
    lead_times = np.asarray(lead_times).astype("timedelta64[ns]")
    valid = xr.DataArray(
        init_times[:, None] + lead_times[None, :],
        dims=(INIT_TIME, LEAD_TIME),
        coords={INIT_TIME: init_times, LEAD_TIME: lead_times},
    )
    at_valid = climatology_at(climatology.sel({CHANNEL: list(variables)}), valid)
    return xr.Dataset(
        {str(v): at_valid.sel({CHANNEL: v}, drop=True).transpose(*FORECAST_DIMS) for v in variables}
    )


def climatology_at(climatology: xr.DataArray, times: xr.DataArray) -> xr.DataArray:
    """The climatology at arbitrary valid times.

    Parameters
    ----------
    climatology : xarray.DataArray
        Either the climatology store's ``climatology[dayofyear, hour, channel, lat, lon]``
        (selected by :func:`ingest.climatology.climatology_at`) or a time-mean
        ``climatology[channel, lat, lon]`` (the same field at every time).
    times : xarray.DataArray of datetime64, any dims
        Valid times.

    Returns
    -------
    xarray.DataArray
        Dims ``times.dims + (channel, lat, lon)``.

    Raises
    ------
    ScoringError
        If the climatology has neither layout.
    """
    if set(climatology.dims) == {CHANNEL, LAT, LON}:
        constant = climatology.transpose(CHANNEL, LAT, LON)
        return constant.expand_dims(
            {d: times[d].values if d in times.coords else times.sizes[d] for d in times.dims}
        )
    if set(climatology.dims) == set(CLIMATOLOGY_DIMS):
        try:
            return select_climatology(climatology.transpose(*CLIMATOLOGY_DIMS), times)
        except StoreSchemaError as err:
            raise ScoringError(f"cannot take the climatology at the forecasts' valid times: {err}") from err
    raise ScoringError(
        f"expected a climatology with dims ({DAYOFYEAR}, {HOUR}, {CHANNEL}, {LAT}, {LON}) or "
        f"({CHANNEL}, {LAT}, {LON}),"
        f" found {climatology.dims}"
    )


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
    return xr.Dataset(
        {str(v): fields.sel({CHANNEL: v}, drop=True).transpose(*FORECAST_DIMS) for v in variables}
    )
