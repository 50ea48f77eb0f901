r"""Independent reference implementations of the verification metrics, over labelled fields.

Production scores come from one place, the statistic units of :mod:`ensembles.metrics`
(:func:`~ensembles.metrics.forecast_statistics`, summed and finalised). The functions here
compute the same scores another way, as WeatherBench 2 defines them over whole
:class:`xarray.DataArray` fields, so the tests can compare the production units against them
(and check these against the hand-written definitions, brute force and properscoring).

Every function takes fields for one variable, with dims ``lat``, ``lon`` and optionally
``init_time`` (averaged over), ``member`` (ensemble functions) and any others (e.g.
``lead_time``), which are kept. Fields are aligned by label with an exact join: mismatched
coordinates raise :class:`~ensembles.errors.ScoringError`. NaNs propagate.

Aggregation order (WeatherBench 2): for each init time the pointwise statistic is averaged
over the sphere with area weights :math:`w_j` (one per latitude row),

.. math:: \langle s \rangle = \frac{\sum_{j,k} w_j\, s_{jk}}{\sum_{j,k} w_j},

then averaged over init times, and only then is a square root taken (RMSE, spread), so
``rmse = sqrt(mean_t <(f - y)^2>)``, not the mean of per-time RMSEs. ``weights`` take every
form :func:`ensembles.metrics.resolve_weights` accepts; points of zero weight do not count,
even where the field is NaN there.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr

from ensembles.errors import ScoringError
from ensembles.metrics import RANK, Weights, resolve_weights
from ingest.dims import INIT_TIME, LAT, LON, MEMBER

CRPS_KINDS = ("fair", "plain")
ENERGY_KINDS = CRPS_KINDS


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
        _crps_kernel,
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
        _brier_kernel,
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
