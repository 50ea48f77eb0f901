"""Perturbations of an initial state, satisfying :class:`ensembles.protocols.Perturbation`.

A perturbation receives ``x`` of shape ``(member, channel, lat, lon)`` in physical units, its
coords, and a :class:`torch.Generator` that is its only source of randomness: the runner hands
each member its own generator, so a member is reproducible from its seed alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch_harmonics import InverseRealVectorSHT, RealSHT
from torch_harmonics.random_fields import GaussianRandomFieldS2

from ensembles.errors import EnsembleInputError
from ensembles.protocols import Coords, Perturbation, Prognostic
from ingest.dims import CHANNEL, LAT, LON
from ingest.grid import cell_area_weights, equiangular_lats, regular_lons, same_coords
from ingest.lexicon import LEXICON

#: Mean radius of the Earth (km): a length scale ``L`` on the Earth is ``tau = EARTH_RADIUS_KM / L``.
EARTH_RADIUS_KM = 6371.0


def tau_of_length_scale(length_scale_km: float) -> float:
    """The inverse correlation length ``tau`` on the unit sphere of a length scale on the Earth (km).

    The fields' spectrum ``C_l ∝ (l(l+1) + tau²)^(-alpha)`` is flat for ``l ≲ tau`` and falls
    off beyond: ``tau = R / L`` puts the knee at wavelength ``2πL``, the Matérn length scale
    ``L`` (a correlation length of order ``L``).
    """
    if not np.isfinite(length_scale_km) or length_scale_km <= 0:
        raise EnsembleInputError(f"expected a finite, positive length scale in km, found {length_scale_km}")
    return EARTH_RADIUS_KM / float(length_scale_km)


class NoPerturbation:
    """The identity: every member starts from the unperturbed state."""

    def __call__(
        self, x: torch.Tensor, coords: Coords, generator: torch.Generator
    ) -> tuple[torch.Tensor, Coords]:
        """Return ``x`` and ``coords`` unchanged; the generator is not drawn from."""
        return x, coords


class GaussianPerturbation:
    """Additive, spatially uncorrelated Gaussian noise scaled per channel.

    ``x + amplitude * scale[c] * ε`` with ``ε ~ N(0, 1)`` independently for every member, grid
    point and channel ``c``. With ``scale`` the per-channel standard deviation of the training
    data (physical units), ``amplitude`` is in normalised units: FourCastNet's ensembles use
    ``amplitude = 0.3``. ``amplitude = 0`` leaves ``x`` exactly unchanged.

    Parameters
    ----------
    scale : numpy.ndarray or torch.Tensor, shape (channel,)
        Per-channel noise scale in the units of each channel; non-negative and finite.
    amplitude : float
        Multiplier of ``scale``; non-negative.
    channels : sequence of str, optional
        Channel ids labelling ``scale``. When given, the scale is selected by label from the
        ``channel`` coordinate of each call, so its order need not match the state's; when
        omitted, ``scale`` must be in the order of the state's channels.
    """

    def __init__(
        self,
        scale: np.ndarray | torch.Tensor,
        amplitude: float,
        channels: Sequence[str] | None = None,
    ) -> None:
        scale = torch.as_tensor(scale, dtype=torch.float64).detach().cpu()
        if scale.ndim != 1:
            raise EnsembleInputError(f"expected a 1-D per-channel scale, found shape {tuple(scale.shape)}")
        if not torch.isfinite(scale).all() or (scale < 0).any():
            raise EnsembleInputError(f"expected finite, non-negative scales, found {scale.tolist()}")
        if not np.isfinite(amplitude) or amplitude < 0:
            raise EnsembleInputError(f"expected a finite, non-negative amplitude, found {amplitude}")
        if channels is not None and len(channels) != scale.numel():
            raise EnsembleInputError(
                f"expected one channel label per scale ({scale.numel()}), found {len(channels)}: "
                f"{list(channels)}"
            )
        self.scale = scale
        self.amplitude = float(amplitude)
        self.channels = None if channels is None else [str(c) for c in channels]

    def __call__(
        self, x: torch.Tensor, coords: Coords, generator: torch.Generator
    ) -> tuple[torch.Tensor, Coords]:
        """Add the noise to ``x`` of shape ``(member, channel, lat, lon)``.

        The noise is drawn on the generator's device (so it does not depend on where ``x``
        lives) and then moved to ``x``'s device and dtype.
        """
        sigma = self._channel_scale(coords, n_channels=x.shape[1]) * self.amplitude
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float64)
        noise = noise * sigma[None, :, None, None]
        return x + noise.to(device=x.device, dtype=x.dtype), coords

    def _channel_scale(self, coords: Coords, n_channels: int) -> torch.Tensor:
        """The scale in the order of ``coords["channel"]``, shape (channel,)."""
        if self.channels is None:
            if self.scale.numel() != n_channels:
                raise EnsembleInputError(
                    f"expected a state with {self.scale.numel()} channels (one per scale), found {n_channels}"
                )
            return self.scale
        wanted = [str(c) for c in coords[CHANNEL]]
        missing = [c for c in wanted if c not in self.channels]
        if missing:
            raise EnsembleInputError(
                f"no perturbation scale for channels {missing}; scales are given for {self.channels}"
            )
        return self.scale[[self.channels.index(c) for c in wanted]]


class GaussianRandomFieldPerturbation(GaussianPerturbation):
    """Additive, spatially correlated Gaussian noise on the sphere, scaled per channel.

    ``x + amplitude * scale[c] * ε`` where every member and channel gets its own realisation
    ``ε`` of an isotropic Gaussian random field with the Matérn-like spectrum of
    :class:`torch_harmonics.random_fields.GaussianRandomFieldS2`,
    ``C_l ∝ (l(l+1) + tau²)^(-alpha)`` on the unit sphere (the ``l = 0`` mode is zero, so each
    field has zero area mean). Larger ``alpha`` gives smoother fields; ``1/tau`` is roughly the
    correlation length in radians.

    Randomness comes only from the generator passed in: the white spectral coefficients
    ``ξ`` (complex, one per ``(l, m)``, real and imaginary parts ``N(0, 1)``) are drawn with it
    in float64 on the generator's device and handed to the field's ``forward(n, xi=ξ)``, which
    applies the spectral scaling and the inverse spherical-harmonic transform on the CPU; the
    global torch RNG is never used. Members are drawn one after another in member order, so
    the first member of a batch equals that member drawn alone with the same seed.

    Each field is drawn on torch-harmonics' equiangular grid with both poles (``grid_nlat``
    latitudes 90 → −90, ``2 * grid_nlat`` longitudes from 0°) and divided by its own
    area-weighted standard deviation there (weights :func:`ingest.grid.cell_area_weights`),
    so every field has unit area-weighted std exactly. When the state's ``lat``/``lon`` are
    not that grid, the field is bilinearly interpolated in latitude/longitude (periodic in
    longitude) onto them, which lowers its std slightly below one.

    ``amplitude = 0`` returns ``x`` exactly, without drawing.

    Parameters
    ----------
    scale : numpy.ndarray or torch.Tensor, shape (channel,)
        Per-channel noise scale in the units of each channel; non-negative and finite.
    amplitude : float
        Multiplier of ``scale``; non-negative.
    alpha : float
        Spectral exponent (smoothness); must exceed 1.
    tau : float
        Inverse correlation length on the unit sphere; positive.
    channels : sequence of str, optional
        Channel ids labelling ``scale``, as in :class:`GaussianPerturbation`.
    grid_nlat : int, optional
        Latitudes of the grid the fields are drawn on (at least 3); defaults to the state's
        number of latitudes. A coarser grid is cheaper for large states: the inverse transform
        costs ``O(grid_nlat³)`` memory.
    """

    def __init__(
        self,
        scale: np.ndarray | torch.Tensor,
        amplitude: float,
        *,
        alpha: float = 2.0,
        tau: float = 3.0,
        channels: Sequence[str] | None = None,
        grid_nlat: int | None = None,
    ) -> None:
        super().__init__(scale, amplitude, channels)
        if not np.isfinite(alpha) or alpha <= 1:
            raise EnsembleInputError(f"expected a finite spectral exponent alpha > 1, found {alpha}")
        if not np.isfinite(tau) or tau <= 0:
            raise EnsembleInputError(f"expected a finite, positive tau, found {tau}")
        if grid_nlat is not None and int(grid_nlat) < 3:
            raise EnsembleInputError(f"expected grid_nlat of at least 3, found {grid_nlat}")
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.grid_nlat = None if grid_nlat is None else int(grid_nlat)
        self._fields: dict[int, GaussianRandomFieldS2] = {}

    def __call__(
        self, x: torch.Tensor, coords: Coords, generator: torch.Generator
    ) -> tuple[torch.Tensor, Coords]:
        """Add correlated noise to ``x`` of shape ``(member, channel, lat, lon)``.

        Raises
        ------
        EnsembleInputError
            If ``x`` is not 4-D, its channels do not fit ``scale``, or ``coords`` lacks
            ``lat``/``lon`` matching its shape or holds latitudes outside [−90, 90].
        """
        if x.ndim != 4:
            raise EnsembleInputError(
                f"expected x of shape (member, channel, lat, lon), found shape {tuple(x.shape)}"
            )
        sigma = self._channel_scale(coords, n_channels=x.shape[1]) * self.amplitude
        if self.amplitude == 0:
            return x, coords
        lat, lon = _state_grid(coords, (x.shape[-2], x.shape[-1]))
        nlat = self.grid_nlat or lat.size
        noise = torch.stack([self._unit_fields(nlat, x.shape[1], generator) for _ in range(x.shape[0])])
        noise = _to_grid(noise, nlat, lat, lon) * sigma[None, :, None, None]
        return x + noise.to(device=x.device, dtype=x.dtype), coords

    def _unit_fields(self, nlat: int, n_channels: int, generator: torch.Generator) -> torch.Tensor:
        """One member's fields, shape (channel, nlat, 2 nlat), unit area-weighted std, float64."""
        return unit_variance(
            self._field(nlat)(n_channels, xi=white_coefficients(self._field(nlat), n_channels, generator))
        )

    def _field(self, nlat: int) -> GaussianRandomFieldS2:
        """The (cached) float64 random field on the equiangular grid with ``nlat`` latitudes."""
        if nlat not in self._fields:
            self._fields[nlat] = random_field(nlat, self.alpha, self.tau)
        return self._fields[nlat]


def random_field(nlat: int, alpha: float, tau: float) -> GaussianRandomFieldS2:
    """The float64 :class:`GaussianRandomFieldS2` on the equiangular grid with ``nlat`` latitudes (poles
    included)."""
    with warnings.catch_warnings():
        # the field cannot pass lmax on; its default truncation is the one we want
        warnings.filterwarnings("ignore", message="Default SHT truncation", category=UserWarning)
        return GaussianRandomFieldS2(nlat, alpha=alpha, tau=tau, grid="equiangular", dtype=torch.float64)


def white_coefficients(field: GaussianRandomFieldS2, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` sets of white complex spectral coefficients, shape (count, l, m), drawn from ``generator``
    only.

    Drawn in float64 on the generator's device (so the stream does not depend on where the
    state lives), returned on the CPU.
    """
    n_l, n_m = field.sqrt_eig.shape[-2:]
    white = torch.randn(
        (count, n_l, n_m, 2), generator=generator, device=generator.device, dtype=torch.float64
    )
    return torch.view_as_complex(white.cpu())


def unit_variance(fields: torch.Tensor) -> torch.Tensor:
    """``fields`` (..., nlat, 2 nlat) on the equiangular grid, each divided by its area-weighted RMS."""
    weights = torch.as_tensor(cell_area_weights(equiangular_lats(fields.shape[-2])), dtype=fields.dtype)[
        :, None
    ]
    variance = (weights * fields**2).mean(dim=(-2, -1), keepdim=True)
    return fields / variance.sqrt().clamp_min(torch.finfo(fields.dtype).tiny)


#: Lexicon CDS names of the fields a streamfunction perturbation balances, by role.
_BALANCED_ROLES = {"geopotential": "z", "u_component_of_wind": "u", "v_component_of_wind": "v"}


class BalancedRandomFieldPerturbation(GaussianRandomFieldPerturbation):
    """Spatially correlated, geostrophically balanced noise: one streamfunction per level drives z, u and v.

    For every member and pressure level holding geopotential and/or wind channels, one
    streamfunction ``ψ`` is drawn as a realisation of the Gaussian random field of
    :class:`GaussianRandomFieldPerturbation` (spectrum ``C_l ∝ (l(l+1) + tau²)^(-alpha)``,
    ``tau = R / L`` for a length scale ``L``, :func:`tau_of_length_scale`). From it:

    - the wind is the non-divergent flow of ``ψ``: ``u = −∂ψ/∂φ / R``, ``v = ∂ψ/∂λ / (R cos φ)``,
      computed exactly in spectral space (the inverse vector spherical-harmonic transform of
      the toroidal coefficients of ``ψ``);
    - the geopotential is in geostrophic balance with it: ``Φ' = f ψ`` with ``f = 2Ω sin φ``,
      so ``u ≈ −∂Φ'/∂y / f`` and ``v ≈ ∂Φ'/∂x / f`` away from the equator (no geopotential
      perturbation on the equator, where geostrophy does not hold).

    Each of the three fields is then divided by its own area-weighted RMS (as the
    :class:`GaussianRandomFieldPerturbation` does) and scaled by ``amplitude * scale[c]``: the
    per-channel sizes are free (they are what calibration chooses), the structure — wind
    along the geopotential contours, cyclonic around lows — is balanced. Channels of other
    quantities (temperature, humidity, surface fields) get independent random fields. The
    wind, being a derivative of ``ψ``, holds relatively more small-scale variance than ``ψ``
    itself (its spectrum is ``l(l+1) C_l``).

    Draws: every member draws one set of white coefficients per channel, in channel order (so
    the stream does not depend on which channels are balanced); a balanced level uses the set
    of its first channel. Members are drawn one after another in member order, so a member's
    perturbation does not depend on the batch it is drawn in.

    Parameters
    ----------
    scale, amplitude, channels, grid_nlat
        As for :class:`GaussianRandomFieldPerturbation`.
    length_scale_km : float
        Length scale ``L`` of ``ψ`` on the Earth (km); sets ``tau = 6371 / L``.
    alpha : float
        Spectral exponent of ``ψ``; must exceed 1.
    """

    def __init__(
        self,
        scale: np.ndarray | torch.Tensor,
        amplitude: float,
        *,
        length_scale_km: float = 1000.0,
        alpha: float = 3.0,
        channels: Sequence[str] | None = None,
        grid_nlat: int | None = None,
    ) -> None:
        super().__init__(
            scale,
            amplitude,
            alpha=alpha,
            tau=tau_of_length_scale(length_scale_km),
            channels=channels,
            grid_nlat=grid_nlat,
        )
        self.length_scale_km = float(length_scale_km)
        self._transforms: dict[int, tuple[RealSHT, InverseRealVectorSHT]] = {}

    def __call__(
        self, x: torch.Tensor, coords: Coords, generator: torch.Generator
    ) -> tuple[torch.Tensor, Coords]:
        """Add balanced noise to ``x`` of shape ``(member, channel, lat, lon)``.

        Raises
        ------
        EnsembleInputError
            As :meth:`GaussianRandomFieldPerturbation.__call__`.
        """
        if x.ndim != 4:
            raise EnsembleInputError(
                f"expected x of shape (member, channel, lat, lon), found shape {tuple(x.shape)}"
            )
        sigma = self._channel_scale(coords, n_channels=x.shape[1]) * self.amplitude
        if self.amplitude == 0:
            return x, coords
        lat, lon = _state_grid(coords, x.shape[-2:])
        nlat = self.grid_nlat or lat.size
        roles = balanced_roles([str(c) for c in coords[CHANNEL]])
        noise = torch.stack([self._member_fields(nlat, roles, generator) for _ in range(x.shape[0])])
        noise = _to_grid(noise, nlat, lat, lon) * sigma[None, :, None, None]
        return x + noise.to(device=x.device, dtype=x.dtype), coords

    def _member_fields(
        self, nlat: int, roles: list[tuple[str, int] | None], generator: torch.Generator
    ) -> torch.Tensor:
        """One member's unit-RMS fields, shape (channel, nlat, 2 nlat), float64."""
        field = self._field(nlat)
        fields = field(len(roles), xi=white_coefficients(field, len(roles), generator))
        out = fields.clone()
        lat = torch.as_tensor(np.deg2rad(equiangular_lats(nlat)), dtype=fields.dtype)[:, None]
        for c, role in enumerate(roles):
            if role is None:
                continue
            kind, first = role
            psi = fields[first]
            if kind == "z":
                out[c] = torch.sin(lat) * psi
            else:
                forward, inverse = self._transform(nlat)
                spectral = forward(psi)
                wind = inverse(torch.stack([spectral, torch.zeros_like(spectral)]))
                out[c] = wind[0 if kind == "u" else 1]
        return unit_variance(out)

    def _transform(self, nlat: int) -> tuple[RealSHT, InverseRealVectorSHT]:
        """The (cached) scalar forward and vector inverse transforms on the equiangular grid."""
        if nlat not in self._transforms:
            lmax = self._field(nlat).sqrt_eig.shape[-2]
            self._transforms[nlat] = (
                RealSHT(nlat, 2 * nlat, lmax=lmax, mmax=lmax, grid="equiangular").to(torch.float64),
                InverseRealVectorSHT(nlat, 2 * nlat, lmax=lmax, mmax=lmax, grid="equiangular").to(
                    torch.float64
                ),
            )
        return self._transforms[nlat]


def balanced_roles(channels: Sequence[str]) -> list[tuple[str, int] | None]:
    """Per channel, ``(role, index of the level's first balanced channel)`` or ``None`` (not balanced).

    Roles are ``z`` (geopotential), ``u`` and ``v`` (wind components) of one pressure level
    (:data:`ingest.lexicon.LEXICON`); channels the lexicon does not know, or other quantities,
    are ``None``.
    """
    first: dict[int, int] = {}
    roles: list[tuple[str, int] | None] = []
    for c, channel in enumerate(channels):
        variable = LEXICON.get(channel)
        role = _BALANCED_ROLES.get(variable.cds_name) if variable is not None else None
        if variable is None or role is None or variable.level is None:
            roles.append(None)
            continue
        first.setdefault(variable.level, c)
        roles.append((role, first[variable.level]))
    return roles


def _state_grid(coords: Coords, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The state's latitudes and longitudes in degrees, checked against its (lat, lon) shape."""
    missing = [dim for dim in (LAT, LON) if dim not in coords]
    if missing:
        raise EnsembleInputError(f"coords lack {missing}; found {list(coords)}")
    lat = np.asarray(coords[LAT], dtype=np.float64)
    lon = np.asarray(coords[LON], dtype=np.float64)
    if (lat.size, lon.size) != tuple(shape):
        raise EnsembleInputError(
            f"expected lat/lon coords of sizes {tuple(shape)} as x's grid, found ({lat.size}, {lon.size})"
        )
    if (np.abs(lat) > 90).any():
        raise EnsembleInputError(f"expected latitudes in [-90, 90], found {lat.min()} … {lat.max()}")
    return lat, lon


def _to_grid(fields: torch.Tensor, nlat: int, lat: np.ndarray, lon: np.ndarray) -> torch.Tensor:
    """Bilinearly interpolate ``(..., nlat, 2 nlat)`` equiangular fields onto ``lat`` x ``lon``.

    Returns ``fields`` itself when the grids already coincide.
    """
    nlon = 2 * nlat
    if same_coords({LAT: equiangular_lats(nlat), LON: regular_lons(nlon)}, {LAT: lat, LON: lon}):
        return fields
    lat_position = np.clip((90.0 - lat) * (nlat - 1) / 180.0, 0, nlat - 1)
    lat_low = np.minimum(np.floor(lat_position).astype(np.int64), nlat - 2)
    lon_position = np.mod(lon, 360.0) * nlon / 360.0
    lon_low = np.floor(lon_position).astype(np.int64) % nlon
    fields = _linear(fields, -2, lat_low, lat_low + 1, lat_position - lat_low)
    return _linear(fields, -1, lon_low, (lon_low + 1) % nlon, lon_position - np.floor(lon_position))


def _linear(
    fields: torch.Tensor, dim: int, low: np.ndarray, high: np.ndarray, weight: np.ndarray
) -> torch.Tensor:
    """``(1 - weight) * fields[low] + weight * fields[high]`` along ``dim``."""
    shape = [1] * fields.ndim
    shape[dim] = weight.size
    w = torch.as_tensor(weight, dtype=fields.dtype).reshape(shape)
    lower = fields.index_select(dim, torch.as_tensor(low))
    upper = fields.index_select(dim, torch.as_tensor(high))
    return (1 - w) * lower + w * upper


class BredVectorPerturbation(GaussianPerturbation):
    """Bred vectors: perturbations grown by the model itself, rescaled to a fixed size.

    Breeding (Toth & Kalnay 1993) starts from a random seed perturbation ``δ₀`` — by default
    the Gaussian of :class:`GaussianPerturbation` with the same ``scale`` and ``amplitude`` —
    and repeats ``cycles`` times::

        d  = M(x + δ) − M(x)                     one model step of the perturbed and base state
        δ ← d · σ_c / rms_c(d)                   per member and channel c

    where ``M`` is the prognostic, ``σ_c = amplitude · scale[c]`` and ``rms_c`` is the root mean
    square over the grid. The perturbation returned is ``x + δ``: its size per channel is the
    seed's, its structure that of the directions the model amplifies. A channel whose
    difference vanishes gets no perturbation. The cycles restart from the same ``x`` (the
    initial-state variant, as earth2studio's ``BredVector``), so only the state at the init
    time is needed.

    ``amplitude = 0`` returns ``x`` exactly without running the model. Each call breeds the
    members it is given together; the runner calls it one member at a time, so a member's
    bred vector does not depend on the batch it runs in.

    Parameters
    ----------
    prognostic : Prognostic
        The model to breed with; ``x`` passed in must be on its device, in its channel order.
    scale : numpy.ndarray or torch.Tensor, shape (channel,)
        Per-channel size in the units of each channel; non-negative and finite.
    amplitude : float
        Multiplier of ``scale``; non-negative.
    cycles : int
        Breeding cycles (at least 1).
    channels : sequence of str, optional
        Channel ids labelling ``scale``, as in :class:`GaussianPerturbation`.
    seed_perturbation : Perturbation, optional
        Draws ``δ₀`` as ``seed_perturbation(x) − x``; the Gaussian above by default.
    """

    def __init__(
        self,
        prognostic: Prognostic,
        scale: np.ndarray | torch.Tensor,
        amplitude: float,
        *,
        cycles: int = 2,
        channels: Sequence[str] | None = None,
        seed_perturbation: Perturbation | None = None,
    ) -> None:
        super().__init__(scale, amplitude, channels)
        if int(cycles) != cycles or cycles < 1:
            raise EnsembleInputError(f"expected at least 1 breeding cycle, found cycles={cycles}")
        self.prognostic = prognostic
        self.cycles = int(cycles)
        self.seed_perturbation = seed_perturbation or GaussianPerturbation(scale, amplitude, channels)

    def __call__(
        self, x: torch.Tensor, coords: Coords, generator: torch.Generator
    ) -> tuple[torch.Tensor, Coords]:
        """Add a bred vector to each member of ``x`` of shape ``(member, channel, lat, lon)``."""
        sigma = self._channel_scale(coords, n_channels=x.shape[1]) * self.amplitude
        if self.amplitude == 0:
            return x, coords
        seeded, _ = self.seed_perturbation(x, coords, generator)
        delta = seeded - x
        base, _ = self.prognostic.step(x, coords)
        for _ in range(self.cycles):
            moved, _ = self.prognostic.step(x + delta, coords)
            delta = _rescaled(moved - base, sigma.to(x.device))
        return x + delta.to(x.dtype), coords


def _rescaled(difference: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``difference`` (member, channel, lat, lon) scaled to RMS ``sigma[c]`` per member and channel."""
    difference = difference.to(torch.float64)
    rms = difference.square().mean(dim=(-2, -1), keepdim=True).sqrt()
    factor = torch.where(
        rms > 0, sigma[None, :, None, None] / rms.clamp_min(torch.finfo(torch.float64).tiny), 0.0
    )
    return difference * factor
