"""Synthetic ERA5: a forced-dissipative shallow-water flow written in the new-CDS netCDF layout.

The flow stands in for 500 hPa geopotential and winds when no real ERA5 is at hand. One layer
of fluid on the rotating sphere is integrated with torch-harmonics' spectral
:class:`~torch_harmonics.examples.ShallowWaterSolver` tendencies, to which this module adds

* Newtonian relaxation of the geopotential towards a zonally symmetric, balanced two-jet state
  (time scale :data:`RELAXATION_DAYS`), which keeps the jets alive;
* linear drag on vorticity and divergence (time scale :data:`DRAG_DAYS`);
* red-noise (AR(1)) vorticity stirring in total wavenumbers :data:`STIR_WAVENUMBERS`, with
  memory :data:`STIR_MEMORY_DAYS`, which keeps the flow unsteady;
* the solver's own implicit hyperdiffusion of vorticity and divergence.

After a spin-up the flow is statistically stationary, so any period is as good as another for
training. The shallow-water geopotential ``g·h`` is written as ``z`` at 500 hPa and the winds
as ``u`` and ``v``, in the layout the Climate Data Store has returned since September 2024:
dims ``valid_time, pressure_level, latitude, longitude``, ``valid_time`` in seconds since
1970, scalar ``number``, string ``expver`` per time, float32 with zlib compression.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch_harmonics.examples import ShallowWaterSolver

from ingest.atomic import discard, replace_path, temporary_sibling
from ingest.errors import IngestError
from ingest.grid import equiangular_lats, regular_lons
from ingest.lexicon import Variable, get_variable

#: Global mean height of the fluid (m); ``g`` times it is the mean of ``z``.
MEAN_HEIGHT_M = 5600.0
#: Peak zonal wind (m s⁻¹) of the relaxation state ``u = JET_SPEED · sin²(2φ)``, jets at ±45°.
JET_SPEED = 25.0
#: E-folding time of the geopotential's relaxation towards the jet state (days).
RELAXATION_DAYS = 5.0
#: E-folding time of the linear drag on vorticity and divergence (days).
DRAG_DAYS = 20.0
#: Total wavenumbers stirred (inclusive), clipped to the resolved range at coarse grids.
STIR_WAVENUMBERS = (6, 12)
#: Memory (e-folding time) of the red-noise stirring (days).
STIR_MEMORY_DAYS = 2.0
#: Grid-point root-mean-square of the stirring's vorticity tendency (s⁻²).
STIR_RMS = 1.2e-10
#: Gravity (m s⁻²) and Earth radius (m), as the solver's defaults.
GRAVITY = 9.80616
RADIUS = 6.37122e6
#: Courant number used to choose the time step from the fastest resolved gravity wave.
COURANT = 0.75

#: Canonical ids of the fields written, in file order.
VARIABLE_IDS = ("z500", "u500", "v500")
#: What CDS files carry as ``GRIB_paramId`` and ``standard_name`` per GRIB short name.
_GRIB_IDENTITY = {
    "z": (129, "geopotential"),
    "u": (131, "eastward_wind"),
    "v": (132, "northward_wind"),
}
_SECONDS_PER_DAY = 86400.0
_EPOCH_UNITS = "seconds since 1970-01-01"
_CALENDAR = "proleptic_gregorian"
_MANIFEST = "synthetic_manifest.json"


class SyntheticSpecError(IngestError, ValueError):
    """Arguments to the synthetic source are out of range or inconsistent."""


class _ForcedShallowWater:
    """Forced-dissipative shallow water on one equiangular grid, stepped by Adams–Bashforth 3.

    The state is one spectral tensor of shape ``(3, lmax, mmax)`` (complex128) holding
    geopotential (m² s⁻²), vorticity (s⁻¹) and divergence (s⁻¹). The last three total
    tendencies are kept between calls to :meth:`advance`, so output snapshots do not restart
    the multistep scheme.

    Parameters
    ----------
    nlat, nlon : int
        Grid size; latitudes include both poles and run north to south.
    step_seconds : float
        Output interval (s); the time step divides it exactly.
    seed : int
        Seed of the stirring's random numbers.
    """

    def __init__(self, nlat: int, nlon: int, step_seconds: float, seed: int) -> None:
        lmax = (nlat + 1) // 2
        self.substeps = math.ceil(step_seconds / _stable_dt(lmax))
        self.dt = step_seconds / self.substeps
        self.solver = ShallowWaterSolver(
            nlat, nlon, self.dt, lmax=lmax, mmax=lmax, radius=RADIUS, gravity=GRAVITY, havg=MEAN_HEIGHT_M
        ).double()
        self.generator = torch.Generator().manual_seed(seed)
        self.target = self._balanced_jet_state()
        self.state = self.target.clone()
        self.stir_mask = self._stir_mask()
        self.stir_decay = math.exp(-self.dt / (STIR_MEMORY_DAYS * _SECONDS_PER_DAY))
        self.stirring = self._stir_noise()
        self.history: list[torch.Tensor] = []

    def _balanced_jet_state(self) -> torch.Tensor:
        """Zonal jets ``u = JET_SPEED · sin²(2φ)`` with the geopotential in gradient-wind balance.

        Returns
        -------
        torch.Tensor, shape (3, lmax, mmax), complex128
            Spectral geopotential, vorticity and (zero) divergence.
        """
        s = self.solver
        lat = s.lats.reshape(-1, 1).expand(s.nlat, s.nlon)
        u = JET_SPEED * torch.sin(2 * lat) ** 2
        wind = torch.stack((u, torch.zeros_like(u)))
        vrtdiv = s.vrtdivspec(wind)
        # ∂δ/∂t = 0 for the zonal flow: ∇²(Φ + |v|²/2) = k·∇×((ζ + f) v)
        flux = s.vrtdivspec(wind * (s.spec2grid(vrtdiv[0]) + s.coriolis))
        phi = s.invlap * flux[0] - s.grid2spec(0.5 * (wind**2).sum(dim=0))
        phi[0, 0] = s.grid2spec(torch.full_like(u, GRAVITY * MEAN_HEIGHT_M))[0, 0]
        return torch.tril(torch.cat((phi[None], vrtdiv)))

    def _stir_mask(self) -> torch.Tensor:
        """Amplitude of each stirred spectral coefficient, zero outside the band.

        Returns
        -------
        torch.Tensor, shape (lmax, mmax), float64
            Standard deviation (s⁻²) per coefficient for a grid-point RMS of :data:`STIR_RMS`;
            complex coefficients with ``m > 0`` stand for two real modes each.
        """
        lmax, mmax = self.solver.lmax, self.solver.mmax
        low, high = _stir_band(lmax)
        l = torch.arange(lmax, dtype=torch.float64).reshape(-1, 1).expand(lmax, mmax)
        m = torch.arange(mmax, dtype=torch.float64).reshape(1, -1).expand(lmax, mmax)
        in_band = (l >= low) & (l <= high) & (m <= l)
        modes = (high + 1) ** 2 - low**2
        return torch.where(in_band, STIR_RMS * math.sqrt(4 * math.pi / modes), 0.0)

    def _stir_noise(self) -> torch.Tensor:
        """One draw of the stirring's stationary distribution, shape (lmax, mmax), complex128."""
        re, im = torch.randn((2, *self.stir_mask.shape), dtype=torch.float64, generator=self.generator)
        im[:, 0] = 0.0
        re[:, 1:] *= math.sqrt(0.5)
        im[:, 1:] *= math.sqrt(0.5)
        return torch.complex(re, im) * self.stir_mask

    def _tendency(self, state: torch.Tensor) -> torch.Tensor:
        """Total tendency: shallow-water dynamics + relaxation + drag + stirring, per second."""
        forcing = torch.zeros_like(state)
        forcing[0] = (self.target[0] - state[0]) / (RELAXATION_DAYS * _SECONDS_PER_DAY)
        forcing[1:] = -state[1:] / (DRAG_DAYS * _SECONDS_PER_DAY)
        forcing[1] += self.stirring
        return self.solver.dudtspec(state) + forcing

    def advance(self, nsteps: int) -> None:
        """Integrate ``nsteps`` time steps of :attr:`dt` seconds, updating the state in place."""
        innovation = math.sqrt(1.0 - self.stir_decay**2)
        for _ in range(nsteps):
            self.history = [self._tendency(self.state), *self.history[:2]]
            self.state = self.state + self.dt * _adams_bashforth(self.history)
            self.state[1:] = self.solver.hyperdiff * self.state[1:]
            self.stirring = self.stir_decay * self.stirring + innovation * self._stir_noise()

    def fields(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Geopotential (m² s⁻²), eastward and northward wind (m s⁻¹), each (nlat, nlon) float32."""
        grid = self.solver.gethuv(self.state).numpy().astype(np.float32)
        return grid[0], grid[1], grid[2]


def _stable_dt(lmax: int) -> float:
    """Largest time step (s) that keeps the fastest resolved gravity wave at :data:`COURANT`."""
    wave_speed = math.sqrt(GRAVITY * MEAN_HEIGHT_M) + 4 * JET_SPEED
    return COURANT * RADIUS / (wave_speed * math.sqrt(lmax * (lmax - 1)))


def _stir_band(lmax: int) -> tuple[int, int]:
    """Stirred total wavenumbers (inclusive): :data:`STIR_WAVENUMBERS` within ``1 … lmax−1``."""
    high = min(STIR_WAVENUMBERS[1], lmax - 1)
    return min(STIR_WAVENUMBERS[0], max(1, high // 2)), high


def _adams_bashforth(history: list[torch.Tensor]) -> torch.Tensor:
    """Adams–Bashforth combination of the newest-first tendencies (Euler, AB2, then AB3)."""
    if len(history) == 1:
        return history[0]
    if len(history) == 2:
        return 1.5 * history[0] - 0.5 * history[1]
    return (23.0 * history[0] - 16.0 * history[1] + 5.0 * history[2]) / 12.0
