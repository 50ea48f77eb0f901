"""The climatology baselines at the forecasts' valid times, and the label checks of the truth.

The scorecard scores its baselines (persistence, climatology, time mean, control member) by the
same statistic units as the ensemble; this module selects the climatology of either layout at
arbitrary valid times and names the labels an input lacks.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ensembles.errors import ScoringError
from ingest.climatology import climatology_at as select_climatology
from ingest.dims import CHANNEL, LAT, LON
from ingest.errors import StoreSchemaError
from ingest.schema import CLIMATOLOGY_DIMS, DAYOFYEAR, HOUR


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
