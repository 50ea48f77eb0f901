"""Metrics checked against their definitions, written out by hand with numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr

from ensembles.errors import ScoringError
from ensembles.metrics import (
    acc,
    area_weights,
    crps,
    crps_pointwise,
    ensemble_mean_rmse,
    ensemble_spread,
    mse,
    rmse,
    spatial_mean,
    spread_skill_ratio,
)
from ingest.dims import INIT_TIME, LAT, LON, MEMBER

LAT_DEG = np.array([90.0, 60.0, 30.0, 0.0, -30.0, -60.0, -90.0])
LON_DEG = np.arange(8) * 45.0
DIMS = (INIT_TIME, LAT, LON)


def _band_areas() -> np.ndarray:
    """Area of each row's band between midpoints to its neighbours, poles as outer edges."""
    edges = np.deg2rad([90.0, 75.0, 45.0, 15.0, -15.0, -45.0, -75.0, -90.0])
    return np.sin(edges[:-1]) - np.sin(edges[1:])


def _field(rng, *leading: int, scale: float = 1.0) -> np.ndarray:
    return scale * rng.standard_normal((*leading, 3, LAT_DEG.size, LON_DEG.size))


def _da(values: np.ndarray, dims=DIMS) -> xr.DataArray:
    coords = {LAT: LAT_DEG, LON: LON_DEG}
    if INIT_TIME in dims:
        coords[INIT_TIME] = np.arange(values.shape[dims.index(INIT_TIME)])
    return xr.DataArray(values, dims=dims, coords=coords)


def _ensemble(values: np.ndarray) -> xr.DataArray:
    return _da(values, dims=(MEMBER, *DIMS))


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_area_weights_are_band_areas_with_mean_one():
    w = area_weights(LAT_DEG)
    np.testing.assert_allclose(w.values, _band_areas() / _band_areas().mean())
    assert w.dims == (LAT,)


def test_weighted_rmse_equals_the_hand_written_formula(rng):
    forecast, truth = _field(rng), _field(rng)
    a = _band_areas()[None, :, None]
    per_time = (a * (forecast - truth) ** 2).sum((1, 2)) / (a.sum() * LON_DEG.size)
    expected = np.sqrt(per_time.mean())
    assert float(rmse(_da(forecast), _da(truth))) == pytest.approx(expected, rel=1e-12)
    assert float(mse(_da(forecast), _da(truth))) == pytest.approx(expected**2, rel=1e-12)
    # WeatherBench 2 order: sqrt of the time-mean, not the mean of per-time RMSEs
    assert float(rmse(_da(forecast), _da(truth))) != pytest.approx(np.sqrt(per_time).mean(), rel=1e-6)


def test_weights_can_be_given_as_numpy_or_labelled(rng):
    forecast, truth = _da(_field(rng)), _da(_field(rng))
    uniform = np.ones(LAT_DEG.size)
    unweighted = np.sqrt(((forecast - truth) ** 2).mean((LAT, LON)).mean())
    assert float(rmse(forecast, truth, weights=uniform)) == pytest.approx(float(unweighted), rel=1e-12)
    labelled = area_weights(LAT_DEG) * 3.0  # the scale of the weights does not matter
    assert float(rmse(forecast, truth, weights=labelled)) == pytest.approx(float(rmse(forecast, truth)), rel=1e-12)
    with pytest.raises(ScoringError, match=r"weights of shape \(lat,\) = \(7,\)"):
        spatial_mean(forecast, weights=np.ones(3))


def test_mismatched_grids_are_refused_not_intersected(rng):
    truth = _da(_field(rng))
    shifted = truth.assign_coords({LAT: LAT_DEG + 1.0})
    with pytest.raises(ScoringError, match="different coordinates"):
        rmse(truth, shifted)


def test_acc_of_truth_with_itself_is_one(rng):
    truth, clim = _da(_field(rng, scale=3.0)), _da(_field(rng)[0], dims=(LAT, LON))
    assert float(acc(truth, truth, clim)) == pytest.approx(1.0, abs=1e-12)
    assert float(acc(2 * clim - truth, truth, clim)) == pytest.approx(-1.0, abs=1e-12)


def test_acc_equals_the_hand_written_formula(rng):
    forecast, truth, clim = _field(rng), _field(rng), _field(rng)[0]
    a = _band_areas()[None, :, None]
    fa, ya = forecast - clim, truth - clim
    per_time = (a * fa * ya).sum((1, 2)) / np.sqrt((a * fa**2).sum((1, 2)) * (a * ya**2).sum((1, 2)))
    value = acc(_da(forecast), _da(truth), _da(clim, dims=(LAT, LON)))
    assert float(value) == pytest.approx(per_time.mean(), rel=1e-12)


def _crps_brute_force(members: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """Pointwise CRPS with every member pair visited; members (M, ...)."""
    m = members.shape[0]
    skill = np.mean([np.abs(x - y) for x in members], axis=0)
    pairs = sum(np.abs(members[i] - members[j]) for i, j in itertools.product(range(m), repeat=2))
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


def _crps_integral(members: np.ndarray, y: float) -> float:
    """∫ (F(z) − 1[z ≥ y])² dz for the empirical CDF F of the members, integrated exactly."""
    points = np.sort(np.append(members, y))
    total = 0.0
    for left, right in itertools.pairwise(points):
        cdf = np.mean(members <= left)
        total += (right - left) * (cdf - float(left >= y)) ** 2
    return total


@pytest.mark.parametrize("n_members", [1, 2, 5])
def test_plain_crps_equals_its_definitions(rng, n_members):
    members, truth = _field(rng, n_members), _field(rng)
    pointwise = crps_pointwise(_ensemble(members), _da(truth), kind="plain")
    np.testing.assert_allclose(pointwise.values, _crps_brute_force(members, truth, fair=False), rtol=1e-10, atol=1e-12)
    for index in [(0, 0, 0), (1, 3, 5), (2, 6, 7)]:
        column = members[(slice(None), *index)]
        assert float(pointwise.values[index]) == pytest.approx(_crps_integral(column, truth[index]), rel=1e-10)


def test_one_member_crps_is_the_mean_absolute_error(rng):
    member, truth = _field(rng, 1), _field(rng)
    value = crps(_ensemble(member), _da(truth), kind="plain")
    a = _band_areas()[None, :, None]
    mae = ((a * np.abs(member[0] - truth)).sum((1, 2)) / (a.sum() * LON_DEG.size)).mean()
    assert float(value) == pytest.approx(mae, rel=1e-12)


@pytest.mark.parametrize("n_members", [2, 3, 6])
def test_fair_crps_equals_the_pairwise_formula(rng, n_members):
    members, truth = _field(rng, n_members), _field(rng)
    pointwise = crps_pointwise(_ensemble(members), _da(truth), kind="fair")
    np.testing.assert_allclose(pointwise.values, _crps_brute_force(members, truth, fair=True), rtol=1e-10, atol=1e-12)
    a = _band_areas()[None, :, None]
    expected = ((a * pointwise.values).sum((1, 2)) / (a.sum() * LON_DEG.size)).mean()
    assert float(crps(_ensemble(members), _da(truth))) == pytest.approx(expected, rel=1e-12)


def test_fair_crps_needs_two_members_and_kinds_are_checked(rng):
    with pytest.raises(ScoringError, match="fair CRPS needs at least 2 members, found 1"):
        crps_pointwise(_ensemble(_field(rng, 1)), _da(_field(rng)))
    with pytest.raises(ScoringError, match="unknown CRPS kind 'energy'"):
        crps_pointwise(_ensemble(_field(rng, 2)), _da(_field(rng)), kind="energy")


def test_spread_and_skill_equal_the_hand_written_formulas(rng):
    members, truth = _field(rng, 4), _field(rng)
    a = _band_areas()[None, :, None]

    def area_time_mean(x):
        return ((a * x).sum((1, 2)) / (a.sum() * LON_DEG.size)).mean()

    spread = np.sqrt(area_time_mean(members.var(axis=0, ddof=1)))
    skill = np.sqrt(area_time_mean((members.mean(axis=0) - truth) ** 2))
    ensemble = _ensemble(members)
    assert float(ensemble_spread(ensemble)) == pytest.approx(spread, rel=1e-12)
    assert float(ensemble_mean_rmse(ensemble, _da(truth))) == pytest.approx(skill, rel=1e-12)
    assert float(spread_skill_ratio(ensemble, _da(truth))) == pytest.approx(np.sqrt(5 / 4) * spread / skill, rel=1e-12)


@pytest.mark.parametrize("n_members", [2, 4])
def test_a_consistent_ensemble_has_spread_skill_ratio_one(rng, n_members):
    # truth and members drawn from the same distribution: the corrected ratio is 1 for any M
    shape = (n_members, 200, LAT_DEG.size, LON_DEG.size)
    members, truth = rng.standard_normal(shape), rng.standard_normal(shape[1:])
    ratio = spread_skill_ratio(_ensemble(members), _da(truth))
    assert float(ratio) == pytest.approx(1.0, abs=0.03)


def test_plain_crps_matches_properscoring(rng):
    properscoring = pytest.importorskip("properscoring")
    members, truth = _field(rng, 5), _field(rng)
    expected = properscoring.crps_ensemble(truth, np.moveaxis(members, 0, -1))
    pointwise = crps_pointwise(_ensemble(members), _da(truth), kind="plain")
    np.testing.assert_allclose(pointwise.values, expected, rtol=1e-10, atol=1e-12)
