"""Run configuration: YAML → frozen pydantic models, validated before any work starts.

Each stage receives only its own slice (``cfg.ingest``, ``cfg.train``, …). Unknown keys and
wrong types are refused with a message naming the key path and what is allowed.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fourcast.models.registry import PRESETS
from ingest.lexicon import LEXICON

WORKDIR_ENV = "FOURCAST_WORKDIR"


class ConfigError(ValueError):
    """The configuration file is missing, not YAML, or does not validate."""


class _Slice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Period(_Slice):
    """Inclusive date range."""

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self

    def contains(self, other: Period) -> bool:
        return self.start <= other.start and other.end <= self.end

    def overlaps(self, other: Period) -> bool:
        return self.start <= other.end and other.start <= self.end


class SyntheticConfig(_Slice):
    """Shallow-water synthetic ERA5 (the offline default source)."""

    period: Period
    nlat: int = Field(32, ge=8)
    nlon: int = Field(64, ge=16)
    seed: int = 0
    spinup_days: float = Field(30.0, ge=0)


class ClusterConfig(_Slice):
    """Dask cluster: a LocalCluster of ``n_workers`` or an existing scheduler."""

    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "4GiB"
    scheduler_address: str | None = None


class IngestConfig(_Slice):
    """Files → training store."""

    variables: list[str] = Field(min_length=1)
    statistics: Period
    shard_steps: int = Field(64, ge=1)
    compressor: Literal["none", "zstd", "blosc"] = "zstd"

    @field_validator("variables")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in LEXICON]
        if unknown:
            raise ValueError(f"unknown variable ids {unknown}; expected lexicon ids such as z500, t850, u10m, t2m, msl")
        return value


class PhaseConfig(_Slice):
    rollout_steps: int = Field(ge=1)
    optimizer_steps: int = Field(ge=1)
    learning_rate: float = Field(gt=0)


class TrainConfig(_Slice):
    """Training on the store's train period, validated on its validation period."""

    model: str
    train: Period
    validation: Period
    phases: list[PhaseConfig] = Field(min_length=1)
    batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    validate_every: int = Field(200, ge=1)
    validation_lead_hours: list[int] = Field(default_factory=lambda: [6, 24, 72])
    validation_samples: int = Field(32, ge=1)
    seed: int = 0
    device: str | None = None

    @field_validator("model")
    @classmethod
    def _preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown model preset {value!r}; expected one of {sorted(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _disjoint(self) -> TrainConfig:
        if self.train.overlaps(self.validation):
            raise ValueError("train and validation periods overlap")
        return self


class PerturbationConfig(_Slice):
    kind: Literal["none", "gaussian"] = "gaussian"
    amplitude: float = Field(0.05, ge=0, description="in units of each channel's std")


class ForecastConfig(_Slice):
    """Ensemble campaign over init times in ``inits`` every ``init_every_hours``."""

    inits: Period
    init_every_hours: int = Field(24, ge=1)
    members: int = Field(8, ge=1)
    lead_hours: int = Field(120, ge=1)
    members_per_batch: int = Field(8, ge=1)
    control_member: bool = True
    perturbation: PerturbationConfig = PerturbationConfig()
    seed: int = 0
    device: str | None = None


class ScoreConfig(_Slice):
    """Verification against the store's truth; ``lead_hours`` go into the summary."""

    lead_hours: list[int] = Field(default_factory=lambda: [24, 72, 120], min_length=1)
    variables: list[str] | None = None


class TrackingConfig(_Slice):
    """MLflow; ``tracking_uri`` defaults to a SQLite file in the workdir."""

    tracking_uri: str | None = None
    experiment: str = "fourcast"


class RunConfig(_Slice):
    """A whole pipeline run, stage by stage."""

    workdir: Path = Path("demo")
    synthetic: SyntheticConfig
    cluster: ClusterConfig = ClusterConfig()
    ingest: IngestConfig
    train: TrainConfig
    forecast: ForecastConfig
    score: ScoreConfig = ScoreConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _periods_fit(self) -> RunConfig:
        data = self.synthetic.period
        for name, period in (("ingest.statistics", self.ingest.statistics), ("train.train", self.train.train),
                             ("train.validation", self.train.validation), ("forecast.inits", self.forecast.inits)):
            if not data.contains(period):
                raise ValueError(f"{name} {period.start}..{period.end} lies outside the data {data.start}..{data.end}")
        for name, period in (("train.train", self.train.train), ("train.validation", self.train.validation)):
            if period.overlaps(self.forecast.inits):
                raise ValueError(f"forecast.inits overlaps {name}: forecasts must be scored on unseen dates")
        if not self.train.train.contains(self.ingest.statistics):
            raise ValueError("ingest.statistics must lie within train.train (no statistics from unseen dates)")
        unknown = [v for v in (self.score.variables or []) if v not in self.ingest.variables]
        if unknown:
            raise ValueError(f"score.variables {unknown} are not ingested; ingested: {self.ingest.variables}")
        return self


def _describe(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}; allowed here: {_allowed_keys(problem['loc'])}")
        else:
            lines.append(f"{key}: {problem['msg']} (found {problem.get('input')!r})")
    return "\n  ".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def parse_config(raw: dict, source: str = "config") -> RunConfig:
    """Validate a mapping; raises :class:`ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, found {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source} is invalid:\n  {_describe(err)}") from err


def load_config(path: str | Path, workdir: str | Path | None = None) -> RunConfig:
    """Read and validate a YAML config; ``workdir`` (or ``$FOURCAST_WORKDIR``) overrides its workdir."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    workdir = workdir or os.environ.get(WORKDIR_ENV)
    if workdir and isinstance(raw, dict):
        raw = {**raw, "workdir": str(workdir)}
    return parse_config(raw, source=str(path))
