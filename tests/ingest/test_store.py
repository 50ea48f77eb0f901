import numpy as np
import pytest
import xarray as xr
import zarr

from ingest.errors import StoreSchemaError, UnknownVariableError
from ingest.schema import CLIMATOLOGY, open_climatology, open_store
from ingest.store import StatsPeriod, StoreLayout, open_sources, write_store

from tests.conftest import STATS, VARIABLES


def test_store_is_labelled_zarr_v3_with_one_step_chunks_in_shards(store):
    ds = xr.open_zarr(store, consolidated=False)
    assert ds["data"].dims == ("time", "channel", "lat", "lon")
    assert list(ds["channel"].values) == VARIABLES
    assert ds["lat"].values[0] == 90.0 and np.all(np.diff(ds["lat"].values) < 0)
    assert np.all(np.diff(ds["time"].values) == np.timedelta64(6, "h"))
    array = zarr.open_array(store / "data", mode="r")
    assert array.metadata.zarr_format == 3
    assert array.chunks == (1, 3, 16, 32)
    assert array.shards == (40, 3, 16, 32)
    shard_files = [p for p in (store / "data" / "c").rglob("*") if p.is_file()]
    assert len(shard_files) == int(np.ceil(ds.sizes["time"] / 40))
    assert ds.attrs["stats_start"].startswith("2000-01-01") and ds.attrs["step_hours"] == 6


def test_values_round_trip_from_the_cds_files(era5_files, store):
    source = xr.open_dataset(era5_files[1])
    stored = open_store(store)["data"].sel(time=source["valid_time"].values, channel="u500")
    np.testing.assert_array_equal(stored.values, source["u"].sel(pressure_level=500).values)


def test_statistics_use_the_training_period_only(store):
    ds = open_store(store)
    train = ds["data"].sel(time=slice(STATS.start, STATS.end)).values.astype(np.float64)
    np.testing.assert_allclose(ds["mean"].values, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(ds["std"].values, train.std(axis=(0, 2, 3)), rtol=1e-4)
    everything = ds["data"].values.astype(np.float64)
    assert not np.allclose(ds["mean"].values, everything.mean(axis=(0, 2, 3)), rtol=1e-7)


def test_climatology_is_the_training_mean_state(store_paths):
    store, climatology = store_paths
    clim = open_climatology(climatology)
    train = open_store(store)["data"].sel(time=slice(STATS.start, STATS.end))
    np.testing.assert_allclose(clim.values, train.astype("float64").mean("time").values, rtol=1e-5, atol=1e-4)
    assert clim.name == CLIMATOLOGY


def test_bad_input_leaves_the_existing_store_intact(era5_files, store, tmp_path):
    target = tmp_path / "store.zarr"
    write_store(open_sources(era5_files, VARIABLES, 40), target, STATS, StoreLayout(shard_steps=40))
    before = open_store(target)["data"].values
    with pytest.raises(UnknownVariableError, match="t850 needs ERA5 variable 't'"):
        write_store(open_sources(era5_files, ["z500", "t850"], 40), target, STATS)
    bad_period = StatsPeriod(np.datetime64("1990-01-01"), np.datetime64("1990-02-01"))
    with pytest.raises(StoreSchemaError, match="selects 0 time steps"):
        write_store(open_sources(era5_files, VARIABLES, 40), target, bad_period)
    np.testing.assert_array_equal(open_store(target)["data"].values, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


def test_layout_and_open_errors_name_what_was_expected(tmp_path):
    with pytest.raises(StoreSchemaError, match="compressor must be one of"):
        StoreLayout(compressor="lz4")
    with pytest.raises(StoreSchemaError, match="no training store"):
        open_store(tmp_path / "missing.zarr")
    xr.Dataset({"data": (("x",), np.zeros(3))}).to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(StoreSchemaError, match="missing"):
        open_store(tmp_path / "other.zarr")
