"""Bring an ERA5 dataset, in any layout the CDS has delivered, into fourcast's canonical form.

Canonical form (:func:`normalise`): a Dataset with dims ``time, lat, lon``, one float32 variable
per lexicon id (pressure-level fields split per level: ``z`` at 500 hPa becomes ``z500``), in
the lexicon's units, latitude 90 → −90, longitude 0 → 360, and a ``expver`` coordinate along
``time`` saying which ERA5 experiment each step comes from.

Layouts understood (the sources in :mod:`ingest.formats` open the files; :mod:`ingest.expver`
says what the experiments are):

* new CDS netCDF (since 2024): ``valid_time``, ``pressure_level``, ``latitude``/``longitude``,
  scalar or 1-d ``number``, string ``expver`` per time, float32;
* old CDS netCDF (``grib_to_netcdf``): ``time``, ``level``, int16 packed with
  ``scale_factor``/``add_offset`` and ``_FillValue``/``missing_value``, and, where final ERA5
  and ERA5T were mixed, an ``expver`` dimension holding fill values for the absent experiment;
* GRIB through cfgrib (opened with ``time_dims=("valid_time",)``): ``valid_time``,
  ``isobaricInhPa``, scalar ``time``/``step``/``number``/``surface`` coordinates.

Packed integers are decoded in float64, as netCDF4 does with auto mask/scale, then cast to
float32, so the result equals a direct netCDF4 read cast to float32. Everything stays lazy
except two explicit reads: for the old ``expver`` dimension, the first latitude row of each
(time, expver) is read to learn which experiment holds data; and the first and last time step
of every field are read (decoded and converted) to check them against the variable's physical
range (:func:`ingest.lexicon.valid_range`), so that wrong units or corrupt data are refused
before any work starts.

Only the product the lexicon names is read: a field whose GRIB ``stepType`` (cfgrib's and the
new CDS's ``GRIB_stepType`` attribute) or CF ``cell_methods`` over time says it is a statistic
(monthly mean ``avgua``, accumulation, maximum, …) where the lexicon expects an instantaneous
analysis is refused. A field without a ``units`` attribute is refused unless its units are
declared with ``assume_units``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import GridMismatchError, PhysicalRangeError, SourceLayoutError, StepTypeError, UnitsError
from ingest.expver import EXPVER, EXPVER_UNKNOWN, expver_label, expver_rank
from ingest.lexicon import LEXICON, Variable, get_variable, get_variables, valid_range

_LEVEL = "level"
_TIME_NAMES = ("valid_time", "time")
_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")
_LEVEL_NAMES = ("pressure_level", "isobaricInhPa", "level")


def normalise(
    ds: xr.Dataset,
    variable_ids: Sequence[str] | None = None,
    *,
    time_chunk: int = 1,
    assume_units: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Turn one ERA5 dataset, in any supported layout, into the canonical form.

    Parameters
    ----------
    ds : xarray.Dataset
        As opened from a CDS netCDF file (best with ``mask_and_scale=False``, so packed integers
        are decoded here in float64) or from GRIB with cfgrib. Lazily indexed or Dask-backed.
    variable_ids : sequence of str, optional
        Lexicon ids to keep, among those the dataset holds; ``None`` keeps every lexicon
        variable found. Ids the dataset lacks are skipped (another file may hold them);
        :func:`ingest.readers.open_sources` requires them across its files.
    time_chunk : int
        Time steps per Dask chunk when ``ds`` is not Dask-backed yet.
    assume_units : mapping of str to str, optional
        ``{lexicon id: units}`` for fields whose file has no ``units`` attribute (e.g.
        ``{"z500": "m**2 s**-2"}``); without it such a field is refused. It never overrides a
        ``units`` attribute the file has (a contradiction is refused).

    Returns
    -------
    xarray.Dataset
        Variables named by lexicon id, each ``(time, lat, lon)`` float32 and Dask-backed;
        coordinates ``time`` (datetime64[ns], in the file's order), ``lat`` (degrees north,
        90 → −90), ``lon`` (degrees east, [0, 360) ascending) and ``expver`` (str, along
        ``time``).

    Raises
    ------
    SourceLayoutError
        If the dataset has no time, latitude or longitude axis, holds several ensemble
        members, or its time axis is not made of dates.
    GridMismatchError
        If the grid is not a regular latitude/longitude one, or repeats a longitude modulo 360.
    UnitsError
        If a field's units are missing (and not assumed), or neither the lexicon's nor
        convertible to them.
    StepTypeError
        If a field is another product than the lexicon's (a monthly mean, an accumulation, …).
    PhysicalRangeError
        If the first or last time step of a field leaves the variable's physical range.
    UnknownVariableError
        If an id in ``variable_ids`` or ``assume_units`` is not in the lexicon.
    """
    wanted = list(LEXICON.values()) if variable_ids is None else get_variables(list(variable_ids))
    assumed = check_assumed_units(assume_units)
    ds = _drop_member_axis(_rename_axes(ds))
    chosen, labels = _choose_expver(ds)
    ends = _first_and_last_steps(ds, chosen)  # checked (only the fields wanted) before anything is built
    held = [var for var in wanted if _holds(ends, var)]
    for var in held:
        _check_step_type(ends[var.short_name].attrs, var)
    units = {var.id: _source_units(ends[var.short_name].attrs, var, assumed) for var in held}
    for var in held:
        _check_physical_range(_float32_field(ends, var, units[var.id]), var)
    if not _is_dask_backed(ds):
        ds = ds.chunk({TIME: time_chunk})
    ds = _apply_expver_choice(ds, chosen)
    ds = ds.assign_coords(
        {
            TIME: ds[TIME].values.astype("datetime64[ns]"),
            LAT: ds[LAT].values.astype(np.float64),
            LON: ds[LON].values.astype(np.float64),
        }
    )
    fields = {var.id: _float32_field(ds, var, units[var.id]) for var in held}
    out = xr.Dataset(fields, coords={TIME: ds[TIME], LAT: ds[LAT], LON: ds[LON]})
    out = out.assign_coords({EXPVER: (TIME, labels)})
    return _orient(out)


def check_assumed_units(assume_units: Mapping[str, str] | None) -> dict[str, str]:
    """Check ``{lexicon id: units}`` declared for fields without a ``units`` attribute.

    Raises
    ------
    UnknownVariableError
        If a key is not a lexicon id.
    UnitsError
        If some units are neither the variable's nor convertible to them.
    """
    assumed = dict(assume_units or {})
    for variable_id, units in assumed.items():
        _units_converter(units, get_variable(variable_id))
    return assumed


def stack_channels(ds: xr.Dataset, variable_ids: Sequence[str]) -> xr.DataArray:
    """Stack canonical variables into ``DataArray[time, channel, lat, lon]`` in the given order."""
    fields = [ds[vid].drop_vars(EXPVER, errors="ignore") for vid in variable_ids]
    data = xr.concat(fields, dim=CHANNEL, coords="minimal", compat="override", join="exact")
    ids = np.array(list(variable_ids), dtype=object)  # stored as Zarr v3 variable-length strings
    return data.assign_coords({CHANNEL: ids}).transpose(TIME, CHANNEL, LAT, LON).rename(None)


def describe_missing(variable: Variable, sources: Sequence[xr.Dataset]) -> str:
    """Say which ERA5 field and level ``variable`` needs and what the raw ``sources`` hold."""
    needed = f"{variable.id} needs ERA5 variable {variable.short_name!r} ({variable.cds_name})"
    held = sorted({str(name) for ds in sources for name in ds.data_vars if name != EXPVER})
    if variable.level is None:
        return f"{needed}; the sources hold {held}"
    levels = sorted({float(lv) for ds in sources for lv in _levels_of(ds, variable.short_name)})
    if levels:
        return f"{needed} at pressure level {variable.level} hPa; the sources hold it at levels {levels} hPa"
    return f"{needed} at pressure level {variable.level} hPa; the sources hold {held}"


def _levels_of(ds: xr.Dataset, short_name: str) -> np.ndarray:
    if short_name not in ds.data_vars:
        return np.array([])
    for name in _LEVEL_NAMES:
        if name in ds[short_name].coords:
            return np.atleast_1d(ds[short_name][name].values)
    return np.array([])


def _first_present(ds: xr.Dataset, names: Sequence[str]) -> str | None:
    return next((name for name in names if name in ds.variables or name in ds.dims), None)


def _rename_axes(ds: xr.Dataset) -> xr.Dataset:
    """Rename time/lat/lon/level to canonical names; make a scalar time a length-1 axis."""
    if "valid_time" in ds.variables:  # cfgrib's analysis time and step are superseded by it
        ds = ds.drop_vars([n for n in ("time", "step") if n in ds.variables])
    names = {
        TIME: _first_present(ds, _TIME_NAMES),
        LAT: _first_present(ds, _LAT_NAMES),
        LON: _first_present(ds, _LON_NAMES),
        _LEVEL: _first_present(ds, _LEVEL_NAMES),
    }
    missing = [axis for axis in (TIME, LAT, LON) if names[axis] is None]
    if missing:
        raise SourceLayoutError(
            f"expected ERA5 axes valid_time (or time), latitude and longitude; missing {missing}; "
            f"found dims {dict(ds.sizes)} and variables {sorted(map(str, ds.variables))}"
        )
    ds = ds.rename({old: new for new, old in names.items() if old is not None and old != new})
    if LAT not in ds.dims or LON not in ds.dims:
        raise GridMismatchError(
            f"expected a regular latitude/longitude grid (latitude and longitude dimensions); found dims "
            f"{dict(ds.sizes)} — reduced Gaussian or spectral GRIB must be regridded first (request 'grid')"
        )
    if TIME not in ds.dims:
        ds = ds.expand_dims(TIME)
    if not np.issubdtype(ds[TIME].dtype, np.datetime64):
        raise SourceLayoutError(
            f"expected a time axis of dates (CF units 'since'), found dtype {ds[TIME].dtype}"
        )
    return ds


def _drop_member_axis(ds: xr.Dataset) -> xr.Dataset:
    """Drop the ensemble ``number`` (scalar or length 1) and scalar level coordinates."""
    if "number" in ds.dims:
        if ds.sizes["number"] != 1:
            raise SourceLayoutError(
                f"expected one ensemble member (reanalysis), found number = {ds['number'].values.tolist()}; "
                "select one member before ingesting"
            )
        ds = ds.isel(number=0)
    scalars = [name for name, coord in ds.coords.items() if coord.ndim == 0 and name not in (_LEVEL, EXPVER)]
    return ds.drop_vars(scalars)


def _choose_expver(ds: xr.Dataset) -> tuple[np.ndarray | None, np.ndarray]:
    """One experiment per time step: the index along an ``expver`` dimension (``None`` when
    there is none) and the label of every step."""
    if EXPVER not in ds.variables:
        return None, np.full(ds.sizes[TIME], EXPVER_UNKNOWN, dtype=object)
    values = ds[EXPVER].values
    if EXPVER not in ds.dims:
        labels = [expver_label(v) for v in np.broadcast_to(values, (ds.sizes[TIME],))]
        return None, np.array(labels, dtype=object)
    experiments = [expver_label(v) for v in values]
    present = _experiments_holding_data(ds, len(experiments))
    order = sorted(range(len(experiments)), key=lambda i: expver_rank(experiments[i]))
    chosen = np.array([next((i for i in order if present[t, i]), order[0]) for t in range(ds.sizes[TIME])])
    return chosen, np.array([experiments[i] for i in chosen], dtype=object)


def _experiments_holding_data(ds: xr.Dataset, nexp: int) -> np.ndarray:
    """Old-CDS ``expver`` dimension: which experiment holds data at each step, shape (time, expver).

    Read from the first latitude row of every gridded variable (the absent experiment is all
    fill values there); on lazily indexed backend arrays only that row is read.
    """
    present = np.ones((ds.sizes[TIME], nexp), dtype=bool)
    for var in ds.data_vars.values():
        if {TIME, EXPVER, LAT, LON} <= set(var.dims):
            row = np.asarray(var.isel({LAT: 0}).transpose(TIME, EXPVER, ...).values)
            present &= ~_missing_mask(row.reshape(ds.sizes[TIME], nexp, -1), var.attrs).all(axis=-1)
    return present


def _apply_expver_choice(ds: xr.Dataset, chosen: np.ndarray | None) -> xr.Dataset:
    """Drop ``expver``; along an ``expver`` dimension keep the chosen experiment of each step."""
    if chosen is None:
        return ds.drop_vars(EXPVER, errors="ignore")
    runs = np.flatnonzero(np.diff(chosen)) + 1
    pieces = [
        ds.isel({TIME: slice(start, stop), EXPVER: int(chosen[start])}).drop_vars(EXPVER)
        for start, stop in zip(np.r_[0, runs], np.r_[runs, chosen.size], strict=True)
    ]
    if len(pieces) == 1:
        return pieces[0]
    return xr.concat(pieces, dim=TIME, data_vars="minimal", coords="minimal", compat="override")


def _first_and_last_steps(ds: xr.Dataset, chosen: np.ndarray | None) -> xr.Dataset:
    """The first and last time step, each from its chosen experiment (still unread where ``ds`` is)."""
    steps = sorted({0, ds.sizes[TIME] - 1}) if ds.sizes[TIME] else []
    return _apply_expver_choice(ds.isel({TIME: steps}), None if chosen is None else chosen[steps])


def _is_dask_backed(ds: xr.Dataset) -> bool:
    return any(var.chunks is not None for var in ds.data_vars.values())


def _holds(ds: xr.Dataset, variable: Variable) -> bool:
    """Whether ``ds`` has ``variable`` as a gridded field (at its pressure level if it has one)."""
    if variable.short_name not in ds.data_vars:
        return False
    field = ds[variable.short_name]
    if not {LAT, LON} <= set(field.dims):
        return False
    if _LEVEL not in field.coords:
        return variable.level is None and set(field.dims) <= {TIME, LAT, LON}
    levels = np.atleast_1d(field[_LEVEL].values).astype(float)
    return (
        variable.level is not None
        and set(field.dims) <= {TIME, _LEVEL, LAT, LON}
        and variable.level in levels
    )


def _float32_field(ds: xr.Dataset, variable: Variable, units: str) -> xr.DataArray:
    """Select one variable (at its level), decode packing and fill values, convert from ``units``."""
    field = ds[variable.short_name]
    if variable.level is not None:
        levels = np.atleast_1d(field[_LEVEL].values).astype(float)
        field = (
            field.isel({_LEVEL: int(np.flatnonzero(levels == variable.level)[0])})
            if _LEVEL in field.dims
            else field
        )
        field = field.drop_vars(_LEVEL)
    attrs = dict(field.attrs)
    decoded = _decode(field.transpose(TIME, LAT, LON), attrs)
    converted = _units_converter(units, variable)(decoded)
    converted = converted.astype(np.float32)
    converted.attrs = {"units": variable.units, "long_name": variable.long_name}
    return converted


def _missing_mask(values: np.ndarray, attrs: dict) -> np.ndarray:
    """True where raw (still packed) ``values`` are fill/missing values or NaN."""
    mask = np.zeros(np.shape(values), dtype=bool)
    for key in ("_FillValue", "missing_value"):
        for fill in np.atleast_1d(attrs.get(key, [])):
            mask |= np.isnan(values) if np.isnan(fill) else values == fill
    if np.issubdtype(np.asarray(values).dtype, np.floating):
        mask |= np.isnan(values)
    return mask


def _decode(field: xr.DataArray, attrs: dict) -> xr.DataArray:
    """Mask fill values and unpack ``scale_factor``/``add_offset`` in float64, as netCDF4 does."""
    fills = [
        f
        for key in ("_FillValue", "missing_value")
        for f in np.atleast_1d(attrs.get(key, []))
        if not np.isnan(f)
    ]  # NaN fill values of float fields are already NaN
    scale, offset = attrs.get("scale_factor"), attrs.get("add_offset")
    if not fills and scale is None and offset is None:
        return field
    masked = field.isnull() if np.issubdtype(field.dtype, np.floating) else xr.zeros_like(field, dtype=bool)
    for fill in fills:
        masked = masked | (field == fill)
    values = field.astype(np.float64) if (scale is not None or offset is not None) else field
    if scale is not None:
        values = values * np.float64(scale)
    if offset is not None:
        values = values + np.float64(offset)
    return values.where(~masked)


#: CF ``cell_methods`` over time → the GRIB ``stepType`` of the same product.
_CELL_METHOD_STEP_TYPES = {
    "point": "instant",
    "sum": "accum",
    "mean": "avg",
    "maximum": "max",
    "minimum": "min",
}
_STEP_TYPE_NAMES = {"instant": "an instantaneous field", "accum": "an accumulation"}


def _check_step_type(attrs: Mapping, variable: Variable) -> None:
    """Refuse a field whose ``stepType``/``cell_methods`` attributes name another product than the
    lexicon's."""
    found = [
        f"stepType {attrs[key]!r}"
        for key in ("GRIB_stepType", "stepType")
        if key in attrs and str(attrs[key]) != variable.step_type
    ]
    over_time = re.search(r"\btime\s*:\s*(\w+)", str(attrs.get("cell_methods", "")))
    if (
        over_time
        and _CELL_METHOD_STEP_TYPES.get(over_time.group(1), over_time.group(1)) != variable.step_type
    ):
        found.append(f"cell_methods {attrs['cell_methods']!r}")
    if found:
        expected = _STEP_TYPE_NAMES.get(variable.step_type, "a statistical product")
        raise StepTypeError(
            f"{variable.id} ({variable.short_name!r}) is expected as {expected} (stepType "
            f"{variable.step_type}); "
            f"found {' and '.join(found)} — another product (a monthly mean, accumulation, "
            "minimum or maximum "
            "over time), which is never mixed with the analyses; request the hourly product"
        )


def _source_units(attrs: Mapping, variable: Variable, assumed: Mapping[str, str]) -> str:
    """The units a field is stored in: its ``units`` attribute, or those assumed for it."""
    units, declared = attrs.get("units"), assumed.get(variable.id)
    if units is None and declared is None:
        raise UnitsError(
            f"{variable.id} ({variable.short_name!r}) has no units attribute; expected "
            f"{variable.units!r} (or units "
            "convertible to it); declare them with assume_units, e.g. "
            f"{{{variable.id!r}: {variable.units!r}}}"
        )
    if units is not None and declared is not None and _unit_key(str(units)) != _unit_key(declared):
        raise UnitsError(
            f"{variable.id} ({variable.short_name!r}) has units {units!r} in the file but assume_units says "
            f"{declared!r}; assume_units only supplies missing units"
        )
    return str(units if units is not None else declared)


def _check_physical_range(field: xr.DataArray, variable: Variable) -> None:
    """Read ``field[time, lat, lon]`` (lexicon units); refuse it where a step leaves the physical range."""
    low, high = valid_range(variable.id)
    every_step = np.asarray(field.values)
    for step in range(field.sizes[TIME]):
        values = every_step[step][np.isfinite(every_step[step])]  # NaN/inf: their own error when computed
        if values.size and (values.min() < low or values.max() > high):
            when = np.datetime_as_string(field[TIME].values[step].astype("datetime64[s]"), unit="h")
            raise PhysicalRangeError(
                f"{variable.id} spans {values.min():.6g}..{values.max():.6g} at {when}, outside its "
                "physical range "
                f"{low:g}..{high:g} (in {variable.units}) — wrong units (e.g. geopotential height in "
                "m labelled "
                "as geopotential) or corrupt data"
            )


def _unit_key(units: str) -> str:
    return units.replace("**", "").replace("^", "").replace(" ", "").replace("/", "")


# (lexicon units, source units) → conversion into the lexicon's units
_CONVERSIONS: dict[tuple[str, str], Callable[[xr.DataArray], xr.DataArray]] = {
    ("Pa", "hPa"): lambda x: x * 100.0,
    ("Pa", "mbar"): lambda x: x * 100.0,
    ("Pa", "millibars"): lambda x: x * 100.0,
    ("K", "degC"): lambda x: x + 273.15,
    ("K", "C"): lambda x: x + 273.15,
    ("K", "°C"): lambda x: x + 273.15,
    ("%", "1"): lambda x: x * 100.0,
    ("%", "(0-1)"): lambda x: x * 100.0,
    ("m2s-2", "gpm"): lambda x: x * 9.80665,
    ("m2s-2", "m"): lambda x: x * 9.80665,  # geopotential height → geopotential
}


def _units_converter(units: str, variable: Variable) -> Callable[[xr.DataArray], xr.DataArray]:
    if _unit_key(units) == _unit_key(variable.units):
        return lambda x: x
    convert = _CONVERSIONS.get((_unit_key(variable.units), _unit_key(units)))
    if convert is None:
        raise UnitsError(
            f"{variable.id} ({variable.short_name!r}) is expected in {variable.units!r} or units convertible "
            f"to it; found units {units!r}"
        )
    return convert


def _orient(ds: xr.Dataset) -> xr.Dataset:
    """Longitude into [0, 360) ascending, latitude north to south."""
    lon = np.mod(ds[LON].values, 360.0)
    unique, counts = np.unique(lon, return_counts=True)
    if np.any(counts > 1):
        raise GridMismatchError(
            f"expected each longitude once modulo 360, found {list(unique[counts > 1])} twice in "
            f"{ds[LON].values[0]}..{ds[LON].values[-1]} (a grid repeating its first meridian)"
        )
    ds = ds.assign_coords({LON: lon})
    if not np.all(np.diff(lon) > 0):
        ds = ds.isel({LON: np.argsort(lon, kind="stable")})
    if np.any(np.diff(ds[LAT].values) > 0):
        ds = ds.isel({LAT: np.argsort(-ds[LAT].values, kind="stable")})
    return ds
