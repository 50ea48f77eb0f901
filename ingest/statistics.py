"""Per-channel statistics of the training store, from mergeable partial states.

Each Dask block (a shard of time steps) is reduced to a :class:`Moments` state: count, mean,
sum of squared deviations ``M2``, minimum and maximum per channel. States merge with Chan,
Golub & LeVeque's pairwise update, which is exact in exact arithmetic, so blocks reduced on
different workers, in any grouping, give the statistics of the whole period:

.. math::

    n = n_a + n_b,\\quad \\delta = \\bar x_b - \\bar x_a,\\quad
    \\bar x = \\bar x_a + \\delta \\, n_b / n,\\quad
    M_2 = M_{2,a} + M_{2,b} + \\delta^2 \\, n_a n_b / n

Statistics are plain (unweighted) moments over time, lat and lon, as FourCastNet normalises;
NaNs are left out of every count. The tendency std is the std of ``x(t + Δ) − x(t)`` over
pairs inside the period, with ``Δ`` = 6 hours (or one store step where the step is longer).
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np
import xarray as xr

from ingest.dims import CHANNEL, TIME
from ingest.errors import StoreSchemaError
from ingest.schema import MAXIMUM, MEAN, MINIMUM, STATS_END, STATS_START, STD, TENDENCY_HOURS, TENDENCY_STD

#: Hours over which the tendency std is taken (FourCastNet/GraphCast use the 6-hour step).
TENDENCY_TARGET_HOURS = 6


@dataclass(frozen=True)
class Moments:
    """Mergeable per-channel summary of some values.

    Attributes
    ----------
    count, mean, m2, minimum, maximum : numpy.ndarray, shape (channel,)
        Number of finite values, their mean, sum of squared deviations from the mean, and
        extremes (``+inf``/``-inf`` where ``count == 0``). float64.
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray

    @classmethod
    def of_block(cls, block: np.ndarray) -> Moments:
        """Summarise a block ``[time, channel, lat, lon]`` per channel (NaNs left out)."""
        values = np.moveaxis(np.asarray(block, dtype=np.float64), 1, 0).reshape(block.shape[1], -1)
        finite = np.isfinite(values)
        count = finite.sum(axis=1).astype(np.float64)
        safe = np.where(finite, values, 0.0)
        mean = np.divide(safe.sum(axis=1), count, out=np.zeros_like(count), where=count > 0)
        m2 = np.where(finite, (values - mean[:, None]) ** 2, 0.0).sum(axis=1)
        minimum = np.where(finite, values, np.inf).min(axis=1, initial=np.inf)
        maximum = np.where(finite, values, -np.inf).max(axis=1, initial=-np.inf)
        return cls(count, mean, m2, minimum, maximum)

    def merge(self, other: Moments) -> Moments:
        """The state of both sets of values together (Chan et al. 1979)."""
        count = self.count + other.count
        delta = other.mean - self.mean
        share = np.divide(other.count, count, out=np.zeros_like(count), where=count > 0)
        mean = self.mean + delta * share
        m2 = self.m2 + other.m2 + delta**2 * self.count * share
        return Moments(count, mean, m2, np.minimum(self.minimum, other.minimum),
                       np.maximum(self.maximum, other.maximum))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel (NaN where there are no values)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.m2 / self.count)


def merge_all(states: list[Moments]) -> Moments:
    """Merge states pairwise, as a balanced tree (order does not change the result)."""
    if not states:
        raise StoreSchemaError("no partial statistics to merge: the period selects no blocks")
    while len(states) > 1:
        pairs = [states[i].merge(states[i + 1]) for i in range(0, len(states) - 1, 2)]
        states = pairs + ([states[-1]] if len(states) % 2 else [])
    return states[0]


def lazy_moments(array) -> dask.delayed:
    """A Dask-delayed :class:`Moments` of a Dask array ``[time, channel, lat, lon]``.

    Every block is summarised where it lies, then states merge in a tree of delayed merges.
    """
    states = [dask.delayed(Moments.of_block)(block) for block in array.to_delayed().ravel()]
    while len(states) > 1:
        merged = [dask.delayed(Moments.merge)(states[i], states[i + 1]) for i in range(0, len(states) - 1, 2)]
        states = merged + ([states[-1]] if len(states) % 2 else [])
    return states[0]


def tendency_steps(step_hours: int) -> int:
    """Store steps spanning the tendency interval (at least one step)."""
    if step_hours <= TENDENCY_TARGET_HOURS and TENDENCY_TARGET_HOURS % step_hours == 0:
        return TENDENCY_TARGET_HOURS // step_hours
    return 1


def default_period(times: np.ndarray, leave_out_years: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Statistics period that leaves the last years out, as anemoi-datasets does by default.

    With at least ``leave_out_years + 1`` calendar years the period ends on 31 December of the
    year ``leave_out_years`` before the last; a shorter record keeps its first 80 % of steps.

    Returns
    -------
    start, end : numpy.datetime64
        Inclusive bounds, both times of ``times``.
    """
    times = np.asarray(times)
    if times.size < 2:
        raise StoreSchemaError(f"statistics need at least 2 time steps, found {times.size}")
    years = times.astype("datetime64[Y]").astype(int) + 1970
    last_kept_year = years[-1] - leave_out_years
    if leave_out_years > 0 and last_kept_year >= years[0]:
        kept = times[years <= last_kept_year]
        return times[0], kept[-1]
    return times[0], times[max(1, int(0.8 * times.size)) - 1]


def compute_statistics(data: xr.DataArray, start: np.datetime64, end: np.datetime64, step_hours: int) -> xr.Dataset:
    """Mean, std, minimum, maximum and tendency std per channel over ``start..end``.

    Parameters
    ----------
    data : xarray.DataArray, dims (time, channel, lat, lon)
        Evenly spaced, Dask-backed; one Dask pass computes everything.
    start, end : numpy.datetime64
        Inclusive training period.
    step_hours : int
        Spacing of ``data`` in hours.

    Returns
    -------
    xarray.Dataset
        ``mean, std, minimum, maximum, tendency_std`` of dims (channel,), float32, with attrs
        ``stats_start``, ``stats_end``, ``tendency_hours``.

    Raises
    ------
    StoreSchemaError
        If the period holds fewer than two steps or a channel has a zero or NaN std.
    """
    period = data.sel({TIME: slice(start, end)})
    if period.sizes[TIME] < 2:
        times = data[TIME].values
        raise StoreSchemaError(f"statistics period {start}..{end} selects {period.sizes[TIME]} time steps; "
                               f"the data covers {times[0]}..{times[-1]}")
    lag = min(tendency_steps(step_hours), period.sizes[TIME] - 1)
    array = period.data if hasattr(period.data, "to_delayed") else period.chunk().data
    tendency = array[lag:] - array[:-lag]
    fields, changes = dask.compute(lazy_moments(array), lazy_moments(tendency))
    if np.any(~np.isfinite(fields.std)) or np.any(fields.std <= 0):
        raise StoreSchemaError(f"channel std must be positive and finite, found "
                               f"{dict(zip(period[CHANNEL].values.tolist(), fields.std.tolist()))}")
    values = {MEAN: fields.mean, STD: fields.std, MINIMUM: fields.minimum, MAXIMUM: fields.maximum,
              TENDENCY_STD: changes.std}
    stats = xr.Dataset({name: (CHANNEL, v.astype(np.float32)) for name, v in values.items()},
                       coords={CHANNEL: period[CHANNEL].values})
    stats.attrs = {STATS_START: str(start), STATS_END: str(end), TENDENCY_HOURS: lag * step_hours}
    return stats

