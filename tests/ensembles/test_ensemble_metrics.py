"""Metrics checked against their definitions, written out by hand with numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr

from ensembles.errors import ScoringError
from ensembles.metrics import (
    RANK,
    acc,
    area_weights,
    bias,
    brier_score,
    crps,
    crps_pointwise,
    debiased_ensemble_mean_mse,
    debiased_ensemble_mean_rmse,
    energy_score,
    ensemble_mean_rmse,
    ensemble_spread,
    mae,
    mse,
    rank_histogram,
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
    assert float(rmse(forecast, truth, weights=labelled)) == pytest.approx(
        float(rmse(forecast, truth)), rel=1e-12
    )
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
    np.testing.assert_allclose(
        pointwise.values, _crps_brute_force(members, truth, fair=False), rtol=1e-10, atol=1e-12
    )
    for index in [(0, 0, 0), (1, 3, 5), (2, 6, 7)]:
        column = members[(slice(None), *index)]
        assert float(pointwise.values[index]) == pytest.approx(
            _crps_integral(column, truth[index]), rel=1e-10
        )


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
    np.testing.assert_allclose(
        pointwise.values, _crps_brute_force(members, truth, fair=True), rtol=1e-10, atol=1e-12
    )
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
    assert float(spread_skill_ratio(ensemble, _da(truth))) == pytest.approx(
        np.sqrt(5 / 4) * spread / skill, rel=1e-12
    )


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


def _area_mean(x: np.ndarray) -> np.ndarray:
    """Hand-written area-weighted mean over the last two axes (lat, lon) with band areas."""
    a = _band_areas()[:, None]
    return (a * x).sum((-2, -1)) / (a.sum() * LON_DEG.size)


def test_mae_and_bias_equal_the_hand_written_formulas(rng):
    forecast, truth = _field(rng, scale=2.0) + 0.5, _field(rng)
    expected_mae = _area_mean(np.abs(forecast - truth)).mean()
    expected_bias = _area_mean(forecast - truth).mean()
    assert float(mae(_da(forecast), _da(truth))) == pytest.approx(expected_mae, rel=1e-12)
    assert float(bias(_da(forecast), _da(truth))) == pytest.approx(expected_bias, rel=1e-12)
    assert float(bias(_da(truth), _da(forecast))) == pytest.approx(-expected_bias, rel=1e-12)
    assert expected_mae > abs(expected_bias) > 0.1  # a real offset, and MAE bounds |bias|


def test_debiased_ensemble_mean_mse_equals_the_hand_written_formula(rng):
    members, truth = _field(rng, 4), _field(rng)
    pointwise = (members.mean(0) - truth) ** 2 - members.var(0, ddof=1) / 4
    expected = _area_mean(pointwise).mean()
    value = debiased_ensemble_mean_mse(_ensemble(members), _da(truth))
    assert float(value) == pytest.approx(expected, rel=1e-12)
    assert float(debiased_ensemble_mean_rmse(_ensemble(members), _da(truth))) == pytest.approx(
        np.sqrt(max(expected, 0.0)), rel=1e-12
    )


def test_debiased_ensemble_mean_mse_is_unbiased(rng):
    # members ~ N(truth + offset, sigma²): the distribution mean misses the truth by `offset`,
    # so the MSE of the distribution mean is <offset²>; the plain ensemble-mean MSE adds sigma²/M
    n_members, n_draws, sigma = 3, 3000, 1.0
    truth = _field(rng)[0]
    offset = 0.5 * np.sin(np.deg2rad(LAT_DEG))[:, None] + 0.3 * np.cos(np.deg2rad(LON_DEG))[None, :]
    members = truth + offset + sigma * rng.standard_normal((n_members, n_draws, LAT_DEG.size, LON_DEG.size))
    ensemble, observed = _ensemble(members), _da(np.broadcast_to(truth, members.shape[1:]))
    true_mse = float(_area_mean(offset**2))
    debiased = float(debiased_ensemble_mean_mse(ensemble, observed))
    plain = float(ensemble_mean_rmse(ensemble, observed)) ** 2
    # standard error of the mean over 3000 x 56 independent points is about 0.003
    assert debiased == pytest.approx(true_mse, abs=0.02)
    assert plain == pytest.approx(true_mse + sigma**2 / n_members, abs=0.02)


def test_debiased_ensemble_mean_rmse_clips_negative_estimates_to_zero(rng):
    members = _field(rng, 3)
    truth = members.mean(0)  # the mean is exact, so the debiased MSE is -<s²>/M < 0
    ensemble = _ensemble(members)
    assert float(debiased_ensemble_mean_mse(ensemble, _da(truth))) < 0
    assert float(debiased_ensemble_mean_rmse(ensemble, _da(truth))) == 0.0
    with pytest.raises(ScoringError, match="debiased ensemble-mean MSE needs at least 2 members, found 1"):
        debiased_ensemble_mean_mse(_ensemble(members[:1]), _da(truth))


UNIFORM = np.ones(LAT_DEG.size)


def test_rank_histogram_counts_the_members_below_the_truth(rng):
    members, truth = _field(rng, 5), _field(rng)  # continuous values: no ties
    ranks = (members < truth).sum(0)
    hist = rank_histogram(_ensemble(members), _da(truth), np.random.default_rng(0), weights=UNIFORM)
    assert hist.dims == (RANK,)
    np.testing.assert_array_equal(hist[RANK].values, np.arange(6))
    np.testing.assert_allclose(hist.values, np.bincount(ranks.ravel(), minlength=6), rtol=1e-12)
    frequencies = rank_histogram(_ensemble(members), _da(truth), np.random.default_rng(0), normalise=True)
    assert float(frequencies.sum()) == pytest.approx(1.0, rel=1e-12)
    # area weights rescaled to mean 1: the bins still add up to the number of points
    area = rank_histogram(_ensemble(members), _da(truth), np.random.default_rng(0))
    assert float(area.sum()) == pytest.approx(truth.size, rel=1e-12)


# chi-square critical values at p = 0.001 for 4 and 5 degrees of freedom
CHI2_999 = {4: 18.467, 5: 20.515}


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_rank_histogram_of_a_consistent_ensemble_is_flat(rng):
    # truth and members drawn from the same distribution: every rank is equally likely
    shape = (4, 500, LAT_DEG.size, LON_DEG.size)
    members, truth = rng.standard_normal(shape), rng.standard_normal(shape[1:])
    counts = rank_histogram(_ensemble(members), _da(truth), rng, weights=UNIFORM).values
    assert counts.sum() == truth.size
    assert _chi_square(counts) < CHI2_999[4]


def test_rank_histogram_of_an_underdispersive_ensemble_is_u_shaped(rng):
    shape = (4, 500, LAT_DEG.size, LON_DEG.size)
    members, truth = 0.5 * rng.standard_normal(shape), rng.standard_normal(shape[1:])
    frequencies = rank_histogram(_ensemble(members), _da(truth), rng, weights=UNIFORM, normalise=True).values
    assert _chi_square(frequencies * truth.size) > 10 * CHI2_999[4]
    assert min(frequencies[0], frequencies[-1]) > 2 * frequencies[1:-1].max()
    assert frequencies[0] > frequencies[1] > frequencies[2] < frequencies[3] < frequencies[4]


def test_rank_histogram_breaks_ties_at_random_with_the_generator(rng):
    # every member equals the truth (a dry field): the rank is uniform on 0..M by the tie-break
    zeros = np.zeros((5, 300, LAT_DEG.size, LON_DEG.size))
    first = rank_histogram(_ensemble(zeros), _da(zeros[0]), np.random.default_rng(7), weights=UNIFORM)
    again = rank_histogram(_ensemble(zeros), _da(zeros[0]), np.random.default_rng(7), weights=UNIFORM)
    xr.testing.assert_identical(first, again)
    assert _chi_square(first.values) < CHI2_999[5]


def test_rank_histogram_keeps_other_dims_and_propagates_nans(rng):
    members, truth = _field(rng, 3), _field(rng)
    truth[1, 2, 3] = np.nan
    ensemble = _ensemble(members).expand_dims(lead_time=2).copy()
    hist = rank_histogram(ensemble, _da(truth), rng, weights=UNIFORM, time_dim="none")
    assert set(hist.dims) == {RANK, "lead_time", INIT_TIME}
    assert bool(hist.sel({INIT_TIME: 1}).isnull().all())
    assert bool(hist.sel({INIT_TIME: [0, 2]}).notnull().all())


def _weighted_norm(x: np.ndarray) -> np.ndarray:
    """Area-weighted RMS norm over the last two axes (lat, lon)."""
    return np.sqrt(_area_mean(x**2))


def test_energy_score_of_one_member_is_the_mean_weighted_euclidean_distance(rng):
    member, truth = _field(rng, 1), _field(rng)
    expected = _weighted_norm(member[0] - truth).mean()
    value = energy_score(_ensemble(member), _da(truth), kind="plain")
    assert float(value) == pytest.approx(expected, rel=1e-12)


def _energy_brute_force(members: np.ndarray, truth: np.ndarray, fair: bool) -> float:
    """Time-mean ES with every member pair visited; members (M, time, lat, lon)."""
    m = members.shape[0]
    skill = np.mean([_weighted_norm(x - truth) for x in members], axis=0)
    pairs = sum(_weighted_norm(members[i] - members[j]) for i, j in itertools.product(range(m), repeat=2))
    return float((skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)).mean())


@pytest.mark.parametrize("n_members", [2, 3, 7])
@pytest.mark.parametrize("kind", ["fair", "plain"])
def test_energy_score_equals_the_pairwise_formula(rng, n_members, kind):
    members, truth = _field(rng, n_members), _field(rng)
    expected = _energy_brute_force(members, truth, fair=kind == "fair")
    assert float(energy_score(_ensemble(members), _da(truth), kind=kind)) == pytest.approx(
        expected, rel=1e-10
    )


def test_energy_score_is_exact_for_fields_far_from_zero(rng):
    # pair distances come from a Gram matrix: a large common offset must not cancel digits
    members, truth = _field(rng, 4), _field(rng)
    expected = _energy_brute_force(members, truth, fair=True)
    shifted = energy_score(_ensemble(members + 5.4e4), _da(truth + 5.4e4))
    assert float(shifted) == pytest.approx(expected, rel=1e-9)


def test_energy_score_checks_kind_and_members(rng):
    with pytest.raises(ScoringError, match="fair energy score needs at least 2 members, found 1"):
        energy_score(_ensemble(_field(rng, 1)), _da(_field(rng)))
    with pytest.raises(
        ScoringError, match=r"unknown energy score kind 'crps'; expected one of \('fair', 'plain'\)"
    ):
        energy_score(_ensemble(_field(rng, 2)), _da(_field(rng)), kind="crps")


@pytest.mark.parametrize("fair", [False, True])
def test_brier_score_equals_the_hand_computation(rng, fair):
    members, truth, threshold = _field(rng, 5), _field(rng), 0.3
    p = (members > threshold).mean(0)
    o = (truth > threshold).astype(float)
    pointwise = (p - o) ** 2 - (p * (1 - p) / 4 if fair else 0.0)
    value = brier_score(_ensemble(members), _da(truth), threshold, fair=fair)
    assert float(value) == pytest.approx(_area_mean(pointwise).mean(), rel=1e-12)


def test_brier_score_takes_a_threshold_per_point(rng):
    members, truth = _field(rng, 4), _field(rng)
    quantile = np.quantile(truth, 0.9, axis=0)  # a "climatological" 90th percentile per point
    p = (members > quantile).mean(0)
    expected = _area_mean((p - (truth > quantile)) ** 2).mean()
    value = brier_score(_ensemble(members), _da(truth), _da(quantile, dims=(LAT, LON)))
    assert float(value) == pytest.approx(expected, rel=1e-12)
    shifted = _da(quantile, dims=(LAT, LON)).assign_coords({LON: LON_DEG + 1.0})
    with pytest.raises(ScoringError, match="different coordinates"):
        brier_score(_ensemble(members), _da(truth), shifted)
    with pytest.raises(ScoringError, match="fair Brier score needs at least 2 members, found 1"):
        brier_score(_ensemble(members[:1]), _da(truth), 0.0, fair=True)


def test_two_dimensional_weights_are_checked(rng):
    field = _da(_field(rng))
    with pytest.raises(ScoringError, match=r"weights with dims \(lat,\) or \(lat, lon\), found \('lon',\)"):
        spatial_mean(field, weights=xr.DataArray(np.ones(LON_DEG.size), dims=LON, coords={LON: LON_DEG}))


def test_energy_score_on_a_one_point_grid_is_the_crps(rng):
    members, truth = rng.standard_normal((4, 6, 1, 1)), rng.standard_normal((6, 1, 1))
    coords = {LAT: [10.0], LON: [0.0]}
    ensemble = xr.DataArray(members, dims=(MEMBER, *DIMS), coords=coords)
    observed = xr.DataArray(truth, dims=DIMS, coords=coords)
    for kind in ("fair", "plain"):
        expected = crps(ensemble, observed, weights=np.ones(1), kind=kind)
        assert float(energy_score(ensemble, observed, weights=np.ones(1), kind=kind)) == pytest.approx(
            float(expected), rel=1e-12
        )
