"""Residual of the synthetic flow's own equations on consecutive model states (physics-informed loss, PINO).

The synthetic world (:mod:`ingest.synthetic`) is forced-dissipative shallow water on the
sphere: for the spectral state ``s = (Φ, ζ, δ)`` (geopotential, vorticity, divergence),

    ∂s/∂t = N(s) + (Φ_jet − Φ)/τ_relax · e_Φ − (ζ, δ)/τ_drag − ν(l)·(ζ, δ) + F_stir · e_ζ

with ``N`` the shallow-water dynamics (torch-harmonics' ``dudtspec``), ``ν(l)`` the solver's
hyperdiffusion rate and ``F_stir`` a random vorticity stirring in total wavenumbers
:func:`ingest.synthetic.stir_band`. The stirring is unknown to a forecaster, so the residual
leaves the stirred vorticity coefficients out and uses the deterministic rest ``T``. Between two
states ``Δt`` apart the residual is

    r = s₁ − Φ_Δt(s₀),

``Φ_Δt`` integrating ``∂s/∂t = T(s)`` over ``Δt`` with Runge–Kutta. A one- or two-point time
quadrature is no good at 6-hour steps: the flow's gravity waves have periods of a few hours, and
the trapezoidal rule leaves ~50 % of the change unexplained even for the true flow. For states
of the unstirred flow the residual is ~1–3 % of the change ``s₁ − s₀``; for states that are not
one step apart it is of the order of the change or larger. With the stirring on, its effect over
6 hours is part of the residual (the equations do not know it). Fields in and out are in physical units;
``z500`` is the geopotential ``g·h`` (m² s⁻²), ``u500``/``v500`` the winds (m s⁻¹).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fourcast.errors import ModelSpecError
from ingest.synthetic import DEFAULT_FLOW, balanced_jet_state, solver_for, stir_band

#: Channels the residual needs, in the order it reads them.
SHALLOW_WATER_CHANNELS = ("z500", "u500", "v500")
#: RK4 is stable for steps ~4x the Adams–Bashforth-3 limit on oscillations; 2x keeps a margin.
RK4_STEP_FACTOR = 2.0
_DAY = 86400.0


class ShallowWaterResidual(nn.Module):
    """Trapezoidal residual of the deterministic shallow-water equations between consecutive states.

    Parameters
    ----------
    nlat, nlon : int
        Equiangular grid with both poles (the store's).
    step_seconds : float
        Time between consecutive states (s).
    channels : sequence of str
        The model's channels; must hold :data:`SHALLOW_WATER_CHANNELS` (others are ignored).
    dtype : torch.dtype
        Real dtype of the computation (float64 for checks, float32 in training).
    substeps : int, optional
        Runge–Kutta steps per ``step_seconds``; by default steps of at most
        :data:`RK4_STEP_FACTOR` times the generator's own (Adams–Bashforth) time step.

    Raises
    ------
    ModelSpecError
        If a channel the equations need is missing.
    """

    target_phi: torch.Tensor  # buffers (lmax, mmax)
    hyperdiffusion: torch.Tensor
    vorticity_mask: torch.Tensor

    def __init__(
        self,
        nlat: int,
        nlon: int,
        step_seconds: float,
        channels,
        dtype: torch.dtype = torch.float32,
        substeps: int | None = None,
    ) -> None:
        super().__init__()
        channels = [str(c) for c in channels]
        missing = [c for c in SHALLOW_WATER_CHANNELS if c not in channels]
        if missing:
            raise ModelSpecError(
                f"the shallow-water residual needs channels {list(SHALLOW_WATER_CHANNELS)}; "
                f"{missing} missing from {channels}"
            )
        self.index = [channels.index(c) for c in SHALLOW_WATER_CHANNELS]
        self.step_seconds = float(step_seconds)
        solver = solver_for(nlat, nlon)
        target = balanced_jet_state(solver)
        self.solver = solver.to(dtype)
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.register_buffer("target_phi", target[0].to(complex_dtype))
        lap = solver.lap.to(dtype)
        self.register_buffer("hyperdiffusion", (lap / lap[-1, 0]) ** 4 / 7200.0)  # the solver's rate, s⁻¹
        low, high = stir_band(solver.lmax)
        l_index = torch.arange(solver.lmax)[:, None]
        keep = ~((l_index >= low) & (l_index <= high))
        self.register_buffer("vorticity_mask", keep.expand(solver.lmax, solver.mmax).to(dtype))
        self.substeps = substeps or max(1, math.ceil(self.step_seconds / (RK4_STEP_FACTOR * solver.dt)))

    @property
    def _mask(self) -> torch.Tensor:
        """``(3, lmax, mmax)``: 1 where the equations are known, 0 on the stirred vorticity coefficients."""
        ones = torch.ones_like(self.vorticity_mask)
        return torch.stack((ones, self.vorticity_mask, ones))

    def spectral(self, fields: torch.Tensor) -> torch.Tensor:
        """``(..., channel, lat, lon)`` physical fields → ``(..., 3, lmax, mmax)`` complex ``(Φ, ζ, δ)``."""
        s = self.solver
        grid = fields[..., self.index, :, :].to(s.lap.dtype)
        phi = s.grid2spec(grid[..., 0, :, :])
        vrtdiv = s.vrtdivspec(grid[..., 1:, :, :])
        return torch.cat((phi.unsqueeze(-3), vrtdiv), dim=-3)

    def tendency(self, spec: torch.Tensor) -> torch.Tensor:
        """Deterministic tendency (per second) of spectral states ``(..., 3, lmax, mmax)``: all but the
        stirring."""
        s = self.solver
        phi_grid = s.spec2grid(spec[..., 0, :, :])
        vort_grid = s.spec2grid(spec[..., 1, :, :])
        uv = s.getuv(spec[..., 1:, :, :])
        flux = s.vrtdivspec(uv * (vort_grid + s.coriolis).unsqueeze(-3))
        mass = s.vrtdivspec(uv * phi_grid.unsqueeze(-3))
        energy = s.grid2spec(phi_grid + 0.5 * (uv**2).sum(dim=-3))
        dphi = -mass[..., 1, :, :] + (self.target_phi - spec[..., 0, :, :]) / (
            DEFAULT_FLOW.relaxation_days * _DAY
        )
        damping = 1.0 / (DEFAULT_FLOW.drag_days * _DAY) + self.hyperdiffusion
        dvort = -flux[..., 1, :, :] - damping * spec[..., 1, :, :]
        ddiv = flux[..., 0, :, :] - s.lap * energy - damping * spec[..., 2, :, :]
        return torch.stack((dphi, dvort, ddiv), dim=-3)

    def advance(self, spec: torch.Tensor) -> torch.Tensor:
        """Spectral states ``(..., 3, lmax, mmax)`` advanced ``step_seconds`` by the deterministic equations.

        Classical Runge–Kutta in :attr:`substeps` equal steps; differentiable.
        """
        dt = self.step_seconds / self.substeps
        for _ in range(self.substeps):
            k1 = self.tendency(spec)
            k2 = self.tendency(spec + 0.5 * dt * k1)
            k3 = self.tendency(spec + 0.5 * dt * k2)
            k4 = self.tendency(spec + dt * k3)
            spec = spec + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return spec

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Residual ``(..., 3, lmax, mmax)``: ``after`` minus ``before`` advanced one step by the equations.

        Both ``(..., channel, lat, lon)`` in physical units, ``step_seconds`` apart. The stirred
        vorticity coefficients are zero (the stirring is not known).
        """
        residual = self.spectral(after) - self.advance(self.spectral(before))
        return residual * self._mask

    def norms(self, spec: torch.Tensor) -> torch.Tensor:
        """Root-mean-square over the sphere of each of ``(Φ, ζ, δ)``: ``(..., 3, l, m)`` → ``(..., 3)``.

        Parseval for the real transform: ``m = 0`` coefficients count once, ``m > 0`` twice
        (their conjugates), over ``4π``.
        """
        weight = torch.full(spec.shape[-1:], 2.0, dtype=self.vorticity_mask.dtype, device=spec.device)
        weight[0] = 1.0
        return ((spec.abs() ** 2 * weight).sum(dim=(-2, -1)) / (4 * torch.pi)).sqrt()

    def relative(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Residual relative to the states' own change: ``(..., 3)``, ``|r| / |(s₁ − s₀)/Δt|`` per equation.

        About 0 for consecutive states of the true flow, about 1 or more for unrelated states.
        """
        change = (self.spectral(after) - self.spectral(before)) * self._mask
        residual = self.forward(before, after)
        return self.norms(residual) / self.norms(change).clamp_min(torch.finfo(residual.real.dtype).tiny)
