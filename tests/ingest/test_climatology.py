"""Day-of-year x hour climatology against WeatherBench 2's definition, written out by brute force."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback

from ingest.climatology import climatology_at, compute_climatology, window_weights, write_climatology
from ingest.errors import StoreSchemaError
from ingest.schema import CLIMATOLOGY_DIMS, open_climatology
from tests.ingest.fields import canonical_fields


@pytest.fixture(scope="module")
def three_years():
    return canonical_fields("2003-01-01T00", "2005-12-31T18", nlat=3, nlon=4, chunk_steps=200)


@pytest.fixture(scope="module")
def climatology(three_years, tmp_path_factory):
    path = tmp_path_factory.mktemp("clim") / "climatology.zarr"
    lazy = compute_climatology(three_years, np.datetime64("2003-01-01T00"), np.datetime64("2005-12-31T18"))
    return open_climatology(write_climatology(lazy, path))


def _by_definition(data: xr.DataArray, day: int, hour: int, window: int = 61) -> np.ndarray:
    """Weighted mean over (year, day in window) of the fields at ``hour``; day 366 of a common year is its day
    365."""
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
    np.testing.assert_allclose(
        climatology.sel(dayofyear=day, hour=hour).values, _by_definition(three_years, day, hour), rtol=1e-6
    )


def test_store_layout(climatology):
    assert climatology.dims == CLIMATOLOGY_DIMS
    assert list(climatology["hour"].values) == [0, 6, 12, 18]
    np.testing.assert_array_equal(climatology["dayofyear"].values, np.arange(1, 367))
    assert not np.isnan(climatology.values).any()


def test_selected_at_valid_times_of_any_shape(climatology):
    times = xr.DataArray(
        np.array(
            [["2004-03-01T06", "2005-03-01T06"], ["2010-12-31T18", "2011-01-01T00"]], dtype="datetime64[ns]"
        ),
        dims=("init_time", "lead_time"),
    )
    picked = climatology_at(climatology, times)
    assert picked.dims == ("init_time", "lead_time", "channel", "lat", "lon")
    expect = [[(61, 6), (60, 6)], [(365, 18), (1, 0)]]  # 1 March is day 61 in a leap year
    for i, row in enumerate(expect):
        for j, (day, hour) in enumerate(row):
            np.testing.assert_array_equal(
                picked.values[i, j], climatology.sel(dayofyear=day, hour=hour).values
            )


def test_times_between_the_stored_hours_and_old_layouts_are_refused(climatology, tmp_path):
    with pytest.raises(StoreSchemaError, match="fall between them"):
        climatology_at(
            climatology, xr.DataArray(np.array(["2004-03-01T03"], dtype="datetime64[ns]"), dims="t")
        )
    mean_state = xr.Dataset({"climatology": (("channel", "lat", "lon"), np.zeros((3, 3, 4), np.float32))})
    mean_state.to_zarr(tmp_path / "old.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(StoreSchemaError, match=r"expected climatology\['dayofyear', 'hour'"):
        open_climatology(tmp_path / "old.zarr")


def test_days_no_window_reaches_take_the_period_mean_at_their_hour():
    month = canonical_fields("2003-01-01T00", "2003-01-31T18", nlat=3, nlon=4)
    start, end = np.datetime64("2003-01-01T00"), np.datetime64("2003-01-31T18")
    filled = compute_climatology(month, start, end).compute()
    bare = compute_climatology(month, start, end, fill_uncovered=False).compute()
    assert np.isnan(bare.sel(dayofyear=150)).all() and not np.isnan(bare.sel(dayofyear=20)).any()
    at_noon = month.sel(time=month["time"].dt.hour == 12).astype(np.float64).mean("time")
    np.testing.assert_allclose(filled.sel(dayofyear=150, hour=12).values, at_noon.values, rtol=1e-6)
    np.testing.assert_array_equal(filled.sel(dayofyear=20).values, bare.sel(dayofyear=20).values)


class _TaskCounter(Callback):
    """Counts the tasks Dask's local schedulers run while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.executed = 0

    def _pretask(self, key, dask, state) -> None:
        self.executed += 1


@pytest.mark.parametrize(
    ("start", "end", "step_hours", "chunk_steps"),
    [
        ("2003-01-01T00", "2003-01-10T23", 1, 40),  # hourly: 24 hours of day, 10 days, 6 blocks
        ("2003-01-01T00", "2005-12-31T18", 6, 730),  # 6-hourly: 4 hours, 3 years with a leap day, 7 blocks
    ],
)
def test_the_dask_graph_has_a_few_tasks_per_block_whatever_the_hours_days_and_years(
    tmp_path, start, end, step_hours, chunk_steps
):
    data = canonical_fields(start, end, step_hours=step_hours, nlat=3, nlon=4, chunk_steps=chunk_steps)
    blocks = data.data.numblocks[0]
    lazy = compute_climatology(data, np.datetime64(start), np.datetime64(end))
    assert len(lazy.data.__dask_graph__()) <= 4 * blocks + 4  # read, reduce and merge per block; smooth once
    with _TaskCounter() as counter:
        write_climatology(lazy, tmp_path / "climatology.zarr")
    day_blocks = -(-366 // 61)
    assert counter.executed <= 4 * blocks + 4 + 3 * day_blocks  # and a few per 61-day shard written
    expected = compute_climatology(data.chunk({"time": -1}), np.datetime64(start), np.datetime64(end)).values
    np.testing.assert_allclose(open_climatology(tmp_path / "climatology.zarr").values, expected, rtol=1e-6)


def test_the_climatology_does_not_depend_on_where_the_blocks_are_cut(three_years, climatology):
    # blocks of 5 steps cut days, years and the repeated day 365 of the common years apart
    lazy = compute_climatology(
        three_years.chunk({"time": 5}), np.datetime64("2003-01-01T00"), np.datetime64("2005-12-31T18")
    )
    np.testing.assert_allclose(lazy.values, climatology.values, rtol=1e-6)


_REPO = Path(__file__).resolve().parents[2]
_SLOW_WRITE = """
import sys
from pathlib import Path
import numpy as np
from ingest.climatology import compute_climatology, write_climatology
from tests.ingest.fields import canonical_fields
data = canonical_fields("2003-01-01T00", "2003-01-20T23", step_hours=1, nlat=32, nlon=64, chunk_steps=48)
climatology = compute_climatology(data, data["time"].values[0], data["time"].values[-1])
write_climatology(climatology, Path(sys.argv[1]))
"""
_HOLD_A_TEMPORARY = """
import sys, time
from pathlib import Path
from ingest.climatology import owned_temporary
tmp = owned_temporary(Path(sys.argv[1]))
tmp.mkdir()
print(tmp, flush=True)
time.sleep(120)
"""


def _python(script: str, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(_REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, **popen)


def test_leftovers_of_a_killed_write_are_removed_and_a_live_writers_kept(tmp_path, three_years):
    path = tmp_path / "climatology.zarr"
    killed = _python(_SLOW_WRITE, str(path), stderr=subprocess.PIPE)
    live = _python(_HOLD_A_TEMPORARY, str(path), stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(f".climatology.zarr.partial-*-{killed.pid}-*")):
            assert killed.poll() is None, killed.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never started its temporary store"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        held = Path(live.stdout.readline().strip())
        legacy = tmp_path / ".climatology.zarr.partial-0123456789ab"  # named before writers were recorded
        legacy.mkdir()
        (left,) = tmp_path.glob(f".climatology.zarr.partial-*-{killed.pid}-*")

        lazy = compute_climatology(
            three_years, np.datetime64("2003-01-01T00"), np.datetime64("2005-12-31T18")
        )
        write_climatology(lazy, path)

        assert not left.exists() and not legacy.exists()
        assert held.is_dir()  # a live process's temporary is never touched
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, held.name])
    finally:
        killed.kill()
        live.kill()
        live.wait(timeout=30)
