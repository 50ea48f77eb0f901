"""Small ERA5 files in every layout the CDS has delivered, all written from one set of fields.

:func:`tests.ingest.fields.make_fields` draws seeded fields on a coarse global grid; the writers
put the same values into the new-CDS netCDF layout (:mod:`ingest.cds_layout`), the new-CDS zip,
the old-CDS packed-int16 netCDF layout, and GRIB 1, mirroring the real files in
``../shared/realdata`` (see its README).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import eccodes
import netCDF4
import numpy as np
import xarray as xr

from ingest.cds_layout import basic_field_attrs, cds_bytes, cds_dataset, write_cds_file
from ingest.lexicon import Variable, get_variable
from tests.ingest.fields import PRESSURE_IDS, SURFACE_IDS, Fields

# GRIB shortName where it differs from the cfgrib variable name the lexicon uses
_GRIB_SHORT_NAMES = {"t2m": "2t", "u10m": "10u", "v10m": "10v"}
_INT16_FILL = np.int16(-32767)
_ZIP_INSTANT = "data_stream-oper_stepType-instant.nc"
_ZIP_ACCUM = "data_stream-oper_stepType-accum.nc"


def _grid(
    fields: Fields, lon_west: bool, lat_ascending: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates and index orders for a grid delivered as −180..180 and/or south to north."""
    lon = np.where(fields.lon >= 180.0, fields.lon - 360.0, fields.lon) if lon_west else fields.lon
    lon_order = np.argsort(lon, kind="stable")
    lat_order = np.arange(fields.lat.size)[::-1] if lat_ascending else np.arange(fields.lat.size)
    return fields.lat[lat_order], lon[lon_order], lat_order, lon_order


def _on_grid(values: np.ndarray, lat_order: np.ndarray, lon_order: np.ndarray) -> np.ndarray:
    return values[..., lat_order, :][..., lon_order]


# --- new CDS netCDF ------------------------------------------------------------------------


def new_cds_dataset(
    fields: Fields, ids: tuple[str, ...], *, lon_west: bool = False, lat_ascending: bool = False
) -> xr.Dataset:
    """The new-CDS layout (:func:`ingest.cds_layout.cds_dataset`), on a grid maybe −180..180 and/or south to
    north."""
    lat, lon, lat_order, lon_order = _grid(fields, lon_west, lat_ascending)
    values = {vid: _on_grid(fields.values[vid], lat_order, lon_order) for vid in ids}
    return cds_dataset(
        fields.times,
        lat,
        lon,
        values,
        expver=fields.expver,
        field_attrs=_field_attrs,
        attrs={"Conventions": "CF-1.7", "institution": "ECMWF"},
    )


def _field_attrs(variable: Variable, lat: np.ndarray, lon: np.ndarray) -> dict[str, object]:
    """The layout's attributes, with the GRIB shortName where it differs from the netCDF name."""
    return {
        **basic_field_attrs(variable, lat, lon),
        "GRIB_shortName": _GRIB_SHORT_NAMES.get(variable.id, variable.short_name),
    }


def write_new_cds(
    fields: Fields,
    directory: Path,
    *,
    stem: str = "era5",
    lon_west: bool = False,
    lat_ascending: bool = False,
) -> list[Path]:
    """``{stem}_pl.nc`` (pressure levels) and ``{stem}_sfc.nc`` (single levels), as two requests give."""
    paths = []
    for suffix, ids in (("pl", PRESSURE_IDS), ("sfc", SURFACE_IDS)):
        ids = tuple(vid for vid in ids if vid in fields.values)
        if ids:
            ds = new_cds_dataset(fields, ids, lon_west=lon_west, lat_ascending=lat_ascending)
            paths.append(write_cds_file(ds, directory / f"{stem}_{suffix}.nc"))
    return paths


def write_cds_zip(fields: Fields, path: Path, *, seed: int = 1) -> Path:
    """The zip the new CDS returns for single levels mixing instantaneous and accumulated fields.

    The instantaneous member holds the single-level fields of ``fields``; the accumulated one
    holds total precipitation ``tp`` (not in the lexicon, so readers must pass over it).
    """
    ids = tuple(vid for vid in SURFACE_IDS if vid in fields.values)
    instant = new_cds_dataset(fields, ids)
    rain = np.random.default_rng(seed).gamma(0.5, 1e-3, (fields.times.size, fields.lat.size, fields.lon.size))
    accum = instant.drop_vars(list(instant.data_vars)).assign(
        tp=(("valid_time", "latitude", "longitude"), rain.astype(np.float32), {"units": "m"})
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, ds in ((_ZIP_INSTANT, instant), (_ZIP_ACCUM, accum)):
            archive.writestr(member, cds_bytes(ds))
    return path


# --- old CDS netCDF (grib_to_netcdf) ---------------------------------------------------------


def packing(values: np.ndarray) -> tuple[float, float]:
    """``(scale_factor, add_offset)`` spreading ``values`` over int16 −32766..32766."""
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    return max(high - low, 1e-6) / 65532.0, (high + low) / 2.0


def _pack(values: np.ndarray, scale: float, offset: float) -> np.ndarray:
    packed = np.round((values.astype(np.float64) - offset) / scale)
    return np.where(np.isnan(packed), _INT16_FILL, np.clip(packed, -32766, 32766)).astype(np.int16)


def write_old_cds(
    fields: Fields,
    directory: Path,
    *,
    stem: str = "era5_old",
    expver_dim: bool = False,
    fill_points: dict[str, tuple[int, int, int]] | None = None,
) -> list[Path]:
    """Legacy CDS netCDF: int16 packed with ``scale_factor``/``add_offset``, −32767 fill, hours since 1900.

    Parameters
    ----------
    expver_dim : bool
        Write an ``expver`` dimension (``1``, ``5``) as the old CDS did when a request mixed
        final ERA5 and ERA5T: each step's values go to the slot of ``fields.expver`` and the
        other slot holds fill values.
    fill_points : dict, optional
        ``{id: (time, lat, lon)}`` grid points to write as the fill value (missing data).
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, ids in (("pl", PRESSURE_IDS), ("sfc", SURFACE_IDS)):
        ids = tuple(vid for vid in ids if vid in fields.values)
        if ids:
            path = directory / f"{stem}_{suffix}.nc"
            _write_old_cds_file(fields, ids, path, expver_dim, fill_points or {})
            paths.append(path)
    return paths


def _write_old_cds_file(
    fields: Fields,
    ids: tuple[str, ...],
    path: Path,
    expver_dim: bool,
    fill_points: dict[str, tuple[int, int, int]],
) -> None:
    variables = [get_variable(vid) for vid in ids]
    levels = sorted({v.level for v in variables if v.level is not None})
    experiments = [1, 5]
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as nc:
        nc.Conventions = "CF-1.6"
        nc.createDimension("longitude", fields.lon.size)
        nc.createDimension("latitude", fields.lat.size)
        if expver_dim:
            nc.createDimension("expver", len(experiments))
        if levels:
            nc.createDimension("level", len(levels))
        nc.createDimension("time", None)
        for name, values, units in (
            ("longitude", fields.lon, "degrees_east"),
            ("latitude", fields.lat, "degrees_north"),
        ):
            var = nc.createVariable(name, "f4", (name,))
            var.units = units
            var[:] = values
        if expver_dim:
            nc.createVariable("expver", "i4", ("expver",))[:] = experiments
        if levels:
            level = nc.createVariable("level", "i4", ("level",))
            level.units = "millibars"
            level[:] = levels
        time = nc.createVariable("time", "i4", ("time",))
        time.units, time.long_name, time.calendar = "hours since 1900-01-01 00:00:00.0", "time", "gregorian"
        time[:] = ((fields.times - np.datetime64("1900-01-01", "ns")) // np.timedelta64(1, "h")).astype(
            np.int32
        )
        for short in dict.fromkeys(v.short_name for v in variables):
            members = [v for v in variables if v.short_name == short]
            dims = ("time",) + (("expver",) if expver_dim else ()) + (("level",) if members[0].level else ())
            shape = (
                (fields.times.size,)
                + ((len(experiments),) if expver_dim else ())
                + ((len(levels),) if members[0].level else ())
                + (fields.lat.size, fields.lon.size)
            )
            cube = np.full(shape, np.nan)
            for v in members:
                values = fields.values[v.id].astype(np.float64)
                for point in [p for vid, p in fill_points.items() if vid == v.id]:
                    values[point] = np.nan
                for t in range(fields.times.size):
                    index = (
                        (t,)
                        + ((experiments.index(int(fields.expver[t])),) if expver_dim else ())
                        + ((levels.index(v.level),) if v.level else ())
                    )
                    cube[index] = values[t]
            scale, offset = packing(cube)
            var = nc.createVariable(short, "i2", dims + ("latitude", "longitude"), fill_value=_INT16_FILL)
            var.set_auto_maskandscale(False)
            var.scale_factor, var.add_offset = np.float64(scale), np.float64(offset)
            var.missing_value = _INT16_FILL
            var.units, var.long_name = members[0].units, members[0].long_name.split(" at ")[0]
            var[:] = _pack(cube, scale, offset)


# --- GRIB ----------------------------------------------------------------------------------


def write_grib(
    fields: Fields,
    path: Path,
    *,
    lon_west: bool = False,
    packing_type: str = "grid_ieee",
    append: bool = False,
    stream: str = "oper",
    number: int = 0,
    step_type: str = "instant",
) -> Path:
    """GRIB 1 as MARS/CDS deliver it: one message per (time, variable, level), north to south.

    ``grid_ieee`` stores float32 values exactly; ``grid_simple`` (16 bits) is what ERA5 uses.
    ``stream``, ``number`` and ``step_type`` are the MARS stream (``oper``; ``enda`` for the
    ensemble of data assimilations, ``moda`` for monthly means), the ensemble member and the
    GRIB ``stepType`` (``instant``; ``avgua`` for a monthly mean of analyses).
    """
    lat, lon, lat_order, lon_order = _grid(fields, lon_west, lat_ascending=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab" if append else "wb") as out:
        for t, when in enumerate(fields.times):
            stamp = when.astype("datetime64[m]").item()
            for vid, values in fields.values.items():
                variable = get_variable(vid)
                sample = "regular_ll_sfc_grib1" if variable.level is None else "regular_ll_pl_grib1"
                handle = eccodes.codes_grib_new_from_samples(sample)
                try:
                    keys = {
                        "Ni": lon.size,
                        "Nj": lat.size,
                        "jScansPositively": 0,
                        "latitudeOfFirstGridPointInDegrees": lat[0],
                        "latitudeOfLastGridPointInDegrees": lat[-1],
                        "longitudeOfFirstGridPointInDegrees": lon[0],
                        "longitudeOfLastGridPointInDegrees": lon[-1],
                        "iDirectionIncrementInDegrees": lon[1] - lon[0],
                        "jDirectionIncrementInDegrees": lat[0] - lat[1],
                        "dataDate": int(stamp.strftime("%Y%m%d")),
                        "dataTime": int(stamp.strftime("%H%M")),
                        "shortName": _GRIB_SHORT_NAMES.get(vid, variable.short_name),
                        "expver": str(fields.expver[t]),
                        "packingType": packing_type,
                        "stream": stream,
                        "number": number,
                        "stepType": step_type,
                    }
                    if variable.level is not None:
                        keys["level"] = variable.level
                    for key, value in keys.items():
                        eccodes.codes_set(handle, key, value)
                    if packing_type == "grid_simple":
                        eccodes.codes_set(handle, "bitsPerValue", 16)
                    grid_values = _on_grid(values[t], lat_order, lon_order).astype(np.float64)
                    eccodes.codes_set_values(handle, grid_values.ravel())
                    eccodes.codes_write(handle, out)
                finally:
                    eccodes.codes_release(handle)
    return path
