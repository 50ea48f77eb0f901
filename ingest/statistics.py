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

The store build reduces each shard while writing it (:func:`block_partials`: its fields and
the tendency pairs inside it, restricted to the period by a :class:`StatsWindow`); the pairs
that reach back across a block boundary need the ``lag`` steps before the block
(:func:`incoming_span`, :func:`incoming_tendency`). Every value and every pair is counted in
exactly one block, so the merged state does not depend on where the blocks are cut, up to
the rounding of the merge order, and a fixed order gives the same bits every time.
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
    def empty(cls, channels: int) -> Moments:
        """The state of no values (the neutral element of :meth:`merge`)."""
        zeros = np.zeros(channels)
        return cls(zeros, zeros.copy(), zeros.copy(), np.full(channels, np.inf), np.full(channels, -np.inf))

    @classmethod
    def of_block(cls, block: np.ndarray) -> Moments:
        """Summarise a block ``[time, channel, ...]`` per channel (NaNs left out)."""
        block = np.asarray(block)
        return cls.of_channels([block[:, c] for c in range(block.shape[1])])

    @classmethod
    def of_channels(cls, channels: list[np.ndarray]) -> Moments:
        """Summarise each array of ``channels`` (any shape, one state entry each; NaNs left out)."""
        return cls.of_rows([_channel_moments(np.asarray(values)) for values in channels])

    @classmethod
    def of_rows(cls, rows: list[tuple[float, float, float, float, float]]) -> Moments:
        """From one ``(count, mean, m2, minimum, maximum)`` tuple per channel."""
        return cls(*(np.array(column, dtype=np.float64) for column in zip(*rows, strict=True)))

    def merge(self, other: Moments) -> Moments:
        """The state of both sets of values together (Chan et al. 1979)."""
        count = self.count + other.count
        delta = other.mean - self.mean
        share = np.divide(other.count, count, out=np.zeros_like(count), where=count > 0)
        mean = self.mean + delta * share
        m2 = self.m2 + other.m2 + delta**2 * self.count * share
        return Moments(
            count, mean, m2, np.minimum(self.minimum, other.minimum), np.maximum(self.maximum, other.maximum)
        )

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel (NaN where there are no values)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.m2 / self.count)

    def to_rows(self) -> list[list[float]]:
        """``[count, mean, m2, minimum, maximum]``, each a list over channels (exact as JSON floats)."""
        return [column.tolist() for column in (self.count, self.mean, self.m2, self.minimum, self.maximum)]

    @classmethod
    def from_rows(cls, rows: list[list[float]]) -> Moments:
        """Inverse of :meth:`to_rows`."""
        return cls(*(np.array(row, dtype=np.float64) for row in rows))


def _channel_moments(values: np.ndarray) -> tuple[float, float, float, float, float]:
    """``count, mean, m2, min, max`` of the finite entries of an array (any shape).

    Sums are accumulated in float64 (numpy's pairwise summation). float32 values are centred
    in float32, on the mean rounded to float32, and the offset is taken out exactly
    afterwards (``sum (x - c)^2 = m2 + n (c - mean)^2``), which costs no more than the
    rounding of each squared deviation (relative 6e-8) and halves the memory traffic. A NaN
    or infinity makes the plain sum non-finite, so finite data (the usual case) is summarised
    without building masks.
    """
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    total = values.sum(dtype=np.float64)
    if not np.isfinite(total):
        values = values[np.isfinite(values)]
        total = values.sum(dtype=np.float64)
    if values.size == 0:
        return 0.0, 0.0, 0.0, np.inf, -np.inf
    mean = total / values.size
    centre = values.dtype.type(mean)
    squares = np.square(values - centre)
    m2 = max(float(squares.sum(dtype=np.float64)) - values.size * (float(centre) - mean) ** 2, 0.0)
    return float(values.size), float(mean), m2, float(values.min()), float(values.max())


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

    :func:`choose_default_period` without the reason.

    Returns
    -------
    start, end : numpy.datetime64
        Inclusive bounds, both times of ``times``.
    """
    start, end, _ = choose_default_period(times, leave_out_years)
    return start, end


def choose_default_period(
    times: np.ndarray, leave_out_years: int = 3
) -> tuple[np.datetime64, np.datetime64, str]:
    """The default statistics period of ``times``, and why it is that one.

    * With at least ``leave_out_years + 1`` calendar years, the period ends on 31 December of
      the year ``leave_out_years`` before the last (anemoi-datasets' default), if that keeps
      at least the two steps statistics need.
    * ``leave_out_years == 0`` takes all the data.
    * Otherwise there are no years to leave out: the record keeps its first 80 % of steps, or
      all of them where 80 % would be fewer than two steps (two daily files).

    Parameters
    ----------
    times : numpy.ndarray of datetime64
        Sorted times of the data.
    leave_out_years : int
        Calendar years at the end kept out of the statistics.

    Returns
    -------
    start, end : numpy.datetime64
        Inclusive bounds, both times of ``times``, at least two steps apart.
    reason : str
        The rule that chose them, to record beside the statistics.

    Raises
    ------
    StoreSchemaError
        If ``times`` holds fewer than two steps.
    """
    times = np.asarray(times)
    if times.size < 2:
        raise StoreSchemaError(f"statistics need at least 2 time steps, found {times.size}")
    years = times.astype("datetime64[Y]").astype(int) + 1970
    last_kept_year = years[-1] - leave_out_years
    if leave_out_years == 0:
        return times[0], times[-1], "all the data (no years left out)"
    kept = times[years <= last_kept_year]
    if kept.size >= 2:
        return times[0], kept[-1], f"all but the last {leave_out_years} calendar years"
    spans = (
        f"the data spans {years[-1] - years[0] + 1} calendar year(s), too few to leave out the last "
        f"{leave_out_years} and keep 2 steps"
    )
    kept_steps = int(0.8 * times.size)
    if kept_steps < 2:
        return (
            times[0],
            times[-1],
            f"all {times.size} steps: {spans}, and 80 % of them is under the 2 steps needed",
        )
    return times[0], times[kept_steps - 1], f"the first 80 % of the steps: {spans}"


@dataclass(frozen=True)
class StatsWindow:
    """The steps of an evenly spaced series that the statistics take, by index.

    Attributes
    ----------
    first, stop : int
        Steps ``first .. stop - 1`` lie in the training period.
    lag : int
        Steps between the two fields of a tendency; the pairs are ``(j - lag, j)`` with both
        steps in the period.
    """

    first: int
    stop: int
    lag: int

    @classmethod
    def of(cls, times: np.ndarray, start: np.datetime64, end: np.datetime64, step_hours: int) -> StatsWindow:
        """The window of the inclusive period ``start..end`` in ``times`` (at least two steps)."""
        times = np.asarray(times)
        inside = np.flatnonzero((times >= start) & (times <= end))
        if inside.size < 2:
            raise StoreSchemaError(
                f"statistics period {start}..{end} selects {inside.size} time steps; "
                f"the data covers {times[0]}..{times[-1]}"
            )
        return cls(int(inside[0]), int(inside[-1]) + 1, min(tendency_steps(step_hours), int(inside.size) - 1))

    def as_list(self) -> list[int]:
        """``[first, stop, lag]``, as recorded beside partial states taken over this window."""
        return [self.first, self.stop, self.lag]


@dataclass(frozen=True)
class Partials:
    """Mergeable statistics of one block of steps: its fields and the tendencies ending in it."""

    fields: Moments
    tendency: Moments

    def with_incoming(self, incoming: Moments) -> Partials:
        """These partials with the tendencies reaching back into the previous block merged in."""
        return Partials(self.fields, incoming.merge(self.tendency))

    def to_json(self) -> dict:
        """JSON-ready rows (:meth:`Moments.to_rows`); floats survive the round trip bit for bit."""
        return {"fields": self.fields.to_rows(), "tendency": self.tendency.to_rows()}

    @classmethod
    def from_json(cls, record: dict) -> Partials:
        """Inverse of :meth:`to_json`."""
        return cls(Moments.from_rows(record["fields"]), Moments.from_rows(record["tendency"]))


def block_partials(block: np.ndarray, offset: int, window: StatsWindow) -> Partials:
    """Fields and tendencies of one block of steps, restricted to the window.

    Parameters
    ----------
    block : numpy.ndarray, shape (time, channel, ...)
        Steps ``offset .. offset + time - 1`` of the series.
    offset : int
        Index of the block's first step.
    window : StatsWindow

    Returns
    -------
    Partials
        ``fields`` of the block's steps in the window; ``tendency`` of the pairs
        ``(j - lag, j)`` with both steps in the block and in the window (pairs that reach
        back into the previous block are :func:`incoming_tendency`). Differences are taken in
        the block's precision: for float32 they are exact wherever the two values lie within a
        factor 2 of each other (Sterbenz), and within float32 rounding elsewhere.
    """
    block = np.asarray(block)
    a, b = max(window.first - offset, 0), max(min(window.stop - offset, block.shape[0]), 0)
    c = max(window.first + window.lag - offset, window.lag)  # first later step of a pair inside the block
    fields, tendency = [], []
    for channel in range(block.shape[1]):
        values = np.ascontiguousarray(block[:, channel])
        fields.append(_channel_moments(values[a:b]))
        changes = values[c:b] - values[c - window.lag : b - window.lag] if b > c else values[:0]
        tendency.append(_channel_moments(changes))
    return Partials(Moments.of_rows(fields), Moments.of_rows(tendency))


def incoming_span(offset: int, size: int, window: StatsWindow) -> tuple[int, int] | None:
    """Steps ``(lo, hi)`` to read for the tendencies ending in a block but starting before it.

    The block holds steps ``offset .. offset + size - 1``; ``None`` when no such pair lies in
    the window.
    """
    later_lo = max(offset, window.first + window.lag)
    later_hi = min(offset + window.lag, offset + size, window.stop)
    if later_hi <= later_lo:
        return None
    return later_lo - window.lag, later_hi


def incoming_tendency(span: np.ndarray, lo: int, offset: int, window: StatsWindow) -> Moments:
    """Tendencies ``x(j) - x(j - lag)`` with ``j`` in the block at ``offset`` and ``j - lag`` before it.

    ``span`` holds steps ``lo .. hi - 1`` as given by :func:`incoming_span`.
    """
    span = np.asarray(span)
    hi = lo + span.shape[0]
    later = np.arange(max(offset, lo + window.lag), hi)
    return Moments.of_block(span[later - lo] - span[later - window.lag - lo])


def merge_partials(partials: list[Partials]) -> Partials:
    """Merge in a balanced tree, in list order (the same list always gives the same bits)."""
    if not partials:
        raise StoreSchemaError("no partial statistics to merge: the period selects no blocks")
    fields = merge_all([p.fields for p in partials])
    return Partials(fields, merge_all([p.tendency for p in partials]))


def statistics_dataset(
    total: Partials,
    channels: np.ndarray,
    start: np.datetime64,
    end: np.datetime64,
    window: StatsWindow,
    step_hours: int,
) -> xr.Dataset:
    """The statistics variables and attributes of the store, from merged partial states.

    Returns
    -------
    xarray.Dataset
        ``mean, std, minimum, maximum, tendency_std`` of dims (channel,), float32, with attrs
        ``stats_start``, ``stats_end``, ``tendency_hours``.

    Raises
    ------
    StoreSchemaError
        If a channel has a zero or NaN std.
    """
    fields, changes = total.fields, total.tendency
    if np.any(~np.isfinite(fields.std)) or np.any(fields.std <= 0):
        raise StoreSchemaError(
            f"channel std must be positive and finite, found "
            f"{dict(zip(np.asarray(channels).tolist(), fields.std.tolist(), strict=True))}"
        )
    values = {
        MEAN: fields.mean,
        STD: fields.std,
        MINIMUM: fields.minimum,
        MAXIMUM: fields.maximum,
        TENDENCY_STD: changes.std,
    }
    stats = xr.Dataset(
        {name: (CHANNEL, v.astype(np.float32)) for name, v in values.items()},
        coords={CHANNEL: np.asarray(channels)},
    )
    stats.attrs = {STATS_START: str(start), STATS_END: str(end), TENDENCY_HOURS: window.lag * step_hours}
    return stats


def compute_statistics(
    data: xr.DataArray, start: np.datetime64, end: np.datetime64, step_hours: int
) -> xr.Dataset:
    """Mean, std, minimum, maximum and tendency std per channel over ``start..end``.

    The same per-block partial states as the store build (:func:`block_partials`,
    :func:`incoming_tendency`), one per Dask block, merged once.

    Parameters
    ----------
    data : xarray.DataArray, dims (time, channel, lat, lon)
        Evenly spaced, Dask-backed or in memory; one Dask pass computes everything.
    start, end : numpy.datetime64
        Inclusive training period.
    step_hours : int
        Spacing of ``data`` in hours.

    Returns
    -------
    xarray.Dataset
        As :func:`statistics_dataset`.

    Raises
    ------
    StoreSchemaError
        If the period holds fewer than two steps or a channel has a zero or NaN std.
    """
    window = StatsWindow.of(data[TIME].values, start, end, step_hours)
    array = data.data if hasattr(data.data, "to_delayed") else data.chunk().data
    offsets = np.r_[0, np.cumsum(array.chunks[0])[:-1]]
    parts = []
    for block, offset, size in zip(array.to_delayed().ravel(), offsets, array.chunks[0], strict=True):
        part = dask.delayed(block_partials)(block, int(offset), window)
        span = incoming_span(int(offset), size, window)
        if span is not None:
            incoming = dask.delayed(incoming_tendency)(array[span[0] : span[1]], span[0], int(offset), window)
            part = dask.delayed(Partials.with_incoming)(part, incoming)
        parts.append(part)
    (partials,) = dask.compute(parts)
    return statistics_dataset(merge_partials(partials), data[CHANNEL].values, start, end, window, step_hours)
