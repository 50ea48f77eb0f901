"""Write the training store and the climatology store from ERA5 files, with Dask.

The transform is lazy end to end; the statistics and the climatology are reduced in one Dask
pass over the training period, and the only other compute is the store write itself. Dask runs
on whatever scheduler is active: :mod:`pipeline.cluster` starts the cluster, not this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec, ZstdCodec

from ingest.atomic import discard, replace_path, temporary_sibling
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import SourceLayoutError, StoreSchemaError
from ingest.lexicon import get_variable
from ingest.normalise import to_canonical
from ingest.schema import CLIMATOLOGY, DATA, MEAN, STATS_END, STATS_START, STD, STEP_HOURS, step_of

COMPRESSORS = ("none", "zstd", "blosc")


@dataclass(frozen=True)
class StoreLayout:
    """How the ``data`` array is cut into chunks and shards.

    Attributes
    ----------
    shard_steps : int
        Time steps per shard (one file per shard); each chunk inside holds one time step.
    compressor : {"none", "zstd", "blosc"}
        Codec applied to every chunk.
    """

    shard_steps: int = 64
    compressor: str = "zstd"

    def __post_init__(self) -> None:
        if self.shard_steps < 1:
            raise StoreSchemaError(f"shard_steps must be >= 1, found {self.shard_steps}")
        if self.compressor not in COMPRESSORS:
            raise StoreSchemaError(f"compressor must be one of {COMPRESSORS}, found {self.compressor!r}")

    def compressors(self) -> tuple:
        """Zarr v3 codecs for the chosen compressor."""
        return {"none": (), "zstd": (ZstdCodec(level=3),), "blosc": (BloscCodec(cname="zstd", clevel=3),)}[
            self.compressor
        ]


@dataclass(frozen=True)
class StatsPeriod:
    """Inclusive date range the statistics and the climatology are computed on."""

    start: np.datetime64
    end: np.datetime64
    provenance: dict = field(default_factory=dict)


def open_sources(files: Sequence[str | Path], variable_ids: list[str], shard_steps: int) -> xr.DataArray:
    """Lazily open netCDF files in new-CDS layout as the canonical ``[time, channel, lat, lon]``.

    Dask chunks hold ``shard_steps`` time steps, so each chunk is written into exactly one
    shard and parallel writers never touch the same file.
    """
    if not files:
        raise SourceLayoutError("no input files to ingest")
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise SourceLayoutError(f"input files do not exist: {missing}")
    # Files are opened one after another: netCDF4/HDF5 is not safe to open from several threads.
    ds = xr.open_mfdataset(
        [str(f) for f in files], engine="netcdf4", combine="by_coords", parallel=False,
        chunks={}, data_vars="minimal", coords="minimal", compat="override", join="exact",
    )
    data = to_canonical(ds, variable_ids)
    return data.chunk({TIME: shard_steps, CHANNEL: -1, LAT: -1, LON: -1})


def _training_slice(data: xr.DataArray, period: StatsPeriod) -> xr.DataArray:
    subset = data.sel({TIME: slice(period.start, period.end)})
    if subset.sizes[TIME] < 2:
        times = data[TIME].values
        raise StoreSchemaError(
            f"statistics period {period.start}..{period.end} selects {subset.sizes[TIME]} time steps; "
            f"the data covers {times[0]}..{times[-1]}"
        )
    return subset


def compute_statistics(data: xr.DataArray, period: StatsPeriod) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Per-channel mean and std, and the per-point mean state, over the training period.

    Returns
    -------
    mean, std : xarray.DataArray, shape (channel,)
        Plain (unweighted) moments over time, lat and lon, as FourCastNet normalises.
    climatology : xarray.DataArray, shape (channel, lat, lon)
        Time mean of each grid point.
    """
    train = _training_slice(data, period).astype("float64")
    lazy = (train.mean((TIME, LAT, LON)), train.std((TIME, LAT, LON)), train.mean(TIME))
    mean, std, clim = dask.compute(*lazy)
    if np.any(std.values <= 0) or not np.all(np.isfinite(std.values)):
        raise StoreSchemaError(f"channel std must be positive and finite, found {dict(zip(std[CHANNEL].values, std.values))}")
    return mean.astype("float32"), std.astype("float32"), clim.astype("float32")


def _variable_attrs(variable_ids: list[str]) -> dict:
    return {vid: {"units": get_variable(vid).units, "long_name": get_variable(vid).long_name} for vid in variable_ids}


def write_store(
    data: xr.DataArray,
    path: str | Path,
    period: StatsPeriod,
    layout: StoreLayout = StoreLayout(),
    climatology_path: str | Path | None = None,
) -> Path:
    """Write the training store (and optionally the climatology store) atomically.

    Parameters
    ----------
    data : xarray.DataArray, shape (time, channel, lat, lon)
        Canonical fields, Dask-backed with time chunks of ``layout.shard_steps``.
    path : path-like
        Destination of the training store; replaced only once the new one is complete.
    period : StatsPeriod
        Training period for the statistics, recorded in the store's attributes.
    layout : StoreLayout
        Chunk/shard sizes and compressor.
    climatology_path : path-like, optional
        Where to write the climatology store.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    mean, std, clim = compute_statistics(data, period)
    step_hours = int(step_of(data.to_dataset(name=DATA)) / np.timedelta64(1, "h"))
    nchan, nlat, nlon = (data.sizes[d] for d in (CHANNEL, LAT, LON))
    ds = xr.Dataset({DATA: data, MEAN: mean, STD: std})
    ds.attrs = {
        STATS_START: str(period.start), STATS_END: str(period.end), STEP_HOURS: step_hours,
        "variables": _variable_attrs(list(data[CHANNEL].values)), **period.provenance,
    }
    encoding = {
        DATA: {"chunks": (1, nchan, nlat, nlon), "shards": (layout.shard_steps, nchan, nlat, nlon),
               "compressors": layout.compressors()},
        TIME: {"units": "hours since 1970-01-01", "dtype": "int64"},
    }
    _write_atomically(ds, path, encoding)
    if climatology_path is not None:
        clim_ds = xr.Dataset({CLIMATOLOGY: clim})
        clim_ds.attrs = {STATS_START: str(period.start), STATS_END: str(period.end), "definition": "time mean per grid point"}
        _write_atomically(clim_ds, Path(climatology_path), {})
    return path


def _write_atomically(ds: xr.Dataset, path: Path, encoding: dict) -> None:
    tmp = temporary_sibling(path)
    try:
        ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)
        replace_path(tmp, path)
    except BaseException:
        discard(tmp)
        raise
