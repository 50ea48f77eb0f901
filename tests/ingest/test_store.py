import logging
import shutil
from collections import Counter

import numpy as np
import pytest
import xarray as xr
import zarr
from dask.callbacks import Callback

from ingest.climatology import climatology_at
from ingest.coarsen import coarsen
from ingest.errors import StoreSchemaError, UnknownVariableError
from ingest.grid import cell_area_weights
from ingest.schema import CLIMATOLOGY, CLIMATOLOGY_DIMS, open_climatology, open_store
from ingest.store import StatsPeriod, StoreLayout, open_sources, write_store
from tests.conftest import STATS, VARIABLES
from tests.ingest.fields import canonical_fields


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
    with xr.open_dataset(era5_files[1]) as source:
        stored = open_store(store)["data"].sel(time=source["valid_time"].values, channel="u500")
        np.testing.assert_array_equal(stored.values, source["u"].sel(pressure_level=500).values)


def test_statistics_use_the_training_period_only(store):
    ds = open_store(store)
    train = ds["data"].sel(time=slice(STATS.start, STATS.end)).values.astype(np.float64)
    np.testing.assert_allclose(ds["mean"].values, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(ds["std"].values, train.std(axis=(0, 2, 3)), rtol=1e-4)
    everything = ds["data"].values.astype(np.float64)
    assert not np.allclose(ds["mean"].values, everything.mean(axis=(0, 2, 3)), rtol=1e-7)


def test_the_write_is_the_only_compute_and_reads_each_input_chunk_once(era5_files, tmp_path):
    """Statistics come from the shards being written, and no task of the input graph (file reads,
    NaN checks) runs twice, even for a file chunk that straddles two shards."""
    executed = []

    class Recorder(Callback):
        def _pretask(self, key, dsk, state):
            executed.append(key)

    data = open_sources(era5_files, VARIABLES, shard_steps=8)  # January (124 steps) ends inside shard 15
    input_keys = set(data.data.__dask_graph__())
    with Recorder():
        store = write_store(data, tmp_path / "store.zarr", STATS, StoreLayout(shard_steps=8))
    input_runs = Counter(key for key in executed if key in input_keys)
    assert input_runs and max(input_runs.values()) == 1, [k for k, n in input_runs.items() if n > 1][:3]
    checks = [key for key in input_runs if "_raise_if_not_finite" in str(key)]
    assert len(checks) == data.sizes["time"] // 8, "one NaN check per shard, inside the write"
    train = open_store(store)["data"].sel(time=slice(STATS.start, STATS.end)).values.astype(np.float64)
    np.testing.assert_allclose(
        open_store(store)["tendency_std"].values, (train[1:] - train[:-1]).std(axis=(0, 2, 3)), rtol=1e-5
    )


def test_extending_with_another_period_gives_the_statistics_of_a_fresh_build(tmp_path):
    data = canonical_fields("2001-01-01T00", "2001-01-20T18", chunk_steps=8)
    first = StatsPeriod(np.datetime64("2001-01-01T00"), np.datetime64("2001-01-06T00"))
    later = StatsPeriod(np.datetime64("2001-01-02T12"), np.datetime64("2001-01-18T00"))
    extended = tmp_path / "extended.zarr"
    write_store(data.sel(time=slice(None, "2001-01-09T18")), extended, first, StoreLayout(shard_steps=8))
    write_store(data, extended, later, StoreLayout(shard_steps=8))  # linked shards reduced again, from disk
    fresh = write_store(data, tmp_path / "fresh.zarr", later, StoreLayout(shard_steps=8))
    for name in ("mean", "std", "minimum", "maximum", "tendency_std"):
        np.testing.assert_array_equal(open_store(extended)[name].values, open_store(fresh)[name].values)
    for name in ("fields", "tendency"):
        np.testing.assert_array_equal(
            zarr.open_array(extended / "partial_statistics" / name)[:],
            zarr.open_array(fresh / "partial_statistics" / name)[:],
        )
    assert open_store(extended).attrs["stats_end"] == str(later.end)


def test_climatology_is_its_own_day_of_year_by_hour_store(store_paths):
    store, climatology = store_paths
    clim = open_climatology(climatology)
    assert clim.dims == CLIMATOLOGY_DIMS and clim.name == CLIMATOLOGY
    assert list(clim["hour"].values) == [0, 6, 12, 18] and list(clim["channel"].values) == VARIABLES
    train = open_store(store)["data"].sel(time=slice(STATS.start, STATS.end))
    at_train_times = climatology_at(clim, train["time"])
    assert at_train_times.dims == train.dims and not np.isnan(at_train_times.values).any()
    # one month smoothed over 61 days: close to the period mean, not equal to any single day
    np.testing.assert_allclose(
        at_train_times.mean("time").values,
        train.mean("time").values,
        rtol=0.05,
        atol=0.05 * float(train.std()),
    )
    assert clim.attrs["stats_start"] == str(STATS.start) and clim.attrs["window_days"] == 61


@pytest.mark.parametrize("compressor", ["none", "blosc"])
def test_every_compressor_stores_the_same_values(tmp_path, compressor):
    data = canonical_fields("2001-01-01T00", "2001-01-10T18")
    period = StatsPeriod(np.datetime64("2001-01-01T00"), np.datetime64("2001-01-08T18"))
    reference = write_store(data, tmp_path / "zstd.zarr", period, StoreLayout(shard_steps=12))
    other = write_store(data, tmp_path / f"{compressor}.zarr", period, StoreLayout(12, compressor))
    np.testing.assert_array_equal(open_store(other)["data"].values, open_store(reference)["data"].values)
    assert len(zarr.open_array(other / "data").compressors) == (compressor != "none")


def test_a_coarsened_store_keeps_the_area_mean(tmp_path):
    data = canonical_fields("2001-01-01T00", "2001-01-05T18", nlat=17, nlon=32)
    period = StatsPeriod(np.datetime64("2001-01-01T00"), np.datetime64("2001-01-05T18"))
    store = open_store(
        write_store(coarsen(data, 4), tmp_path / "coarse.zarr", period, StoreLayout(shard_steps=8))
    )
    assert (store.sizes["lat"], store.sizes["lon"]) == (5, 8) and list(store["lat"].values) == [
        90,
        45,
        0,
        -45,
        -90,
    ]
    weights = {n: cell_area_weights(np.linspace(90, -90, n))[:, None] for n in (5, 17)}
    coarse_mean = (store["data"] * weights[5]).mean(("lat", "lon")).values
    np.testing.assert_allclose(coarse_mean, (data * weights[17]).mean(("lat", "lon")).values, rtol=1e-6)


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
    xr.Dataset({"data": (("x",), np.zeros(3))}).to_zarr(
        tmp_path / "other.zarr", zarr_format=3, consolidated=False
    )
    with pytest.raises(StoreSchemaError, match="missing"):
        open_store(tmp_path / "other.zarr")


def test_leftovers_of_killed_builds_are_removed_by_the_next_run(tmp_path):
    data = canonical_fields("2001-01-01T00", "2001-01-05T18")
    period = StatsPeriod(np.datetime64("2001-01-01T00"), np.datetime64("2001-01-04T18"))
    store, climatology = tmp_path / "store.zarr", tmp_path / "climatology.zarr"
    write_store(data.isel(time=slice(0, 12)), store, period, StoreLayout(shard_steps=8), climatology)
    # what kills leave: a store renamed aside by a publish, a climatology being written, and an
    # extension's build and progress records (the extension is not run again)
    leftovers = [
        tmp_path / ".store.zarr.retired-0123456789ab",
        tmp_path / ".climatology.zarr.partial-0123456789ab",
        tmp_path / ".store.zarr.building",
        tmp_path / ".store.zarr.progress",
    ]
    shutil.copytree(store, leftovers[0])
    shutil.copytree(climatology, leftovers[1])
    shutil.copytree(store, leftovers[2])
    (leftovers[3] / "done").mkdir(parents=True)
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    write_store(data.isel(time=slice(0, 12)), store, period, StoreLayout(shard_steps=8), climatology)
    assert [p for p in leftovers if p.exists()] == []
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before


def test_reingesting_corrected_dates_replaces_their_shards_and_the_statistics(tmp_path, caplog):
    """ERA5T -> final ERA5: the same dates come again with other values, weeks later."""
    data = canonical_fields("2001-01-01T00", "2001-01-10T18", chunk_steps=8)  # 40 steps: 5 shards of 8
    period, layout = (
        StatsPeriod(np.datetime64("2001-01-01T00"), np.datetime64("2001-01-08T18")),
        StoreLayout(8),
    )
    store = write_store(data, tmp_path / "store.zarr", period, layout, tmp_path / "climatology.zarr")
    shard_file = lambda shard: store / "data" / "c" / str(shard) / "0" / "0" / "0"  # noqa: E731
    inodes = {shard: shard_file(shard).stat().st_ino for shard in range(5)}
    final = data.copy(data=data.data.copy())
    final[[9, 10, 33]] = final[[9, 10, 33]] + 0.5 * final.std(("time", "lat", "lon"))  # shards 1 and 4
    with caplog.at_level(logging.INFO, logger="ingest.store"):
        write_store(final.isel(time=slice(8, None)), store, period, layout, tmp_path / "climatology.zarr")
    assert (
        "3 time steps differ from the store, first 2001-01-03T06" in caplog.text
        and "shards [1, 4]" in caplog.text
    )
    np.testing.assert_array_equal(open_store(store)["data"].values, final.values)
    assert [shard for shard in range(5) if shard_file(shard).stat().st_ino != inodes[shard]] == [1, 4]
    fresh = write_store(final, tmp_path / "fresh.zarr", period, layout, tmp_path / "fresh_climatology.zarr")
    for name in ("mean", "std", "minimum", "maximum", "tendency_std"):
        np.testing.assert_array_equal(open_store(store)[name].values, open_store(fresh)[name].values)
    np.testing.assert_array_equal(
        open_climatology(tmp_path / "climatology.zarr").values,
        open_climatology(tmp_path / "fresh_climatology.zarr").values,
    )
    for name in ("checksums/steps", "partial_statistics/fields", "partial_statistics/tendency"):
        np.testing.assert_array_equal(zarr.open_array(store / name)[:], zarr.open_array(fresh / name)[:])
    untouched = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    write_store(final, store, period, layout)  # the same values again: nothing to replace
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == untouched
