"""The production statistic units equal the independent reference implementations, metric by metric.

The references (:mod:`tests.ensembles.reference_metrics`) are checked against the hand-written
definitions in ``test_ensemble_metrics.py``; here every scorecard metric of the units
(:func:`ensembles.metrics.statistic_sums`, then :func:`ensembles.metrics.finalise`) is compared
with them on the same seeded fields, for one member and for an ensemble, in regions of
different shapes. Both sum O(points) float64 terms of size O(1), so they agree to round-off
relative to the score (``rtol``), or to round-off of the terms for scores near 0 (``atol``).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ensembles.errors import ScoringError
from ensembles.metrics import (
    ENSEMBLE_STATISTICS,
    FINALISERS,
    METRICS,
    finalise,
    needed_statistics,
    statistic_sums,
)
from ensembles.regions import GLOBAL, TROPICS, Region, weight_matrix
from ingest.dims import INIT_TIME, LAT, LON, MEMBER
from ingest.grid import equiangular_lats, regular_lons
from tests.ensembles import reference_metrics as reference

LAT_DEG, LON_DEG = equiangular_lats(19), regular_lons(36)
REGIONS = (GLOBAL, TROPICS, Region.box(-50, 30, 300, 60, name="box"))
N_INIT = 4
RTOL, ATOL = 1e-10, 1e-12


def _fields(n_members: int):
    rng = np.random.default_rng(n_members)
    shape = (N_INIT, LAT_DEG.size, LON_DEG.size)
    truth = rng.standard_normal(shape)
    members = truth[:, None] + rng.standard_normal((N_INIT, n_members, *shape[1:]))
    climatology = 0.5 * rng.standard_normal(shape[1:])
    return members, truth, climatology


def _reliability(frequencies: xr.DataArray) -> xr.DataArray:
    """Delle Monache's index by its definition, ``Σ_r |f_r − 1/(M+1)|``."""
    return np.abs(frequencies - 1.0 / frequencies.sizes["rank"]).sum("rank")


def _expected(
    metric: str, members: np.ndarray, truth: np.ndarray, climatology: np.ndarray, weights: xr.DataArray
) -> float:
    """``metric`` by the reference implementations over labelled fields; NaN for a spread of one member."""
    if members.shape[1] < 2 and ENSEMBLE_STATISTICS & set(FINALISERS[metric].needed(1)):
        return float("nan")
    coords = {INIT_TIME: np.arange(N_INIT), LAT: LAT_DEG, LON: LON_DEG}
    x = xr.DataArray(members, dims=(INIT_TIME, MEMBER, LAT, LON), coords=coords)
    y = xr.DataArray(truth, dims=(INIT_TIME, LAT, LON), coords=coords)
    c = xr.DataArray(climatology, dims=(LAT, LON), coords={LAT: LAT_DEG, LON: LON_DEG})
    mean = x.mean(MEMBER)
    fair = "fair" if members.shape[1] >= 2 else "plain"
    calls = {
        "rmse": lambda: reference.rmse(mean, y, weights),
        "mse": lambda: reference.mse(mean, y, weights),
        "mae": lambda: reference.mae(mean, y, weights),
        "bias": lambda: reference.bias(mean, y, weights),
        "acc": lambda: reference.acc(mean, y, c, weights),
        "crps": lambda: reference.crps(x, y, weights, kind=fair),
        "crps_plain": lambda: reference.crps(x, y, weights, kind="plain"),
        "energy_score": lambda: reference.energy_score(x, y, weights, kind=fair),
        "brier": lambda: reference.brier_score(x, y, c, weights, fair=fair == "fair"),
        "spread": lambda: reference.ensemble_spread(x, weights),
        "ssr": lambda: reference.spread_skill_ratio(x, y, weights),
        "debiased_rmse": lambda: reference.debiased_ensemble_mean_rmse(x, y, weights),
        "reliability": lambda: _reliability(
            reference.rank_histogram(x, y, np.random.default_rng(0), weights, normalise=True)
        ),
    }
    return float(calls[metric]())


@pytest.mark.parametrize("n_members", [1, 5])
@pytest.mark.parametrize("metric", METRICS)
def test_each_metric_of_the_units_equals_its_reference(metric, n_members):
    members, truth, climatology = _fields(n_members)
    n_points = LAT_DEG.size * LON_DEG.size
    w = weight_matrix(REGIONS, LAT_DEG, LON_DEG)
    # with "rmse" too: one member has no statistic of the spread, and sums of nothing give no regions
    names = needed_statistics([metric, "rmse"], n_members)
    sums = statistic_sums(
        members.reshape(N_INIT, n_members, n_points),
        truth.reshape(N_INIT, n_points),
        climatology.ravel(),
        w,
        names,
    )
    got = finalise(sums, metric)
    expected = [
        _expected(metric, members, truth, climatology, region.weights(LAT_DEG, LON_DEG)) for region in REGIONS
    ]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=f"{metric}, {n_members} members")


def test_only_the_statistics_asked_for_are_computed():
    members, truth, climatology = _fields(3)
    n_points = LAT_DEG.size * LON_DEG.size
    w = weight_matrix([GLOBAL], LAT_DEG, LON_DEG)
    names = needed_statistics(["rmse", "crps", "ssr"], 3)
    assert names == ("se", "crps_fair", "variance")
    sums = statistic_sums(
        members.reshape(N_INIT, 3, n_points), truth.reshape(N_INIT, n_points), climatology.ravel(), w, names
    )
    assert set(sums.totals) == set(names) and sums.count == N_INIT
    with pytest.raises(ScoringError, match=r"unknown statistics \['crps'\]"):
        statistic_sums(
            members.reshape(N_INIT, 3, n_points),
            truth.reshape(N_INIT, n_points),
            climatology.ravel(),
            w,
            ["crps"],
        )
    with pytest.raises(ScoringError, match=r"unknown metrics \['crpss'\]"):
        needed_statistics(["crpss"], 3)
