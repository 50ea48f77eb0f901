"""Day-of-year x hour-of-day climatology, smoothed over days as WeatherBench 2 defines it.

Definition (WeatherBench 2, Rasp et al. 2024, ``compute_climatology`` with ``window_size=61``):
for each hour of day ``h`` and day of year ``d`` (1..366),

.. math::

    c(d, h) = \\frac{\\sum_y \\sum_{k=-K}^{K} w_k \\, x_y(d + k, h)}{\\sum_y \\sum_{k=-K}^{K} w_k \\, [x_y(d + k, h) \\text{ exists}]}

where ``y`` runs over the years of the training period, ``d + k`` wraps around the 366-day
year, ``K = (window - 1) / 2`` and ``w`` is the triangular window ``0, 1/K, …, 1, …, 1/K, 0``
(normalised to mean 1, which cancels in the ratio). In a year without 29 February, day 366 is
filled with that year's day 365, so each year has 366 days. Missing values (NaN or times absent
from the store) drop out of both sums, which is what WeatherBench 2's weighted mean does.

The sums are accumulated lazily with Dask (per year and hour, then summed over years, then a
circular weighted sum over days); only the write of the climatology store computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ingest.atomic import discard, replace_path, temporary_sibling
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import StoreSchemaError
from ingest.schema import CLIMATOLOGY, CLIMATOLOGY_DIMS, DAYOFYEAR, HOUR, STATS_END, STATS_START

#: WeatherBench 2's default smoothing window, in days.
DEFAULT_WINDOW_DAYS = 61
DAYS_IN_CLIMATOLOGY = 366


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


def _year_by_day(piece: xr.DataArray) -> xr.DataArray:
    """One year's fields at one hour, relabelled by day of year and reindexed to 1..366.

    Days the year lacks are NaN; a year without 29 February repeats its day 365 as day 366.
    """
    days = piece[TIME].dt.dayofyear.values
    by_day = piece.assign_coords({TIME: days}).rename({TIME: DAYOFYEAR})
    leap = bool(piece[TIME].dt.is_leap_year.values[0])
    if not leap and 365 in days:
        by_day = xr.concat([by_day, by_day.sel({DAYOFYEAR: [365]}).assign_coords({DAYOFYEAR: [366]})], DAYOFYEAR)
    return by_day.reindex({DAYOFYEAR: np.arange(1, DAYS_IN_CLIMATOLOGY + 1)})


def _day_sums(data: xr.DataArray, hours: np.ndarray) -> tuple[xr.DataArray, xr.DataArray]:
    """Sums and counts of finite values per (dayofyear, hour) over all years, lazily.

    Each (year, hour) slice is a strided selection of the store, so the Dask graph grows with
    years x hours, not with the number of (day, hour) groups.

    Returns
    -------
    sums, counts : xarray.DataArray, dims (dayofyear, hour, channel, lat, lon)
    """
    stamps = data[TIME].dt
    sums, counts = [], []
    for hour in hours:
        years = [_year_by_day(data.isel({TIME: np.flatnonzero((stamps.year.values == year) & (stamps.hour.values == hour))}))
                 for year in np.unique(stamps.year.values[stamps.hour.values == hour])]
        stacked = xr.concat(years, dim="year", coords="minimal", compat="override")
        sums.append(stacked.astype("float64").sum("year", skipna=True))
        counts.append(stacked.notnull().sum("year").astype("float64"))
    return tuple(  # type: ignore[return-value]
        xr.concat(parts, dim=xr.DataArray(hours, dims=HOUR)).transpose(*CLIMATOLOGY_DIMS).chunk({DAYOFYEAR: -1})
        for parts in (sums, counts)
    )


def _circular_convolve(values: np.ndarray, kernel_spectrum: np.ndarray) -> np.ndarray:
    """Circular convolution along the last axis, by FFT (exact up to float64 rounding)."""
    return np.fft.irfft(np.fft.rfft(values, axis=-1) * kernel_spectrum, n=values.shape[-1], axis=-1)


def _circular_window_sum(array: xr.DataArray, weights: np.ndarray) -> xr.DataArray:
    """``sum_k w_k array[(d + k) mod 366]`` along ``dayofyear`` (float64, lazily, block by block)."""
    half = weights.size // 2
    kernel = np.zeros(DAYS_IN_CLIMATOLOGY)
    kernel[(-np.arange(-half, half + 1)) % DAYS_IN_CLIMATOLOGY] = weights  # correlation as a convolution
    spectrum = np.fft.rfft(kernel)
    summed = xr.apply_ufunc(_circular_convolve, array.astype("float64"), kwargs={"kernel_spectrum": spectrum},
                            input_core_dims=[[DAYOFYEAR]], output_core_dims=[[DAYOFYEAR]],
                            dask="parallelized", output_dtypes=[np.float64])
    return summed.transpose(*array.dims)


def compute_climatology(data: xr.DataArray, start: np.datetime64, end: np.datetime64,
                        window_days: int = DEFAULT_WINDOW_DAYS, fill_uncovered: bool = True) -> xr.DataArray:
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
        raise StoreSchemaError(f"climatology period {start}..{end} selects no time steps; the data covers "
                               f"{data[TIME].values[0]}..{data[TIME].values[-1]}")
    hours = np.unique(period[TIME].dt.hour.values)
    minutes = np.unique(period[TIME].dt.minute.values)
    if minutes.size != 1 or minutes[0] != 0:
        raise StoreSchemaError(f"climatology needs times on the full hour, found minutes {minutes}")
    sums, counts = _day_sums(period, hours)
    weights = window_weights(window_days)
    weight_total = _circular_window_sum(counts, weights)
    # totals are sums of whole weights: anything below the smallest one is FFT rounding of zero
    smoothed = _circular_window_sum(sums, weights) / weight_total.where(weight_total > 0.5 * weights[weights > 0].min())
    if fill_uncovered:
        smoothed = smoothed.fillna(sums.sum(DAYOFYEAR) / counts.sum(DAYOFYEAR))
    result = smoothed.astype("float32").rename(CLIMATOLOGY)
    result.attrs = {STATS_START: str(start), STATS_END: str(end), "window_days": window_days,
                    "definition": "WeatherBench 2 day-of-year x hour-of-day mean, triangular window over days",
                    "uncovered_days": "period mean at that hour" if fill_uncovered else "NaN"}
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
        raise StoreSchemaError(f"expected a climatology with dims {CLIMATOLOGY_DIMS}, found {climatology.dims}")
    if not np.issubdtype(times.dtype, np.datetime64):
        raise StoreSchemaError(f"expected datetime64 valid times, found dtype {times.dtype}")
    hours = times.dt.hour
    off_grid = ~hours.isin(climatology[HOUR].values) | (times.dt.minute != 0)
    if bool(off_grid.any()):
        bad = np.unique(times.values[off_grid.values])
        raise StoreSchemaError(f"climatology holds hours {list(climatology[HOUR].values)}; valid times "
                               f"{bad[:5]} fall between them")
    picked = climatology.sel({DAYOFYEAR: times.dt.dayofyear, HOUR: hours})
    picked = picked.drop_vars([DAYOFYEAR, HOUR], errors="ignore")
    return picked.transpose(*times.dims, CHANNEL, LAT, LON)


def write_climatology(climatology: xr.DataArray, path: str | Path) -> Path:
    """Compute and write ``climatology`` as its own Zarr v3 store, atomically.

    The store holds one chunk per day of year (all hours, channels and the grid), grouped
    into shards of 61 days.
    """
    path = Path(path)
    nhour, nchan, nlat, nlon = (climatology.sizes[d] for d in (HOUR, CHANNEL, LAT, LON))
    encoding = {CLIMATOLOGY: {"chunks": (1, nhour, nchan, nlat, nlon), "shards": (61, nhour, nchan, nlat, nlon)}}
    dataset = climatology.chunk({DAYOFYEAR: 61, HOUR: -1, CHANNEL: -1, LAT: -1, LON: -1}).to_dataset()
    dataset.attrs = dict(climatology.attrs)
    tmp = temporary_sibling(path)
    try:
        dataset.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)
        replace_path(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    return path
