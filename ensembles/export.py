"""Export a forecast archive in the WeatherBench 2 forecast schema.

WeatherBench 2 (WB2) evaluates forecast datasets shaped like its own ``mock_forecast_data``
(``weatherbench2/schema.py``): variables named by their ERA5 long (CDS) names, pressure-level
fields stacked along ``level`` (hPa), and the dims

    time                  initialisation time, datetime64[ns]
    prediction_timedelta  lead time, timedelta64[ns]
    realization           ensemble member (WB2's probabilistic metrics default to
                          ``ensemble_dim="realization"``)
    level                 pressure level in hPa, int64, ascending, only on pressure-level
                          variables; one axis shared by all of them, so a variable archived at
                          fewer levels than another is NaN at the levels it lacks
    latitude, longitude   degrees north / east; latitude ascending (−90 → 90), as in WB2's
                          ERA5 stores

Each variable is ``(time, prediction_timedelta, realization[, level], latitude, longitude)``,
float32, with ``units`` and ``long_name`` attributes. Only :mod:`ingest.lexicon` ids are
translated; the archive's root attributes are carried over.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import xarray as xr

from ensembles.errors import ArchiveError
from ingest.atomic import discard, replace_path, temporary_sibling
from ingest.dims import ARCHIVE_DIMS, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER
from ingest.errors import UnknownVariableError
from ingest.lexicon import Variable, get_variables

WB2_TIME = "time"
WB2_LEAD = "prediction_timedelta"
WB2_MEMBER = "realization"
WB2_LEVEL = "level"
WB2_LAT = "latitude"
WB2_LON = "longitude"

_RENAME = {INIT_TIME: WB2_TIME, LEAD_TIME: WB2_LEAD, MEMBER: WB2_MEMBER, LAT: WB2_LAT, LON: WB2_LON}
_FIELD_DIMS = (WB2_TIME, WB2_LEAD, WB2_MEMBER, WB2_LAT, WB2_LON)
_COORD_ATTRS = {
    WB2_TIME: {"long_name": "forecast initialisation time"},
    WB2_LEAD: {"long_name": "time since initialisation"},
    WB2_MEMBER: {"long_name": "ensemble member"},
    WB2_LEVEL: {"units": "hPa", "long_name": "pressure level", "standard_name": "air_pressure", "positive": "down"},
    WB2_LAT: {"units": "degrees_north", "long_name": "latitude", "standard_name": "latitude", "axis": "Y"},
    WB2_LON: {"units": "degrees_east", "long_name": "longitude", "standard_name": "longitude", "axis": "X"},
}


def to_weatherbench2(archive: xr.Dataset) -> xr.Dataset:
    """Convert an archive (see :mod:`ensembles.archive`) to the WB2 forecast schema.

    Parameters
    ----------
    archive : xarray.Dataset
        Variables named by lexicon id, each with dims ``(init_time, lead_time, member, lat,
        lon)``, physical units; e.g. from :func:`ensembles.archive.open_archive` (stays lazy)
        or :attr:`ensembles.archive.MemoryArchive.dataset`.

    Returns
    -------
    xarray.Dataset
        One variable per CDS name: ``(time, prediction_timedelta, realization, level,
        latitude, longitude)`` for pressure-level fields (the union of archived levels,
        ascending, hPa; NaN where a variable lacks a level), without ``level`` for
        single-level fields; latitude ascending. Lazy if ``archive`` is.

    Raises
    ------
    ArchiveError
        If the archive has no variables, a variable is not a lexicon id, or its dims are not
        the archive's.
    """
    variables = _lexicon_variables(archive)
    renamed = archive.rename(_RENAME)
    groups: dict[str, list[Variable]] = defaultdict(list)
    for var in variables:
        groups[var.cds_name].append(var)
    data_vars = {name: _wb2_variable(renamed, members) for name, members in groups.items()}
    exported = xr.Dataset(data_vars, attrs=dict(archive.attrs)).sortby(WB2_LAT)
    for dim, attrs in _COORD_ATTRS.items():
        if dim in exported.coords:
            exported[dim].attrs = attrs
    return exported


def write_weatherbench2(archive: xr.Dataset, path: str | Path) -> str:
    """Write :func:`to_weatherbench2` of ``archive`` as a Zarr v3 store at ``path``, atomically.

    The store is written under a temporary sibling and moved into place only when complete,
    replacing a previous store at ``path`` then; a failed write leaves nothing behind.

    Returns
    -------
    str
        The store's location.
    """
    exported = to_weatherbench2(archive)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_sibling(path)
    try:
        exported.to_zarr(partial, mode="w-", zarr_format=3, consolidated=False)
    except Exception:
        discard(partial)  # leave nothing behind, whatever the write raised
        raise
    replace_path(partial, path)
    return str(path)


def _lexicon_variables(archive: xr.Dataset) -> list[Variable]:
    """The lexicon entries of the archive's variables, after checking their dims."""
    if not archive.data_vars:
        raise ArchiveError("expected an archive with at least one variable, found none")
    wrong = {name: archive[name].dims for name in archive.data_vars if archive[name].dims != ARCHIVE_DIMS}
    if wrong:
        raise ArchiveError(f"expected archive variables with dims {ARCHIVE_DIMS}, found {wrong}")
    try:
        return get_variables([str(name) for name in archive.data_vars])
    except UnknownVariableError as err:
        raise ArchiveError(f"only lexicon variables can be exported: {err}") from err


def _wb2_variable(archive: xr.Dataset, variables: list[Variable]) -> xr.DataArray:
    """One WB2 variable from archive variables sharing a CDS name; stacked on ``level`` if any."""
    first = variables[0]
    if first.level is None:
        field = archive[first.id]
    else:
        ordered = sorted(variables, key=lambda var: var.level)
        levels = np.array([var.level for var in ordered], dtype=np.int64)
        field = xr.concat([archive[var.id] for var in ordered], dim=xr.Variable(WB2_LEVEL, levels))
        field = field.transpose(*_FIELD_DIMS[:3], WB2_LEVEL, *_FIELD_DIMS[3:])
    # the lexicon's pressure-level long names end in " at <level> hPa"; the stack spans levels
    long_name = first.long_name if first.level is None else first.long_name.rsplit(" at ", 1)[0]
    return field.astype(np.float32).assign_attrs(units=first.units, long_name=long_name)
