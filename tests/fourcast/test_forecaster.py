"""The Forecaster as a Prognostic: float32 by default on CPU, bfloat16 autocast when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensembles.protocols import Prognostic
from fourcast.forecaster import Forecaster
from fourcast.models.registry import build_model
from fourcast.normaliser import Normaliser
from ingest.dims import CHANNEL, LAT, LON
from ingest.grid import regular_lons

CHANNELS = ["z500", "u500", "v500"]


def _forecaster(autocast: bool | None) -> Forecaster:
    torch.manual_seed(0)
    model = build_model("afno-tiny", (16, 32), len(CHANNELS))
    with torch.no_grad():  # the untrained head is zero (persistence): give every weight a seeded offset
        for weights in model.parameters():
            weights.add_(0.05 * torch.randn_like(weights))
    normaliser = Normaliser(np.array([5.4e4, 10.0, 0.0]), np.array([800.0, 8.0, 6.0]))
    return Forecaster(
        model,
        normaliser,
        CHANNELS,
        np.linspace(90, -90, 16),
        regular_lons(32),
        np.timedelta64(6, "h"),
        device=torch.device("cpu"),
        autocast=autocast,
    )


def test_cpu_default_is_float32_and_autocast_is_close_to_it():
    plain, bf16 = _forecaster(None), _forecaster(True)
    assert isinstance(plain, Prognostic) and not plain.autocast and bf16.autocast
    coords = plain.input_coords
    x = torch.as_tensor(np.array([5.4e4, 10.0, 0.0]))[None, :, None, None].float() + torch.randn(2, 3, 16, 32)
    exact, _ = plain.step(x, coords)
    approximate, out_coords = bf16.step(x, coords)
    assert approximate.dtype == torch.float32 and out_coords is coords
    assert not torch.equal(exact, approximate)  # the network really ran in bfloat16
    increment = (exact - x).abs().mean(dim=(0, 2, 3))
    error = (approximate - exact).abs().mean(dim=(0, 2, 3))
    assert torch.all(error < 0.05 * increment + 1e-3 * x.abs().mean(dim=(0, 2, 3)))
    assert [str(c) for c in coords[CHANNEL]] == CHANNELS and coords[LAT].size == 16 and coords[LON].size == 32


@pytest.mark.parametrize("batch", [1, 4])
def test_members_step_independently(batch):
    forecaster = _forecaster(None)
    x = 100 * torch.randn(batch, 3, 16, 32)
    together, _ = forecaster.step(x, forecaster.input_coords)
    alone, _ = forecaster.step(x[:1], forecaster.input_coords)
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-3)
