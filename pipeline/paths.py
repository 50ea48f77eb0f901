"""Where a run keeps what it produces: every path of a run, under one work directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.calibration import CALIBRATION_FILE


@dataclass(frozen=True)
class Paths:
    """Where a run keeps what it produces, all under one work directory."""

    workdir: Path

    @property
    def raw(self) -> Path:
        return self.workdir / "era5"

    @property
    def cds_cache(self) -> Path:
        return self.raw / "cds"

    @property
    def store(self) -> Path:
        return self.workdir / "store.zarr"

    @property
    def climatology(self) -> Path:
        return self.workdir / "climatology.zarr"

    @property
    def checkpoint(self) -> Path:
        return self.workdir / "checkpoints" / "model.pt"

    @property
    def archive(self) -> Path:
        return self.workdir / "forecasts" / "archive.zarr"

    @property
    def scores(self) -> Path:
        return self.workdir / "scores"

    @property
    def artifacts(self) -> Path:
        return self.workdir / "mlartifacts"

    @property
    def calibration(self) -> Path:
        return self.workdir / CALIBRATION_FILE

    @property
    def summary(self) -> Path:
        return self.workdir / "summary.json"

    @property
    def wb2(self) -> Path:
        return self.workdir / "wb2"
