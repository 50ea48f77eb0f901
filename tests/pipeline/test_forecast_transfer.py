"""The forecast stage moves an SFNO checkpoint to the store's grid (zero-shot) and refuses an AFNO, saying
why."""

from __future__ import annotations

import pytest
import torch
import xarray as xr

from fourcast.checkpoint import CheckpointMeta, save_checkpoint
from fourcast.errors import CheckpointError, ResolutionTransferError
from fourcast.forecaster import Forecaster
from fourcast.models.registry import build_model
from ingest.dims import CHANNEL, LAT, LON
from ingest.grid import equiangular_lats, regular_lons
from pipeline.config import TrainConfig
from pipeline.model_loading import on_store_grid

CHANNELS = ["z500", "u500", "v500"]


def _checkpoint(tmp_path, preset: str) -> tuple[Forecaster, CheckpointMeta]:
    model = build_model(preset, (32, 64), 3)
    meta = CheckpointMeta(
        preset=preset,
        channels=CHANNELS,
        lat=equiangular_lats(32).tolist(),
        lon=regular_lons(64).tolist(),
        step_hours=6,
        mean=[5.4e4, 10.0, 0.0],
        std=[800.0, 8.0, 6.0],
    )
    path = save_checkpoint(tmp_path / f"{preset}.pt", model, meta)
    return Forecaster.from_checkpoint(path, torch.device("cpu")), meta


def _store_coords(nlat: int, nlon: int, channels=CHANNELS) -> xr.Dataset:
    return xr.Dataset(coords={CHANNEL: channels, LAT: equiangular_lats(nlat), LON: regular_lons(nlon)})


def test_forecast_stage_moves_an_sfno_to_a_finer_store_and_refuses_an_afno(tmp_path):
    sfno, meta = _checkpoint(tmp_path, "sfno-small")
    assert on_store_grid(sfno, meta, _store_coords(32, 64)) is sfno
    fine = on_store_grid(sfno, meta, _store_coords(64, 128))
    assert fine.input_coords[LAT].size == 64 and fine.model.modes == sfno.model.modes == 16
    x = torch.tensor([5.4e4, 10.0, 0.0])[None, :, None, None] + torch.randn(1, 3, 64, 128)
    assert fine.step(x, fine.input_coords)[0].shape == (1, 3, 64, 128)
    with pytest.raises(CheckpointError, match="channels"):
        on_store_grid(sfno, meta, _store_coords(64, 128, ["z500", "t850", "v500"]))
    afno, afno_meta = _checkpoint(tmp_path, "afno-tiny")
    with pytest.raises(ResolutionTransferError, match="cannot forecast on 64x128 without retraining"):
        on_store_grid(afno, afno_meta, _store_coords(64, 128))


def test_train_config_takes_incremental_modes_and_a_physics_weight():
    raw = {
        "model": "sfno-small",
        "train": {"start": "2000-01-01T00:00", "end": "2000-01-31T18:00"},
        "validation": {"start": "2000-02-01T00:00", "end": "2000-02-10T18:00"},
        "phases": [{"rollout_steps": 1, "optimizer_steps": 1, "learning_rate": 1e-3}],
        "modes": {"start": 4, "max": 8, "grow_when": 0.05},
        "physics_weight": 0.1,
    }
    cfg = TrainConfig.model_validate(raw)
    assert cfg.modes.start == 4 and cfg.modes.grow_by is None and cfg.physics_weight == 0.1
    with pytest.raises(ValueError, match=r"modes.max \(2\) must be >= modes.start \(4\)"):
        TrainConfig.model_validate({**raw, "modes": {"start": 4, "max": 2}})
    with pytest.raises(ValueError, match="physics_weight"):
        TrainConfig.model_validate({**raw, "physics_weight": -1})
