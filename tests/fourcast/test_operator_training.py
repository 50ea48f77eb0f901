"""Training options of the neural operators: incremental spectral modes (iFNO) and the physics loss (PINO)."""

from __future__ import annotations

import pytest
import torch

from ensembles.regions import global_field_scores
from fourcast.data import StoreWindows
from fourcast.errors import ModelSpecError
from fourcast.models.registry import build_model
from fourcast.training import ModeSchedule, Phase, TrainSettings, seeded_initialisation, train

TRAIN = ("2000-01-01", "2000-01-31T18")
VALID = ("2000-02-01", "2000-02-15T18")


def _run(store, preset: str, steps: int, **settings):
    validation = StoreWindows(store, *VALID, n_ahead=2)
    with seeded_initialisation(0):
        model = build_model(preset, (16, 32), 3)
    reported = []
    result = train(
        model,
        lambda n: StoreWindows(store, *TRAIN, n_ahead=n),
        validation,
        TrainSettings(
            phases=(Phase(1, steps, 3e-3),),
            batch_size=4,
            warmup_steps=2,
            validate_every=10,
            validation_leads=(1, 2),
            validation_samples=4,
            **settings,
        ),
        lambda metrics, step: reported.append((step, metrics)),
        torch.device("cpu"),
        scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
    )
    return model, result, reported


def test_incremental_modes_train_only_the_active_degrees_and_grow_on_a_plateau(store):
    model, _result, reported = _run(
        store, "sfno-small", 20, modes=ModeSchedule(start=2, grow_when=0.99, grow_by=2)
    )
    per_step = [metrics["train/modes"] for _, metrics in reported if "train/loss" in metrics]
    assert per_step == [2] * 20  # logged every step; the growth comes after the last validation
    assert model.active_modes == 4  # the second validation improved by less than 99 %: two more degrees
    for weight in model.spectral_weights():
        assert torch.count_nonzero(weight[..., :2]) == weight[..., :2].numel()
        assert (
            torch.count_nonzero(weight[..., 2:]) == 0
        )  # never trained: the degrees switched on start at zero
    with pytest.raises(ModelSpecError, match=r"need a model with spectral degrees.*AFNONet"):
        _run(store, "afno-tiny", 1, modes=ModeSchedule(start=2))
    with pytest.raises(ModelSpecError, match=r"1 <= start <= max <= 8.*start=9"):
        _run(store, "sfno-small", 1, modes=ModeSchedule(start=9))


def test_physics_loss_is_reported_and_changes_the_training(store):
    plain, _, _ = _run(store, "sfno-small", 3)
    informed, _, reported = _run(store, "sfno-small", 3, physics_weight=1.0)
    losses = [metrics["train/physics_loss"] for _, metrics in reported if "train/loss" in metrics]
    assert len(losses) == 3 and all(0 < value < 100 for value in losses)
    # the untrained SFNO is persistence: its residual is the whole deterministic tendency, about
    # the size of the true change (relative residual ~1, squared)
    assert 0.1 < losses[0] < 10
    assert not torch.equal(plain.spectral_weights()[0], informed.spectral_weights()[0])
