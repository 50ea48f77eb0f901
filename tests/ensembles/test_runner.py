"""The ensemble runner: reproducible members, lead labels, and refusal of bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensembles.archive import MemoryArchive
from ensembles.errors import EnsembleInputError
from ensembles.model_error import StochasticTendencyPerturbation
from ensembles.perturbations import (
    BalancedRandomFieldPerturbation,
    BredVectorPerturbation,
    GaussianPerturbation,
    GaussianRandomFieldPerturbation,
    NoPerturbation,
)
from ensembles.protocols import Coords
from ensembles.runner import forecast_lead_times, member_generator, run_ensemble
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER, TIME
from tests.ensembles.conftest import IdentityPrognostic
from tests.tolerances import assert_close_to_spread

INIT = np.datetime64("2020-01-01T00", "ns")
N_STEPS = 3
SCALE = np.array([800.0, 8.0])


@pytest.fixture
def initial(truth) -> torch.Tensor:
    return torch.from_numpy(truth.sel({TIME: INIT}).values)


def _run(prognostic, initial, coords, *, n_members=8, init_times=(INIT,), **kwargs):
    """Run into a fresh memory archive and return its dataset."""
    archive = MemoryArchive(
        ["z500", "u500"],
        np.array(init_times),
        forecast_lead_times(prognostic.step_size, N_STEPS),
        n_members,
        coords[LAT],
        coords[LON],
    )
    settings = {"perturbation": GaussianPerturbation(SCALE, 0.3), "seed": 11, **kwargs}
    run_ensemble(
        prognostic,
        initial,
        coords,
        init_times[0],
        n_members=n_members,
        n_steps=N_STEPS,
        archive=archive,
        **settings,
    )
    return archive.dataset


def test_lead_times_are_multiples_of_the_step():
    leads = forecast_lead_times(np.timedelta64(6, "h"), 2)
    np.testing.assert_array_equal(leads, np.array([0, 6, 12], dtype="timedelta64[h]"))


def test_every_step_is_written_at_its_lead(drift_prognostic, initial, coords):
    ds = _run(drift_prognostic, initial, coords, perturbation=NoPerturbation(), n_members=2)
    x = initial[None]
    for k, lead in enumerate(forecast_lead_times(drift_prognostic.step_size, N_STEPS)):
        if k:
            x, _ = drift_prognostic.step(x, {})
        written = ds["z500"].sel({INIT_TIME: INIT, LEAD_TIME: lead, MEMBER: 1}).values
        assert_close_to_spread(written, x[0, 0].numpy(), name=str(lead))
    assert not ds["z500"].isnull().any()


def test_control_member_is_unperturbed(identity_prognostic, initial, coords):
    lead0 = (
        _run(identity_prognostic, initial, coords, n_members=3).isel({LEAD_TIME: 0}).sel({INIT_TIME: INIT})
    )
    np.testing.assert_array_equal(lead0["z500"].sel({MEMBER: 0}).values, initial[0].numpy())
    assert not np.allclose(lead0["z500"].sel({MEMBER: 1}).values, initial[0].numpy())
    assert not np.allclose(lead0["z500"].sel({MEMBER: 1}).values, lead0["z500"].sel({MEMBER: 2}).values)

    uncontrolled = _run(identity_prognostic, initial, coords, n_members=3, control_member=False)
    uncontrolled_0 = uncontrolled["z500"].isel({LEAD_TIME: 0}).sel({INIT_TIME: INIT, MEMBER: 0})
    assert not np.allclose(uncontrolled_0.values, initial[0].numpy())


def _sppt(amplitude: float = 0.5) -> StochasticTendencyPerturbation:
    return StochasticTendencyPerturbation(
        amplitude, step_hours=6, length_scale_km=2000, decorrelation_hours=24
    )


@pytest.mark.parametrize("kind", ["gaussian", "grf", "balanced", "bred", "balanced+sppt"])
def test_a_member_run_alone_equals_it_in_a_batch(kind, drift_prognostic, initial, coords):
    perturbation = {
        "gaussian": lambda: GaussianPerturbation(SCALE, 0.3),
        "grf": lambda: GaussianRandomFieldPerturbation(SCALE, 0.3),
        "balanced": lambda: BalancedRandomFieldPerturbation(SCALE, 0.3),
        "balanced+sppt": lambda: BalancedRandomFieldPerturbation(SCALE, 0.3),
        "bred": lambda: BredVectorPerturbation(drift_prognostic, SCALE, 0.3, cycles=2),
    }[kind]()
    extra = {"model_error": _sppt()} if kind.endswith("sppt") else {}
    batch = _run(drift_prognostic, initial, coords, members_per_batch=8, perturbation=perturbation, **extra)
    alone = _run(drift_prognostic, initial, coords, members=[3], perturbation=perturbation, **extra)
    for variable in ("z500", "u500"):
        np.testing.assert_array_equal(
            alone[variable].sel({MEMBER: 3}).values, batch[variable].sel({MEMBER: 3}).values
        )
    assert bool(alone["z500"].sel({MEMBER: [0, 1, 2, 4]}).isnull().all())


def test_batch_size_does_not_change_the_forecast(drift_prognostic, initial, coords):
    single = _run(drift_prognostic, initial, coords, members_per_batch=1)
    together = _run(drift_prognostic, initial, coords, members_per_batch=8)
    uneven = _run(drift_prognostic, initial, coords, members_per_batch=3)
    for other in (together, uneven):
        for variable in ("z500", "u500"):
            assert_close_to_spread(other[variable].values, single[variable].values, name=variable)


def test_batch_size_does_not_change_the_forecast_with_model_error(drift_prognostic, initial, coords):
    settings = {"perturbation": BalancedRandomFieldPerturbation(SCALE, 0.3), "model_error": _sppt()}
    single = _run(drift_prognostic, initial, coords, members_per_batch=1, **settings)
    for size in (8, 3):
        other = _run(drift_prognostic, initial, coords, members_per_batch=size, **settings)
        for variable in ("z500", "u500"):
            assert_close_to_spread(other[variable].values, single[variable].values, name=variable)


def test_model_error_perturbs_every_step_but_the_controls(drift_prognostic, initial, coords):
    plain = _run(drift_prognostic, initial, coords, perturbation=NoPerturbation(), n_members=3)
    noisy = _run(
        drift_prognostic, initial, coords, perturbation=NoPerturbation(), n_members=3, model_error=_sppt()
    )
    silent = _run(
        drift_prognostic, initial, coords, perturbation=NoPerturbation(), n_members=3, model_error=_sppt(0.0)
    )
    for variable in ("z500", "u500"):
        np.testing.assert_array_equal(
            noisy[variable].sel({MEMBER: 0}).values, plain[variable].sel({MEMBER: 0}).values
        )
        np.testing.assert_array_equal(silent[variable].values, plain[variable].values)
        lead0 = {LEAD_TIME: 0}
        np.testing.assert_array_equal(noisy[variable].isel(lead0).values, plain[variable].isel(lead0).values)
        later = noisy[variable].isel({LEAD_TIME: slice(1, None)}).sel({MEMBER: [1, 2]}).values
        assert not np.allclose(
            later, plain[variable].isel({LEAD_TIME: slice(1, None)}).sel({MEMBER: [1, 2]}).values
        )


def test_model_error_scales_each_increment_within_zero_and_twice(identity_prognostic, coords):
    before = torch.zeros(2, 2, 9, 16, dtype=torch.float64)
    after = torch.ones(2, 2, 9, 16, dtype=torch.float64)
    generators = [member_generator(1, INIT, m, stream=1) for m in range(2)]
    noise = _sppt(3.0).start({MEMBER: np.arange(2), **coords}, generators)
    multiplier = noise.apply(before, after)
    assert float(multiplier.min()) >= 0.0 and float(multiplier.max()) <= 2.0
    torch.testing.assert_close(multiplier[:, 0], multiplier[:, 1])  # one pattern for every channel
    assert float(multiplier.std()) > 0.3
    per_channel = StochasticTendencyPerturbation(3.0, amplitudes={"u500": 0.0}, step_hours=6)
    fresh = [member_generator(1, INIT, m, stream=1) for m in range(2)]
    scaled = per_channel.start({MEMBER: np.arange(2), **coords}, fresh).apply(before, after)
    torch.testing.assert_close(scaled[:, 1], after[:, 1])  # u500's increment is left as the model made it
    assert float(scaled[:, 0].std()) > 0.3


def test_seeds_depend_on_seed_init_time_and_member():
    def draw(*key):
        return torch.randn(4, generator=member_generator(*key))

    base = draw(1, INIT, 2)
    assert torch.equal(base, draw(1, INIT, 2))
    assert torch.equal(base, draw(1, INIT, 2, 0))
    for other in ((2, INIT, 2), (1, INIT + np.timedelta64(6, "h"), 2), (1, INIT, 3), (1, INIT, 2, 1)):
        assert not torch.equal(base, draw(*other))


def test_channels_are_taken_by_label(drift_prognostic, initial, coords):
    reordered = {**coords, CHANNEL: coords[CHANNEL][::-1]}
    reference = _run(drift_prognostic, initial, coords)
    from_reordered = _run(drift_prognostic, initial.flip(0), reordered)
    for variable in ("z500", "u500"):
        np.testing.assert_array_equal(from_reordered[variable].values, reference[variable].values)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_members": 0}, r"n_members >= 1; found \{'n_members': 0\}"),
        ({"n_steps": 0}, "n_steps >= 1"),
        ({"members_per_batch": 0}, "members_per_batch >= 1"),
        ({"seed": -1}, "seed >= 0"),
        ({"members": [7, 8]}, r"member labels in 0 … 7, found \[7, 8\]"),
    ],
)
def test_bad_counts_are_refused(identity_prognostic, initial, coords, kwargs, message):
    settings = {"n_members": 8, "n_steps": 2, "seed": 0, **kwargs}
    with pytest.raises(EnsembleInputError, match=message):
        run_ensemble(
            identity_prognostic,
            initial,
            coords,
            INIT,
            perturbation=NoPerturbation(),
            archive=None,
            **settings,
        )


def test_missing_channel_is_named(identity_prognostic, initial, coords):
    only_z = {**coords, CHANNEL: np.array(["z500"])}
    archive = MemoryArchive(
        ["z500"], [INIT], forecast_lead_times(np.timedelta64(6, "h"), 1), 1, coords[LAT], coords[LON]
    )
    with pytest.raises(
        EnsembleInputError, match=r"lacks channels \['u500'\].*expected \['z500', 'u500'\], found \['z500'\]"
    ):
        run_ensemble(
            identity_prognostic,
            initial[:1],
            only_z,
            INIT,
            n_members=1,
            n_steps=1,
            perturbation=NoPerturbation(),
            archive=archive,
            seed=0,
        )
    assert bool(archive.dataset["z500"].isnull().all())


def test_grid_mismatch_is_refused(identity_prognostic, initial, coords):
    shifted = {**coords, LAT: coords[LAT] - 1.0}
    with pytest.raises(
        EnsembleInputError, match="the initial state is on another grid than the prognostic: expected lat of"
    ):
        run_ensemble(
            identity_prognostic,
            initial,
            shifted,
            INIT,
            n_members=1,
            n_steps=1,
            perturbation=NoPerturbation(),
            archive=None,
            seed=0,
        )


def test_shape_mismatch_is_refused(identity_prognostic, initial, coords):
    with pytest.raises(EnsembleInputError, match=r"\(channel, lat, lon\) = \(2, 9, 16\).*found \(2, 9, 15\)"):
        run_ensemble(
            identity_prognostic,
            initial[..., 1:],
            coords,
            INIT,
            n_members=1,
            n_steps=1,
            perturbation=NoPerturbation(),
            archive=None,
            seed=0,
        )


class _SeeingPrognostic(IdentityPrognostic):
    """Persistence that remembers the coordinates it was stepped with."""

    def step(self, x: torch.Tensor, coords: Coords) -> tuple[torch.Tensor, Coords]:
        self.seen = coords
        return x, coords


def test_a_rounded_grid_is_checked_and_kept_not_relabelled(initial, coords):
    prognostic = _SeeingPrognostic()
    rounded = {**coords, LAT: coords[LAT].astype(np.float32), LON: coords[LON].astype(np.float32)}
    leads = forecast_lead_times(np.timedelta64(6, "h"), 1)
    archive = MemoryArchive(["z500", "u500"], [INIT], leads, 1, coords[LAT], coords[LON])
    run_ensemble(
        prognostic,
        initial,
        rounded,
        INIT,
        n_members=1,
        n_steps=1,
        perturbation=NoPerturbation(),
        archive=archive,
        seed=0,
    )
    assert prognostic.seen[LAT].dtype == np.float32  # the caller's labels reach the model as given
    np.testing.assert_array_equal(prognostic.seen[LON], rounded[LON])
