"""Shared fixtures of the ensembles tests: a small seeded truth and toy prognostics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from ensembles.protocols import Coords
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.grid import equiangular_lats, regular_lons

CHANNELS = ["z500", "u500"]
STEP = np.timedelta64(6, "h")
START = np.datetime64("2020-01-01T00", "ns")


def grid_coords(channels: list[str] = CHANNELS) -> Coords:
    """Coords of a 9 x 16 grid, latitude north to south."""
    return {CHANNEL: np.array(channels), LAT: equiangular_lats(9), LON: regular_lons(16)}


def make_truth(n_times: int = 12, seed: int = 0) -> xr.DataArray:
    """Seeded random analyses ``(time, channel, lat, lon)``, float32, 6-hourly from 2020-01-01."""
    coords = grid_coords()
    rng = np.random.default_rng(seed)
    shape = (n_times, len(CHANNELS), coords[LAT].size, coords[LON].size)
    offset = np.array([5.4e4, 10.0])[None, :, None, None]
    spread = np.array([800.0, 8.0])[None, :, None, None]
    values = (offset + spread * rng.standard_normal(shape)).astype(np.float32)
    times = START + np.arange(n_times) * STEP
    return xr.DataArray(values, dims=(TIME, CHANNEL, LAT, LON), coords={TIME: times, **coords}, name="truth")


class IdentityPrognostic:
    """Returns its input: a persistence 'model'."""

    def __init__(self, channels: list[str] = CHANNELS, step_size: np.timedelta64 = STEP) -> None:
        self._coords = grid_coords(channels)
        self._step = step_size

    @property
    def input_coords(self) -> Coords:
        return dict(self._coords)

    @property
    def output_coords(self) -> Coords:
        return dict(self._coords)

    @property
    def step_size(self) -> np.timedelta64:
        return self._step

    def step(self, x: torch.Tensor, coords: Coords) -> tuple[torch.Tensor, Coords]:
        return x.clone(), coords


class DriftPrognostic(IdentityPrognostic):
    """Moves fields one cell east and adds a nonlinear term: each member evolves on its own."""

    def step(self, x: torch.Tensor, coords: Coords) -> tuple[torch.Tensor, Coords]:
        return torch.roll(x, shifts=1, dims=-1) + 0.5 * torch.sin(x / 7.0), coords


@pytest.fixture
def truth() -> xr.DataArray:
    return make_truth()


@pytest.fixture
def climatology(truth: xr.DataArray) -> xr.DataArray:
    return truth.mean(TIME).rename("climatology")


@pytest.fixture
def coords() -> Coords:
    """``channel``/``lat``/``lon`` labels of the test grid (z500, u500 on 9 x 16)."""
    return grid_coords()


@pytest.fixture
def identity_prognostic() -> IdentityPrognostic:
    return IdentityPrognostic()


@pytest.fixture
def drift_prognostic() -> DriftPrognostic:
    return DriftPrognostic()


@pytest.fixture
def truth_factory():
    """``truth_factory(n_times=12, seed=0)`` builds another seeded truth."""
    return make_truth
