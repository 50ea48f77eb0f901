"""Mergeable statistics: partial states combine exactly; the store's statistics equal numpy's."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from dask.distributed import LocalCluster

from ingest.errors import StoreSchemaError
from ingest.schema import open_store
from ingest.statistics import (
    Moments,
    Partials,
    StatsWindow,
    block_partials,
    choose_default_period,
    compute_statistics,
    default_period,
    incoming_span,
    incoming_tendency,
    merge_all,
    merge_partials,
)
from ingest.store import StatsPeriod, StoreLayout, write_store
from pipeline.cli import main
from pipeline.paths import Paths
from tests.ingest import layouts
from tests.ingest.fields import canonical_fields, make_fields


def test_partial_states_merge_to_the_whole_in_any_grouping():
    rng = np.random.default_rng(3)
    values = rng.normal(5.0, 3.0, size=(50, 2, 4, 5))
    values[rng.random(values.shape) < 0.05] = np.nan
    cuts = [0, 3, 4, 17, 30, 31, 50]
    states = [Moments.of_block(values[a:b]) for a, b in itertools.pairwise(cuts)]
    by_tree = merge_all(states)
    in_order = states[0]
    for state in states[1:]:
        in_order = in_order.merge(state)
    shuffled = merge_all([states[i] for i in rng.permutation(len(states))])
    flat = np.moveaxis(values, 1, 0).reshape(2, -1)
    for merged in (by_tree, in_order, shuffled):
        np.testing.assert_allclose(merged.mean, np.nanmean(flat, axis=1), rtol=1e-12)
        np.testing.assert_allclose(merged.std, np.nanstd(flat, axis=1), rtol=1e-12)
        np.testing.assert_array_equal(merged.minimum, np.nanmin(flat, axis=1))
        np.testing.assert_array_equal(merged.count, np.isfinite(flat).sum(axis=1))


def test_store_statistics_agree_with_numpy_on_the_training_subset(tmp_path):
    data = canonical_fields("2001-01-01T00", "2001-03-31T18", chunk_steps=24)
    period = StatsPeriod(np.datetime64("2001-01-10T00"), np.datetime64("2001-02-20T18"))
    store = write_store(data, tmp_path / "store.zarr", period, StoreLayout(shard_steps=24))
    ds = xr.open_zarr(store, consolidated=False)
    assert list(ds["channel"].values) == ["z500", "u500", "v500"] and ds["data"].dims == (
        "time",
        "channel",
        "lat",
        "lon",
    )
    train = ds["data"].sel(time=slice(period.start, period.end)).values.astype(np.float64)
    flat = np.moveaxis(train, 1, 0).reshape(3, -1)
    tendency = np.moveaxis(train[1:] - train[:-1], 1, 0).reshape(3, -1)
    expected = {
        "mean": flat.mean(axis=1),
        "std": flat.std(axis=1),
        "minimum": flat.min(axis=1),
        "maximum": flat.max(axis=1),
        "tendency_std": tendency.std(axis=1),
    }
    for name, values in expected.items():
        for c, scale in enumerate(flat.std(axis=1)):  # near-zero means are compared on the channel's scale
            np.testing.assert_allclose(
                ds[name].values[c], values[c], rtol=1e-6, atol=1e-6 * scale, err_msg=name
            )
    assert ds.attrs["stats_start"] == str(period.start) and ds.attrs["tendency_hours"] == 6
    assert not np.allclose(ds["mean"].values, ds["data"].values.mean(axis=(0, 2, 3)), rtol=1e-6)


def test_the_tendency_spans_six_hours_whatever_the_step():
    hourly = canonical_fields("2001-01-01T00", "2001-01-08T23", step_hours=1)
    stats = compute_statistics(hourly, hourly["time"].values[0], hourly["time"].values[-1], step_hours=1)
    values = hourly.values.astype(np.float64)
    six_hours = np.moveaxis(values[6:] - values[:-6], 1, 0).reshape(3, -1)
    np.testing.assert_allclose(stats["tendency_std"].values, six_hours.std(axis=1), rtol=1e-6)
    assert stats.attrs["tendency_hours"] == 6


@pytest.mark.parametrize("chunk_steps", [1, 4, 7, 500])
def test_statistics_do_not_depend_on_where_the_blocks_are_cut(chunk_steps):
    # hourly steps: the 6-hour tendency spans 6 steps, more than a block of 1, 4 or 7 steps
    hourly = canonical_fields("2001-01-01T00", "2001-01-08T23", step_hours=1, chunk_steps=chunk_steps)
    start, end = hourly["time"].values[5], hourly["time"].values[150]
    stats = compute_statistics(hourly, start, end, step_hours=1)
    train = hourly.sel(time=slice(start, end)).values.astype(np.float64)
    flat = np.moveaxis(train, 1, 0).reshape(3, -1)
    six_hours = np.moveaxis(train[6:] - train[:-6], 1, 0).reshape(3, -1)
    expected = {
        "mean": flat.mean(axis=1),
        "std": flat.std(axis=1),
        "minimum": flat.min(axis=1),
        "maximum": flat.max(axis=1),
        "tendency_std": six_hours.std(axis=1),
    }
    scale = flat.std(axis=1)  # near-zero means are compared on the channel's scale
    for name, values in expected.items():
        np.testing.assert_allclose(
            stats[name].values / scale, values / scale, rtol=1e-6, atol=1e-6, err_msg=name
        )


def test_block_partials_cover_each_value_and_each_pair_once():
    values = np.arange(40, dtype=np.float64).reshape(20, 2, 1, 1) ** 1.5
    window = StatsWindow(first=3, stop=17, lag=3)
    parts = []
    for offset in range(0, 20, 5):  # blocks of 5 steps; pairs (j - 3, j) cross every boundary
        part = block_partials(values[offset : offset + 5], offset, window)
        span = incoming_span(offset, 5, window)
        if span is not None:
            part = part.with_incoming(incoming_tendency(values[span[0] : span[1]], span[0], offset, window))
        parts.append(part)
    total = merge_partials(parts)
    inside = values[3:17, :, 0, 0]
    np.testing.assert_array_equal(total.fields.count, [14, 14])
    np.testing.assert_array_equal(total.tendency.count, [11, 11])
    np.testing.assert_allclose(total.fields.mean, inside.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(total.tendency.std, (inside[3:] - inside[:-3]).std(axis=0), rtol=1e-12)
    restored = Partials.from_json(json.loads(json.dumps(total.to_json())))
    for name in ("count", "mean", "m2", "minimum", "maximum"):
        np.testing.assert_array_equal(getattr(restored.fields, name), getattr(total.fields, name))


def test_the_default_period_leaves_the_last_years_out():
    long = np.arange(np.datetime64("1990-01-01T00"), np.datetime64("2020-01-01T00"), np.timedelta64(6, "h"))
    assert default_period(long) == (long[0], np.datetime64("2016-12-31T18"))
    short = long[: 4 * 365]
    start, end = default_period(short)
    assert start == short[0] and end == short[int(0.8 * short.size) - 1]


def test_a_constant_channel_is_refused():
    data = canonical_fields("2001-01-01T00", "2001-01-05T00") * 0 + 1.0
    with pytest.raises(StoreSchemaError, match="std must be positive"):
        compute_statistics(data, data["time"].values[0], data["time"].values[-1], 6)


def test_the_default_period_fits_records_too_short_to_leave_years_out():
    two_days = np.array(["2001-03-01T00", "2001-03-02T00"], dtype="datetime64[ns]")
    start, end, reason = choose_default_period(two_days, 3)
    assert (start, end) == (two_days[0], two_days[1])  # not one step, which no statistics can use
    assert reason == (
        "all 2 steps: the data spans 1 calendar year(s), too few to leave out the last 3 and keep 2 "
        "steps, and 80 % of them is under the 2 steps needed"
    )
    # four calendar years, but the first holds one step: leaving three out would keep just that step
    late_start = np.arange(
        np.datetime64("1999-12-31T18"), np.datetime64("2003-01-01T00"), np.timedelta64(6, "h")
    )
    start, end, reason = choose_default_period(late_start, 3)
    assert (start, end) == (late_start[0], late_start[int(0.8 * late_start.size) - 1])
    assert reason.startswith(
        "the first 80 % of the steps: the data spans 4 calendar year(s), too few to leave out"
    )
    ten_days = np.arange(
        np.datetime64("2001-03-01T00"), np.datetime64("2001-03-11T00"), np.timedelta64(1, "D")
    )
    assert choose_default_period(ten_days, 3)[:2] == (ten_days[0], ten_days[7])
    assert choose_default_period(ten_days, 0) == (
        ten_days[0],
        ten_days[-1],
        "all the data (no years left out)",
    )


def test_a_two_step_store_takes_the_default_period_and_records_why(tmp_path):
    data = canonical_fields("2001-03-01T00", "2001-03-02T00", step_hours=24)
    period = StatsPeriod.default(data["time"].values, 3)
    store = write_store(data, tmp_path / "store.zarr", period, StoreLayout(shard_steps=4))
    ds = xr.open_zarr(store, consolidated=False)
    recorded = [np.datetime64(ds.attrs[key]) for key in ("stats_start", "stats_end")]
    np.testing.assert_array_equal(recorded, data["time"].values)
    assert ds.attrs["stats_period_default"].startswith("all 2 steps: the data spans 1 calendar year(s)")
    np.testing.assert_allclose(
        ds["mean"].values, data.values.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-6
    )


def test_a_period_of_one_step_is_refused_with_the_callers_remedy(tmp_path):
    data = canonical_fields("2001-03-01T00", "2001-03-02T00", step_hours=24)
    one_step = StatsPeriod(data["time"].values[0], data["time"].values[0], remedy="widen ingest.statistics")
    with pytest.raises(
        StoreSchemaError,
        match=r"statistics period 2001-03-01.*selects 1 time steps; the data covers "
        r"2001-03-01.*2001-03-02.*; widen ingest\.statistics",
    ):
        write_store(data, tmp_path / "store.zarr", one_step, StoreLayout(shard_steps=4))
    assert not (tmp_path / "store.zarr").exists()


@pytest.fixture
def scheduler_address():
    """A threaded in-process Dask cluster for ``--scheduler-address`` (cheaper than the stage's own
    processes)."""
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _two_daily_files(raw: Path) -> None:
    first, second = (
        make_fields(ntime=1, ids=("z500",)),
        make_fields(ntime=1, ids=("z500",), seed=1, start="2000-01-02T00"),
    )
    layouts.write_new_cds(first, raw, stem="era5_20000101")
    layouts.write_new_cds(second, raw, stem="era5_20000102")


def test_cli_ingests_two_daily_files_with_the_default_period(
    tmp_path, write_run_config, scheduler_address, capsys
):
    paths = Paths(tmp_path / "work")
    _two_daily_files(paths.raw)
    config = write_run_config(
        tmp_path / "config.yaml",
        paths.workdir,
        ingest={"variables": ["z500"], "source": "files", "shard_steps": 4, "statistics": None},
    )
    assert main(["ingest", "run", "--config", str(config), "--scheduler-address", scheduler_address]) == 0, (
        capsys.readouterr().err
    )
    store = open_store(paths.store)
    assert store.attrs["stats_end"].startswith("2000-01-02T00")
    assert store.attrs["stats_period_default"].startswith("all 2 steps")

    explicit = write_run_config(
        tmp_path / "explicit.yaml",
        tmp_path / "other",
        ingest={
            "variables": ["z500"],
            "source": "files",
            "shard_steps": 4,
            "statistics": {"start": "2000-01-01T00:00", "end": "2000-01-01T12:00"},
        },
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "era5").symlink_to(paths.raw)
    capsys.readouterr()
    assert main(["ingest", "run", "--config", str(explicit), "--scheduler-address", scheduler_address]) == 1
    err = capsys.readouterr().err
    assert "selects 1 time steps" in err and "widen ingest.statistics to at least 2 time steps" in err
    assert "ingest.statistics_leave_out_years" in err and not (tmp_path / "other" / "store.zarr").exists()


def test_a_new_statistics_period_without_new_dates_recomputes_the_statistics_and_climatology(tmp_path):
    data = canonical_fields("2001-01-01T00", "2001-02-28T18", chunk_steps=40)
    layout = StoreLayout(shard_steps=40)
    january = StatsPeriod(np.datetime64("2001-01-01T00", "ns"), np.datetime64("2001-01-31T18", "ns"))
    later = StatsPeriod(np.datetime64("2001-01-15T00", "ns"), np.datetime64("2001-02-20T18", "ns"))
    store, climatology = tmp_path / "store.zarr", tmp_path / "climatology.zarr"
    write_store(data, store, january, layout, climatology_path=climatology)
    first_shard = store / "data" / "c" / "0" / "0" / "0" / "0"
    inode = first_shard.stat().st_ino

    write_store(data, store, later, layout, climatology_path=climatology)  # the same dates, another period

    fresh = write_store(
        data, tmp_path / "fresh.zarr", later, layout, climatology_path=tmp_path / "fresh_clim.zarr"
    )
    ds, expected = open_store(store), open_store(fresh)
    assert (ds.attrs["stats_start"], ds.attrs["stats_end"]) == (str(later.start), str(later.end))
    for name in ("mean", "std", "minimum", "maximum", "tendency_std"):
        np.testing.assert_array_equal(ds[name].values, expected[name].values, err_msg=name)
    np.testing.assert_array_equal(ds["data"].values, data.values)
    assert first_shard.stat().st_ino == inode  # complete shards are linked, not rewritten
    clim, expected_clim = (
        xr.open_zarr(path, consolidated=False) for path in (climatology, tmp_path / "fresh_clim.zarr")
    )
    assert clim.attrs["stats_start"] == str(later.start)
    np.testing.assert_array_equal(clim["climatology"].values, expected_clim["climatology"].values)

    stamp = (store / "zarr.json").stat().st_mtime_ns
    write_store(
        data, store, later, layout, climatology_path=climatology
    )  # the same period again: nothing to do
    assert (store / "zarr.json").stat().st_mtime_ns == stamp
