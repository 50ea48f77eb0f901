"""Perturbations: identity cases, requested noise level, and randomness only from the generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensembles.errors import EnsembleInputError
from ensembles.perturbations import (
    BredVectorPerturbation,
    GaussianPerturbation,
    GaussianRandomFieldPerturbation,
    NoPerturbation,
)
from ingest.dims import CHANNEL, MEMBER


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@pytest.fixture
def state(coords) -> torch.Tensor:
    torch.manual_seed(1)
    return 1000.0 * torch.randn(3, coords[CHANNEL].size, coords["lat"].size, coords["lon"].size)


@pytest.fixture
def member_coords(coords):
    return {MEMBER: np.arange(3), **coords}


def test_no_perturbation_is_identity(state, member_coords):
    x, out_coords = NoPerturbation()(state, member_coords, _generator(0))
    assert torch.equal(x, state)
    assert out_coords is member_coords


class CountingPrognostic:
    """Wraps a prognostic and counts its steps."""

    def __init__(self, prognostic) -> None:
        self.prognostic, self.steps = prognostic, 0
        self.input_coords, self.output_coords = prognostic.input_coords, prognostic.output_coords
        self.step_size = prognostic.step_size

    def step(self, x, coords):
        self.steps += 1
        return self.prognostic.step(x, coords)


@pytest.mark.parametrize("kind", ["gaussian", "grf", "bred"])
def test_zero_amplitude_is_exactly_identity(kind, state, member_coords, drift_prognostic):
    scale = np.array([50.0, 3.0])
    model = CountingPrognostic(drift_prognostic)
    perturb = {
        "gaussian": lambda: GaussianPerturbation(scale, amplitude=0.0),
        "grf": lambda: GaussianRandomFieldPerturbation(scale, amplitude=0.0),
        "bred": lambda: BredVectorPerturbation(model, scale, amplitude=0.0, cycles=3),
    }[kind]()
    x, out_coords = perturb(state, member_coords, _generator(0))
    assert torch.equal(x, state) and out_coords is member_coords
    assert model.steps == 0


def test_bred_vector_is_the_rescaled_growth_of_the_seed(state, member_coords, drift_prognostic):
    scale, amplitude = np.array([50.0, 3.0]), 0.4
    bred, _ = BredVectorPerturbation(drift_prognostic, scale, amplitude, cycles=1)(
        state, member_coords, _generator(2)
    )
    seeded, _ = GaussianPerturbation(scale, amplitude)(state, member_coords, _generator(2))
    growth = (
        drift_prognostic.step(seeded, member_coords)[0] - drift_prognostic.step(state, member_coords)[0]
    ).double()
    rms = growth.square().mean(dim=(-2, -1), keepdim=True).sqrt()
    expected = state.double() + growth * torch.as_tensor(amplitude * scale)[None, :, None, None] / rms
    torch.testing.assert_close(bred.double(), expected.to(state.dtype).double(), rtol=1e-6, atol=1e-3)


def test_bred_vectors_have_the_seed_size_per_member_and_channel(state, member_coords, drift_prognostic):
    scale, amplitude = np.array([50.0, 3.0]), 0.3
    bred, _ = BredVectorPerturbation(drift_prognostic, scale, amplitude, cycles=3)(
        state, member_coords, _generator(4)
    )
    rms = (bred - state).double().square().mean(dim=(-2, -1)).sqrt()
    np.testing.assert_allclose(rms.numpy(), np.broadcast_to(amplitude * scale, (3, 2)), rtol=1e-3)


def test_a_bred_member_alone_equals_it_first_in_a_batch(state, member_coords, drift_prognostic):
    perturb = BredVectorPerturbation(drift_prognostic, np.array([50.0, 3.0]), 0.3, cycles=2)
    batch, _ = perturb(state, member_coords, _generator(9))
    alone, _ = perturb(state[:1], {**member_coords, MEMBER: np.arange(1)}, _generator(9))
    again, _ = perturb(state[:1], {**member_coords, MEMBER: np.arange(1)}, _generator(9))
    assert torch.equal(alone[0], batch[0]) and torch.equal(alone, again)
    other, _ = perturb(state[:1], {**member_coords, MEMBER: np.arange(1)}, _generator(10))
    assert not torch.equal(alone, other)


def test_breeding_needs_a_cycle(drift_prognostic):
    with pytest.raises(EnsembleInputError, match="at least 1 breeding cycle, found cycles=0"):
        BredVectorPerturbation(drift_prognostic, np.ones(2), 0.3, cycles=0)


def test_noise_has_the_requested_standard_deviation_per_channel():
    scale, amplitude = np.array([100.0, 2.0]), 0.3
    x = torch.zeros(4, 2, 64, 128)
    coords = {
        MEMBER: np.arange(4),
        CHANNEL: np.array(["z500", "u500"]),
        "lat": np.zeros(64),
        "lon": np.zeros(128),
    }
    noise, _ = GaussianPerturbation(scale, amplitude)(x, coords, _generator(7))
    n = noise[:, 0].numel()
    for c in range(2):
        sample = noise[:, c].double()
        expected = amplitude * scale[c]
        # standard errors: σ/√n for the mean, σ/√(2n) for the standard deviation
        assert abs(sample.mean().item()) < 4 * expected / np.sqrt(n)
        assert abs(sample.std().item() / expected - 1) < 4 / np.sqrt(2 * n)


def test_scale_is_selected_by_channel_label():
    x = torch.zeros(2, 2, 32, 64)
    coords = {
        MEMBER: np.arange(2),
        CHANNEL: np.array(["z500", "u500"]),
        "lat": np.zeros(32),
        "lon": np.zeros(64),
    }
    perturb = GaussianPerturbation(np.array([2.0, 100.0]), 1.0, channels=["u500", "z500"])
    noise, _ = perturb(x, coords, _generator(3))
    assert noise[:, 0].std().item() == pytest.approx(100.0, rel=0.05)
    assert noise[:, 1].std().item() == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("kind", [GaussianPerturbation, GaussianRandomFieldPerturbation])
def test_draws_only_from_the_given_generator(kind, state, member_coords):
    perturb = kind(torch.tensor([50.0, 3.0]), amplitude=0.3)
    torch.manual_seed(123)
    first, _ = perturb(state, member_coords, _generator(5))
    torch.manual_seed(456)
    second, _ = perturb(state, member_coords, _generator(5))
    third, _ = perturb(state, member_coords, _generator(6))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": np.ones((2, 2)), "amplitude": 0.3}, "1-D per-channel scale"),
        ({"scale": np.array([1.0, -1.0]), "amplitude": 0.3}, "non-negative scales"),
        ({"scale": np.ones(2), "amplitude": -0.1}, "non-negative amplitude"),
        ({"scale": np.ones(2), "amplitude": 0.3, "channels": ["z500"]}, "one channel label per scale"),
    ],
)
def test_bad_construction_is_refused(kwargs, message):
    with pytest.raises(EnsembleInputError, match=message):
        GaussianPerturbation(**kwargs)


def test_a_channel_without_scale_is_named(state, member_coords):
    perturb = GaussianPerturbation(np.ones(2), 0.3, channels=["z500", "t850"])
    with pytest.raises(EnsembleInputError, match=r"\['u500'\]"):
        perturb(state, member_coords, _generator(0))


def test_unlabelled_scale_must_match_the_channel_count(state, member_coords):
    with pytest.raises(EnsembleInputError, match="3 channels"):
        GaussianPerturbation(np.ones(3), 0.3)(state, member_coords, _generator(0))
