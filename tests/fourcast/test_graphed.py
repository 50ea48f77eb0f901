"""CUDA-graph rollouts (``Forecaster(cuda_graphs=True)``, ``forecast.cuda_graphs``).

On CPU: asking for graphs is a typed error, in the Forecaster and in the config. On a CUDA
machine (``-m gpu``): graphed and eager rollouts agree within a tolerance scaled to the field's spread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from fourcast.errors import CudaGraphsUnavailableError
from fourcast.forecaster import Forecaster
from fourcast.graphed import GraphedStep
from fourcast.models.registry import build_model
from fourcast.normaliser import Normaliser
from ingest.grid import regular_lons
from pipeline.config import ForecastConfig
from tests.tolerances import FLOAT32_ROLLOUT_REL, assert_close_to_spread

CHANNELS = ["z500", "u500", "v500"]
MEAN, STD = np.array([5.4e4, 10.0, 0.0]), np.array([800.0, 8.0, 6.0])
#: Graphed vs eager under bf16 autocast: the same kernels replayed, so only the rounding of
#: launch-order-dependent reductions can differ; a few bf16 steps of the spread over 4 steps.
BF16_ROLLOUT_REL = 2e-2


def _forecaster(device: torch.device, **options) -> Forecaster:
    torch.manual_seed(0)
    model = build_model("afno-tiny", (16, 32), len(CHANNELS))
    with torch.no_grad():  # the untrained head is zero (persistence): give every weight a seeded offset
        for weights in model.parameters():
            weights.add_(0.05 * torch.randn_like(weights))
    return Forecaster(
        model,
        Normaliser(MEAN, STD),
        CHANNELS,
        np.linspace(90, -90, 16),
        regular_lons(32),
        np.timedelta64(6, "h"),
        device=device,
        **options,
    )


def _rollout(forecaster: Forecaster, x: torch.Tensor, steps: int) -> np.ndarray:
    """``steps`` states after ``x``, shape (steps, batch, channel, lat, lon), each fed back as the next
    input."""
    states = []
    for _ in range(steps):
        x, _ = forecaster.step(x, forecaster.input_coords)
        states.append(x.cpu().numpy())
    return np.stack(states)


def _initial(batch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(batch, len(CHANNELS), 16, 32, generator=generator)
    return (
        torch.as_tensor(MEAN).float()[None, :, None, None]
        + torch.as_tensor(STD).float()[None, :, None, None] * noise
    ).to(device)


def test_cuda_graphs_on_cpu_is_a_typed_error_naming_the_device():
    with pytest.raises(CudaGraphsUnavailableError, match="need a CUDA device; found device cpu"):
        _forecaster(torch.device("cpu"), cuda_graphs=True)
    with pytest.raises(CudaGraphsUnavailableError, match="cpu"):
        GraphedStep(lambda x: x + 1, torch.device("cpu"))


def test_cuda_graphs_and_compile_are_exclusive():
    with pytest.raises(CudaGraphsUnavailableError, match="exclusive"):
        _forecaster(torch.device("cpu"), cuda_graphs=True, compile=True)


def test_default_forecaster_is_eager():
    forecaster = _forecaster(torch.device("cpu"))
    assert not forecaster.cuda_graphs and not forecaster.compile


def test_config_refuses_cuda_graphs_off_cuda_and_with_compile():
    base = {"inits": {"start": "2021-01-01", "end": "2021-01-02"}}
    assert not ForecastConfig.model_validate(base).cuda_graphs
    assert ForecastConfig.model_validate(
        {**base, "cuda_graphs": True}
    ).cuda_graphs  # default device: checked at run
    assert ForecastConfig.model_validate({**base, "cuda_graphs": True, "device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(ValidationError, match=r"needs a CUDA device; found forecast.device 'cpu'"):
        ForecastConfig.model_validate({**base, "cuda_graphs": True, "device": "cpu"})
    with pytest.raises(ValidationError, match="exclusive"):
        ForecastConfig.model_validate({**base, "cuda_graphs": True, "compile": True})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast, rel", [(False, FLOAT32_ROLLOUT_REL), (True, BF16_ROLLOUT_REL)])
def test_graphed_rollout_equals_eager_within_spread(autocast, rel):
    device = torch.device("cuda")
    eager = _forecaster(device, autocast=autocast)
    graphed = _forecaster(device, autocast=autocast, cuda_graphs=True)
    for batch in (4, 3):  # two shapes: a full member block and a smaller last one, each its own graph
        expected = _rollout(eager, _initial(batch, device), steps=4)
        actual = _rollout(graphed, _initial(batch, device), steps=4)
        for c, name in enumerate(CHANNELS):
            assert_close_to_spread(actual[:, :, c], expected[:, :, c], rel=rel, name=f"{name} batch {batch}")
    assert graphed._graphed.captured_shapes == [(4, 3, 16, 32), (3, 3, 16, 32)]
