"""Area-weighted integer coarsening: conserves the area mean, keeps ERA5's pole-including grids."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ingest.coarsen import coarsen, latitude_weights, longitude_weights
from ingest.errors import StoreSchemaError
from ingest.grid import cell_area_weights, equiangular_lats, regular_lons
from tests.ingest.fields import canonical_fields


def _area_mean(field: xr.DataArray) -> np.ndarray:
    weights = cell_area_weights(field["lat"].values)[:, None]
    return (field * weights).mean(("lat", "lon")).values


def test_era5_quarter_degree_becomes_era5_one_degree():
    lat, weights = latitude_weights(equiangular_lats(721), 4)
    np.testing.assert_allclose(lat, np.linspace(90, -90, 181))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert np.count_nonzero(weights[90]) == 5 and np.count_nonzero(weights[0]) == 3  # half rows at band edges
    lon, lon_weights = longitude_weights(regular_lons(1440), 4)
    np.testing.assert_allclose(lon, np.arange(360.0))
    np.testing.assert_allclose(lon_weights[0, [1438, 1439, 0, 1, 2]] * 4, [0.5, 1, 1, 1, 0.5])


@pytest.mark.parametrize(("nlat", "factor"), [(17, 4), (16, 2)])
def test_the_area_mean_is_conserved(nlat, factor):
    fine = canonical_fields("2001-01-01T00", "2001-01-03T00", nlat=nlat, nlon=32)
    if nlat % 2 == 0:  # a grid without poles: rows half a spacing off them
        fine = fine.assign_coords(lat=np.linspace(90, -90, nlat + 1)[:-1] - 90.0 / nlat)
    coarse = coarsen(fine, factor)
    assert coarse.sizes["lon"] == 32 // factor and coarse.chunks is not None
    np.testing.assert_allclose(_area_mean(coarse), _area_mean(fine.compute()), rtol=1e-6)
    np.testing.assert_allclose(coarsen(fine * 0 + 7.0, factor).values, 7.0, rtol=1e-6)


def test_factors_that_do_not_divide_the_grid_are_refused():
    fine = canonical_fields("2001-01-01T00", "2001-01-02T00", nlat=17, nlon=32)
    with pytest.raises(StoreSchemaError, match="dividing nlat - 1 = 16"):
        coarsen(fine, 3)


def test_remap_between_equiangular_grids_with_poles_keeps_the_area_mean_and_constants():
    from ingest.coarsen import remap
    from ingest.grid import cell_area_weights, equiangular_lats, regular_lons

    lat, lon = equiangular_lats(64), regular_lons(128)
    field = np.random.default_rng(0).normal(size=(2, 64, 128))
    for nlat, nlon in ((32, 64), (16, 32)):
        coarse = remap(field, lat, lon, nlat, nlon)
        assert coarse.shape == (2, nlat, nlon)
        mean_fine = (field * cell_area_weights(lat)[:, None]).mean(axis=(-2, -1))
        mean_coarse = (coarse * cell_area_weights(equiangular_lats(nlat))[:, None]).mean(axis=(-2, -1))
        np.testing.assert_allclose(mean_coarse, mean_fine, rtol=0, atol=1e-12 * field.std())
        np.testing.assert_allclose(remap(np.full((64, 128), 3.5), lat, lon, nlat, nlon), 3.5, rtol=1e-12)
    # a field varying slowly is barely changed, a point-to-point noise is averaged down
    smooth = np.cos(np.deg2rad(lat))[:, None] * np.cos(np.deg2rad(lon))[None, :]
    coarse = remap(smooth, lat, lon, 32, 64)
    expected = (
        np.cos(np.deg2rad(equiangular_lats(32)))[:, None] * np.cos(np.deg2rad(regular_lons(64)))[None, :]
    )
    # cell means, not point values: the polar caps (2.9 degrees high) average cos(lat) to 0.038, not 0
    assert np.abs(coarse - expected)[1:-1].max() < 0.02 and np.abs(coarse - expected).max() < 0.05
    assert remap(field, lat, lon, 32, 64).std() < 0.6 * field.std()
