"""The new-CDS netCDF layout (since September 2024), built and written in one place.

What the Climate Data Store returns for ERA5 since September 2024, and what
:func:`ingest.normalise.normalise` reads as ``new-cds-netcdf``: dims ``valid_time``,
``pressure_level`` (pressure-level fields only, decreasing), ``latitude`` (90 → −90),
``longitude``; ``valid_time`` stored as int64 seconds since 1970; a scalar ``number``; a
string ``expver`` per time; one float32 variable per ERA5 short name (all levels of a
pressure-level field in one variable), zlib-compressed with a NaN ``_FillValue``.

The synthetic source (:mod:`ingest.synthetic`) writes its files with it, and the tests build
their new-CDS files, zips and local-CDS-server results with it, so there is one definition
of the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ingest.atomic import atomic_output
from ingest.errors import SourceLayoutError
from ingest.expver import EXPVER, EXPVER_FINAL
from ingest.formats.netcdf_lock import NETCDF_LOCK
from ingest.lexicon import Variable, get_variables

#: Dims of a pressure-level variable and of a single-level one.
PRESSURE_DIMS = ("valid_time", "pressure_level", "latitude", "longitude")
SINGLE_DIMS = ("valid_time", "latitude", "longitude")
EPOCH_UNITS = "seconds since 1970-01-01"
CALENDAR = "proleptic_gregorian"
PRESSURE_ATTRS = {
    "long_name": "pressure",
    "units": "hPa",
    "positive": "down",
    "stored_direction": "decreasing",
    "standard_name": "air_pressure",
}
LATITUDE_ATTRS = {
    "units": "degrees_north",
    "standard_name": "latitude",
    "long_name": "latitude",
    "stored_direction": "decreasing",
}
LONGITUDE_ATTRS = {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}
NUMBER_ATTRS = {"long_name": "ensemble member numerical id", "units": "1", "standard_name": "realization"}
TIME_ATTRS = {"long_name": "time", "standard_name": "time"}
#: Global attributes every new-CDS file carries.
GLOBAL_ATTRS = {
    "GRIB_centre": "ecmf",
    "GRIB_centreDescription": "European Centre for Medium-Range Weather Forecasts",
    "GRIB_subCentre": np.int64(0),
    "Conventions": "CF-1.7",
    "institution": "European Centre for Medium-Range Weather Forecasts",
}

#: ``(variable, lat, lon) -> attributes`` of one data variable.
FieldAttrs = Callable[[Variable, np.ndarray, np.ndarray], Mapping[str, object]]


def basic_field_attrs(variable: Variable, lat: np.ndarray, lon: np.ndarray) -> dict[str, object]:
    """The attributes :func:`~ingest.normalise.normalise` relies on: units, name, GRIB step type."""
    return {
        "units": variable.units,
        "long_name": variable.long_name.split(" at ")[0],
        "GRIB_shortName": variable.short_name,
        "GRIB_stepType": variable.step_type,
    }


def cds_dataset(
    times: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    fields: Mapping[str, np.ndarray],
    *,
    expver: Sequence[str] | np.ndarray | None = None,
    field_attrs: FieldAttrs = basic_field_attrs,
    attrs: Mapping[str, object] | None = None,
) -> xr.Dataset:
    """Assemble canonical fields into the new-CDS layout.

    Parameters
    ----------
    times : numpy.ndarray, shape (ntime,), datetime64
        Valid times.
    lat, lon : numpy.ndarray, shapes (nlat,) and (nlon,)
        Degrees, in the order the values are given (the CDS delivers 90 → −90, 0 → 360, but
        any order may be written to test a reader).
    fields : mapping of str to numpy.ndarray, each shape (ntime, nlat, nlon) or (ntime, 1, nlat, nlon)
        Float32 values keyed by lexicon id, in the ids' units; the levels of one pressure-level
        variable are stacked into one ``pressure_level`` axis (decreasing; NaN where a level
        is not given). All pressure-level fields share that axis.
    expver : sequence of str, shape (ntime,), optional
        Experiment of each step; default final ERA5 (``"0001"``) throughout.
    field_attrs : callable
        ``(variable, lat, lon) -> attrs`` of each variable (:func:`basic_field_attrs` by default).
    attrs : mapping, optional
        Global attributes; default :data:`GLOBAL_ATTRS`.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    UnknownVariableError
        If a key of ``fields`` is not a lexicon id.
    SourceLayoutError
        If a field's shape is not ``(ntime, nlat, nlon)``.
    """
    variables = get_variables(list(fields))
    shape = (len(times), len(lat), len(lon))
    values = {vid: _field_values(vid, value, shape) for vid, value in fields.items()}
    levels = sorted({v.level for v in variables if v.level is not None}, reverse=True)
    data: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, object]]] = {}
    for short in dict.fromkeys(v.short_name for v in variables):
        members = [v for v in variables if v.short_name == short]
        attrs_of = dict(field_attrs(members[0], lat, lon))
        if members[0].level is None:
            data[short] = (SINGLE_DIMS, values[members[0].id], attrs_of)
        else:
            data[short] = (PRESSURE_DIMS, _level_cube(members, values, levels, shape), attrs_of)
    labels = np.full(shape[0], EXPVER_FINAL) if expver is None else np.asarray(expver, dtype=str)
    coords = _coordinates(times, lat, lon, levels, labels)
    return xr.Dataset(data, coords=coords, attrs=dict(GLOBAL_ATTRS if attrs is None else attrs))


def _field_values(variable_id: str, value: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``value`` as ``shape`` (time, lat, lon), a singleton level axis dropped.

    Raises
    ------
    SourceLayoutError
        If it holds another number of values.
    """
    if np.size(value) != np.prod(shape):
        raise SourceLayoutError(
            f"expected {variable_id} of shape (time, lat, lon) = {shape}, found {np.shape(value)}"
        )
    return np.asarray(value).reshape(shape)


def _level_cube(
    members: list[Variable], values: Mapping[str, np.ndarray], levels: list[int], shape: tuple[int, int, int]
) -> np.ndarray:
    """The levels of one pressure-level variable stacked as ``(time, level, lat, lon)``, NaN where absent."""
    cube = np.full((shape[0], len(levels), *shape[1:]), np.nan, dtype=np.float32)
    for v in members:
        cube[:, levels.index(v.level or 0)] = values[v.id]
    return cube


def _coordinates(
    times: np.ndarray, lat: np.ndarray, lon: np.ndarray, levels: list[int], expver: np.ndarray
) -> dict[str, tuple]:
    """The layout's coordinates, in the CDS's order, with its attributes."""
    coords: dict[str, tuple] = {
        "number": ((), np.int64(0), NUMBER_ATTRS),
        "valid_time": ("valid_time", np.asarray(times).astype("datetime64[ns]"), TIME_ATTRS),
    }
    if levels:
        coords["pressure_level"] = ("pressure_level", np.array(levels, dtype=np.float64), PRESSURE_ATTRS)
    coords["latitude"] = ("latitude", np.asarray(lat, dtype=np.float64), LATITUDE_ATTRS)
    coords["longitude"] = ("longitude", np.asarray(lon, dtype=np.float64), LONGITUDE_ATTRS)
    coords[EXPVER] = ("valid_time", expver)
    return coords


def cds_encoding(ds: xr.Dataset) -> dict[str, dict[str, object]]:
    """netCDF encodings as the CDS writes them: float32 with zlib and shuffle, int64 epoch seconds."""
    encoding: dict[str, dict[str, object]] = {
        "valid_time": {"dtype": "int64", "units": EPOCH_UNITS, "calendar": CALENDAR},
        "number": {"dtype": "int64"},
    }
    for name in ("pressure_level", "latitude", "longitude"):
        if name in ds.variables:
            encoding[name] = {"dtype": "float64", "_FillValue": np.nan}
    for name in map(str, ds.data_vars):
        encoding[name] = {
            "dtype": "float32",
            "zlib": True,
            "complevel": 1,
            "shuffle": True,
            "_FillValue": np.float32(np.nan),
        }
    return encoding


def cds_bytes(ds: xr.Dataset) -> bytes:
    """``ds`` as the bytes of a new-CDS netCDF4 file (e.g. a zip member)."""
    with NETCDF_LOCK:
        return bytes(ds.to_netcdf(engine="netcdf4", format="NETCDF4", encoding=cds_encoding(ds)))


def write_cds_file(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a new-CDS netCDF4 file: to a temporary sibling of ``path``, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, NETCDF_LOCK:
        ds.to_netcdf(tmp, format="NETCDF4", engine="netcdf4", encoding=cds_encoding(ds))
    return path


def write_monthly_files(ds: xr.Dataset, directory: str | Path, *, prefix: str) -> list[Path]:
    """Write one netCDF4 file per calendar month, ``{prefix}_{YYYY}{MM}.nc``, as the CDS does.

    Each file is written atomically (:func:`write_cds_file`), so a reader never sees a partial file.

    Parameters
    ----------
    ds : xarray.Dataset
        Fields with a ``valid_time`` dimension (:func:`cds_dataset`).
    directory : str or pathlib.Path
        Created if missing; existing files of the same names are replaced.
    prefix : str
        File name prefix.

    Returns
    -------
    list of pathlib.Path
        The files written, sorted.

    Raises
    ------
    SourceLayoutError
        If ``ds`` has no non-empty ``valid_time`` dimension.
    """
    if ds.sizes.get("valid_time", 0) == 0:
        raise SourceLayoutError(
            f"expected a dataset with a non-empty 'valid_time' dimension, found dims {dict(ds.sizes)}"
        )
    directory = Path(directory)
    months = ds["valid_time"].values.astype("datetime64[M]")
    paths = [
        write_cds_file(
            ds.isel(valid_time=months == month), directory / f"{prefix}_{str(month).replace('-', '')}.nc"
        )
        for month in np.unique(months)
    ]
    return sorted(paths)
