"""Zero-shot resolution transfer: an SFNO evaluates on another equiangular grid; an AFNO refuses, saying
why."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fourcast.errors import ModelSpecError, ResolutionTransferError
from fourcast.forecaster import Forecaster
from fourcast.models.registry import build_model
from fourcast.models.sfno import SFNONet, grid_modes
from fourcast.normaliser import Normaliser
from ingest.dims import LAT, LON
from ingest.grid import equiangular_lats, regular_lons

CHANNELS = ["z500", "u500", "v500"]


def _smooth_fields(nlat: int, nlon: int) -> torch.Tensor:
    """Three fields made of spherical harmonics of degree <= 3, sampled on an ``nlat x nlon`` grid: (1, 3,
    nlat, nlon)."""
    lat = np.deg2rad(equiangular_lats(nlat))[:, None]
    lon = np.deg2rad(regular_lons(nlon))[None, :]
    fields = [
        np.cos(lat) ** 2 * np.cos(3 * lon),
        np.sin(lat) * np.cos(lat) * np.sin(2 * lon + 1),
        np.sin(2 * lat) + 0.3 * np.cos(lat) * np.cos(lon),
    ]
    return torch.tensor(
        np.stack([np.broadcast_to(f, (nlat, nlon)) for f in fields])[None], dtype=torch.float32
    )


def _random_sfno(grid: tuple[int, int]) -> SFNONet:
    torch.manual_seed(0)
    model = build_model("sfno-small", grid, len(CHANNELS))
    torch.nn.init.normal_(model.net.decoder[-1].weight, std=0.1)  # the untrained head is zero: persistence
    return model.eval()


def test_sfno_on_a_finer_grid_keeps_the_degrees_it_learned_and_gives_the_same_field():
    coarse = _random_sfno((17, 32))
    fine = coarse.on_grid(33, 64)
    assert coarse.modes == fine.modes == grid_modes((17, 32), 2) == 8  # tied to the training grid, not 16
    for mine, theirs in zip(coarse.spectral_weights(), fine.spectral_weights(), strict=True):
        assert torch.equal(mine, theirs)
    with torch.no_grad():
        x_coarse, x_fine = _smooth_fields(17, 32), _smooth_fields(33, 64)
        increment_coarse = coarse(x_coarse) - x_coarse
        increment_fine = fine(x_fine) - x_fine
    assert increment_fine.shape == (1, 3, 33, 64) and torch.isfinite(increment_fine).all()
    # 33x64 holds every point of 17x32: the operator's output agrees there, up to the aliasing of the
    # point-wise nonlinearities' harmonics on the coarse grid (measured 7.6 % of the increment's spread)
    difference = (increment_fine[..., ::2, ::2] - increment_coarse).std() / increment_coarse.std()
    assert difference < 0.15
    # whereas a model with fresh weights on the fine grid gives another field altogether
    other = _random_sfno((33, 64))
    torch.manual_seed(1)
    torch.nn.init.normal_(other.net.decoder[-1].weight, std=0.1)
    with torch.no_grad():
        unrelated = other(x_fine) - x_fine
    assert (unrelated[..., ::2, ::2] - increment_coarse).std() / increment_coarse.std() > 0.5


def test_sfno_on_a_coarser_grid_drops_the_degrees_it_cannot_resolve():
    model = _random_sfno((32, 64))
    coarse = model.on_grid(16, 32)
    assert (model.modes, coarse.modes) == (16, 8)
    assert torch.equal(coarse.spectral_weights()[0], model.spectral_weights()[0][..., :8])
    assert coarse(torch.randn(2, 3, 16, 32)).shape == (2, 3, 16, 32)
    assert coarse.training == model.training


def test_modes_out_of_range_and_layer_norm_are_refused():
    with pytest.raises(ModelSpecError, match=r"modes must lie in 1\.\.8 .*found 9"):
        SFNONet((17, 32), 3, 3, embed_dim=8, num_layers=1, scale_factor=2, modes=9)
    model = SFNONet((17, 32), 3, 3, embed_dim=8, num_layers=1, scale_factor=2, normalization="layer_norm")
    with pytest.raises(ResolutionTransferError, match=r"layer_norm.*one learned weight per grid point"):
        model.on_grid(33, 64)


def test_afno_refuses_another_grid_naming_why():
    model = build_model("afno-tiny", (32, 64), 3)
    assert model.on_grid(32, 64) is model
    with pytest.raises(
        ResolutionTransferError,
        match=r"AFNO trained on a 32x64 grid cannot forecast on 64x128.*"
        r"position embedding.*16x32 patch grid.*SFNO",
    ):
        model.on_grid(64, 128)


def _forecaster(preset: str, grid: tuple[int, int]) -> Forecaster:
    torch.manual_seed(0)
    model = build_model(preset, grid, len(CHANNELS))
    normaliser = Normaliser(np.array([5.4e4, 10.0, 0.0]), np.array([800.0, 8.0, 6.0]))
    return Forecaster(
        model,
        normaliser,
        CHANNELS,
        equiangular_lats(grid[0]),
        regular_lons(grid[1]),
        np.timedelta64(6, "h"),
        device=torch.device("cpu"),
    )


def test_forecaster_moves_an_sfno_to_the_store_grid_and_refuses_an_afno():
    sfno = _forecaster("sfno-small", (32, 64))
    assert sfno.on_grid(equiangular_lats(32), regular_lons(64)) is sfno
    fine = sfno.on_grid(equiangular_lats(64), regular_lons(128))
    assert fine.input_coords[LAT].size == 64 and fine.output_coords[LON].size == 128
    x = torch.tensor([5.4e4, 10.0, 0.0])[None, :, None, None] + torch.randn(1, 3, 64, 128)
    out, _ = fine.step(x, fine.input_coords)
    assert out.shape == x.shape
    with pytest.raises(ResolutionTransferError, match="equiangular grid with both poles"):
        sfno.on_grid(np.linspace(89, -89, 64), regular_lons(128))
    with pytest.raises(ResolutionTransferError, match="position embedding"):
        _forecaster("afno-tiny", (32, 64)).on_grid(equiangular_lats(64), regular_lons(128))
