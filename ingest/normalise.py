"""Bring an ERA5 dataset as the CDS delivers it into fourcast's canonical form.

Canonical form: one ``DataArray[time, channel, lat, lon]`` of float32, channels labelled by
lexicon id, latitude 90 → −90, longitude 0 → 360. Only the new-CDS netCDF layout
(``valid_time``, ``pressure_level``, ``latitude``, ``longitude``) is read here; other layouts
are normalised to it first.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import SourceLayoutError, UnknownVariableError
from ingest.lexicon import Variable, get_variables

_RENAMES = {"valid_time": TIME, "latitude": LAT, "longitude": LON, "pressure_level": "level"}
_DROPPED_COORDS = ("number", "expver")


def _rename_dims(ds: xr.Dataset) -> xr.Dataset:
    present = {old: new for old, new in _RENAMES.items() if old in ds.variables or old in ds.dims}
    ds = ds.rename(present)
    missing = [d for d in (TIME, LAT, LON) if d not in ds.dims]
    if missing:
        raise SourceLayoutError(
            f"expected dims valid_time/time, latitude, longitude in the CDS layout; missing {missing}, "
            f"found dims {list(ds.dims)}"
        )
    return ds.drop_vars([c for c in _DROPPED_COORDS if c in ds.variables])


def _select_field(ds: xr.Dataset, variable: Variable) -> xr.DataArray:
    if variable.short_name not in ds.data_vars:
        raise UnknownVariableError(
            f"{variable.id} needs ERA5 variable {variable.short_name!r} ({variable.cds_name}); "
            f"the source holds {sorted(ds.data_vars)}"
        )
    field = ds[variable.short_name]
    if variable.level is None:
        return field.squeeze(drop=True) if "level" not in field.dims else field
    if "level" not in field.dims:
        raise SourceLayoutError(f"{variable.id} needs pressure level {variable.level} hPa but "
                                f"{variable.short_name!r} has no pressure_level dim (dims {field.dims})")
    levels = field["level"].values
    if variable.level not in levels:
        raise UnknownVariableError(
            f"{variable.id} needs pressure level {variable.level} hPa; the source has levels {list(levels)}"
        )
    return field.sel(level=variable.level, drop=True)


def to_canonical(ds: xr.Dataset, variable_ids: list[str]) -> xr.DataArray:
    """Select ``variable_ids`` from a new-CDS-layout dataset and stack them as channels.

    Parameters
    ----------
    ds : xarray.Dataset
        ERA5 fields with dims ``valid_time``, (``pressure_level``), ``latitude``, ``longitude``.
    variable_ids : list of str
        Lexicon ids, in the channel order wanted.

    Returns
    -------
    xarray.DataArray, shape (time, channel, lat, lon)
        float32, lazily if ``ds`` is Dask-backed; latitude descending, longitude in [0, 360).
    """
    variables = get_variables(variable_ids)
    ds = _rename_dims(ds)
    fields = [_select_field(ds, v).transpose(TIME, LAT, LON).astype("float32") for v in variables]
    data = xr.concat(fields, dim=CHANNEL, coords="minimal", compat="override")
    ids = np.array([v.id for v in variables], dtype=object)  # stored as Zarr v3 variable-length strings
    data = data.assign_coords({CHANNEL: ids}).transpose(TIME, CHANNEL, LAT, LON)
    data = data.assign_coords({LON: data[LON] % 360.0}).sortby(LON).sortby(LAT, ascending=False)
    return data.sortby(TIME).rename(None)
