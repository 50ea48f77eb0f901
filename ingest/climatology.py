"""Day-of-year x hour-of-day climatology, smoothed over days as WeatherBench 2 defines it.

Definition (WeatherBench 2, Rasp et al. 2024, ``compute_climatology`` with ``window_size=61``):
for each hour of day ``h`` and day of year ``d`` (1..366),

.. math::

    c(d, h) = \\frac{\\sum_y \\sum_{k=-K}^{K} w_k \\, x_y(d + k, h)}
                   {\\sum_y \\sum_{k=-K}^{K} w_k \\, [x_y(d + k, h) \\text{ exists}]}

where ``y`` runs over the years of the training period, ``d + k`` wraps around the 366-day
year, ``K = (window - 1) / 2`` and ``w`` is the triangular window ``0, 1/K, …, 1, …, 1/K, 0``
(normalised to mean 1, which cancels in the ratio). In a year without 29 February, day 366 is
filled with that year's day 365, so each year has 366 days. Missing values (NaN or times absent
from the store) drop out of both sums, which is what WeatherBench 2's weighted mean does.

The sums are accumulated the way :mod:`ingest.statistics` accumulates moments: each Dask block
of time steps (a store shard) is reduced in one task to :class:`DaySums` — the sum and count of
the non-NaN values per (day of year, hour) group it holds — the partial sums merge in a balanced
tree in block order (so the same blocks always give the same bits), and one last task smooths
them over days, hour by hour (the triangle is two running box sums, :func:`_triangle_sum`). The
graph has O(blocks) tasks whatever the number of days, hours or years; only the
write of the climatology store computes.

A killed write leaves its temporary store ``.NAME.partial-<id>-<pid>-<host>`` behind; the next
:func:`write_climatology` of ``NAME`` removes those whose process is gone from this host (and
those named before the process was recorded), never one of a live process.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from ingest.atomic import atomic_output, discard
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import StoreSchemaError
from ingest.lexicon import get_variable
from ingest.locks import process_running
from ingest.schema import (
    CF_COORDINATE_ATTRS,
    CLIMATOLOGY,
    CLIMATOLOGY_DIMS,
    DAYOFYEAR,
    HOUR,
    STATS_END,
    STATS_START,
    consolidate,
    write_cf_attributes,
)

log = logging.getLogger(__name__)

#: WeatherBench 2's default smoothing window, in days.
DEFAULT_WINDOW_DAYS = 61
DAYS_IN_CLIMATOLOGY = 366
_PARTIAL = "partial"


def window_weights(window_days: int = DEFAULT_WINDOW_DAYS) -> np.ndarray:
    """Triangular weights over ``window_days`` consecutive days, normalised to mean 1.

    Returns
    -------
    numpy.ndarray, shape (window_days,)
        Zero at both ends, one in the middle, linear in between.
    """
    if window_days < 1 or window_days % 2 == 0:
        raise StoreSchemaError(f"climatology window must be an odd number of days >= 1, found {window_days}")
    half = window_days // 2
    if half == 0:
        return np.ones(1)
    rising = np.linspace(0.0, 1.0, half + 1)
    weights = np.concatenate([rising, rising[-2::-1]])
    return weights / weights.mean()


#: Key of a (day of year, hour of day) group: ``(day - 1) * HOURS_PER_DAY + hour``.
HOURS_PER_DAY = 24


@dataclass(frozen=True)
class DaySums:
    """Sums and counts of the non-NaN values of some time steps per (day of year, hour) group.

    Attributes
    ----------
    keys : numpy.ndarray of int64, shape (group,)
        ``(day - 1) * 24 + hour``, sorted and unique; day 1..366, hour 0..23.
    sums, counts : numpy.ndarray of float64, shape (group, channel, lat, lon)
        Sum and number of the non-NaN values of each group.
    """

    keys: np.ndarray
    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def of_block(cls, block: np.ndarray, times: np.ndarray) -> DaySums:
        """Reduce steps ``block[time, channel, lat, lon]`` at ``times`` to their groups.

        A step on day 365 of a common year also counts as day 366, so each year has 366 days.
        """
        block = np.asarray(block)
        keys, steps = _group_keys(np.asarray(times))
        values = block[steps].astype(np.float64)
        present = ~np.isnan(values)
        return cls(*_sum_by_key(keys, np.where(present, values, 0.0), present.astype(np.float64)))

    def merge(self, other: DaySums) -> DaySums:
        """The groups of both (sums and counts of a group present in both are added)."""
        return DaySums(
            *_sum_by_key(
                np.concatenate([self.keys, other.keys]),
                np.concatenate([self.sums, other.sums]),
                np.concatenate([self.counts, other.counts]),
            )
        )

    def at_hour(self, hour: int) -> tuple[np.ndarray, np.ndarray]:
        """Sums and counts at one hour of day as ``[dayofyear (366), channel, lat, lon]`` (zero where
        absent)."""
        shape = (DAYS_IN_CLIMATOLOGY, *self.sums.shape[1:])
        sums, counts = np.zeros(shape), np.zeros(shape)
        days, hour_of = np.divmod(self.keys, HOURS_PER_DAY)
        rows = hour_of == hour
        sums[days[rows]], counts[days[rows]] = self.sums[rows], self.counts[rows]
        return sums, counts


def _group_keys(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group key of each step, with day 365 of a common year repeated as day 366; and the steps, in that
    order."""
    days = times.astype("datetime64[D]")
    years = times.astype("datetime64[Y]")
    day_of_year = (days - years.astype("datetime64[D]")).astype(np.int64) + 1
    hour = ((times - days) // np.timedelta64(1, "h")).astype(np.int64)
    year = years.astype(np.int64) + 1970
    common = (year % 4 != 0) | ((year % 100 == 0) & (year % 400 != 0))
    repeated = np.flatnonzero(common & (day_of_year == 365))
    steps = np.concatenate([np.arange(times.size), repeated])
    keys = np.concatenate([(day_of_year - 1) * HOURS_PER_DAY + hour, 365 * HOURS_PER_DAY + hour[repeated]])
    return keys, steps


def _sum_by_key(
    keys: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique sorted keys, and ``sums``/``counts`` added up over the rows of each key."""
    if keys.size == 0:
        return keys, sums, counts
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return (
        keys[starts],
        np.add.reduceat(sums[order], starts, axis=0),
        np.add.reduceat(counts[order], starts, axis=0),
    )


def _merge_tree(parts: list) -> Delayed:
    """Delayed :class:`DaySums` merged pairwise as a balanced tree, in list order."""
    while len(parts) > 1:
        merged = [dask.delayed(DaySums.merge)(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = merged + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def _box_sum(values: np.ndarray, width: int) -> np.ndarray:
    """``sum_{j=0}^{width-1} values[(d + j) mod 366]`` along the first axis (day of year), by a running sum.

    Where all the values summed are zero the result is exactly zero (the running sum does not move).
    """
    days = DAYS_IN_CLIMATOLOGY
    running = np.empty((days + width, *values.shape[1:]))
    running[0] = 0.0
    for day in range(1, days + width):  # row by row: numpy's cumsum along the first axis is ~10x slower
        np.add(running[day - 1], values[(day - 1) % days], out=running[day])
    return running[width : width + days] - running[:days]


def _triangle_sum(values: np.ndarray, half: int) -> np.ndarray:
    """``sum_{|m| < K} (K - |m|) values[(d + m) mod 366]`` along the first axis, ``K = half``.

    That is ``K`` times the window of :func:`window_weights` (``2K + 1`` days, zero at both
    ends) before its normalisation, which cancels in the climatology's ratio. The triangle is
    the convolution of two boxes of ``K`` days, so it costs two running sums, whatever the
    window; on whole numbers (the counts) it is exact.
    """
    if half == 0:
        return values.copy()
    return np.roll(_box_sum(_box_sum(values, half), half), half - 1, axis=0)


def _smoothed(total: DaySums, hours: np.ndarray, half: int, fill_uncovered: bool) -> np.ndarray:
    """The climatology ``[dayofyear, hour, channel, lat, lon]`` (float32) from the merged sums, hour by hour.

    A day whose window holds no value has both sums exactly zero, so 0 / 0: NaN, filled with the
    period's mean at that hour if ``fill_uncovered``.
    """
    out = np.empty((DAYS_IN_CLIMATOLOGY, hours.size, *total.sums.shape[1:]), dtype=np.float32)
    for index, hour in enumerate(hours):
        sums, counts = total.at_hour(hour)
        with np.errstate(invalid="ignore", divide="ignore"):
            smoothed = _triangle_sum(sums, half)
            smoothed /= _triangle_sum(counts, half)
            if fill_uncovered:
                np.copyto(smoothed, sums.sum(axis=0) / counts.sum(axis=0), where=np.isnan(smoothed))
        out[:, index] = smoothed
    return out


def compute_climatology(
    data: xr.DataArray,
    start: np.datetime64,
    end: np.datetime64,
    window_days: int = DEFAULT_WINDOW_DAYS,
    fill_uncovered: bool = True,
) -> xr.DataArray:
    """The smoothed day-of-year x hour-of-day climatology of ``data`` over ``start..end``.

    Parameters
    ----------
    data : xarray.DataArray, dims (time, channel, lat, lon)
        Training-store fields, Dask-backed (nothing is computed here).
    start, end : numpy.datetime64
        Inclusive period (the statistics period, so test years never leak in).
    window_days : int
        Odd smoothing window in days (WeatherBench 2 uses 61).
    fill_uncovered : bool
        A period shorter than a year leaves days whose whole window holds no data. With
        ``True`` they take the period's mean at that hour of day (recorded in the attributes);
        with ``False`` they stay NaN. A period of a year or more has no such days.

    Returns
    -------
    xarray.DataArray, dims (dayofyear, hour, channel, lat, lon)
        float32, lazy.
    """
    period = data.sel({TIME: slice(start, end)})
    if period.sizes[TIME] == 0:
        raise StoreSchemaError(
            f"climatology period {start}..{end} selects no time steps; the data covers "
            f"{data[TIME].values[0]}..{data[TIME].values[-1]}"
        )
    times = period[TIME].values
    hours = np.unique(period[TIME].dt.hour.values)
    minutes = np.unique(period[TIME].dt.minute.values)
    if minutes.size != 1 or minutes[0] != 0:
        raise StoreSchemaError(f"climatology needs times on the full hour, found minutes {minutes}")
    half = window_weights(window_days).size // 2  # also checks the window
    array = period.chunk({CHANNEL: -1, LAT: -1, LON: -1}).data
    offsets = np.r_[0, np.cumsum(array.chunks[0])]
    parts = [
        dask.delayed(DaySums.of_block)(block, times[a:b])
        for block, a, b in zip(array.to_delayed().ravel(), offsets[:-1], offsets[1:], strict=True)
    ]
    smoothed = dask.delayed(_smoothed)(_merge_tree(parts), hours, half, fill_uncovered)
    shape = (DAYS_IN_CLIMATOLOGY, hours.size, period.sizes[CHANNEL], period.sizes[LAT], period.sizes[LON])
    coords = {
        DAYOFYEAR: np.arange(1, DAYS_IN_CLIMATOLOGY + 1),
        HOUR: hours,
        CHANNEL: period[CHANNEL].values,
        LAT: period[LAT].values,
        LON: period[LON].values,
    }
    result = xr.DataArray(
        da.from_delayed(smoothed, shape, dtype=np.float32),
        dims=CLIMATOLOGY_DIMS,
        coords=coords,
        name=CLIMATOLOGY,
    )
    result.attrs = {
        STATS_START: str(start),
        STATS_END: str(end),
        "window_days": window_days,
        "definition": "WeatherBench 2 day-of-year x hour-of-day mean, triangular window over days",
        "uncovered_days": "period mean at that hour" if fill_uncovered else "NaN",
    }
    return result


def climatology_at(climatology: xr.DataArray, times: xr.DataArray) -> xr.DataArray:
    """The climatology at arbitrary valid times.

    Parameters
    ----------
    climatology : xarray.DataArray, dims (dayofyear, hour, channel, lat, lon)
        As returned by :func:`ingest.schema.open_climatology`.
    times : xarray.DataArray of datetime64, any dims
        Valid times; day of year and hour of day are taken as xarray's ``.dt`` gives them
        (1 March is day 61 in a leap year, 60 otherwise, as in WeatherBench 2).

    Returns
    -------
    xarray.DataArray
        Dims ``times.dims + (channel, lat, lon)``, with ``times``' coordinates.

    Raises
    ------
    StoreSchemaError
        If a time falls on an hour of day (or a minute) the climatology does not hold.
    """
    if tuple(climatology.dims) != CLIMATOLOGY_DIMS:
        raise StoreSchemaError(
            f"expected a climatology with dims {CLIMATOLOGY_DIMS}, found {climatology.dims}"
        )
    if not np.issubdtype(times.dtype, np.datetime64):
        raise StoreSchemaError(f"expected datetime64 valid times, found dtype {times.dtype}")
    hours = times.dt.hour
    off_grid = ~hours.isin(climatology[HOUR].values) | (times.dt.minute != 0)
    if bool(off_grid.any()):
        bad = np.unique(times.values[off_grid.values])
        raise StoreSchemaError(
            f"climatology holds hours {list(climatology[HOUR].values)}; valid times "
            f"{bad[:5]} fall between them"
        )
    picked = climatology.sel({DAYOFYEAR: times.dt.dayofyear, HOUR: hours})
    picked = picked.drop_vars([DAYOFYEAR, HOUR], errors="ignore")
    return picked.transpose(*times.dims, CHANNEL, LAT, LON)


def write_climatology(climatology: xr.DataArray, path: str | Path) -> Path:
    """Compute and write ``climatology`` as its own Zarr v3 store, atomically.

    The store holds one chunk per day of year (all hours, channels and the grid), grouped
    into shards of 61 days. It is written under a temporary name that records this process
    and renamed into place; temporaries of ``path`` that killed writers left behind are
    removed first (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    remove_stale_temporaries(path)
    nhour, nchan, nlat, nlon = (climatology.sizes[d] for d in (HOUR, CHANNEL, LAT, LON))
    encoding = {
        CLIMATOLOGY: {"chunks": (1, nhour, nchan, nlat, nlon), "shards": (61, nhour, nchan, nlat, nlon)}
    }
    dataset = climatology.chunk({DAYOFYEAR: 61, HOUR: -1, CHANNEL: -1, LAT: -1, LON: -1}).to_dataset()
    dataset.attrs = dict(climatology.attrs)
    with atomic_output(path, temporary=owned_temporary(path)) as tmp:
        dataset.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)
        channels = [str(c) for c in climatology[CHANNEL].values]
        write_cf_attributes(
            tmp,
            {
                **CF_COORDINATE_ATTRS,
                CLIMATOLOGY: {
                    "long_name": "climatological mean by day of year and hour of day",
                    "channel_units": [get_variable(c).units for c in channels],
                },
                DAYOFYEAR: {"long_name": "day of year"},
                HOUR: {"long_name": "hour of day (UTC)"},
            },
        )
        consolidate(tmp)
    return path


def owned_temporary(path: str | Path) -> Path:
    """A fresh sibling of ``path`` naming this process: ``.NAME.partial-<id>-<pid>-<host>``."""
    path = Path(path)
    return path.with_name(
        f".{path.name}.{_PARTIAL}-{uuid.uuid4().hex[:12]}-{os.getpid()}-{socket.gethostname()}"
    )


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` whose writer is dead; returns what was removed.

    A temporary named by :func:`owned_temporary` on this host is stale when its process no
    longer runs; one named on another host is left alone (its process cannot be checked from
    here); one named without a process (``.NAME.partial-<id>``, by fourcast before it recorded
    the writer) is stale.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_PARTIAL}-[0-9a-f]{{12}}(?:-(\d+)-(.+))?")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.{_PARTIAL}-*"):
        match = pattern.fullmatch(candidate.name)
        if match is None:
            continue
        pid, host = match.groups()
        if pid is None or (host == socket.gethostname() and not process_running(int(pid))):
            discard(candidate)
            removed.append(candidate)
            log.info("removed %s, left by a writer that is no longer running", candidate)
    return removed
