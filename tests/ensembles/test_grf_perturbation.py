"""Spherical Gaussian random field perturbation: identity, noise level, correlation, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensembles.errors import EnsembleInputError
from ensembles.perturbations import GaussianPerturbation, GaussianRandomFieldPerturbation
from ingest.dims import CHANNEL, LAT, LON, MEMBER
from ingest.grid import cell_area_weights, equiangular_lats, regular_lons


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _coords(n_members: int, nlat: int, nlon: int) -> dict[str, np.ndarray]:
    return {
        MEMBER: np.arange(n_members),
        CHANNEL: np.array(["z500", "u500"]),
        LAT: equiangular_lats(nlat),
        LON: regular_lons(nlon),
    }


def _neighbour_correlation(field: torch.Tensor) -> float:
    """Correlation of east-west neighbours over all leading dims."""
    field = field.double()
    return float((field * torch.roll(field, 1, dims=-1)).mean() / (field**2).mean())


def test_zero_amplitude_is_exactly_identity(coords):
    state = 1000.0 * torch.randn(2, 2, 9, 16, generator=_generator(1))
    perturb = GaussianRandomFieldPerturbation(np.array([50.0, 3.0]), 0.0)
    x, _ = perturb(state, {MEMBER: np.arange(2), **coords}, _generator(0))
    assert torch.equal(x, state)


def test_noise_has_the_requested_area_weighted_standard_deviation():
    scale, amplitude, n_members = np.array([100.0, 2.0]), 0.3, 4
    noise, _ = GaussianRandomFieldPerturbation(scale, amplitude)(
        torch.zeros(n_members, 2, 17, 34), _coords(n_members, 17, 34), _generator(7)
    )
    weights = torch.as_tensor(cell_area_weights(equiangular_lats(17)))[:, None]
    for c in range(2):
        field_std = ((weights * noise[:, c].double() ** 2).mean(dim=(-2, -1))).sqrt()
        # on the field's own grid every field is normalised exactly
        assert torch.allclose(
            field_std, torch.full((n_members,), amplitude * scale[c], dtype=torch.float64), rtol=1e-5
        )


def test_std_on_another_grid_is_close_to_requested():
    """Regridding 33 x 66 → 33 x 64 keeps the std within sampling error of the target."""
    noise, _ = GaussianRandomFieldPerturbation(np.array([1.0, 1.0]), 2.0)(
        torch.zeros(8, 2, 33, 64), _coords(8, 33, 64), _generator(3)
    )
    assert noise.double().std().item() == pytest.approx(2.0, rel=0.15)


def test_fields_are_spatially_correlated_unlike_white_noise():
    coords = _coords(4, 33, 66)
    x = torch.zeros(4, 2, 33, 66)
    correlated, _ = GaussianRandomFieldPerturbation(np.ones(2), 1.0)(x, coords, _generator(5))
    white, _ = GaussianPerturbation(np.ones(2), 1.0)(x, coords, _generator(5))
    assert _neighbour_correlation(correlated) > 0.8
    assert abs(_neighbour_correlation(white)) < 0.1


def test_member_alone_equals_member_first_in_a_batch():
    perturb = GaussianRandomFieldPerturbation(np.array([50.0, 3.0]), 0.3, alpha=2.5, tau=4.0)
    state = torch.randn(3, 2, 9, 16, generator=_generator(1))
    torch.manual_seed(123)
    batch, _ = perturb(state, _coords(3, 9, 16), _generator(11))
    torch.manual_seed(456)
    alone, _ = perturb(state[:1], _coords(1, 9, 16), _generator(11))
    assert torch.equal(batch[:1], alone)
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": np.ones(2), "amplitude": -0.1}, r"non-negative amplitude, found -0.1"),
        ({"scale": np.array([1.0, -1.0]), "amplitude": 0.3}, "non-negative scales"),
        (
            {"scale": np.ones(2), "amplitude": 0.3, "channels": ["z500"]},
            r"one channel label per scale \(2\), found 1",
        ),
        ({"scale": np.ones(2), "amplitude": 0.3, "alpha": 1.0}, "alpha > 1, found 1.0"),
        ({"scale": np.ones(2), "amplitude": 0.3, "tau": 0.0}, "positive tau, found 0.0"),
        ({"scale": np.ones(2), "amplitude": 0.3, "grid_nlat": 2}, "at least 3, found 2"),
    ],
)
def test_bad_construction_is_refused(kwargs, message):
    with pytest.raises(EnsembleInputError, match=message):
        GaussianRandomFieldPerturbation(**kwargs)


def test_scale_length_must_match_the_channel_count():
    with pytest.raises(EnsembleInputError, match=r"expected a state with 3 channels .*, found 2"):
        GaussianRandomFieldPerturbation(np.ones(3), 0.3)(
            torch.zeros(1, 2, 9, 16), _coords(1, 9, 16), _generator(0)
        )


def test_grid_coords_must_match_the_state():
    with pytest.raises(EnsembleInputError, match=r"sizes \(9, 16\) .* found \(9, 18\)"):
        GaussianRandomFieldPerturbation(np.ones(2), 0.3)(
            torch.zeros(1, 2, 9, 16), _coords(1, 9, 18), _generator(0)
        )
