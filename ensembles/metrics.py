r"""Verification metrics, one implementation: statistic units that merge, and finalisers.

A score is computed in three steps (the design of WeatherBench-X), whoever asks for it — the
scorecard of an archive chunk by chunk (:mod:`ensembles.scorecard`), streaming scoring while the
runner produces members (:mod:`ensembles.streaming`), calibration (:mod:`ensembles.calibration`),
training's validation (through :mod:`pipeline`) and the benchmarks:

1. :func:`forecast_statistics` computes *statistics* of one forecast (one init and lead time):
   each an area-weighted mean over a region, e.g. ``se = <(x̄ − y)²>``. Each statistic is a
   small unit (:class:`Statistic`, registered in :data:`STATISTICS`) that declares what it
   reads and the ensemble size it needs; all regions come at once from one weight matrix
   (:func:`ensembles.regions.weight_matrix`), in numpy, float64.
2. :class:`StatisticSums` adds the statistics up over forecasts. The sums of disjoint sets of
   forecasts (Dask chunks, ranks, a stream of members) merge exactly: ``a + b``.
3. :func:`finalise` turns the means over forecasts into a score (:data:`FINALISERS`: each
   declares the statistics it reads), e.g. ``rmse = sqrt(mean_t <(x̄ − y)²>)``: the root is
   taken after the mean over init times, as WeatherBench 2 does.

Independent reference implementations over labelled fields live with the tests
(``tests/ensembles/reference_metrics.py``), which compare these units against them.

Weights: :func:`area_weights` of the latitude rows (mean 1) and :func:`resolve_weights`, the
forms a region's weights may be given in (:meth:`ensembles.regions.Region.weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import xarray as xr

from ensembles.errors import MissingStatisticsError, ScoringError
from ingest.dims import LAT, LON
from ingest.grid import cell_area_weights

Weights = xr.DataArray | np.ndarray | None
#: Name of the bin dimension of rank histograms.
RANK = "rank"


def area_weights(lat: xr.DataArray | np.ndarray) -> xr.DataArray:
    """Cell-area weights of each latitude row, mean 1, labelled by ``lat`` (degrees)."""
    lat = np.asarray(lat, dtype=np.float64)
    return xr.DataArray(cell_area_weights(lat), dims=LAT, coords={LAT: lat}, name="area_weight")


def resolve_weights(weights: Weights, lat: xr.DataArray) -> xr.DataArray:
    """Weights in any accepted form as a DataArray over ``lat`` or ``(lat, lon)``.

    Parameters
    ----------
    weights : None, xarray.DataArray or numpy.ndarray
        ``None`` for the area weights of ``lat``; a DataArray whose dims are ``(lat,)`` or
        ``(lat, lon)`` (returned as is); a numpy array of shape (lat,) in ``lat``'s order.
    lat : xarray.DataArray, shape (lat,)
        Latitude coordinate of the field to weight, degrees.

    Raises
    ------
    ScoringError
        If a DataArray has other dims, or a numpy array has another shape.
    """
    if weights is None:
        return area_weights(lat)
    if isinstance(weights, xr.DataArray):
        if LAT not in weights.dims or not set(weights.dims) <= {LAT, LON}:
            raise ScoringError(f"expected weights with dims ({LAT},) or ({LAT}, {LON}), found {weights.dims}")
        return weights
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (lat.size,):
        raise ScoringError(f"expected weights of shape ({LAT},) = ({lat.size},), found {weights.shape}")
    return xr.DataArray(weights, dims=LAT, coords={LAT: np.asarray(lat)})


# --------------------------------------------------------------------------------------------
# Statistic units: each an area-weighted mean over one region of one forecast (one init time,
# one lead time). The statistics of disjoint sets of forecasts add up exactly: keep their sums
# and counts (:class:`StatisticSums`), add, divide, finalise.
# --------------------------------------------------------------------------------------------


class Forecast:
    r"""One forecast and its truth, with the intermediate fields statistics share, each computed once.

    ``x`` (member, point) are the members, ``y`` the truth and ``c`` the climatology at the
    valid time (point,), ``w`` the region weights (region, point), all float64; ``n`` the number
    of members. Statistic units read these attributes; the derived ones (``mean``, ``error``,
    ``variance``, …) are computed on first use.
    """

    def __init__(
        self, members: np.ndarray, truth: np.ndarray, climatology: np.ndarray, region_weights: np.ndarray
    ) -> None:
        self.x = np.asarray(members, dtype=np.float64)
        self.y = np.asarray(truth, dtype=np.float64)
        self.c = np.asarray(climatology, dtype=np.float64)
        self.w = np.asarray(region_weights, dtype=np.float64)
        self.n = self.x.shape[0]

    @cached_property
    def mean(self) -> np.ndarray:
        """The members' mean ``x̄`` (point,)."""
        return self.x.mean(0)

    @cached_property
    def error(self) -> np.ndarray:
        """``x̄ − y`` (point,)."""
        return self.mean - self.y

    @cached_property
    def variance(self) -> np.ndarray:
        """The members' unbiased variance ``s²`` (point,); needs M ≥ 2."""
        return self.x.var(0, ddof=1)

    @cached_property
    def abs_skill(self) -> np.ndarray:
        """``(1/M) Σ_i |x_i − y|`` (point,)."""
        return np.abs(self.x - self.y).mean(0)

    @cached_property
    def pair_sum(self) -> np.ndarray:
        """``Σ_ij |x_i − x_j|`` (point,), from the sorted members: ``2 Σ_k (2k − M − 1) x_(k)``."""
        rank_weight = 2.0 * np.arange(1, self.n + 1) - self.n - 1
        return 2.0 * np.tensordot(rank_weight, np.sort(self.x, axis=0), axes=1)

    @cached_property
    def probability(self) -> np.ndarray:
        """Fraction ``p`` of the members above the climatology (point,)."""
        return (self.x > self.c).mean(0)

    @cached_property
    def outcome(self) -> np.ndarray:
        """``o = 1[y > c]`` (point,)."""
        return (self.y > self.c).astype(np.float64)

    @cached_property
    def norm_skill(self) -> np.ndarray:
        """``(1/M) Σ_i ‖x_i − y‖`` in each region's weighted RMS norm (region,)."""
        return np.sqrt(_weighted_sums((self.x - self.y) ** 2, self.w)).mean(0)

    @cached_property
    def pair_norm_sum(self) -> np.ndarray:
        """``Σ_ij ‖x_i − x_j‖`` per region (region,), in its weighted RMS norm, via a Gram matrix."""
        anomalies = self.x - self.mean
        # (region, member, member)
        gram = np.stack([(anomalies * weights) @ anomalies.T for weights in self.w])
        squared = np.diagonal(gram, axis1=1, axis2=2)  # (region, member)
        d2 = squared[:, :, None] + squared[:, None, :] - 2.0 * gram
        off_diagonal = ~np.eye(self.n, dtype=bool)
        return np.sqrt(np.where(off_diagonal, np.maximum(d2, 0.0), 0.0)).sum((-2, -1))

    def region_means(self, fields: Sequence[np.ndarray]) -> np.ndarray:
        """Weighted means over each region of ``fields`` (each (point,)): shape (field, region)."""
        return _weighted_sums(np.stack(list(fields)), self.w)


def _weighted_sums(fields: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``Σ_p fields[..., p] · weights[r, p]``: shape (..., region).

    Written as an einsum, not a matrix product: a BLAS ``gemv``/``dot`` of one grid's length
    spins up BLAS threads, which on a busy machine made one region mean 100× slower (16 ms
    against 0.07 ms for 91×180 points); a weighted sum has nothing to gain from them.
    """
    return np.einsum("...p,rp->...r", fields, weights)


@dataclass(frozen=True)
class Statistic:
    """A statistic unit: what it is, what it needs, and how to compute it for one :class:`Forecast`.

    Attributes
    ----------
    description : str
        The formula, ``<·>`` the weighted mean over a region.
    pointwise : callable, optional
        ``pointwise(forecast) -> (point,)``: the value at every point, of which the statistic
        is the weighted mean over each region (all pointwise statistics of a forecast are
        averaged in one matrix product).
    regional : callable, optional
        ``regional(forecast) -> (region,)`` (or ``(rank, region)``): for a statistic that is not
        the mean of a pointwise value (a correlation, a norm over the region). Exactly one of
        ``pointwise`` and ``regional`` is given.
    min_members : int
        The ensemble size it needs: 2 for the statistics of a spread.
    """

    description: str
    pointwise: Callable[[Forecast], np.ndarray] | None = None
    regional: Callable[[Forecast], np.ndarray] | None = None
    min_members: int = 1

    def __post_init__(self) -> None:
        if (self.pointwise is None) == (self.regional is None):
            raise ScoringError(f"statistic {self.description!r}: give exactly one of pointwise and regional")


def _acc(f: Forecast) -> np.ndarray:
    """``<x̄'y'> / sqrt(<x̄'²><y'²>)`` per region, anomalies from ``c``; 0 where an anomaly is identically
    0."""
    f_anom, y_anom = f.mean - f.c, f.y - f.c
    covariance, f_norm, y_norm = f.region_means([f_anom * y_anom, f_anom**2, y_anom**2])
    norm = np.sqrt(f_norm * y_norm)
    return np.divide(covariance, norm, out=np.zeros_like(norm), where=norm > 0)


def _rank_frequencies(f: Forecast) -> np.ndarray:
    """Indicator of the truth's rank among the members, (rank, point), ties shared evenly.

    With ``b`` members below ``y`` and ``t`` equal to it, ranks ``b … b + t`` get ``1/(t+1)``
    each: the expectation of breaking the tie at random, so the result needs no generator.
    """
    below = (f.x < f.y).sum(0)
    ties = (f.x == f.y).sum(0)
    ranks = np.arange(f.n + 1)[:, None]
    inside = (ranks >= below) & (ranks <= below + ties)
    return inside / (ties + 1.0)


#: The statistic units by name. ``x̄`` is the members' mean, ``s²`` their variance (ddof 1),
#: ``y`` the truth, ``c`` the climatology at the valid time, ``p`` the fraction of members above
#: ``c``, ``o = 1[y > c]``, ``‖·‖`` the weighted RMS norm over the region.
STATISTICS = {
    "se": Statistic("<(x̄ - y)²>", pointwise=lambda f: f.error**2),
    "ae": Statistic("<|x̄ - y|>", pointwise=lambda f: np.abs(f.error)),
    "error": Statistic("<x̄ - y>", pointwise=lambda f: f.error),
    "acc": Statistic(
        "<x̄'y'> / sqrt(<x̄'²><y'²>), anomalies from c; 0 where an anomaly is identically 0", regional=_acc
    ),
    "crps_plain": Statistic(
        "<(1/M) Σ|x_i - y| - Σ|x_i - x_j| / 2M²>, the CRPS of the members' distribution",
        pointwise=lambda f: f.abs_skill - f.pair_sum / (2 * f.n * f.n),
    ),
    "energy_plain": Statistic(
        "(1/M) Σ‖x_i - y‖ - Σ‖x_i - x_j‖ / 2M²",
        regional=lambda f: f.norm_skill - f.pair_norm_sum / (2 * f.n * f.n),
    ),
    "brier": Statistic(
        "<(p - o)²>, the event 'above climatology'", pointwise=lambda f: (f.probability - f.outcome) ** 2
    ),
    "variance": Statistic("<s²>", pointwise=lambda f: f.variance, min_members=2),
    "debiased_se": Statistic(
        "<(x̄ - y)² - s²/M>", pointwise=lambda f: f.error**2 - f.variance / f.n, min_members=2
    ),
    "crps_fair": Statistic(
        "<(1/M) Σ|x_i - y| - Σ|x_i - x_j| / 2M(M-1)>",
        pointwise=lambda f: f.abs_skill - f.pair_sum / (2 * f.n * (f.n - 1)),
        min_members=2,
    ),
    "energy_fair": Statistic(
        "(1/M) Σ‖x_i - y‖ - Σ‖x_i - x_j‖ / 2M(M-1)",
        regional=lambda f: f.norm_skill - f.pair_norm_sum / (2 * f.n * (f.n - 1)),
        min_members=2,
    ),
    "brier_fair": Statistic(
        "<(p - o)² - p(1 - p)/(M - 1)>",
        pointwise=lambda f: (
            (f.probability - f.outcome) ** 2 - f.probability * (1 - f.probability) / (f.n - 1)
        ),
        min_members=2,
    ),
    "rank": Statistic(
        "<frequency of each rank of y among the members>, M + 1 bins, ties split evenly",
        regional=lambda f: _weighted_sums(_rank_frequencies(f), f.w),
        min_members=2,
    ),
}
#: The statistics that need an ensemble (M ≥ 2): the metrics that read them are NaN for a single member.
ENSEMBLE_STATISTICS = frozenset(name for name, unit in STATISTICS.items() if unit.min_members >= 2)


def forecast_statistics(
    members: np.ndarray,
    truth: np.ndarray,
    climatology: np.ndarray,
    region_weights: np.ndarray,
    names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Statistics (:data:`STATISTICS`) of one forecast, in every region at once.

    Parameters
    ----------
    members : numpy.ndarray, shape (member, point)
        The forecast at every grid point (lat·lon flattened), any float dtype; a deterministic
        forecast is one member. Computed in float64.
    truth, climatology : numpy.ndarray, shape (point,)
        The verifying analysis and the climatology at the forecast's valid time.
    region_weights : numpy.ndarray, shape (region, point)
        Non-negative weights, each row summing to 1 (:func:`ensembles.regions.weight_matrix`).
    names : sequence of str, optional
        The statistics to compute (default all); those needing more members than given are
        left out.

    Returns
    -------
    dict of str to numpy.ndarray
        Shape (region,) per statistic, ``rank`` (member + 1, region), in :data:`STATISTICS`
        order; the ensemble-only statistics only when ``member ≥ 2``. Inputs must be free of
        NaN (the caller's policy).

    Raises
    ------
    ScoringError
        If ``names`` holds an unknown statistic.
    """
    unknown = sorted(set(names or ()) - set(STATISTICS))
    if unknown:
        raise ScoringError(f"unknown statistics {unknown}; expected some of {list(STATISTICS)}")
    forecast = Forecast(members, truth, climatology, region_weights)
    chosen = [
        k
        for k, unit in STATISTICS.items()
        if (names is None or k in names) and forecast.n >= unit.min_members
    ]
    pointwise = [k for k in chosen if STATISTICS[k].pointwise is not None]
    means = {}
    if pointwise:
        fields = [STATISTICS[k].pointwise(forecast) for k in pointwise]  # type: ignore[misc]
        means = dict(zip(pointwise, forecast.region_means(fields), strict=True))
    return {
        k: means[k] if k in means else STATISTICS[k].regional(forecast)  # type: ignore[misc]
        for k in chosen
    }


class StatisticSums:
    """Sums of statistics over forecasts and how many forecasts went in: a mergeable partial result.

    ``a + b`` is the partial result of the union of the forecasts of ``a`` and ``b`` (disjoint),
    so chunks, ranks and streams are reduced in any order; :meth:`means` divides by the count.

    Parameters
    ----------
    totals : dict of str to numpy.ndarray
        Sum over forecasts of each statistic, as :func:`forecast_statistics` returns them.
    count : int
        Number of forecasts summed.
    n_members : int
        Ensemble size of those forecasts (the finalisers need it); sums of different sizes
        do not add.
    """

    def __init__(self, totals: dict[str, np.ndarray], count: int, n_members: int) -> None:
        self.totals = totals
        self.count = int(count)
        self.n_members = int(n_members)

    @classmethod
    def of(cls, statistics: dict[str, np.ndarray], n_members: int) -> StatisticSums:
        """The partial result of one forecast."""
        return cls({k: np.asarray(v, dtype=np.float64) for k, v in statistics.items()}, 1, n_members)

    def __add__(self, other: StatisticSums) -> StatisticSums:
        if self.n_members != other.n_members or self.totals.keys() != other.totals.keys():
            raise ScoringError(
                f"cannot merge statistics of {self.n_members}-member forecasts {sorted(self.totals)} "
                f"with those of {other.n_members}-member forecasts {sorted(other.totals)}"
            )
        totals = {k: self.totals[k] + other.totals[k] for k in self.totals}
        return StatisticSums(totals, self.count + other.count, self.n_members)

    def means(self) -> dict[str, np.ndarray]:
        """Each statistic's mean over the forecasts summed."""
        if not self.count:
            raise ScoringError("no forecast was summed: there is no mean to finalise")
        return {k: v / self.count for k, v in self.totals.items()}


def statistic_sums(
    members: np.ndarray,
    truth: np.ndarray,
    climatology: np.ndarray,
    region_weights: np.ndarray,
    names: Sequence[str] | None = None,
) -> StatisticSums:
    """The statistics of a series of forecasts, summed: :func:`forecast_statistics` of each, merged.

    Parameters
    ----------
    members : numpy.ndarray, shape (forecast, member, point)
    truth, climatology : numpy.ndarray, shape (forecast, point)
        The climatology may also be one field (point,) for every forecast.
    region_weights, names
        As for :func:`forecast_statistics`.

    Raises
    ------
    ScoringError
        If there is no forecast, or ``names`` holds an unknown statistic.
    """
    members = np.asarray(members)
    climatology = np.broadcast_to(climatology, np.shape(truth))
    if not members.shape[0]:
        raise ScoringError("expected at least one forecast to sum statistics over, found none")
    n = members.shape[1]
    parts = (
        forecast_statistics(members[i], truth[i], climatology[i], region_weights, names)
        for i in range(members.shape[0])
    )
    total = StatisticSums.of(next(parts), n)
    for statistics in parts:
        total = total + StatisticSums.of(statistics, n)
    return total


@dataclass(frozen=True)
class Finaliser:
    """How one metric follows from the means of statistics over forecasts.

    Attributes
    ----------
    needs : tuple of str
        The statistics (:data:`STATISTICS`) ``function`` reads for an ensemble (M ≥ 2).
    function : callable
        ``function(means, n_members) -> numpy.ndarray`` of shape (region,); ``means`` holds
        exactly the statistics of :meth:`needed`, each of shape (region,) (``rank``:
        (member + 1, region)), so reading an undeclared one fails at once.
    one_member_needs : tuple of str, optional
        What it reads for a single member, where that differs (the plain estimators in
        place of the fair ones); ``needs`` by default.
    """

    needs: tuple[str, ...]
    function: Callable[[Mapping[str, np.ndarray], int], np.ndarray]
    one_member_needs: tuple[str, ...] | None = None

    def needed(self, n_members: int) -> tuple[str, ...]:
        """The statistics read for ``n_members``-member forecasts."""
        return self.needs if n_members >= 2 or self.one_member_needs is None else self.one_member_needs


def _fair_or_plain(fair: str, plain: str) -> Finaliser:
    """The statistic ``fair`` for an ensemble, ``plain`` for a single member."""
    return Finaliser((fair,), lambda m, n: m[fair if n >= 2 else plain], one_member_needs=(plain,))


def reliability_index(frequencies: np.ndarray) -> np.ndarray:
    """Flatness of rank histograms: ``Σ_i |f_i − 1/(M+1)|`` (Delle Monache et al. 2006), 0 when flat.

    Parameters
    ----------
    frequencies : numpy.ndarray, shape (rank, ...)
        Rank frequencies summing to 1 over the ``M + 1`` ranks.

    Returns
    -------
    numpy.ndarray, shape (...)
        0 for a flat histogram, ``2 M/(M+1)`` at most (every truth in one bin).
    """
    frequencies = np.asarray(frequencies, dtype=np.float64)
    return np.abs(frequencies - 1.0 / frequencies.shape[0]).sum(axis=0)


def _ssr(m: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((n + 1) / n) * np.sqrt(m["variance"]) / np.sqrt(m["se"])


#: Finalisers: metric name → :class:`Finaliser`. The CRPS, energy and Brier scores use the fair
#: estimators for ensembles (M ≥ 2) and the plain ones for a single member, where the CRPS is
#: the MAE; the ``_plain`` variants are always plain.
FINALISERS = {
    "rmse": Finaliser(("se",), lambda m, n: np.sqrt(m["se"])),
    "mse": Finaliser(("se",), lambda m, n: m["se"]),
    "mae": Finaliser(("ae",), lambda m, n: m["ae"]),
    "bias": Finaliser(("error",), lambda m, n: m["error"]),
    "acc": Finaliser(("acc",), lambda m, n: m["acc"]),
    "crps": _fair_or_plain("crps_fair", "crps_plain"),
    "crps_plain": Finaliser(("crps_plain",), lambda m, n: m["crps_plain"]),
    "energy_score": _fair_or_plain("energy_fair", "energy_plain"),
    "brier": _fair_or_plain("brier_fair", "brier"),
    "spread": Finaliser(("variance",), lambda m, n: np.sqrt(m["variance"])),
    "ssr": Finaliser(("variance", "se"), _ssr),
    "debiased_rmse": Finaliser(("debiased_se",), lambda m, n: np.sqrt(np.maximum(m["debiased_se"], 0.0))),
    "reliability": Finaliser(("rank",), lambda m, n: reliability_index(m["rank"])),
}
#: Metrics of the scorecard, in display order.
METRICS = tuple(FINALISERS)


def needed_statistics(metrics: Sequence[str], n_members: int) -> tuple[str, ...]:
    """The statistics the ``metrics`` (:data:`FINALISERS`) read for ``n_members``-member forecasts.

    Raises
    ------
    ScoringError
        If a metric is unknown.
    """
    unknown = [m for m in metrics if m not in FINALISERS]
    if unknown:
        raise ScoringError(f"unknown metrics {unknown}; expected some of {list(FINALISERS)}")
    return tuple(dict.fromkeys(k for m in metrics for k in FINALISERS[m].needed(n_members)))


def finalise(sums: StatisticSums, metric: str) -> np.ndarray:
    """The score ``metric`` (:data:`FINALISERS`) from merged statistics; shape (region,).

    NaN where the metric reads statistics of an ensemble (:data:`ENSEMBLE_STATISTICS`: spread,
    SSR, …) and ``sums`` are of one member.

    Raises
    ------
    ScoringError
        If ``metric`` is unknown or nothing was summed.
    MissingStatisticsError
        If ``sums`` lack a statistic the metric reads (other than an ensemble statistic of a
        single member); the message names the missing and the present ones.
    """
    if metric not in FINALISERS:
        raise ScoringError(f"unknown metric {metric!r}; expected one of {list(FINALISERS)}")
    finaliser = FINALISERS[metric]
    needed = finaliser.needed(sums.n_members)
    means = sums.means()
    missing = [k for k in needed if k not in means]
    if missing and means and sums.n_members < 2 and ENSEMBLE_STATISTICS.issuperset(missing):
        return np.full(next(iter(means.values())).shape[-1:], np.nan)  # every statistic ends in (region,)
    if missing:
        raise MissingStatisticsError(
            f"metric {metric!r} of {sums.n_members}-member forecasts reads statistics {list(needed)}; "
            f"missing {missing}, found {sorted(means)}"
        )
    return finaliser.function({k: means[k] for k in needed}, sums.n_members)


class FieldScores:
    """Scores of deterministic forecasts on a grid by the statistic units, shaped for a loop that sums them.

    For a caller that keeps its own sums (e.g. training's validation, summed over samples and
    ranks): :meth:`__call__` gives each forecast's statistics, the caller adds them up and
    divides by the count (the merge of :class:`StatisticSums`), and :meth:`finalise` turns those
    means into the metrics, by the finalisers of the scorecard.

    Parameters
    ----------
    metrics : sequence of str
        Metrics of :data:`FINALISERS` to finalise.
    weights : numpy.ndarray, shape (lat·lon,)
        One region's weights over the flattened grid, summing to 1: a row of
        :func:`ensembles.regions.weight_matrix` (e.g. of ``GLOBAL``).

    Attributes
    ----------
    metrics : tuple of str
    statistics : tuple of str
        The statistics the metrics read for a single member, in the order of the last axis of
        :meth:`__call__`'s result.
    """

    def __init__(self, metrics: Sequence[str], weights: np.ndarray) -> None:
        self.metrics = tuple(metrics)
        self.statistics = needed_statistics(self.metrics, n_members=1)
        self.weights = np.asarray(weights, dtype=np.float64)[None]

    def __call__(self, forecast: np.ndarray, truth: np.ndarray, climatology: np.ndarray) -> np.ndarray:
        """Statistics of each forecast.

        Parameters
        ----------
        forecast, truth, climatology : numpy.ndarray, shape (..., lat, lon)
            Forecasts, the truth and the climatology at their valid times, broadcastable to one
            shape; any leading dims (e.g. sample, lead, channel), each a forecast; lat·lon in the
            order of ``weights``.

        Returns
        -------
        numpy.ndarray, shape (..., statistic), float64
        """
        forecast, truth, climatology = np.broadcast_arrays(forecast, truth, climatology)
        leading, n_points = forecast.shape[:-2], forecast.shape[-2] * forecast.shape[-1]
        flat = [a.reshape(-1, n_points) for a in (forecast, truth, climatology)]
        out = np.empty((flat[0].shape[0], len(self.statistics)))
        for i, (f, y, c) in enumerate(zip(*flat, strict=True)):
            statistics = forecast_statistics(f[None], y, c, self.weights, self.statistics)
            out[i] = [statistics[k][0] for k in self.statistics]
        return out.reshape(*leading, len(self.statistics))

    def finalise(self, means: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric (...) from the means over forecasts of the statistics, ``means`` (..., statistic)."""
        sums = StatisticSums({k: means[..., i] for i, k in enumerate(self.statistics)}, 1, 1)
        return {metric: finalise(sums, metric) for metric in self.metrics}


def rank_histogram_frequencies(sums: StatisticSums) -> np.ndarray | None:
    """Mean rank frequencies (rank, region), summing to 1 per region; ``None`` for one member."""
    return sums.means()["rank"] if "rank" in sums.totals else None
