"""The streaming training loader: bounded memory, the same batches as the in-memory one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr

from fourcast.data import BatchCursor, StoreWindows, batch_stream
from fourcast.errors import DataWindowError
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.store import StatsPeriod, StoreLayout, write_store

TRAIN = ("2000-01-01", "2000-01-31T18")


def _batches(windows: StoreWindows, count: int, workers: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    stream = batch_stream(
        windows, 4, rank=0, world_size=1, seed=3, cursor=BatchCursor(), workers=workers, prefetch_factor=2
    )
    return [next(stream) for _ in range(count)]


def test_streaming_and_in_memory_loaders_give_identical_batches(store):
    memory = _batches(StoreWindows(store, *TRAIN, n_ahead=2, cache="memory"), 6)
    streamed = _batches(StoreWindows(store, *TRAIN, n_ahead=2, cache="none"), 6)
    with_workers = _batches(StoreWindows(store, *TRAIN, n_ahead=2), 6, workers=2)
    for (xm, ym), (xs, ys), (xw, yw) in zip(memory, streamed, with_workers, strict=True):
        assert torch.equal(xm, xs) and torch.equal(ym, ys)
        assert torch.equal(xm, xw) and torch.equal(ym, yw)
    assert memory[0][0].shape == (4, 3, 16, 32) and memory[0][1].shape == (4, 2, 3, 16, 32)


def test_channel_subset_is_the_full_window_restricted(store):
    full = StoreWindows(store, *TRAIN, n_ahead=1)
    subset = StoreWindows(store, *TRAIN, n_ahead=1, channels=["v500", "z500"])
    assert subset.channels == ["v500", "z500"]
    x, y = subset[7]
    torch.testing.assert_close(x, full[7][0][[2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(y, full[7][1][:, [2, 0]], rtol=0, atol=0)
    np.testing.assert_array_equal(subset.std, full.std[[2, 0]])
    np.testing.assert_allclose(subset.time_mean(), full.time_mean()[[2, 0]], rtol=0, atol=1e-6)


def test_loader_refuses_unknown_cache_and_channels(store):
    with pytest.raises(DataWindowError, match="cache must be one of"):
        StoreWindows(store, *TRAIN, cache="disk")
    with pytest.raises(DataWindowError, match=r"not \['t850'\]"):
        StoreWindows(store, *TRAIN, channels=["z500", "t850"])


def test_memory_budget_counts_prefetched_batches(store):
    windows = StoreWindows(store, *TRAIN, n_ahead=2)
    assert windows.window_bytes == 4 * 3 * 3 * 16 * 32
    assert windows.memory_budget(4) == 3 * 4 * windows.window_bytes
    assert windows.memory_budget(4, workers=2, prefetch_factor=3) == (2 * 3 + 3) * 4 * windows.window_bytes
    cached = StoreWindows(store, *TRAIN, n_ahead=2, cache="memory")
    assert cached.memory_budget(4) == windows.memory_budget(4) + 124 * 3 * 16 * 32 * 4


# A store whose training range (~260 MB) dwarfs both the loader's budget and the process's own
# RSS noise (allocator, imports): 2000 6-hourly steps of 4 channels on 64x128.
BIG_STEPS, BIG_GRID, BIG_CHANNELS = 2000, (64, 128), ["z500", "t850", "u10m", "v10m"]
#: Allowed RSS growth beyond the loader budget: allocator pools, the optimiser state, validation.
RSS_MARGIN = 64 * 2**20


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    times = np.datetime64("2001-01-01T00", "ns") + np.arange(BIG_STEPS) * np.timedelta64(6, "h")
    nlat, nlon = BIG_GRID
    fields = da.random.RandomState(0).standard_normal(
        (BIG_STEPS, len(BIG_CHANNELS), nlat, nlon), chunks=(100, -1, -1, -1)
    )
    data = xr.DataArray(
        fields.astype(np.float32),
        dims=(TIME, CHANNEL, LAT, LON),
        coords={
            TIME: times,
            CHANNEL: BIG_CHANNELS,
            LAT: np.linspace(89.0, -89.0, nlat),
            LON: np.arange(nlon) * 360.0 / nlon,
        },
    )
    period = StatsPeriod(times[0], times[200])
    return write_store(
        data,
        tmp_path_factory.mktemp("big") / "store.zarr",
        period,
        StoreLayout(shard_steps=100, compressor="none"),
    )


def _train_in_subprocess(store: Path, cache: str, first: int) -> dict:
    """Train 2 steps from store rows ``first``..-21 (validating on the last 20) in a fresh process."""
    times = np.datetime_as_string(
        xr.open_zarr(store, zarr_format=3, consolidated=False)[TIME].values, unit="h"
    )
    args = [str(store), times[first], times[-21], times[-20], times[-1], cache]
    script = Path(__file__).with_name("rss_train.py")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_from_a_store_far_larger_than_the_loader_budget_keeps_memory_bounded(big_store):
    # Training itself (optimiser, best-state copies, allocator pools) adds a fixed amount whatever the
    # range; what must not grow with the length of the training period is the rest, so each loader
    # is measured on the whole range and on a short one (80 steps) and the two growths compared.
    streamed, streamed_short = (_train_in_subprocess(big_store, "none", first) for first in (0, -101))
    assert streamed["steps"] == 2
    assert streamed["range_bytes"] >= 20 * streamed["budget_bytes"]
    longer = streamed["range_bytes"] - streamed_short["range_bytes"]
    assert (
        streamed["growth_bytes"] - streamed_short["growth_bytes"] <= streamed["budget_bytes"] + RSS_MARGIN
    ), (streamed, streamed_short)
    # The measurement sees a loader that does hold the range: the in-memory cache grows with it.
    cached, cached_short = (_train_in_subprocess(big_store, "memory", first) for first in (0, -101))
    assert cached["growth_bytes"] - cached_short["growth_bytes"] >= 0.9 * longer, (cached, cached_short)
    print(
        f"range {streamed['range_bytes'] / 2**20:.1f} MB (short "
        f"{streamed_short['range_bytes'] / 2**20:.1f} MB), "
        f"budget {streamed['budget_bytes'] / 2**20:.2f} MB; peak RSS growth long/short: streaming "
        f"{streamed['growth_bytes'] / 2**20:.1f}/{streamed_short['growth_bytes'] / 2**20:.1f} MB, in-memory "
        f"{cached['growth_bytes'] / 2**20:.1f}/{cached_short['growth_bytes'] / 2**20:.1f} MB"
    )
