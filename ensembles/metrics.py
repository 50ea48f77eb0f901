r"""Verification metrics over labelled fields, as WeatherBench 2 defines them.

Every function takes :class:`xarray.DataArray` fields for one variable, with dims ``lat``,
``lon`` and optionally ``init_time`` (averaged over), ``member`` (ensemble functions) and
any others (e.g. ``lead_time``), which are kept. Fields are aligned by label with an exact
join: mismatched coordinates raise :class:`~ensembles.errors.ScoringError` instead of being
silently intersected. NaNs propagate.

Aggregation order (WeatherBench 2): for each init time the pointwise statistic is averaged
over the sphere with area weights :math:`w_j` (one per latitude row, :func:`area_weights`),

.. math:: \langle s \rangle = \frac{\sum_{j,k} w_j\, s_{jk}}{\sum_{j,k} w_j},

then averaged over init times, and only then is a square root taken (RMSE, spread), so
``rmse = sqrt(mean_t <(f - y)^2>)``, not the mean of per-time RMSEs.

``weights`` may be ``None`` (area weights of the field's latitudes), a DataArray over
``lat`` or over ``(lat, lon)`` (e.g. area weights restricted to a region,
:meth:`ensembles.regions.Region.weights`), or a numpy array of shape (lat,) in the field's
latitude order. Points of zero weight do not count, even where the field is NaN there.

Deterministic scores: :func:`mse`, :func:`rmse`, :func:`mae`, :func:`bias`, :func:`acc`.
Ensemble scores: :func:`ensemble_mean_rmse`, :func:`debiased_ensemble_mean_mse` (and its
root), :func:`ensemble_spread`, :func:`spread_skill_ratio`, :func:`crps`,
:func:`energy_score`, :func:`brier_score`, :func:`rank_histogram`.

The same scores as mergeable pieces (WeatherBench-X's design), for scoring chunk by chunk,
rank by rank or while members stream in: :func:`forecast_statistics` computes every
:data:`STATISTICS` of one forecast (one init and lead time) in every region at once, in
numpy; :class:`StatisticSums` adds them up over forecasts (exactly mergeable, ``a + b``);
:func:`finalise` turns their means into any of :data:`METRICS` (:data:`FINALISERS`). The
results equal the functions above on the same forecasts (tested to 1e-6).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from ensembles.errors import MissingStatisticsError, ScoringError
from ingest.dims import INIT_TIME, LAT, LON, MEMBER
from ingest.grid import cell_area_weights

Weights = xr.DataArray | np.ndarray | None
CRPS_KINDS = ("fair", "plain")
ENERGY_KINDS = CRPS_KINDS
#: Name of the bin dimension of :func:`rank_histogram`.
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


def spatial_mean(field: xr.DataArray, weights: Weights = None) -> xr.DataArray:
    """Area-weighted mean over ``lat`` (``j``) and ``lon`` (``k``): ``Σ_jk w_jk f_jk / Σ_jk w_jk``.

    Per-latitude weights stand for ``w_jk = w_j``; points of zero weight are left out.
    """
    field, w = _exact(field, resolve_weights(weights, field[LAT]))
    return _weighted_sum(field, w) / _grid_sum(w, field.sizes[LON])


def time_mean(statistic: xr.DataArray, time_dim: str = INIT_TIME) -> xr.DataArray:
    """Mean over ``time_dim`` if the statistic has it (a single forecast has not)."""
    return statistic.mean(time_dim, skipna=False) if time_dim in statistic.dims else statistic


def mse(
    forecast: xr.DataArray, truth: xr.DataArray, weights: Weights = None, time_dim: str = INIT_TIME
) -> xr.DataArray:
    """Mean squared error ``mean_t <(f - y)²>``, in squared units of the field."""
    forecast, truth = _exact(forecast, truth)
    return time_mean(spatial_mean((forecast - truth) ** 2, weights), time_dim)


def rmse(
    forecast: xr.DataArray, truth: xr.DataArray, weights: Weights = None, time_dim: str = INIT_TIME
) -> xr.DataArray:
    """Root mean squared error ``sqrt(mean_t <(f - y)²>)``, in units of the field."""
    return np.sqrt(mse(forecast, truth, weights, time_dim))


def mae(
    forecast: xr.DataArray, truth: xr.DataArray, weights: Weights = None, time_dim: str = INIT_TIME
) -> xr.DataArray:
    """Mean absolute error ``mean_t <|f - y|>``, in units of the field."""
    forecast, truth = _exact(forecast, truth)
    return time_mean(spatial_mean(abs(forecast - truth), weights), time_dim)


def bias(
    forecast: xr.DataArray, truth: xr.DataArray, weights: Weights = None, time_dim: str = INIT_TIME
) -> xr.DataArray:
    """Mean error ``mean_t <f - y>``, in units of the field; positive where the forecast is too high."""
    forecast, truth = _exact(forecast, truth)
    return time_mean(spatial_mean(forecast - truth, weights), time_dim)


def acc(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    weights: Weights = None,
    time_dim: str = INIT_TIME,
) -> xr.DataArray:
    r"""Anomaly correlation coefficient, uncentred, averaged over init times (WeatherBench 2).

    With anomalies :math:`f' = f - c` and :math:`y' = y - c` relative to the climatology
    :math:`c`, for each init time

    .. math:: \mathrm{ACC} = \frac{\langle f' y' \rangle}{\sqrt{\langle f'^2 \rangle \langle y'^2 \rangle}},

    the spatial means not removed from the anomalies; then the mean over init times.
    Dimensionless, 1 for a perfect forecast; NaN where an anomaly is identically zero
    (e.g. the climatology forecast itself).
    """
    forecast, truth, climatology = _exact(forecast, truth, climatology)
    f_anom, y_anom = forecast - climatology, truth - climatology
    covariance = spatial_mean(f_anom * y_anom, weights)
    norm = np.sqrt(spatial_mean(f_anom**2, weights) * spatial_mean(y_anom**2, weights))
    return time_mean(covariance / norm, time_dim)


def ensemble_mean_rmse(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    weights: Weights = None,
    member_dim: str = MEMBER,
    time_dim: str = INIT_TIME,
) -> xr.DataArray:
    """RMSE of the ensemble mean (the *skill*): ``sqrt(mean_t <(mean_m X - y)²>)``.

    The mean is taken in float64, so identical float32 members average to themselves exactly.
    """
    return rmse(ensemble.astype(np.float64).mean(member_dim, skipna=False), truth, weights, time_dim)


def debiased_ensemble_mean_mse(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    weights: Weights = None,
    member_dim: str = MEMBER,
    time_dim: str = INIT_TIME,
) -> xr.DataArray:
    r"""Ensemble-mean MSE with the finite-ensemble bias removed (WeatherBench 2).

    For members :math:`X_1 … X_M` drawn independently from a distribution of mean
    :math:`\mu` and variance :math:`\sigma^2`, the squared error of their mean overestimates
    :math:`(\mu - y)^2` by :math:`\sigma^2 / M` on average. Subtracting the unbiased sample
    variance :math:`s^2` (``ddof=1``) over :math:`M` removes that excess:

    .. math:: \mathrm{MSE}_\mathrm{debiased} = \mathrm{mean}_t
              \left\langle (\bar X - y)^2 - s^2 / M \right\rangle,
              \qquad E\left[(\bar X - y)^2 - s^2/M\right] = (\mu - y)^2,

    an unbiased estimate of the MSE of the distribution's mean, the skill an infinite ensemble
    would have. Squared units of the field; it can come out negative when the error of the
    mean is small compared with the spread. Needs ``M ≥ 2``; computed in float64.
    """
    n = _require_members(ensemble, member_dim, minimum=2, metric="debiased ensemble-mean MSE")
    ensemble, truth = _exact(ensemble.astype(np.float64), truth)
    mean = ensemble.mean(member_dim, skipna=False)
    variance = ensemble.var(member_dim, ddof=1, skipna=False)
    return time_mean(spatial_mean((mean - truth) ** 2 - variance / n, weights), time_dim)


def debiased_ensemble_mean_rmse(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    weights: Weights = None,
    member_dim: str = MEMBER,
    time_dim: str = INIT_TIME,
) -> xr.DataArray:
    """``sqrt(max(0, debiased_ensemble_mean_mse))``, in units of the field.

    The estimate is clipped at 0 before the root, so a negative debiased MSE (possible for
    small samples, see :func:`debiased_ensemble_mean_mse`) reads as 0 rather than NaN.
    """
    estimate = debiased_ensemble_mean_mse(ensemble, truth, weights, member_dim, time_dim)
    return np.sqrt(estimate.clip(min=0.0))


def ensemble_spread(
    ensemble: xr.DataArray, weights: Weights = None, member_dim: str = MEMBER, time_dim: str = INIT_TIME
) -> xr.DataArray:
    """Ensemble spread ``sqrt(mean_t <var_m X>)``, the variance unbiased (``ddof=1``); needs M ≥ 2."""
    _require_members(ensemble, member_dim, minimum=2, metric="ensemble spread")
    variance = ensemble.var(member_dim, ddof=1, skipna=False)
    return np.sqrt(time_mean(spatial_mean(variance, weights), time_dim))


def spread_skill_ratio(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    weights: Weights = None,
    member_dim: str = MEMBER,
    time_dim: str = INIT_TIME,
) -> xr.DataArray:
    r"""Spread–skill ratio with the finite-ensemble correction (WeatherBench 2).

    .. math:: \mathrm{SSR} = \sqrt{\tfrac{M+1}{M}}\;
              \frac{\mathrm{spread}}{\mathrm{ensemble\ mean\ RMSE}}

    The factor makes a statistically consistent ensemble of any size ``M ≥ 2`` score 1;
    below 1 the ensemble is under-dispersive.
    """
    n = _require_members(ensemble, member_dim, minimum=2, metric="spread-skill ratio")
    spread = ensemble_spread(ensemble, weights, member_dim, time_dim)
    skill = ensemble_mean_rmse(ensemble, truth, weights, member_dim, time_dim)
    return np.sqrt((n + 1) / n) * spread / skill


def crps_pointwise(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    kind: Literal["fair", "plain"] = "fair",
    member_dim: str = MEMBER,
) -> xr.DataArray:
    r"""Continuous ranked probability score of an ensemble at every point, no averaging.

    CRPS = E|X − y| − ½ E|X − X'|. Its two ensemble estimators, for members
    :math:`X_1 … X_M`:

    ``kind="fair"`` (WeatherBench 2's default; unbiased for the CRPS of the distribution the
    members are drawn from; needs ``M ≥ 2``)

    .. math:: \frac{1}{M}\sum_i |X_i - y| - \frac{1}{2M(M-1)} \sum_{i,j} |X_i - X_j|

    ``kind="plain"`` (the CRPS of the empirical distribution of the members, as
    ``properscoring.crps_ensemble``; equals the absolute error for ``M = 1``)

    .. math:: \frac{1}{M}\sum_i |X_i - y| - \frac{1}{2M^2} \sum_{i,j} |X_i - X_j|

    The pair sum is computed from the sorted members, :math:`\sum_{i,j}|X_i - X_j| =
    2 \sum_k (2k - M - 1) X_{(k)}`, in O(M log M) time and O(M) memory per point, in one
    numpy kernel (:func:`_crps_kernel`) that works member plane by member plane in float64.
    Units of the field; lower is better.
    """
    if kind not in CRPS_KINDS:
        raise ScoringError(f"unknown CRPS kind {kind!r}; expected one of {CRPS_KINDS}")
    n = _require_members(ensemble, member_dim, minimum=2 if kind == "fair" else 1, metric=f"{kind} CRPS")
    ensemble, truth = _exact(ensemble, truth)
    pairs = 2 * n * (n - 1) if kind == "fair" else 2 * n * n
    return xr.apply_ufunc(
        _in_threads(_crps_kernel),
        ensemble,
        truth,
        input_core_dims=[[member_dim], []],
        kwargs={"pairs": pairs},
        dask="parallelized",
        output_dtypes=[np.float64],
    )


def crps(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    weights: Weights = None,
    kind: Literal["fair", "plain"] = "fair",
    member_dim: str = MEMBER,
    time_dim: str = INIT_TIME,
) -> xr.DataArray:
    """CRPS averaged as WeatherBench 2 does: ``mean_t <crps_pointwise>`` (no square root)."""
    return time_mean(spatial_mean(crps_pointwise(ensemble, truth, kind, member_dim), weights), time_dim)


def energy_score(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    weights: Weights = None,
    kind: Literal["fair", "plain"] = "fair",
    member_dim: str = MEMBER,
    time_dim: str = INIT_TIME,
) -> xr.DataArray:
    r"""Energy score of whole fields, averaged over init times (Gneiting & Raftery, 2007).

    The multivariate CRPS: each member :math:`X_i` and the truth :math:`y` are single vectors,
    the fields over ``(lat, lon)``, compared in the area-weighted Euclidean norm

    .. math:: \lVert v \rVert = \sqrt{\textstyle\sum_{jk} w_{jk} v_{jk}^2 / \sum_{jk} w_{jk}}

    (the area-weighted RMS, units of the field). ES = E‖X − y‖ − ½ E‖X − X'‖, estimated for
    each init time (and every other kept dim, e.g. ``lead_time``) as

    ``kind="fair"`` (unbiased for the ES of the distribution the members come from; ``M ≥ 2``)

    .. math:: \frac{1}{M}\sum_i \lVert X_i - y\rVert
              - \frac{1}{2M(M-1)} \sum_{i,j} \lVert X_i - X_j \rVert

    ``kind="plain"`` (the ES of the members' empirical distribution; ``‖X_1 − y‖`` for M = 1)

    .. math:: \frac{1}{M}\sum_i \lVert X_i - y\rVert
              - \frac{1}{2M^2} \sum_{i,j} \lVert X_i - X_j \rVert

    then averaged over ``time_dim`` (no root). On a one-point grid it is the CRPS. Every pair
    of members is used (WeatherBench 2's ``EnergyScore`` uses the M − 1 adjacent pairs: same
    expectation, more variance). Pair distances come from the Gram matrix of the members'
    anomalies from their mean, :math:`\lVert X_i - X_j\rVert^2 = \lVert a_i\rVert^2 +
    \lVert a_j\rVert^2 - 2\langle a_i, a_j\rangle`: O(M² · lat · lon) time, O(M²) extra
    memory per field. Units of the field; lower is better.
    """
    if kind not in ENERGY_KINDS:
        raise ScoringError(f"unknown energy score kind {kind!r}; expected one of {ENERGY_KINDS}")
    minimum = 2 if kind == "fair" else 1
    n = _require_members(ensemble, member_dim, minimum=minimum, metric=f"{kind} energy score")
    ensemble, truth = _exact(ensemble.astype(np.float64), truth)
    skill = np.sqrt(spatial_mean((ensemble - truth) ** 2, weights)).mean(member_dim, skipna=False)
    pairs = 2 * n * (n - 1) if kind == "fair" else 2 * n * n
    return time_mean(skill - _pair_norm_sum(ensemble, weights, member_dim) / pairs, time_dim)


def brier_score(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    threshold: float | xr.DataArray,
    weights: Weights = None,
    fair: bool = False,
    member_dim: str = MEMBER,
    time_dim: str = INIT_TIME,
) -> xr.DataArray:
    r"""Brier score of the event "the field exceeds ``threshold``", averaged as WeatherBench 2.

    The forecast probability is the fraction of members above the threshold :math:`\tau`,
    :math:`p = \frac{1}{M}\sum_i 1[X_i > \tau]`, the outcome :math:`o = 1[y > \tau]`:

    .. math:: \mathrm{BS} = \mathrm{mean}_t \langle (p - o)^2 \rangle

    ``fair=True`` (Ferro, 2007; WeatherBench 2's ``DebiasedEnsembleBrierScore``) subtracts
    the finite-ensemble excess, giving an unbiased estimate of the Brier score of the
    probability the members are drawn with; needs ``M ≥ 2``:

    .. math:: \mathrm{BS}_\mathrm{fair} = \mathrm{mean}_t
              \left\langle (p - o)^2 - \frac{p(1 - p)}{M - 1} \right\rangle

    Parameters
    ----------
    threshold : float or xarray.DataArray
        :math:`\tau` in units of the field; a DataArray (e.g. a climatological quantile per
        ``(lat, lon)``) must share the field's coordinates exactly.

    Returns
    -------
    xarray.DataArray
        Dimensionless, in [0, 1] for ``fair=False``; 0 is perfect. NaN where inputs are NaN.
    """
    metric = "fair Brier score" if fair else "Brier score"
    _require_members(ensemble, member_dim, minimum=2 if fair else 1, metric=metric)
    ensemble, truth, threshold = _exact(ensemble, truth, xr.DataArray(threshold))
    score = xr.apply_ufunc(
        _in_threads(_brier_kernel),
        ensemble,
        truth,
        threshold,
        input_core_dims=[[member_dim], [], []],
        kwargs={"fair": fair},
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    return time_mean(spatial_mean(score, weights), time_dim)


def rank_histogram(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    rng: np.random.Generator,
    weights: Weights = None,
    normalise: bool = False,
    member_dim: str = MEMBER,
    time_dim: str = INIT_TIME,
) -> xr.DataArray:
    r"""Histogram of the truth's rank among the members (Talagrand diagram), ``M + 1`` bins.

    At each point the rank of :math:`y` among :math:`X_1 … X_M` is

    .. math:: r = \#\{i : X_i < y\} + U, \qquad
              U \sim \mathrm{Uniform}\{0, …, \#\{i : X_i = y\}\},

    ties broken at random with ``rng`` (so a variable with many ties, e.g. zero precipitation,
    is not piled into one bin); :math:`r \in \{0, …, M\}`. Bin :math:`r` holds

    .. math:: h_r = \sum_t \sum_{jk} \hat w_{jk}\, 1[r_{tjk} = r],

    with the weights rescaled to mean 1 over the points of non-zero weight, so the bins sum
    to the number of such points times the number of init times. Uniform weights (e.g.
    ``numpy.ones(n_lat)``) give plain counts; the default area weights count a point by its
    cell area. A statistically consistent ensemble (truth exchangeable with the members) has
    every bin equal in expectation; an under-dispersive one is U-shaped, an over-dispersive
    one ∩-shaped, a biased one sloped.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the tie-breaks, one per point in the order of ``truth``'s values: the same
        generator state and inputs give the same histogram.
    normalise : bool
        Divide by :math:`\sum_r h_r`, giving frequencies that sum to 1.

    Returns
    -------
    xarray.DataArray
        Dim ``rank`` (coordinate 0 … M) and the input dims other than ``member_dim``,
        ``lat``, ``lon`` and ``time_dim``. A slice with a NaN anywhere in its inputs is NaN.
    """
    n = _require_members(ensemble, member_dim, minimum=1, metric="rank histogram")
    ensemble, truth = _exact(ensemble, truth)
    rank = _truth_rank(ensemble, truth, rng, member_dim)
    w = resolve_weights(weights, rank[LAT])
    rank, w = _exact(rank, w)
    scale = _grid_sum(w != 0, rank.sizes[LON]) / _grid_sum(w, rank.sizes[LON])
    valid = rank.notnull()
    counts = xr.concat(
        [_weighted_sum((rank == r).where(valid), w) * scale for r in range(n + 1)],
        dim=xr.DataArray(np.arange(n + 1), dims=RANK, name=RANK),
    )
    counts = counts.sum(time_dim, skipna=False) if time_dim in counts.dims else counts
    return counts / counts.sum(RANK, skipna=False) if normalise else counts


def _truth_rank(
    ensemble: xr.DataArray, truth: xr.DataArray, rng: np.random.Generator, member_dim: str
) -> xr.DataArray:
    """Rank of ``truth`` among the members at each point, ties broken at random; NaN where undefined."""
    below = (ensemble < truth).sum(member_dim)
    ties = (ensemble == truth).sum(member_dim)
    tie_break = ties.copy(data=rng.integers(0, ties.values + 1))
    defined = truth.notnull() & ensemble.notnull().all(member_dim)
    return (below + tie_break).where(defined)


def _pair_norm_sum(ensemble: xr.DataArray, weights: Weights, member_dim: str) -> xr.DataArray:
    """``Σ_i Σ_j ‖X_i − X_j‖`` in the area-weighted RMS norm over ``(lat, lon)``."""
    anomalies = ensemble - ensemble.mean(member_dim, skipna=False)
    anomalies, w = _exact(anomalies, resolve_weights(weights, ensemble[LAT]))
    scaled = _unweighted_zeroed(anomalies, w) * np.sqrt(w / _grid_sum(w, anomalies.sizes[LON]))
    return xr.apply_ufunc(
        _gram_distance_sum,
        scaled,
        input_core_dims=[[member_dim, LAT, LON]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )


def _gram_distance_sum(x: np.ndarray) -> np.ndarray:
    """``Σ_ij ‖x_i − x_j‖₂`` over the members of ``x`` (..., member, lat, lon), via the Gram matrix."""
    n = x.shape[-3]
    x = x.reshape(*x.shape[:-2], -1)
    squared = np.einsum("...mp,...mp->...m", x, x)
    d2 = squared[..., :, None] + squared[..., None, :] - 2.0 * (x @ np.swapaxes(x, -1, -2))
    off_diagonal = ~np.eye(n, dtype=bool)
    return np.sqrt(np.where(off_diagonal, np.maximum(d2, 0.0), 0.0)).sum((-2, -1))


#: Kernels split arrays of at least this many values into slabs scored in parallel threads
#: (numpy releases the GIL in its loops); below it, handing work to threads costs more than it saves.
THREADED_MIN_VALUES = 2**22
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads kept for the process (started once, not per call).

    Keyed by process id too: a forked child (DataLoader, Dask worker) gets pools of its own,
    never one whose threads stayed behind in the parent.
    """
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="ensembles-metrics")
    return _POOLS[key]


def _in_threads(kernel):
    """``kernel(x, *others, **kw)`` run on slabs of ``x``'s first axis in one thread per core, concatenated.

    ``x`` is (..., member); an array of ``others`` with the same first axis is cut with it,
    anything else (scalars, size-1 first axes) goes whole to every slab.
    """

    def run(x: np.ndarray, *others: np.ndarray, **kwargs) -> np.ndarray:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        rows = x.shape[0] if x.ndim > 1 else 1
        slabs = min(cores, rows) if x.size >= THREADED_MIN_VALUES else 1
        if slabs <= 1:
            return kernel(x, *others, **kwargs)
        bounds = np.linspace(0, rows, slabs + 1).astype(int)

        def slab(a: int, b: int) -> np.ndarray:
            cut = [o[a:b] if np.ndim(o) == x.ndim - 1 and o.shape[0] == rows else o for o in others]
            return np.broadcast_to(
                kernel(x[a:b], *cut, **kwargs),
                np.broadcast_shapes(x[a:b].shape[:-1], *(np.shape(c) for c in cut)),
            )

        parts = list(_pool(slabs).map(slab, bounds[:-1], bounds[1:]))
        return np.concatenate(parts, axis=0)

    return run


def _member_planes(x: np.ndarray) -> np.ndarray:
    """``x`` (..., member) viewed as (member, ...): each member's field a plane, iterated in memory order."""
    return np.moveaxis(x, -1, 0)


def _crps_kernel(x: np.ndarray, y: np.ndarray, pairs: int) -> np.ndarray:
    r"""Pointwise CRPS :math:`\frac1M\sum_i|X_i - y| - \frac{1}{pairs}\sum_{ij}|X_i - X_j|`, float64.

    ``x`` (..., member), ``y`` broadcastable to ``x[..., 0]``. The pair sum is
    :math:`2\sum_k (2k - M - 1) X_{(k)}` over the members sorted at each point; both sums
    accumulate one member plane at a time, so no (..., member) temporary beyond the sorted copy.
    NaN wherever a member or the truth is NaN.
    """
    members = _member_planes(x)
    n = members.shape[0]
    ordered = np.sort(members, axis=0)
    skill = np.zeros(np.broadcast_shapes(members.shape[1:], np.shape(y)), dtype=np.float64)
    pair = np.zeros_like(skill)
    scratch = np.empty_like(skill)
    for k in range(n):
        np.subtract(members[k], y, out=scratch, dtype=np.float64)
        skill += np.abs(scratch, out=scratch)
        weight = 2.0 * (2 * (k + 1) - n - 1)
        if weight:
            np.multiply(ordered[k], weight, out=scratch, dtype=np.float64)
            pair += scratch
    skill /= n
    skill -= pair / pairs
    return skill


def _brier_kernel(x: np.ndarray, y: np.ndarray, threshold: np.ndarray, fair: bool) -> np.ndarray:
    """Pointwise Brier score of ``1[X > threshold]`` (``x`` (..., member)), Ferro's fair form if ``fair``.

    NaN wherever a member, the truth or the threshold is NaN.
    """
    members = _member_planes(x)
    n = members.shape[0]
    shape = np.broadcast_shapes(members.shape[1:], np.shape(y), np.shape(threshold))
    count = np.add.reduce(members > threshold, axis=0, dtype=np.int32)
    missing = np.isnan(y) | np.isnan(threshold) | np.isnan(members).any(axis=0)
    probability = count / n
    score = probability - (y > threshold)
    score *= score
    if fair:
        score -= probability * (1 - probability) / (n - 1)
    score[np.broadcast_to(missing, shape)] = np.nan
    return score


def _require_members(ensemble: xr.DataArray, member_dim: str, minimum: int, metric: str) -> int:
    if member_dim not in ensemble.dims:
        raise ScoringError(
            f"{metric} needs an ensemble with a {member_dim!r} dim, found dims {ensemble.dims}"
        )
    n = ensemble.sizes[member_dim]
    if n < minimum:
        raise ScoringError(f"{metric} needs at least {minimum} members, found {n}")
    return n


def _weighted_sum(field: xr.DataArray, w: xr.DataArray) -> xr.DataArray:
    """``Σ_jk w_jk f_jk`` over ``lat``/``lon``; points of zero weight count as 0 even if NaN."""
    return xr.dot(_unweighted_zeroed(field, w), w, dim=[LAT, LON])


def _unweighted_zeroed(field: xr.DataArray, w: xr.DataArray) -> xr.DataArray:
    """``field`` with 0 at the points of zero weight (outside a region), so NaNs there do not count."""
    return field.where(w != 0, 0.0) if bool((w == 0).any()) else field


def _grid_sum(w: xr.DataArray, n_lon: int) -> xr.DataArray:
    """``Σ_jk w_jk`` over the grid, a per-latitude ``w`` standing for every longitude."""
    return w.sum((LAT, LON)) if LON in w.dims else w.sum(LAT) * n_lon


def _exact(*arrays: xr.DataArray) -> tuple[xr.DataArray, ...]:
    """Align by label, refusing any coordinate mismatch instead of intersecting."""
    try:
        return xr.align(*arrays, join="exact", copy=False)  # nothing here writes into its inputs
    except ValueError as err:
        raise ScoringError(f"fields to compare have different coordinates: {err}") from err


# --------------------------------------------------------------------------------------------
# Mergeable statistics (the design of WeatherBench-X): a metric is a set of *statistics*, each
# an area-weighted mean over one region of one forecast (one init time, one lead time), plus a
# *finaliser* that turns the means of those statistics over init times into the score. The
# statistics of disjoint sets of forecasts (Dask chunks, ranks, a stream of members) add up
# exactly: keep their sums and counts (:class:`StatisticSums`), add, divide, finalise.
# --------------------------------------------------------------------------------------------

#: Statistic names, each an area-weighted spatial mean for one forecast (one init, one lead).
#: ``x̄`` is the members' mean, ``s²`` their variance (ddof 1), ``y`` the truth, ``c`` the
#: climatology at the valid time, ``p`` the fraction of members above ``c``, ``o = 1[y > c]``.
STATISTICS = {
    "se": "<(x̄ - y)²>",
    "ae": "<|x̄ - y|>",
    "error": "<x̄ - y>",
    "acc": "<x̄'y'> / sqrt(<x̄'²><y'²>), anomalies from c; 0 where an anomaly is identically 0",
    "crps_plain": "<CRPS of the members' empirical distribution>",
    "energy_plain": "plain energy score over the region",
    "brier": "<(p - o)²>, the event 'above climatology'",
    "variance": "<s²> (M ≥ 2)",
    "debiased_se": "<(x̄ - y)² - s²/M> (M ≥ 2)",
    "crps_fair": "<fair CRPS> (M ≥ 2)",
    "energy_fair": "fair energy score over the region (M ≥ 2)",
    "brier_fair": "<(p - o)² - p(1 - p)/(M - 1)> (M ≥ 2)",
    "rank": "frequency of each rank of y among the members, M + 1 bins, ties split evenly (M ≥ 2)",
}
#: The statistics :func:`forecast_statistics` computes only for an ensemble (M ≥ 2): the metrics
#: that read them are NaN for a single member.
ENSEMBLE_STATISTICS = frozenset({"variance", "debiased_se", "crps_fair", "energy_fair", "brier_fair", "rank"})


def forecast_statistics(
    members: np.ndarray, truth: np.ndarray, climatology: np.ndarray, region_weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every statistic of :data:`STATISTICS` for one forecast, in every region at once.

    Parameters
    ----------
    members : numpy.ndarray, shape (member, point)
        The forecast at every grid point (lat·lon flattened), any float dtype; a deterministic
        forecast is one member. Computed in float64.
    truth, climatology : numpy.ndarray, shape (point,)
        The verifying analysis and the climatology at the forecast's valid time.
    region_weights : numpy.ndarray, shape (region, point)
        Non-negative weights, each row summing to 1 (:func:`ensembles.regions.weight_matrix`).

    Returns
    -------
    dict of str to numpy.ndarray
        Shape (region,) per statistic, ``rank`` (member + 1, region); the ensemble-only
        statistics only when ``member ≥ 2``. Inputs must be free of NaN (the caller's policy).
    """
    x = np.asarray(members, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    c = np.asarray(climatology, dtype=np.float64)
    w = np.asarray(region_weights, dtype=np.float64)
    n = x.shape[0]
    mean = x.mean(0)
    error = mean - y
    f_anom, y_anom = mean - c, y - c
    abs_skill = np.abs(x - y).mean(0)
    pair_sum = _sorted_pair_sum(x)
    probability = (x > c).mean(0)
    outcome = (y > c).astype(np.float64)
    pointwise = {
        "se": error**2,
        "ae": np.abs(error),
        "error": error,
        "crps_plain": abs_skill - pair_sum / (2 * n * n),
        "brier": (probability - outcome) ** 2,
    }
    if n >= 2:
        variance = x.var(0, ddof=1)
        pointwise |= {
            "variance": variance,
            "debiased_se": error**2 - variance / n,
            "crps_fair": abs_skill - pair_sum / (2 * n * (n - 1)),
            "brier_fair": (probability - outcome) ** 2 - probability * (1 - probability) / (n - 1),
        }
    names = list(pointwise)
    means = dict(zip(names, (w @ np.stack([pointwise[k] for k in names], axis=1)).T, strict=True))
    covariance, f_norm, y_norm = (w @ np.stack([f_anom * y_anom, f_anom**2, y_anom**2], axis=1)).T
    norm = np.sqrt(f_norm * y_norm)
    means["acc"] = np.divide(covariance, norm, out=np.zeros_like(norm), where=norm > 0)
    skill = np.sqrt(((x - y) ** 2) @ w.T).mean(0)
    pair_norms = _region_pair_norm_sum(x, w)
    means["energy_plain"] = skill - pair_norms / (2 * n * n)
    if n >= 2:
        means["energy_fair"] = skill - pair_norms / (2 * n * (n - 1))
        means["rank"] = _rank_frequencies(x, y) @ w.T
    return means


def _sorted_pair_sum(x: np.ndarray) -> np.ndarray:
    """``Σ_ij |x_i − x_j|`` at every point of ``x`` (member, point), from the sorted members."""
    n = x.shape[0]
    rank_weight = 2.0 * np.arange(1, n + 1) - n - 1
    return 2.0 * np.tensordot(rank_weight, np.sort(x, axis=0), axes=1)


def _region_pair_norm_sum(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Σ_ij ‖x_i − x_j‖`` in each region's weighted RMS norm; shape (region,)."""
    anomalies = x - x.mean(0)
    gram = np.stack([(anomalies * weights) @ anomalies.T for weights in w])  # (region, member, member)
    squared = np.diagonal(gram, axis1=1, axis2=2)  # (region, member)
    d2 = squared[:, :, None] + squared[:, None, :] - 2.0 * gram
    off_diagonal = ~np.eye(x.shape[0], dtype=bool)
    return np.sqrt(np.where(off_diagonal, np.maximum(d2, 0.0), 0.0)).sum((-2, -1))


def _rank_frequencies(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indicator of the truth's rank among the members, (rank, point), ties shared evenly.

    With ``b`` members below ``y`` and ``t`` equal to it, ranks ``b … b + t`` get ``1/(t+1)``
    each: the expectation of breaking the tie at random, so the result needs no generator.
    """
    n = x.shape[0]
    below = (x < y).sum(0)
    ties = (x == y).sum(0)
    ranks = np.arange(n + 1)[:, None]
    inside = (ranks >= below) & (ranks <= below + ties)
    return inside / (ties + 1.0)


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
                "with those "
                f"of {other.n_members}-member forecasts {sorted(other.totals)}"
            )
        totals = {k: self.totals[k] + other.totals[k] for k in self.totals}
        return StatisticSums(totals, self.count + other.count, self.n_members)

    def means(self) -> dict[str, np.ndarray]:
        """Each statistic's mean over the forecasts summed."""
        if not self.count:
            raise ScoringError("no forecast was summed: there is no mean to finalise")
        return {k: v / self.count for k, v in self.totals.items()}


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


def rank_histogram_frequencies(sums: StatisticSums) -> np.ndarray | None:
    """Mean rank frequencies (rank, region), summing to 1 per region; ``None`` for one member."""
    return sums.means()["rank"] if "rank" in sums.totals else None
