"""Layout of the training store and the climatology store (DESIGN.md §3).

Training store (Zarr v3)::

    data[time, channel, lat, lon]   float32, chunk = 1 time step x all channels x whole grid,
                                    shards of ``shard_steps`` time steps
    time, channel, lat, lon         coordinates (datetime64, lexicon ids, degrees)
    mean[channel], std[channel]     normalisation statistics over the training period
    minimum[channel], maximum[channel], tendency_std[channel]
                                    extremes and std of the ``tendency_hours`` difference
    attrs                           stats_start/stats_end, step_hours, tendency_hours, layout,
                                    sources, fourcast version

Climatology store (Zarr v3)::

    climatology[dayofyear, hour, channel, lat, lon]
                                    day-of-year (1..366) x hour-of-day mean of the training
                                    period, smoothed over days as WeatherBench 2 does
                                    (:mod:`ingest.climatology`)

Readers go through :func:`open_store` / :func:`open_climatology`, which check the layout and
raise :class:`~ingest.errors.StoreSchemaError` naming what was expected and what was found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ingest.dims import CHANNEL, LAT, LON, STORE_DIMS, TIME
from ingest.errors import StoreSchemaError

DATA = "data"
MEAN = "mean"
STD = "std"
MINIMUM = "minimum"
MAXIMUM = "maximum"
TENDENCY_STD = "tendency_std"
CLIMATOLOGY = "climatology"
DAYOFYEAR = "dayofyear"
HOUR = "hour"
#: Dimension order of the climatology store's ``climatology`` array.
CLIMATOLOGY_DIMS = (DAYOFYEAR, HOUR, CHANNEL, LAT, LON)
STATS_START = "stats_start"
STATS_END = "stats_end"
STEP_HOURS = "step_hours"
TENDENCY_HOURS = "tendency_hours"


def check_store(ds: xr.Dataset, where: str = "store") -> xr.Dataset:
    """Raise :class:`StoreSchemaError` unless ``ds`` has the training-store layout."""
    missing = [name for name in (DATA, MEAN, STD) if name not in ds.variables]
    if missing:
        raise StoreSchemaError(
            f"{where}: expected variables {[DATA, MEAN, STD]}, missing {missing}; found "
            f"{sorted(map(str, ds.variables))}"
        )
    if tuple(ds[DATA].dims) != STORE_DIMS:
        raise StoreSchemaError(f"{where}: expected {DATA} dims {STORE_DIMS}, found {tuple(ds[DATA].dims)}")
    for name in (MEAN, STD):
        if tuple(ds[name].dims) != (CHANNEL,):
            raise StoreSchemaError(
                f"{where}: expected {name} dims ({CHANNEL!r},), found {tuple(ds[name].dims)}"
            )
    lat = ds[LAT].values
    if lat.size > 1 and not np.all(np.diff(lat) < 0):
        raise StoreSchemaError(f"{where}: expected latitude running north to south, found {lat[:3]}…")
    if not np.issubdtype(ds[TIME].dtype, np.datetime64):
        raise StoreSchemaError(f"{where}: expected datetime64 {TIME}, found {ds[TIME].dtype}")
    return ds


def open_store(path: str | Path) -> xr.Dataset:
    """Open a training store lazily as a labelled :class:`xarray.Dataset`.

    Raises
    ------
    StoreSchemaError
        If the path is not a Zarr store or does not have the training-store layout.
    """
    path = Path(path)
    if not path.exists():
        raise StoreSchemaError(f"no training store at {path}")
    try:
        ds = xr.open_zarr(path, zarr_format=3, consolidated=False)
    except Exception as err:  # zarr raises several unrelated types for "not a store"
        raise StoreSchemaError(f"{path} is not a readable Zarr v3 store: {err}") from err
    return check_store(ds, where=str(path))


def open_climatology(path: str | Path) -> xr.DataArray:
    """Open the climatology store lazily.

    Returns
    -------
    xarray.DataArray, dims (dayofyear, hour, channel, lat, lon)
        ``dayofyear`` runs 1..366, ``hour`` holds the hours of day the training store has
        (0, 6, 12, 18 for 6-hourly data). Select it at valid times with
        :func:`ingest.climatology.climatology_at`.

    Raises
    ------
    StoreSchemaError
        If the path is not a Zarr v3 store holding ``climatology`` with these dims.
    """
    path = Path(path)
    if not path.exists():
        raise StoreSchemaError(f"no climatology store at {path}")
    try:
        ds = xr.open_zarr(path, zarr_format=3, consolidated=False)
    except Exception as err:  # zarr raises several unrelated types for "not a store"
        raise StoreSchemaError(f"{path} is not a readable Zarr v3 store: {err}") from err
    if CLIMATOLOGY not in ds or tuple(ds[CLIMATOLOGY].dims) != CLIMATOLOGY_DIMS:
        found = tuple(ds[CLIMATOLOGY].dims) if CLIMATOLOGY in ds else sorted(ds.variables)
        raise StoreSchemaError(f"{path}: expected {CLIMATOLOGY}{list(CLIMATOLOGY_DIMS)}, found {found}")
    days = ds[DAYOFYEAR].values
    if not np.array_equal(days, np.arange(1, 367)):
        raise StoreSchemaError(
            f"{path}: expected {DAYOFYEAR} 1..366, found {days[:3]}…{days[-3:]} ({days.size} values)"
        )
    return ds[CLIMATOLOGY]


def step_of(ds: xr.Dataset) -> np.timedelta64:
    """Time step between consecutive store times, checked to be uniform."""
    times = ds[TIME].values
    if times.size < 2:
        raise StoreSchemaError(f"store holds {times.size} time(s); at least 2 are needed to know its step")
    deltas = np.unique(np.diff(times))
    if deltas.size != 1:
        raise StoreSchemaError(
            f"store times are not evenly spaced: steps found {deltas.astype('timedelta64[h]')}"
        )
    return deltas[0]


#: CF conventions the stores follow (written as the root attribute ``Conventions``).
CONVENTIONS = "CF-1.8"
#: CF attributes of the coordinates (``time`` keeps the units and calendar xarray encodes).
CF_COORDINATE_ATTRS = {
    LAT: {"axis": "Y", "long_name": "latitude", "standard_name": "latitude", "units": "degrees_north"},
    LON: {"axis": "X", "long_name": "longitude", "standard_name": "longitude", "units": "degrees_east"},
    TIME: {"axis": "T", "long_name": "time", "standard_name": "time"},
    CHANNEL: {"long_name": "variable (fourcast lexicon id)"},
}


def write_cf_attributes(path: str | Path, arrays: dict[str, dict]) -> None:
    """Add ``arrays[name]`` to the attributes of each array of the Zarr store at ``path``, keys in sorted
    order.

    Sorted keys make the metadata bytes independent of the order attributes were added in (a
    store extended later has the same bytes as one built at once). Arrays the store lacks are
    skipped. The root gets ``Conventions``.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    for name, attrs in arrays.items():
        if name in group:
            array = group[name]
            merged = {**array.attrs.asdict(), **attrs}
            array.attrs.put({key: merged[key] for key in sorted(merged)})
    group.attrs.update({"Conventions": CONVENTIONS})


def consolidate(path: str | Path) -> None:
    """Consolidate the metadata of the Zarr store at ``path``, so plain ``xr.open_zarr(path)`` opens it
    quietly.

    Call it last, after every write of arrays or attributes: readers given consolidated
    metadata trust it. fourcast's own readers open with ``consolidated=False`` and so always
    see the arrays as written. zarr-python warns that consolidated metadata is not yet part
    of the Zarr v3 specification; xarray and zarr-python read it, so the warning is silenced.
    """
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(path))
