"""Stochastic model error: SPPT-like multiplicative noise on the model's increments.

Initial perturbations alone cannot keep the spread of a data-driven ensemble growing like its
error: a trained network damps small departures from the states it was trained on, while its
own errors grow with lead time. Stochastically perturbed parametrisation tendencies (SPPT,
Buizza et al. 1999; Palmer et al. 2009) represent model error by multiplying the model's
tendency by ``1 + r`` with ``r`` a smooth random pattern, correlated in space and time. Here
the "tendency" is the whole 6-hourly increment of the network::

    x_{k+1} = x_k + (1 + clip(σ_c e_k, −1, 1)) · (M(x_k) − x_k)

with ``e_k`` a unit-variance Gaussian random field on the sphere (one pattern per member, the
same for every channel ``c``, so where the channels' increments grow together they are still
scaled together; the amplitude ``σ_c`` may differ per channel, as calibration chooses), evolving as
a first-order auto-regressive process ``e_k = φ e_{k−1} + √(1 − φ²) η_k``,
``φ = exp(−Δt / τ)`` with decorrelation time ``τ``. The clip keeps the multiplier in ``[0, 2]``
(the increment never reverses), as in ECMWF's SPPT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from ensembles.errors import EnsembleInputError
from ensembles.perturbations import (
    _state_grid,
    _to_grid,
    random_field,
    tau_of_length_scale,
    unit_variance,
    white_coefficients,
)
from ensembles.protocols import Coords
from ingest.dims import CHANNEL, MEMBER


class StochasticTendencyPerturbation:
    """SPPT-like model error (module docstring), satisfying :class:`ensembles.protocols.ModelError`.

    Parameters
    ----------
    amplitude : float
        Standard deviation ``σ`` of the multiplier's pattern for every channel not in
        ``amplitudes``; all 0 leaves every step unchanged (without drawing).
    step_hours : float
        Model time step (h), for the auto-regression.
    amplitudes : mapping of str to float, optional
        ``{channel: σ_c}`` where a channel's amplitude differs from ``amplitude``.
    length_scale_km : float
        Length scale of the pattern (:func:`~ensembles.perturbations.tau_of_length_scale`).
    decorrelation_hours : float
        Decorrelation time ``τ`` of the pattern.
    alpha : float
        Spectral exponent of the pattern (> 1).
    grid_nlat : int, optional
        Latitudes of the equiangular grid the pattern is drawn on; default the state's.
    """

    def __init__(
        self,
        amplitude: float,
        *,
        step_hours: float,
        amplitudes: Mapping[str, float] | None = None,
        length_scale_km: float = 2000.0,
        decorrelation_hours: float = 72.0,
        alpha: float = 3.0,
        grid_nlat: int | None = None,
    ) -> None:
        values = [amplitude, *(amplitudes or {}).values()]
        if any(not np.isfinite(a) or a < 0 for a in values):
            raise EnsembleInputError(
                f"expected finite, non-negative model-error amplitudes, found {amplitude}"
            )
        if not step_hours > 0 or not decorrelation_hours > 0:
            raise EnsembleInputError(
                f"expected positive step and decorrelation times, found step_hours={step_hours}, "
                f"decorrelation_hours={decorrelation_hours}"
            )
        if not np.isfinite(alpha) or alpha <= 1:
            raise EnsembleInputError(f"expected a finite spectral exponent alpha > 1, found {alpha}")
        self.amplitude = float(amplitude)
        self.amplitudes = {str(k): float(v) for k, v in (amplitudes or {}).items()}
        self.tau = tau_of_length_scale(length_scale_km)
        self.length_scale_km = float(length_scale_km)
        self.phi = math.exp(-float(step_hours) / float(decorrelation_hours))
        self.alpha = float(alpha)
        self.grid_nlat = grid_nlat
        self._fields: dict = {}

    def start(self, coords: Coords, generators: list[torch.Generator]) -> _Pattern:
        """The noise of the members ``coords["member"]``, each drawing from its own generator."""
        if len(generators) != len(coords[MEMBER]):
            raise EnsembleInputError(
                f"expected one generator per member ({len(coords[MEMBER])}), found {len(generators)}"
            )
        return _Pattern(self, coords, list(generators), self.channel_amplitudes(coords))

    def channel_amplitudes(self, coords: Coords) -> torch.Tensor:
        """``σ_c`` in the order of ``coords["channel"]``, shape (channel,), float64."""
        channels = [str(c) for c in coords[CHANNEL]]
        return torch.tensor([self.amplitudes.get(c, self.amplitude) for c in channels], dtype=torch.float64)

    def unit_pattern(self, nlat: int, generator: torch.Generator) -> torch.Tensor:
        """A unit-RMS pattern on the equiangular grid of ``nlat`` latitudes, shape (nlat, 2 nlat), float64."""
        if nlat not in self._fields:
            self._fields[nlat] = random_field(nlat, self.alpha, self.tau)
        field = self._fields[nlat]
        return unit_variance(field(1, xi=white_coefficients(field, 1, generator)))[0]


class _Pattern:
    """The AR(1) patterns of one block of members; :meth:`apply` advances them one step."""

    def __init__(
        self,
        owner: StochasticTendencyPerturbation,
        coords: Coords,
        generators: list[torch.Generator],
        sigma: torch.Tensor,
    ):
        self.owner, self.generators, self.sigma = owner, generators, sigma
        self.lat, self.lon = (
            np.asarray(coords["lat"], dtype=np.float64),
            np.asarray(coords["lon"], dtype=np.float64),
        )
        self.nlat = owner.grid_nlat or self.lat.size
        self.pattern: torch.Tensor | None = None

    def apply(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """``before + (1 + clip(σ_c e, −1, 1)) (after − before)``, each (member, channel, lat, lon)."""
        if not bool((self.sigma > 0).any()):
            return after
        _state_grid({"lat": self.lat, "lon": self.lon}, after.shape[-2:])
        fresh = torch.stack([self.owner.unit_pattern(self.nlat, g) for g in self.generators])
        phi = self.owner.phi
        self.pattern = fresh if self.pattern is None else phi * self.pattern + math.sqrt(1 - phi**2) * fresh
        pattern = _to_grid(self.pattern, self.nlat, self.lat, self.lon)
        multiplier = 1 + torch.clamp(self.sigma[None, :, None, None] * pattern[:, None], -1.0, 1.0)
        increment = (after - before).to(torch.float64)
        return (before.to(torch.float64) + multiplier.to(increment.device) * increment).to(after.dtype)
