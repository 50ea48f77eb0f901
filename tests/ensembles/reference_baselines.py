"""Reference forecasts for the tests, laid out like an archive's ensemble mean.

Each returns an :class:`xarray.Dataset` with one variable per lexicon id and dims
``(init_time, lead_time, lat, lon)`` (:data:`FORECAST_DIMS`): what ``archive.mean("member")``
gives for a forecast archive, so the reference metrics score them as they score an ensemble
mean. The scorecard builds its baselines itself, per forecast; these check it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from ensembles.baselines import climatology_at, require_labels
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


def _over_leads(per_init: xr.DataArray, lead_times: np.ndarray, variables: Sequence[str]) -> xr.Dataset:
    """Repeat a ``(init_time, channel, lat, lon)`` field over lead times, one variable per channel."""
    fields = per_init.expand_dims({LEAD_TIME: np.asarray(lead_times)})
    return xr.Dataset(
        {str(v): fields.sel({CHANNEL: v}, drop=True).transpose(*FORECAST_DIMS) for v in variables}
    )
