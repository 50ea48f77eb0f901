"""The one seeded test data factory of ``tests/ingest``: canonical fields on a coarse global grid.

:func:`make_fields` draws every field the tests need — a seasonal and a diurnal cycle plus red
noise around each variable's typical magnitude, always inside its physical range — as a
:class:`Fields` value. :meth:`Fields.canonical` gives the store's ``[time, channel, lat, lon]``
DataArray (for store, statistics and climatology tests); :mod:`tests.ingest.layouts` writes the
same values into every file layout the CDS has delivered (for reader tests).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from ingest.grid import equiangular_lats, regular_lons

#: The store tests' channels (the synthetic flow's).
CHANNELS = ("z500", "u500", "v500")
PRESSURE_IDS = ("z500", "z850", "t850")
SURFACE_IDS = ("t2m", "u10m", "msl")
ALL_IDS = PRESSURE_IDS + SURFACE_IDS
#: Typical magnitude (mean, spread) of each field in lexicon units; values stay within mean ± 1.8 spread.
_SCALES = {"z500": (5.4e4, 2.0e3), "u500": (8.0, 10.0), "v500": (0.0, 8.0), "z850": (14_000.0, 500.0),
           "t850": (275.0, 10.0), "t2m": (285.0, 12.0), "u10m": (0.0, 6.0), "msl": (101_300.0, 1200.0)}


@dataclass(frozen=True)
class Fields:
    """Canonical fields: ``values[id]`` has shape (time, lat, lon), float32.

    ``lat`` runs 90 → −90 and ``lon`` 0 → 360, as the canonical form; ``expver`` gives the
    experiment of each time step.
    """

    times: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    values: dict[str, np.ndarray]
    expver: np.ndarray

    def select(self, steps: slice | np.ndarray, ids: tuple[str, ...] | None = None) -> Fields:
        """The fields at some time steps (and for some ids)."""
        ids = tuple(self.values) if ids is None else ids
        return replace(self, times=self.times[steps].copy(), expver=self.expver[steps].copy(),
                       values={vid: self.values[vid][steps].copy() for vid in ids})

    def shifted(self, offset: float, expver: str) -> Fields:
        """The same times with every value moved by ``offset``, labelled with another experiment."""
        return replace(self, values={k: v + np.float32(offset) for k, v in self.values.items()},
                       expver=np.full(self.times.size, expver))

    def stacked(self, ids: tuple[str, ...] | None = None) -> np.ndarray:
        """Values as the canonical ``[time, channel, lat, lon]`` array (every id by default)."""
        return np.stack([self.values[vid] for vid in (tuple(self.values) if ids is None else ids)], axis=1)

    def canonical(self, chunk_steps: int = 16) -> xr.DataArray:
        """``DataArray[time, channel, lat, lon]`` float32, Dask-backed with ``chunk_steps`` steps per chunk."""
        data = xr.DataArray(self.stacked(), dims=("time", "channel", "lat", "lon"),
                            coords={"time": self.times, "channel": np.array(list(self.values), dtype=object),
                                    "lat": self.lat, "lon": self.lon})
        return data.chunk({"time": chunk_steps, "channel": -1, "lat": -1, "lon": -1})


def make_fields(start: str = "2000-01-01T00", end: str | None = None, *, ntime: int = 8, step_hours: int = 6,
                nlat: int = 7, nlon: int = 12, seed: int = 0, ids: tuple[str, ...] = ALL_IDS) -> Fields:
    """Seeded fields every ``step_hours`` from ``start`` to ``end`` (or ``ntime`` steps) on an
    equiangular grid including the poles.

    Each field is ``mean + spread · (0.6 sin(2π d/365.25) + 0.2 cos(2π d) + tanh(0.05 W))`` with
    ``d`` the days since ``start`` and ``W`` a random walk in time per grid point.
    """
    first, step = np.datetime64(start, "ns"), np.timedelta64(step_hours, "h")
    count = ntime if end is None else int((np.datetime64(end, "ns") - first) // step) + 1
    times = first + np.arange(count) * step
    rng = np.random.default_rng(seed)
    days = (times - times[0]) / np.timedelta64(1, "D")
    season = np.sin(2 * np.pi * days / 365.25)[:, None, None, None]
    diurnal = np.cos(2 * np.pi * days)[:, None, None, None]
    noise = np.cumsum(rng.normal(size=(times.size, len(ids), nlat, nlon)), axis=0) * 0.05
    mean = np.array([_SCALES[vid][0] for vid in ids])[None, :, None, None]
    spread = np.array([_SCALES[vid][1] for vid in ids])[None, :, None, None]
    values = (mean + spread * (0.6 * season + 0.2 * diurnal + np.tanh(noise))).astype(np.float32)
    return Fields(times, equiangular_lats(nlat), regular_lons(nlon),
                  {vid: values[:, i] for i, vid in enumerate(ids)}, np.full(count, "0001"))


def canonical_fields(start: str, end: str, step_hours: int = 6, nlat: int = 9, nlon: int = 16, seed: int = 0,
                     chunk_steps: int = 16) -> xr.DataArray:
    """The store tests' data: :data:`CHANNELS` from :func:`make_fields` as a canonical DataArray."""
    fields = make_fields(start, end, step_hours=step_hours, nlat=nlat, nlon=nlon, seed=seed, ids=CHANNELS)
    return fields.canonical(chunk_steps)
