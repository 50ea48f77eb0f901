"""Calibration: the debiased spread/skill measure; recovery of the right amplitude on a toy linear system."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensembles.calibration import calibrate, measure_spread_skill
from ensembles.errors import EnsembleInputError
from ensembles.perturbations import GaussianPerturbation
from ingest.dims import CHANNEL, LAT, LON
from ingest.grid import equiangular_lats, regular_lons

CHANNELS = ["z500", "u500"]
STEP = np.timedelta64(6, "h")
INITS = np.datetime64("2020-01-01T00", "ns") + np.arange(4) * np.timedelta64(5, "D")
SCALE = np.array([1000.0, 10.0])  # the perturbation's unit per channel
ANALYSIS_ERROR = np.array([150.0, 4.0])  # the known initial error
M = 8


def expected_ssr(ratio: float, n_members: int = M) -> float:
    """SSR of ``n_members`` (member 0 the control) perturbed by ``ratio`` times the analysis error.

    With ``M - 1`` perturbations of std ``σ`` and a control, ``E s² = σ² (M − 1)/M`` and the
    ensemble mean's error is ``s0² + σ² (M − 1)/M²``.
    """
    spread2 = ratio**2 * (n_members - 1) / n_members
    error2 = 1 + ratio**2 * (n_members - 1) / n_members**2
    return float(np.sqrt((n_members + 1) / n_members * spread2 / error2))


#: The amplitudes of SSR = 1: the analysis error in the perturbation's units, times sqrt(M / (M − 1))
#: for the control.
RIGHT = ANALYSIS_ERROR / SCALE * np.sqrt(M / (M - 1))


class GrowingPrognostic:
    """``x → m + g (x − m)``: departures from the mean ``m`` grow by ``g`` per step (a linear system)."""

    def __init__(self, growth: float, nlat: int = 16) -> None:
        self.growth = growth
        self._coords = {CHANNEL: np.array(CHANNELS), LAT: equiangular_lats(nlat), LON: regular_lons(2 * nlat)}
        self.mean = torch.tensor([5.4e4, 10.0], dtype=torch.float64)[:, None, None]

    @property
    def input_coords(self):
        return dict(self._coords)

    @property
    def output_coords(self):
        return dict(self._coords)

    @property
    def step_size(self):
        return STEP

    def step(self, x, coords):
        mean = self.mean.to(x.dtype)
        return mean + self.growth * (x - mean), coords


class ToyWorld:
    """Truth evolves by the model exactly; analyses are the truth plus white noise of known size."""

    def __init__(self, model: GrowingPrognostic) -> None:
        self.model = model
        rng = np.random.default_rng(0)
        shape = (len(CHANNELS), 16, 32)
        self.true_start = {
            t: model.mean + torch.as_tensor(rng.normal(0, 1, shape) * SCALE[:, None, None]) for t in INITS
        }
        self.analysis_error = {
            t: torch.as_tensor(rng.normal(0, 1, shape) * ANALYSIS_ERROR[:, None, None]) for t in INITS
        }

    def analysis(self, time):
        return self.true_start[np.datetime64(time, "ns")] + self.analysis_error[np.datetime64(time, "ns")]

    def truth(self, time):
        time = np.datetime64(time, "ns")
        init = max(t for t in INITS if t <= time)
        x = self.true_start[init][None]
        for _ in range(int((time - init) // STEP)):
            x, _ = self.model.step(x, {})
        return x[0]


def _measure(world: ToyWorld, n_members: int = M):
    coords = world.model.input_coords

    def measure(amplitudes, model_error, steps):
        size = SCALE * np.array([amplitudes[c] for c in CHANNELS])
        return measure_spread_skill(
            world.model,
            world.analysis,
            world.truth,
            coords,
            INITS,
            GaussianPerturbation(size, 1.0, channels=CHANNELS),
            n_members=n_members,
            lead_steps=steps,
            seed=3,
        )

    return measure


@pytest.mark.parametrize("growth", [1.0, 1.1])
def test_calibration_recovers_the_amplitude_of_the_known_initial_error(growth):
    world = ToyWorld(GrowingPrognostic(growth))
    result = calibrate(
        _measure(world), {"z500": 0.02, "u500": 1.0}, reference_step=2, long_step=8, iterations=4
    )
    np.testing.assert_allclose([result.amplitudes[c] for c in CHANNELS], RIGHT, rtol=0.05)
    assert not any(result.model_error.values())  # the linear system has no model error: none is switched on
    for ssr in (*result.ssr_reference.values(), *result.ssr_long.values()):
        assert ssr == pytest.approx(1.0, abs=0.08)


def test_spread_skill_of_a_known_ensemble():
    world = ToyWorld(GrowingPrognostic(1.05))
    too_small = _measure(world)(dict(zip(CHANNELS, ANALYSIS_ERROR / SCALE / 2, strict=True)), {}, [1, 4])
    right = _measure(world)(dict(zip(CHANNELS, RIGHT, strict=True)), {}, [1, 4])
    assert expected_ssr(np.sqrt(M / (M - 1))) == pytest.approx(1.0)
    np.testing.assert_allclose(right.ssr, 1.0, atol=0.05)
    np.testing.assert_allclose(too_small.ssr, expected_ssr(0.5), rtol=0.05)
    # the error of the ensemble mean grows with the system: g^k times the analysis error
    np.testing.assert_allclose(right.rmse[1] / right.rmse[0], 1.05**3, rtol=0.03)


class ModelErrorWorld(ToyWorld):
    """The truth departs from the model by noise each step, which initial perturbations cannot represent."""

    def truth(self, time):
        time = np.datetime64(time, "ns")
        init = max(t for t in INITS if t <= time)
        x = self.true_start[init][None]
        rng = np.random.default_rng(int((init - INITS[0]) // STEP))
        for _ in range(int((time - init) // STEP)):
            x, _ = self.model.step(x, {})
            x = x + torch.as_tensor(rng.normal(0, 1, x.shape) * 0.2 * ANALYSIS_ERROR[:, None, None])
        return x[0]


def test_model_error_is_switched_on_when_spread_falls_short_at_the_long_lead():
    world = ModelErrorWorld(GrowingPrognostic(1.0))
    seen = []

    def measure(amplitudes, model_error, steps):
        seen.append(model_error)
        result = _measure(world)(amplitudes, {}, steps)
        sigma = np.array([model_error[c] for c in CHANNELS])
        # a stand-in for a model-error scheme: spread grows with sigma at the long lead
        result.ssr[-1] = result.ssr[-1] * (1 + sigma)
        return result

    start = dict(zip(CHANNELS, RIGHT, strict=True))
    result = calibrate(measure, start, reference_step=1, long_step=16, iterations=3)
    assert not any(seen[0].values()) and all(s > 0 for s in result.model_error.values())
    for ssr in result.ssr_long.values():
        assert ssr == pytest.approx(1.0, abs=0.1)


def test_bad_requests_are_refused():
    world = ToyWorld(GrowingPrognostic(1.0))
    with pytest.raises(EnsembleInputError, match="positive starting amplitudes"):
        calibrate(_measure(world), {"z500": 0.0}, reference_step=1, long_step=2)
    with pytest.raises(EnsembleInputError, match="reference_step <= long_step"):
        calibrate(_measure(world), {"z500": 0.1}, reference_step=3, long_step=2)
    with pytest.raises(EnsembleInputError, match="at least 2 members"):
        _measure(world, n_members=1)({"z500": 0.1, "u500": 0.1}, {}, [1])


class AdditiveNoise:
    """A model error adding white noise of std ``sigma_v · SCALE_v`` after every step (a real ModelError)."""

    def __init__(self, sigma: dict[str, float]) -> None:
        self.size = torch.as_tensor(
            [sigma.get(c, 0.0) for c in CHANNELS], dtype=torch.float64
        ) * torch.as_tensor(SCALE)

    def start(self, coords, generators):
        size = self.size

        class Noise:
            def apply(self, before, after):
                noise = torch.stack(
                    [torch.randn(after.shape[1:], generator=g, dtype=torch.float64) for g in generators]
                )
                return after + (size[None, :, None, None] * noise).to(after.dtype)

        return Noise()


def test_calibration_recovers_initial_and_model_error_amplitudes_together():
    """Truth with additive noise each step; an ensemble with the same kind of model error finds both sizes."""
    world = ModelErrorWorld(GrowingPrognostic(1.0))
    coords = world.model.input_coords

    def measure(amplitudes, model_error, steps):
        size = SCALE * np.array([amplitudes[c] for c in CHANNELS])
        noise = AdditiveNoise(model_error) if any(model_error.values()) else None
        return measure_spread_skill(
            world.model,
            world.analysis,
            world.truth,
            coords,
            INITS,
            GaussianPerturbation(size, 1.0, channels=CHANNELS),
            n_members=M,
            lead_steps=steps,
            seed=3,
            model_error=noise,
        )

    result = calibrate(
        measure, {"z500": 0.05, "u500": 0.1}, reference_step=1, long_step=16, iterations=4, model_error=0.01
    )
    expected_sigma = (
        0.2 * ANALYSIS_ERROR / SCALE * np.sqrt(M / (M - 1))
    )  # the truth's noise, control excluded
    np.testing.assert_allclose([result.model_error[c] for c in CHANNELS], expected_sigma, rtol=0.2)
    np.testing.assert_allclose([result.amplitudes[c] for c in CHANNELS], RIGHT, rtol=0.2)
    for ssr in (*result.ssr_reference.values(), *result.ssr_long.values()):
        assert ssr == pytest.approx(1.0, abs=0.1)
