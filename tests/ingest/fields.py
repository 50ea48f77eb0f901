"""Small seeded in-memory fields in the canonical layout, for store tests that need no netCDF files."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ingest.grid import equiangular_lats, regular_lons

CHANNELS = ["z500", "u500", "v500"]
#: Typical magnitudes (mean, spread) of each channel, inside the lexicon's physical ranges.
_SCALES = {"z500": (5.4e4, 2.0e3), "u500": (8.0, 10.0), "v500": (0.0, 8.0)}


def make_fields(start: str, end: str, step_hours: int = 6, nlat: int = 9, nlon: int = 16, seed: int = 0,
                chunk_steps: int = 16) -> xr.DataArray:
    """``[time, channel, lat, lon]`` float32 with a seasonal cycle, a diurnal cycle and red noise, Dask-backed."""
    times = np.arange(np.datetime64(start), np.datetime64(end) + np.timedelta64(step_hours, "h"),
                      np.timedelta64(step_hours, "h"))
    rng = np.random.default_rng(seed)
    days = (times - times[0]) / np.timedelta64(1, "D")
    season = np.sin(2 * np.pi * days / 365.25)[:, None, None, None]
    diurnal = np.cos(2 * np.pi * days)[:, None, None, None]
    noise = np.cumsum(rng.normal(size=(times.size, len(CHANNELS), nlat, nlon)), axis=0) * 0.05
    mean = np.array([_SCALES[c][0] for c in CHANNELS])[None, :, None, None]
    spread = np.array([_SCALES[c][1] for c in CHANNELS])[None, :, None, None]
    values = (mean + spread * (0.6 * season + 0.2 * diurnal + np.tanh(noise))).astype(np.float32)
    data = xr.DataArray(values, dims=("time", "channel", "lat", "lon"),
                        coords={"time": times, "channel": np.array(CHANNELS, dtype=object),
                                "lat": equiangular_lats(nlat), "lon": regular_lons(nlon)})
    return data.chunk({"time": chunk_steps, "channel": -1, "lat": -1, "lon": -1})
