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
``lat``, or a numpy array of shape (lat,) in the field's latitude order.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr

from ensembles.errors import ScoringError
from ingest.dims import INIT_TIME, LAT, LON, MEMBER
from ingest.grid import cell_area_weights

Weights = xr.DataArray | np.ndarray | None
CRPS_KINDS = ("fair", "plain")


def area_weights(lat: xr.DataArray | np.ndarray) -> xr.DataArray:
    """Cell-area weights of each latitude row, mean 1, labelled by ``lat`` (degrees)."""
    lat = np.asarray(lat, dtype=np.float64)
    return xr.DataArray(cell_area_weights(lat), dims=LAT, coords={LAT: lat}, name="area_weight")


def spatial_mean(field: xr.DataArray, weights: Weights = None) -> xr.DataArray:
    """Area-weighted mean over ``lat`` (``j``) and ``lon`` (``k``): ``Σ_jk w_j f_jk / Σ_jk w_j``."""
    field, w = _exact(field, _weights(weights, field))
    return (field * w).sum((LAT, LON), skipna=False) / (w.sum(LAT) * field.sizes[LON])


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
    2 \sum_k (2k - M - 1) X_{(k)}`, in O(M log M) time and O(M) memory per point.
    Units of the field; lower is better.
    """
    if kind not in CRPS_KINDS:
        raise ScoringError(f"unknown CRPS kind {kind!r}; expected one of {CRPS_KINDS}")
    n = _require_members(ensemble, member_dim, minimum=2 if kind == "fair" else 1, metric=f"{kind} CRPS")
    ensemble, truth = _exact(ensemble.astype(np.float64), truth)
    skill = abs(ensemble - truth).mean(member_dim, skipna=False)
    pair_sum = _pair_abs_sum(ensemble, member_dim)
    pairs = 2 * n * (n - 1) if kind == "fair" else 2 * n * n
    return skill - pair_sum / pairs


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


def _pair_abs_sum(ensemble: xr.DataArray, member_dim: str) -> xr.DataArray:
    """``Σ_i Σ_j |X_i − X_j|`` over members, from the members sorted at each point."""
    n = ensemble.sizes[member_dim]
    ordered = xr.apply_ufunc(
        np.sort,
        ensemble,
        input_core_dims=[[member_dim]],
        output_core_dims=[[member_dim]],
        kwargs={"axis": -1},
        dask="parallelized",
        output_dtypes=[ensemble.dtype],
    ).drop_vars(member_dim, errors="ignore")
    rank_weight = xr.DataArray(2.0 * np.arange(1, n + 1) - n - 1, dims=member_dim)
    return 2 * (ordered * rank_weight).sum(member_dim, skipna=False)


def _require_members(ensemble: xr.DataArray, member_dim: str, minimum: int, metric: str) -> int:
    if member_dim not in ensemble.dims:
        raise ScoringError(f"{metric} needs an ensemble with a {member_dim!r} dim, found dims {ensemble.dims}")
    n = ensemble.sizes[member_dim]
    if n < minimum:
        raise ScoringError(f"{metric} needs at least {minimum} members, found {n}")
    return n


def _weights(weights: Weights, field: xr.DataArray) -> xr.DataArray:
    if weights is None:
        return area_weights(field[LAT])
    if isinstance(weights, xr.DataArray):
        return weights
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (field.sizes[LAT],):
        raise ScoringError(f"expected weights of shape ({LAT},) = ({field.sizes[LAT]},), found {weights.shape}")
    return xr.DataArray(weights, dims=LAT, coords={LAT: field[LAT]})


def _exact(*arrays: xr.DataArray) -> tuple[xr.DataArray, ...]:
    """Align by label, refusing any coordinate mismatch instead of intersecting."""
    try:
        return xr.align(*arrays, join="exact")
    except ValueError as err:
        raise ScoringError(f"fields to compare have different coordinates: {err}") from err
