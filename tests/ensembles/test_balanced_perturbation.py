"""The balanced random-field perturbation: requested length scale (from the spectrum), balance, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_harmonics import RealSHT

from ensembles.perturbations import (
    EARTH_RADIUS_KM,
    BalancedRandomFieldPerturbation,
    balanced_roles,
    tau_of_length_scale,
)
from ingest.dims import CHANNEL, LAT, LON, MEMBER
from ingest.grid import cell_area_weights, equiangular_lats, regular_lons

CHANNELS = ["z500", "u500", "v500", "t850"]


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _draw(perturbation, n_members: int, nlat: int, seed: int = 0, channels=CHANNELS) -> np.ndarray:
    coords = {
        MEMBER: np.arange(n_members),
        CHANNEL: np.array(channels),
        LAT: equiangular_lats(nlat),
        LON: regular_lons(2 * nlat),
    }
    x, _ = perturbation(
        torch.zeros(n_members, len(channels), nlat, 2 * nlat, dtype=torch.float64), coords, _generator(seed)
    )
    return x.numpy()


def _fitted_length_scale(fields: np.ndarray, alpha: float) -> float:
    """The length scale (km) whose spectrum ``(l(l+1) + tau²)^-alpha`` fits the measured power best."""
    nlat = fields.shape[-2]
    sht = RealSHT(nlat, 2 * nlat, grid="equiangular", norm="backward").to(torch.float64)
    coefficients = sht(torch.as_tensor(fields)).numpy()
    power = (np.abs(coefficients[..., 1:]) ** 2).sum(axis=(0, -1))  # m >= 1 (m = 0 holds only real parts)
    counts = np.tril(np.ones(coefficients.shape[-2:]))[:, 1:].sum(-1)
    degrees = np.arange(1, power.size - 2)  # the last degrees are truncated
    measured = np.log(power[degrees] / counts[degrees])
    best = (np.inf, np.nan)
    for tau in np.geomspace(0.5, 40, 400):
        model = -alpha * np.log(degrees * (degrees + 1) + tau**2)
        offset = (measured - model).mean()
        best = min(best, (float(((measured - model - offset) ** 2).sum()), tau))
    return EARTH_RADIUS_KM / best[1]


@pytest.mark.parametrize("length_scale_km", [800.0, 2500.0])
def test_the_measured_spectrum_has_the_requested_length_scale(length_scale_km):
    alpha = 3.0
    perturbation = BalancedRandomFieldPerturbation(
        np.ones(1), 1.0, length_scale_km=length_scale_km, alpha=alpha, channels=["t850"]
    )
    fields = _draw(perturbation, 48, 64, channels=["t850"])[:, 0]
    assert _fitted_length_scale(fields, alpha) == pytest.approx(length_scale_km, rel=0.15)


def test_a_longer_length_scale_correlates_further():
    def lag_correlation(length_scale_km: float, lag: int) -> float:
        fields = _draw(
            BalancedRandomFieldPerturbation(
                np.ones(1), 1.0, length_scale_km=length_scale_km, channels=["t850"]
            ),
            16,
            32,
            channels=["t850"],
        )[:, 0]
        band = fields[:, 8:24]  # away from the poles
        return float((band * np.roll(band, lag, axis=-1)).mean() / (band**2).mean())

    assert lag_correlation(3000.0, 3) > lag_correlation(1000.0, 3) + 0.2


def test_wind_and_geopotential_are_in_geostrophic_balance():
    nlat = 32
    fields = _draw(BalancedRandomFieldPerturbation(np.ones(4), 1.0, length_scale_km=1500.0), 4, nlat)
    lat = np.deg2rad(equiangular_lats(nlat))
    lon = np.deg2rad(regular_lons(2 * nlat))
    z, u, v = fields[:, 0], fields[:, 1], fields[:, 2]
    f = np.sin(lat)[:, None]
    u_geostrophic = -np.gradient(z, lat, axis=-2) / f
    v_geostrophic = np.gradient(z, lon, axis=-1) / (f * np.cos(lat)[:, None])
    for band in (slice(4, 13), slice(19, 28)):  # 20-70 °N and °S
        assert np.corrcoef(u[:, band].ravel(), u_geostrophic[:, band].ravel())[0, 1] > 0.85
        assert np.corrcoef(v[:, band].ravel(), v_geostrophic[:, band].ravel())[0, 1] > 0.95
    # the unbalanced channel is independent of the balanced ones
    assert abs(np.corrcoef(fields[:, 3].ravel(), z.ravel())[0, 1]) < 0.2


def test_each_channel_has_the_requested_size():
    scale, amplitude, nlat = np.array([300.0, 2.0, 3.0, 1.5]), 0.2, 16
    fields = _draw(BalancedRandomFieldPerturbation(scale, amplitude), 3, nlat)
    weights = cell_area_weights(equiangular_lats(nlat))[:, None]
    rms = np.sqrt((weights * fields**2).mean(axis=(-2, -1)))
    np.testing.assert_allclose(rms, np.broadcast_to(amplitude * scale, rms.shape), rtol=1e-6)


def test_members_are_drawn_in_order_and_zero_amplitude_is_identity():
    perturbation = BalancedRandomFieldPerturbation(np.ones(4), 0.5)
    together = _draw(perturbation, 3, 16, seed=5)
    first = _draw(perturbation, 1, 16, seed=5)
    np.testing.assert_array_equal(first[0], together[0])
    assert not np.allclose(together[0], together[1])
    assert not _draw(BalancedRandomFieldPerturbation(np.ones(4), 0.0), 2, 16).any()


def test_roles_pair_channels_by_level():
    assert balanced_roles(["u850", "z500", "t850", "v500", "v850", "u500", "msl"]) == [
        ("u", 0),
        ("z", 1),
        None,
        ("v", 1),
        ("v", 0),
        ("u", 1),
        None,
    ]


def test_length_scale_sets_tau():
    assert tau_of_length_scale(EARTH_RADIUS_KM / 4) == pytest.approx(4.0)
