"""Ingest throughput: our Dask → sharded Zarr v3 build beside a plain xarray copy and a file copy.

Writes seeded ERA5-layout netCDF files (new CDS layout: ``valid_time``, ``pressure_level``,
float32 + zlib, one file per month) into a temporary folder, then times, in one run and on the
same files:

1. ``ours``: :func:`ingest.readers.open_sources` + :func:`ingest.store.write_store` (NaN checks,
   shards, zstd, statistics over the whole period, reduced from each shard as it is written;
   the climatology, a second read of the period, timed separately);
2. ``plain``: ``xr.open_mfdataset(files).chunk(valid_time=shard_steps).to_zarr(path, zarr_format=3)``
   with default encoding (the rechunk is needed: Zarr refuses the files' uneven netCDF chunks);
3. ``copy``: ``shutil.copyfile`` of the same netCDF files.

Each route runs in its own freshly spawned process, the three routes in turn, ``REPEATS``
times; the best time of each route gives the figures (the machine may be shared), and the
ours/plain ratio of every round is printed to show the spread. Throughput is MB of uncompressed float32 fields
per second (for ``copy``: the same figure, i.e.
how fast the same fields move when only their compressed bytes are copied). Ratios are what to
compare; absolute numbers depend on the machine and its load. Edit ``CASE`` to change the size.

    .venv/bin/python benchmarks/ingest_throughput.py
"""

from __future__ import annotations

import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import xarray as xr

from ingest.cds_layout import write_monthly_files
from ingest.climatology import compute_climatology, write_climatology
from ingest.grid import equiangular_lats, regular_lons
from ingest.readers import open_sources
from ingest.store import StatsPeriod, StoreLayout, write_store

#: 1° grid, 6-hourly, three 500 hPa fields: ~190 MB of float32 for 60 days.
CASE = {"days": 60, "nlat": 181, "nlon": 360, "shard_steps": 28}
REPEATS = 3
VARIABLES = ["z500", "u500", "v500"]
_SHORT = {"z500": "z", "u500": "u", "v500": "v"}
_SCALE = {"z500": (5.5e4, 2e3), "u500": (10.0, 10.0), "v500": (0.0, 8.0)}
_UNITS = {"z500": "m**2 s**-2", "u500": "m s**-1", "v500": "m s**-1"}


def _era5_files(directory: Path, days: int, nlat: int, nlon: int) -> list[Path]:
    times = np.arange(
        np.datetime64("2001-01-01T00"),
        np.datetime64("2001-01-01T00") + np.timedelta64(days, "D"),
        np.timedelta64(6, "h"),
    )
    rng = np.random.default_rng(0)
    lat, lon = equiangular_lats(nlat), regular_lons(nlon)
    pattern = np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None, :]
    dims = ("valid_time", "pressure_level", "latitude", "longitude")
    fields = {}
    for vid in VARIABLES:
        mean, spread = _SCALE[vid]
        drift = np.cumsum(rng.normal(size=times.size)) * 0.05
        values = mean + spread * (
            pattern[None] * np.cos(drift)[:, None, None] + 0.1 * rng.standard_normal((times.size, nlat, nlon))
        )
        fields[_SHORT[vid]] = (dims, values[:, None].astype(np.float32), {"units": _UNITS[vid]})
    ds = xr.Dataset(
        fields,
        coords={
            "valid_time": times.astype("datetime64[ns]"),
            "pressure_level": [500.0],
            "latitude": lat,
            "longitude": lon,
            "number": np.int64(0),
            "expver": ("valid_time", np.full(times.size, "0001")),
        },
    )
    return write_monthly_files(ds, directory, prefix="era5_bench")


def _ours(files: list[Path], out: Path) -> float:
    start = time.perf_counter()
    data = open_sources(files, VARIABLES, CASE["shard_steps"])
    period = StatsPeriod(data["time"].values[0], data["time"].values[-1])
    write_store(data, out, period, StoreLayout(shard_steps=CASE["shard_steps"], compressor="zstd"))
    return time.perf_counter() - start


def _plain(files: list[Path], out: Path) -> float:
    start = time.perf_counter()
    xr.open_mfdataset(files).chunk({"valid_time": CASE["shard_steps"]}).to_zarr(
        out, zarr_format=3, consolidated=False
    )
    return time.perf_counter() - start


def _copy(files: list[Path], out: Path) -> float:
    start = time.perf_counter()
    out.mkdir()
    for f in files:
        shutil.copyfile(f, out / f.name)
    return time.perf_counter() - start


def _climatology(store: Path, out: Path) -> float:
    start = time.perf_counter()
    stored = xr.open_zarr(store, consolidated=False)["data"].chunk({"time": CASE["shard_steps"]})
    times = stored["time"].values
    write_climatology(compute_climatology(stored, times[0], times[-1]), out)
    return time.perf_counter() - start


ROUTES = {"ours": _ours, "plain": _plain, "copy": _copy}


def _in_fresh_process(route, *args) -> float:
    """Run one route in its own process (one HDF5 library state per route, same start for each)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(route, *args).result()


def _size(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        files = _era5_files(root / "raw", CASE["days"], CASE["nlat"], CASE["nlon"])
        steps = CASE["days"] * 4
        megabytes = steps * len(VARIABLES) * CASE["nlat"] * CASE["nlon"] * 4 / 1e6
        file_mb = sum(f.stat().st_size for f in files) / 1e6
        rounds = []
        for _ in range(REPEATS):
            for name in ROUTES:
                shutil.rmtree(root / name, ignore_errors=True)
            rounds.append(
                {name: _in_fresh_process(route, files, root / name) for name, route in ROUTES.items()}
            )
        seconds = {name: min(r[name] for r in rounds) for name in ROUTES}
        climatology_s = _in_fresh_process(_climatology, root / "ours", root / "climatology")
        on_disk = {name: _size(root / name) for name in seconds}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"{len(files)} files, {file_mb:.0f} MB netCDF (zlib), {megabytes:.0f} MB of float32 fields "
        f"({steps} steps x {len(VARIABLES)} x {CASE['nlat']}x{CASE['nlon']}); each route in a fresh process, "
        f"default threaded Dask scheduler"
    )
    print(f"best of {REPEATS} rounds:")
    print(f"{'route':<8}{'seconds':>10}{'MB/s':>10}{'on disk MB':>12}")
    for name, s in seconds.items():
        print(f"{name:<8}{s:10.2f}{megabytes / s:10.1f}{on_disk[name]:12.0f}")
    print(
        f"ratio ours/plain throughput: {seconds['plain'] / seconds['ours']:.2f}"
        f"   ours/copy: {seconds['copy'] / seconds['ours']:.3f}"
    )
    print("ours/plain per round: " + ", ".join(f"{r['plain'] / r['ours']:.2f}" for r in rounds))
    print(
        f"(ours includes opening, checks, shard writes and statistics; the climatology store took another "
        f"{climatology_s:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
