"""Regions: masks by definition, boxes across 0° and the date line, region-weighted scores."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ensembles.errors import RegionError, ScoringError
from ensembles.metrics import crps, crps_pointwise, energy_score, rmse
from ensembles.regions import REGIONS, TROPICS, Region, get_region
from ingest.dims import INIT_TIME, LAT, LON, MEMBER
from ingest.grid import equiangular_lats, regular_lons

LAT_DEG = equiangular_lats(37)  # 5° rows, 90 → −90, holding ±20 exactly
LON_DEG = regular_lons(72)  # 5° columns, 0 → 355


def _band_areas(lat: np.ndarray) -> np.ndarray:
    """sin(upper edge) − sin(lower edge) of each row, edges halfway to the neighbours, poles clipped."""
    edges = np.concatenate([[90.0], 0.5 * (lat[1:] + lat[:-1]), [-90.0]])
    return np.sin(np.deg2rad(edges[:-1])) - np.sin(np.deg2rad(edges[1:]))


def _da(values: np.ndarray, dims=(INIT_TIME, LAT, LON)) -> xr.DataArray:
    return xr.DataArray(values, dims=dims, coords={LAT: LAT_DEG, LON: LON_DEG})


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def test_tropics_mask_is_exactly_the_points_within_20_degrees():
    mask = TROPICS.mask(LAT_DEG, LON_DEG)
    assert mask.dims == (LAT, LON)
    expected = np.broadcast_to((np.abs(LAT_DEG) <= 20.0)[:, None], mask.shape)
    np.testing.assert_array_equal(mask.values, expected.astype(float))
    assert int(mask.sum(LON).astype(bool).sum()) == 9  # rows 20, 15, …, −20


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("global", np.ones(LAT_DEG.size, dtype=bool)),
        ("extra-tropics-north", LAT_DEG >= 20.0),
        ("extra-tropics-south", LAT_DEG <= -20.0),
        ("tropics", np.abs(LAT_DEG) <= 20.0),
    ],
)
def test_presets_are_latitude_bands(name, rows):
    mask = get_region(name).mask(LAT_DEG, LON_DEG)
    np.testing.assert_array_equal(mask.values, np.broadcast_to(rows[:, None], mask.shape).astype(float))


def test_a_box_across_the_date_line_works_in_both_longitude_conventions():
    box = Region.box(-10.0, 10.0, 170.0, -170.0)
    for lon in (LON_DEG, np.where(LON_DEG > 180.0, LON_DEG - 360.0, LON_DEG)):
        columns = lon[box.mask(LAT_DEG, lon).values.any(axis=0)]
        np.testing.assert_array_equal(np.sort(np.mod(columns, 360.0)), [170.0, 175.0, 180.0, 185.0, 190.0])


def test_a_box_across_the_prime_meridian_wraps():
    box = Region.box(30.0, 60.0, 330.0, 30.0, name="europe")
    columns = LON_DEG[box.mask(LAT_DEG, LON_DEG).values.any(axis=0)]
    np.testing.assert_array_equal(columns, [0, 5, 10, 15, 20, 25, 30, 330, 335, 340, 345, 350, 355])
    xr.testing.assert_equal(
        box.mask(LAT_DEG, LON_DEG), Region.box(30.0, 60.0, -30.0, 30.0).mask(LAT_DEG, LON_DEG)
    )
    assert box.name == "europe"


def test_region_weighted_rmse_equals_numpy_over_the_masked_points(rng):
    forecast, truth = rng.standard_normal((2, 4, LAT_DEG.size, LON_DEG.size))
    for region in (TROPICS, Region.box(30.0, 60.0, 330.0, 30.0)):
        inside = region.mask(LAT_DEG, LON_DEG).values.astype(bool)
        area = np.broadcast_to(_band_areas(LAT_DEG)[:, None], inside.shape)[inside]
        per_time = (area * ((forecast - truth)[:, inside]) ** 2).sum(-1) / area.sum()
        weights = region.weights(LAT_DEG, LON_DEG)
        assert float(rmse(_da(forecast), _da(truth), weights=weights)) == pytest.approx(
            np.sqrt(per_time.mean()), rel=1e-12
        )


def test_region_weights_have_mean_one_over_the_region_and_zero_outside():
    weights = TROPICS.weights(LAT_DEG, LON_DEG)
    inside = TROPICS.mask(LAT_DEG, LON_DEG).values.astype(bool)
    assert float(weights.values[inside].mean()) == pytest.approx(1.0, rel=1e-12)
    assert not weights.values[~inside].any()
    uniform = TROPICS.weights(LAT_DEG, LON_DEG, weights=np.ones(LAT_DEG.size))
    np.testing.assert_array_equal(uniform.values, inside.astype(float))


def test_nans_outside_the_region_do_not_count(rng):
    forecast, truth = rng.standard_normal((2, 3, LAT_DEG.size, LON_DEG.size))
    holed = forecast.copy()
    holed[:, 0, :] = np.nan  # the north pole row, outside the tropics
    weights = TROPICS.weights(LAT_DEG, LON_DEG)
    complete = rmse(_da(forecast), _da(truth), weights=weights)
    assert float(rmse(_da(holed), _da(truth), weights=weights)) == float(complete)
    assert np.isnan(float(rmse(_da(holed), _da(truth))))


def test_ensemble_scores_take_region_weights(rng):
    members = rng.standard_normal((3, 2, LAT_DEG.size, LON_DEG.size))
    truth = rng.standard_normal((2, LAT_DEG.size, LON_DEG.size))
    ensemble = _da(members, dims=(MEMBER, INIT_TIME, LAT, LON))
    inside = TROPICS.mask(LAT_DEG, LON_DEG).values.astype(bool)
    area = np.broadcast_to(_band_areas(LAT_DEG)[:, None], inside.shape)[inside]
    weights = TROPICS.weights(LAT_DEG, LON_DEG)

    pointwise = crps_pointwise(ensemble, _da(truth), kind="plain")
    expected_crps = ((area * pointwise.values[:, inside]).sum(-1) / area.sum()).mean()
    assert float(crps(ensemble, _da(truth), weights=weights, kind="plain")) == pytest.approx(
        expected_crps, rel=1e-12
    )

    def norm(x: np.ndarray) -> np.ndarray:
        return np.sqrt((area * x[..., inside] ** 2).sum(-1) / area.sum())

    skill = np.mean([norm(m - truth) for m in members], axis=0)
    spread = sum(norm(members[i] - members[j]) for i in range(3) for j in range(3))
    expected_es = (skill - spread / (2 * 3 * 2)).mean()
    assert float(energy_score(ensemble, _da(truth), weights=weights)) == pytest.approx(expected_es, rel=1e-10)


def test_an_empty_region_names_the_box_and_the_grid():
    coarse_lat = equiangular_lats(8)  # rows ±12.9°, ±38.6°, …: none within 1° of the equator
    with pytest.raises(
        RegionError,
        match=r"region 'narrow' \(lat -1\.\.1, lon 0\.\.360\) holds no grid point of positive weight; "
        r"the grid spans lat -90\.\.90 \(8 values\), lon 0\.\.355 \(72 values\)",
    ):
        Region("narrow", (-1.0, 1.0)).weights(coarse_lat, LON_DEG)


def test_bad_regions_are_refused():
    with pytest.raises(
        RegionError, match=r"expected -90 <= south <= north <= 90, found lat \(20\.0, -20\.0\)"
    ):
        Region("upside-down", (20.0, -20.0))
    with pytest.raises(
        RegionError, match=r"unknown region 'arctic'; expected one of \['extra-tropics-north'"
    ):
        get_region("arctic")
    assert issubclass(RegionError, ScoringError)
    assert sorted(REGIONS) == ["extra-tropics-north", "extra-tropics-south", "global", "tropics"]
