"""Layout of the training store and the climatology store (DESIGN.md §3).

Training store (Zarr v3)::

    data[time, channel, lat, lon]   float32, chunk = 1 time step x all channels x whole grid,
                                    shards of ``shard_steps`` time steps
    time, channel, lat, lon         coordinates (datetime64, lexicon ids, degrees)
    mean[channel], std[channel]     normalisation statistics over the training period
    attrs                           stats_start/stats_end, sources, fourcast version

Climatology store (Zarr v3)::

    climatology[channel, lat, lon]  mean state of the training period

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
CLIMATOLOGY = "climatology"
STATS_START = "stats_start"
STATS_END = "stats_end"
STEP_HOURS = "step_hours"


def check_store(ds: xr.Dataset, where: str = "store") -> xr.Dataset:
    """Raise :class:`StoreSchemaError` unless ``ds`` has the training-store layout."""
    missing = [name for name in (DATA, MEAN, STD) if name not in ds.variables]
    if missing:
        raise StoreSchemaError(
            f"{where}: expected variables {[DATA, MEAN, STD]}, missing {missing}; found {sorted(ds.variables)}"
        )
    if tuple(ds[DATA].dims) != STORE_DIMS:
        raise StoreSchemaError(f"{where}: expected {DATA} dims {STORE_DIMS}, found {tuple(ds[DATA].dims)}")
    for name in (MEAN, STD):
        if tuple(ds[name].dims) != (CHANNEL,):
            raise StoreSchemaError(f"{where}: expected {name} dims ({CHANNEL!r},), found {tuple(ds[name].dims)}")
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
    """Open the climatology store; returns ``climatology[channel, lat, lon]``."""
    path = Path(path)
    if not path.exists():
        raise StoreSchemaError(f"no climatology store at {path}")
    try:
        ds = xr.open_zarr(path, zarr_format=3, consolidated=False)
    except Exception as err:
        raise StoreSchemaError(f"{path} is not a readable Zarr v3 store: {err}") from err
    if CLIMATOLOGY not in ds or tuple(ds[CLIMATOLOGY].dims) != (CHANNEL, LAT, LON):
        raise StoreSchemaError(
            f"{path}: expected {CLIMATOLOGY}[{CHANNEL}, {LAT}, {LON}], found {dict(ds.sizes)} / {sorted(ds.variables)}"
        )
    return ds[CLIMATOLOGY]


def step_of(ds: xr.Dataset) -> np.timedelta64:
    """Time step between consecutive store times, checked to be uniform."""
    times = ds[TIME].values
    if times.size < 2:
        raise StoreSchemaError(f"store holds {times.size} time(s); at least 2 are needed to know its step")
    deltas = np.unique(np.diff(times))
    if deltas.size != 1:
        raise StoreSchemaError(f"store times are not evenly spaced: steps found {deltas.astype('timedelta64[h]')}")
    return deltas[0]
