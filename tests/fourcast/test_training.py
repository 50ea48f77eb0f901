import numpy as np
import pytest
import torch

from ensembles.regions import global_field_scores
from fourcast.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from fourcast.data import StoreWindows
from fourcast.errors import CheckpointError, CheckpointGridError, DataWindowError, NonFiniteLossError
from fourcast.forecaster import Forecaster
from fourcast.models.registry import build_model
from fourcast.normaliser import Normaliser
from fourcast.training import (
    LatWeightedMSE,
    Phase,
    TrainSettings,
    enable_activation_checkpointing,
    train,
    validate,
)
from ingest.grid import cell_area_weights
from ingest.schema import open_store

TRAIN = ("2000-01-01", "2000-01-31T18")
VALID = ("2000-02-01", "2000-02-15T18")
#: RMSE of the float32 model's forecasts made in batches of other sizes, both scored in float64.
FLOAT32_MEAN_REL = 1e-6


def test_windows_are_normalised_consecutive_store_states(store):
    windows = StoreWindows(store, *TRAIN, n_ahead=2)
    ds = open_store(store)
    x, y = windows[5]
    assert x.shape == (3, 16, 32) and y.shape == (2, 3, 16, 32)
    t0 = windows.input_time(5)
    expected = (
        ds["data"].sel(time=t0 + np.timedelta64(12, "h")).values - ds["mean"].values[:, None, None]
    ) / ds["std"].values[:, None, None]
    np.testing.assert_allclose(y[1].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert len(windows) == 124 - 2
    lazy = StoreWindows(store, *TRAIN, n_ahead=2, in_memory=False)
    torch.testing.assert_close(lazy[5][1], y)


def test_windows_refuse_ranges_outside_the_store(store):
    with pytest.raises(DataWindowError, match="store covers 2000-01-01"):
        StoreWindows(store, "1999-01-01", "1999-02-01")


def test_lat_weighted_mse_matches_numpy(store):
    lat = StoreWindows(store, *TRAIN).lat
    pred, target = torch.randn(2, 3, 16, 32), torch.randn(2, 3, 16, 32)
    expected = ((pred - target).numpy() ** 2 * cell_area_weights(lat)[:, None]).mean()
    assert LatWeightedMSE(lat)(pred, target).item() == pytest.approx(expected, rel=1e-5)


def _settings(**overrides):
    base = dict(
        phases=(Phase(1, 60, 3e-3), Phase(2, 10, 5e-4)),
        batch_size=8,
        warmup_steps=5,
        validate_every=35,
        validation_leads=(1, 4),
        validation_samples=8,
    )
    return TrainSettings(**{**base, **overrides})


def test_training_beats_persistence_and_reports(store):
    validation = StoreWindows(store, *VALID, n_ahead=4)
    model = build_model("afno-tiny", (16, 32), 3)
    reported = []
    result = train(
        model,
        lambda n: StoreWindows(store, *TRAIN, n_ahead=n),
        validation,
        _settings(),
        lambda metrics, step: reported.append((step, metrics)),
        torch.device("cpu"),
        scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
    )
    assert result.steps == 70 and [h["step"] for h in result.history] == [35, 70]
    assert {"train/loss", "train/lr"} <= set(reported[0][1])
    assert "val/z500/rmse_24h" in result.history[-1]
    # persistence error of the same validation windows, in normalised units
    x = torch.stack([validation[i][0] for i in range(len(validation))])
    y = torch.stack([validation[i][1][0] for i in range(len(validation))])
    persistence = LatWeightedMSE(validation.lat)(x, y).sqrt().item()
    model.load_state_dict(result.best_state)
    with torch.no_grad():
        trained = LatWeightedMSE(validation.lat)(model(x), y).sqrt().item()
    assert trained < persistence


def test_non_finite_loss_stops_with_step(store):
    validation = StoreWindows(store, *VALID, n_ahead=4)
    model = build_model("afno-tiny", (16, 32), 3)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="at step 0"):
        train(
            model,
            lambda n: StoreWindows(store, *TRAIN, n_ahead=n),
            validation,
            _settings(),
            lambda m, s: None,
            torch.device("cpu"),
            scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
        )


def _meta(windows):
    return CheckpointMeta(
        "afno-tiny",
        windows.channels,
        windows.lat.tolist(),
        windows.lon.tolist(),
        6,
        windows.mean.tolist(),
        windows.std.tolist(),
        {"store_fingerprint": "abc"},
    )


def test_checkpoint_round_trip_reproduces_the_forecast(store, tmp_path):
    windows = StoreWindows(store, *TRAIN)
    model = build_model("afno-tiny", (16, 32), 3)
    path = save_checkpoint(tmp_path / "ck" / "model.pt", model, _meta(windows))
    _state, meta = load_checkpoint(path)
    assert meta.channels == ["z500", "u500", "v500"] and meta.extra["store_fingerprint"] == "abc"
    forecaster = Forecaster.from_checkpoint(path, torch.device("cpu"))
    x = torch.as_tensor(open_store(store)["data"].values[:2])
    direct = Normaliser(windows.mean, windows.std)
    expected = direct.denormalise(model(direct.normalise(x)))
    out, _coords = forecaster.step(x, {"member": np.arange(2), **forecaster.input_coords})
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-3)
    assert forecaster.step_size == np.timedelta64(6, "h")
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_checkpoint_errors_say_what_differs(store, tmp_path):
    windows = StoreWindows(store, *TRAIN)
    meta = _meta(windows)
    with pytest.raises(
        CheckpointError, match=r"channels \['z500', 'u500', 'v500'\] differ.*\['z500', 't850'\]"
    ):
        meta.check_matches(["z500", "t850"], windows.lat, windows.lon)
    with pytest.raises(
        CheckpointGridError, match="data is on another grid than the checkpoint: expected lat of"
    ):
        meta.check_matches(windows.channels, windows.lat[:-1], windows.lon)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_forecaster_with_identity_model_returns_its_input():
    lat, lon = np.linspace(90, -90, 4), np.arange(8) * 45.0
    forecaster = Forecaster(
        torch.nn.Identity(),
        Normaliser([1.0], [2.0]),
        ["z500"],
        lat,
        lon,
        np.timedelta64(6, "h"),
        torch.device("cpu"),
    )
    x = torch.randn(3, 1, 4, 8)
    out, _ = forecaster.step(x, {"member": np.arange(3), **forecaster.input_coords})
    torch.testing.assert_close(out, x)
    with pytest.raises(
        CheckpointError,
        match=r"other channel labels than the model: expected channel \['z500'\], found \['t850'\]",
    ):
        forecaster.step(x, {"member": np.arange(3), **forecaster.input_coords, "channel": np.array(["t850"])})


def _scores(windows: StoreWindows):
    return global_field_scores(("rmse", "acc"), windows.lat, windows.lon)


def test_validation_of_persistence_scores_as_persistence_and_acc_is_a_correlation(store):
    validation = StoreWindows(store, *VALID, n_ahead=2)
    metrics = validate(torch.nn.Identity(), validation, (1, 2), 6, torch.device("cpu"), _scores(validation))
    for lead_hours in (6, 12):
        for channel in validation.channels:
            assert metrics[f"val/{channel}/rmse_{lead_hours}h"] == pytest.approx(
                metrics[f"val/{channel}/persistence_rmse_{lead_hours}h"], rel=1e-6
            )
            assert -1.0 <= metrics[f"val/{channel}/acc_{lead_hours}h"] <= 1.0


def test_validation_rmse_is_the_area_weighted_rmse_of_the_model_forecasts(store):
    # validation scores through the scorecard's statistic units; here it is checked by hand
    validation = StoreWindows(store, *VALID, n_ahead=1)
    torch.manual_seed(0)
    model = build_model(
        "afno-tiny", (validation.lat.size, validation.lon.size), len(validation.channels)
    ).eval()
    metrics = validate(model, validation, (1,), 5, torch.device("cpu"), _scores(validation), batch_size=2)
    picks = np.unique(np.linspace(0, len(validation) - 1, 5).astype(int))
    x = torch.stack([validation[int(i)][0] for i in picks])
    truth = np.stack([validation[int(i)][1][0].numpy() for i in picks]).astype(np.float64)
    with torch.no_grad():
        forecast = model(x).numpy().astype(np.float64)
    weights = cell_area_weights(validation.lat)[:, None] * np.ones(validation.lon.size)
    weights /= weights.sum()
    mse = ((forecast - truth) ** 2 * weights).sum(axis=(-2, -1)).mean(axis=0)
    for i, channel in enumerate(validation.channels):
        expected = np.sqrt(mse[i]) * validation.std[i]
        assert metrics[f"val/{channel}/rmse_6h"] == pytest.approx(expected, rel=FLOAT32_MEAN_REL), channel


def test_activation_checkpointing_keeps_keys_and_gradients(store):
    x = torch.randn(2, 3, 16, 32)
    plain = build_model("afno-small", (16, 32), 3)
    recomputed = build_model("afno-small", (16, 32), 3)
    recomputed.load_state_dict(plain.state_dict())
    assert enable_activation_checkpointing(recomputed) == 8
    assert list(recomputed.state_dict()) == list(plain.state_dict())
    for model in (plain, recomputed):
        model(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_training_keeps_the_loss_finite(store):
    validation = StoreWindows(store, *VALID, n_ahead=1)
    model = build_model("afno-tiny", (16, 32), 3)
    losses = []
    train(
        model,
        lambda n: StoreWindows(store, *TRAIN, n_ahead=n),
        validation,
        _settings(phases=(Phase(1, 3, 1e-3),), validation_leads=(1,), validation_samples=2, precision="bf16"),
        lambda metrics, step: losses.append(metrics.get("train/loss")),
        torch.device("cpu"),
        scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
    )
    assert all(np.isfinite(loss) for loss in losses if loss is not None) and len(losses) == 4
    assert all(
        p.dtype == torch.float32 for p in model.parameters()
    )  # autocast, not a bf16 copy of the weights
