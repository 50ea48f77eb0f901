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
from ingest.atomic import atomic_output
from ingest.dims import ARCHIVE_DIMS, CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER
from ingest.errors import UnknownVariableError
from ingest.lexicon import Variable, get_variables
from ingest.schema import consolidate

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
    WB2_LEVEL: {
        "units": "hPa",
        "long_name": "pressure level",
        "standard_name": "air_pressure",
        "positive": "down",
    },
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
    return _by_cds_name(archive.rename(_RENAME), variables, _FIELD_DIMS[:3], dict(archive.attrs))


def truth_to_weatherbench2(data: xr.DataArray) -> xr.Dataset:
    """The training store's ``data[time, channel, lat, lon]`` in WB2's ERA5 layout.

    Returns
    -------
    xarray.Dataset
        One variable per CDS name, ``(time[, level], latitude, longitude)``, latitude
        ascending, as WB2's ERA5 stores (the ``obs`` of its evaluation).
    """
    by_id = data.to_dataset(dim=CHANNEL).rename({LAT: WB2_LAT, LON: WB2_LON})
    variables = get_variables([str(name) for name in by_id.data_vars])
    return _by_cds_name(by_id, variables, (WB2_TIME,), {"source": "fourcast training store"})


def climatology_to_weatherbench2(climatology: xr.DataArray) -> xr.Dataset:
    """The climatology store's ``climatology[dayofyear, hour, channel, lat, lon]`` in WB2's climatology
    layout.

    Returns
    -------
    xarray.Dataset
        One variable per CDS name, ``(dayofyear, hour[, level], latitude, longitude)``,
        latitude ascending, as WB2's climatology stores (``dayofyear`` 1..366, ``hour`` 0..23).
    """
    by_id = climatology.to_dataset(dim=CHANNEL).rename({LAT: WB2_LAT, LON: WB2_LON})
    variables = get_variables([str(name) for name in by_id.data_vars])
    return _by_cds_name(by_id, variables, ("dayofyear", "hour"), dict(climatology.attrs))


def _by_cds_name(
    by_id: xr.Dataset, variables: list[Variable], leading: tuple[str, ...], attrs: dict
) -> xr.Dataset:
    """Variables of ``by_id`` (named by lexicon id) grouped by CDS name, levels stacked, CF coordinate
    attributes."""
    groups: dict[str, list[Variable]] = defaultdict(list)
    for var in variables:
        groups[var.cds_name].append(var)
    data_vars = {name: _wb2_variable(by_id, members, leading) for name, members in groups.items()}
    exported = xr.Dataset(data_vars, attrs={**attrs, "Conventions": "CF-1.8"}).sortby(WB2_LAT)
    for dim, coord_attrs in _COORD_ATTRS.items():
        if dim in exported.coords:
            exported[dim].attrs = coord_attrs
    return exported


def write_weatherbench2(archive: xr.Dataset, path: str | Path, zarr_format: int = 3) -> str:
    """Write :func:`to_weatherbench2` of ``archive`` as a Zarr store at ``path``, atomically (see
    :func:`write_wb2`)."""
    return write_wb2(to_weatherbench2(archive), path, zarr_format)


def write_wb2(exported: xr.Dataset, path: str | Path, zarr_format: int = 3) -> str:
    """Write an exported dataset as a Zarr store (v3, or v2 for tools that read only v2) at ``path``,
    atomically.

    The store is written under a temporary sibling with consolidated metadata (so plain
    ``xr.open_zarr`` opens it without a warning) and moved into place only when complete,
    replacing a previous store at ``path`` then; a failed write leaves nothing behind.

    Returns
    -------
    str
        The store's location.

    Raises
    ------
    ArchiveError
        If ``zarr_format`` is not 2 or 3.
    """
    if zarr_format not in (2, 3):
        raise ArchiveError(f"expected zarr_format 2 or 3, found {zarr_format!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = exported.copy()
    for (
        variable
    ) in exported.variables.values():  # the source store's codecs and shards need not fit the format
        variable.encoding = {}
    with atomic_output(path) as partial:
        exported.to_zarr(partial, mode="w-", zarr_format=zarr_format, consolidated=False)
        consolidate(partial)
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


def _wb2_variable(archive: xr.Dataset, variables: list[Variable], leading: tuple[str, ...]) -> xr.DataArray:
    """One WB2 variable from variables sharing a CDS name; stacked on ``level`` (after ``leading`` dims) if
    any."""
    first = variables[0]
    if first.level is None:
        field = archive[first.id]
    else:
        ordered = sorted(variables, key=lambda var: var.level)
        levels = np.array([var.level for var in ordered], dtype=np.int64)
        field = xr.concat([archive[var.id] for var in ordered], dim=xr.Variable(WB2_LEVEL, levels))
        field = field.transpose(*leading, WB2_LEVEL, WB2_LAT, WB2_LON)
    # the lexicon's pressure-level long names end in " at <level> hPa"; the stack spans levels
    long_name = first.long_name if first.level is None else first.long_name.rsplit(" at ", 1)[0]
    return field.astype(np.float32).assign_attrs(units=first.units, long_name=long_name)
