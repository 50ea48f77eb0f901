"""Day-of-year x hour climatology against WeatherBench 2's definition, written out by brute force."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ingest.climatology import climatology_at, compute_climatology, window_weights, write_climatology
from ingest.errors import StoreSchemaError
from ingest.schema import CLIMATOLOGY_DIMS, open_climatology

from tests.ingest.fields import make_fields


@pytest.fixture(scope="module")
def three_years():
    return make_fields("2003-01-01T00", "2005-12-31T18", nlat=3, nlon=4, chunk_steps=200)


@pytest.fixture(scope="module")
def climatology(three_years, tmp_path_factory):
    path = tmp_path_factory.mktemp("clim") / "climatology.zarr"
    lazy = compute_climatology(three_years, np.datetime64("2003-01-01T00"), np.datetime64("2005-12-31T18"))
    return open_climatology(write_climatology(lazy, path))


def _by_definition(data: xr.DataArray, day: int, hour: int, window: int = 61) -> np.ndarray:
    """Weighted mean over (year, day in window) of the fields at ``hour``; day 366 of a common year is its day 365."""
    weights, half = window_weights(window), window // 2
    total, weight = 0.0, 0.0
    for year in np.unique(data["time"].dt.year.values):
        one = data.sel(time=(data["time"].dt.year == year) & (data["time"].dt.hour == hour))
        leap = bool(one["time"].dt.is_leap_year.values[0])
        for k in range(-half, half + 1):
            d = (day - 1 + k) % 366 + 1
            source = 365 if d == 366 and not leap else d
            match = one.sel(time=one["time"].dt.dayofyear == source)
            if match.sizes["time"]:
                total = total + weights[k + half] * match.values[0].astype(np.float64)
                weight += weights[k + half]
    return total / weight


def test_window_is_weatherbench2s_triangle():
    w = window_weights(61)
    assert w.size == 61 and w[0] == w[-1] == 0.0 and np.argmax(w) == 30
    np.testing.assert_allclose(w, w[::-1])
    np.testing.assert_allclose(w.mean(), 1.0)
    np.testing.assert_allclose(np.diff(w[:31]), np.full(30, w[30] / 30))


@pytest.mark.parametrize(("day", "hour"), [(1, 0), (59, 6), (60, 12), (200, 18), (366, 0)])
def test_values_follow_the_definition(three_years, climatology, day, hour):
    np.testing.assert_allclose(climatology.sel(dayofyear=day, hour=hour).values,
                               _by_definition(three_years, day, hour), rtol=1e-6)


def test_store_layout(climatology):
    assert climatology.dims == CLIMATOLOGY_DIMS
    assert list(climatology["hour"].values) == [0, 6, 12, 18]
    np.testing.assert_array_equal(climatology["dayofyear"].values, np.arange(1, 367))
    assert not np.isnan(climatology.values).any()


def test_selected_at_valid_times_of_any_shape(climatology):
    times = xr.DataArray(np.array([["2004-03-01T06", "2005-03-01T06"], ["2010-12-31T18", "2011-01-01T00"]],
                                  dtype="datetime64[ns]"), dims=("init_time", "lead_time"))
    picked = climatology_at(climatology, times)
    assert picked.dims == ("init_time", "lead_time", "channel", "lat", "lon")
    expect = [[(61, 6), (60, 6)], [(365, 18), (1, 0)]]  # 1 March is day 61 in a leap year
    for i, row in enumerate(expect):
        for j, (day, hour) in enumerate(row):
            np.testing.assert_array_equal(picked.values[i, j], climatology.sel(dayofyear=day, hour=hour).values)


def test_times_between_the_stored_hours_and_old_layouts_are_refused(climatology, tmp_path):
    with pytest.raises(StoreSchemaError, match="fall between them"):
        climatology_at(climatology, xr.DataArray(np.array(["2004-03-01T03"], dtype="datetime64[ns]"), dims="t"))
    mean_state = xr.Dataset({"climatology": (("channel", "lat", "lon"), np.zeros((3, 3, 4), np.float32))})
    mean_state.to_zarr(tmp_path / "old.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(StoreSchemaError, match=r"expected climatology\['dayofyear', 'hour'"):
        open_climatology(tmp_path / "old.zarr")


def test_days_no_window_reaches_take_the_period_mean_at_their_hour():
    month = make_fields("2003-01-01T00", "2003-01-31T18", nlat=3, nlon=4)
    start, end = np.datetime64("2003-01-01T00"), np.datetime64("2003-01-31T18")
    filled = compute_climatology(month, start, end).compute()
    bare = compute_climatology(month, start, end, fill_uncovered=False).compute()
    assert np.isnan(bare.sel(dayofyear=150)).all() and not np.isnan(bare.sel(dayofyear=20)).any()
    at_noon = month.sel(time=month["time"].dt.hour == 12).astype(np.float64).mean("time")
    np.testing.assert_allclose(filled.sel(dayofyear=150, hour=12).values, at_noon.values, rtol=1e-6)
    np.testing.assert_array_equal(filled.sel(dayofyear=20).values, bare.sel(dayofyear=20).values)
