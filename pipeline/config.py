"""Run configuration: YAML → frozen pydantic models, validated before any work starts.

Each stage receives only its own slice (``cfg.ingest``, ``cfg.train``, …). Unknown keys,
wrong types, values outside their sane range and keys given twice are refused with a message
naming the key path and what is allowed. Times are ISO 8601 (hours alone will do:
``2001-01-15T00``) and UTC; one with an offset is converted to UTC. ``~`` and ``$VARIABLES`` in
paths are expanded.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

import yaml
from dask.utils import parse_bytes
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ensembles.regions import REGIONS, Region
from fourcast.models.registry import PRESETS
from ingest.lexicon import LEXICON
from pipeline.errors import ConfigError  # re-exported

WORKDIR_ENV = "FOURCAST_WORKDIR"
TRACKING_URI_ENV = "FOURCAST_TRACKING_URI"

#: Upper bounds that keep a typo from allocating terabytes: ensemble size, forecast length (a
#: year), time steps per store shard, and seeds (what both torch and NumPy accept, as int64).
MAX_MEMBERS = 10_000
MAX_LEAD_HOURS = 8760
MAX_SHARD_STEPS = 10_000
MAX_SEED = 2**63 - 1

#: Device types a stage can run on (``cuda`` may carry an index: ``cuda:1``).
DEVICE_TYPES = ("cpu", "cuda", "mps")


def parse_time(value: object) -> object:
    """A time of the config or the command line as a datetime; every time option goes through here.

    Strings are ISO 8601, hours alone allowed (``2001-01-15T00``); a date is its midnight; other
    values are left for pydantic to judge.
    """
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError as err:
            raise ValueError(
                f"expected an ISO 8601 time such as 2001-01-15T00 or 2001-01-15T06:00 (UTC unless an "
                f"offset is given), found {value!r}"
            ) from err
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day)
    return value


def _utc_naive(value: datetime) -> datetime:
    """A time with an offset as the same instant in (naive) UTC, the convention of the store and archive."""
    return value if value.tzinfo is None else value.astimezone(timezone.utc).replace(tzinfo=None)


#: A time in UTC, as the store holds them (see :func:`parse_time`).
Time = Annotated[datetime, BeforeValidator(parse_time), AfterValidator(_utc_naive)]

_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_path(text: str) -> str:
    """``text`` with ``~`` and ``$VARIABLE``/``${VARIABLE}`` expanded; an unset variable is refused."""
    unset = [name.strip("{}") for name in _VARIABLE.findall(text) if name.strip("{}") not in os.environ]
    if unset:
        raise ValueError(f"path {text!r} uses unset environment variable {', '.join(unset)}")
    return os.path.expanduser(os.path.expandvars(text))


#: A path from the config or the command line, with ``~`` and environment variables expanded.
UserPath = Annotated[
    Path,
    BeforeValidator(
        lambda value: expand_path(os.fspath(value)) if isinstance(value, (str, os.PathLike)) else value
    ),
]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
LeadHours = Annotated[int, Field(ge=0, le=MAX_LEAD_HOURS)]


def _device_name(value: str | None) -> str | None:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether the machine has it is checked when a stage
    starts)."""
    if value is None:
        return value
    try:
        import torch  # only when a device is named

        device = torch.device(value)
    except (RuntimeError, ValueError):
        device = None
    if (
        device is None
        or device.type not in DEVICE_TYPES
        or (device.index is not None and device.type != "cuda")
    ):
        raise ValueError(f"expected cpu, cuda, cuda:N or mps, found {value!r}")
    return value


Device = Annotated[str | None, AfterValidator(_device_name)]


class _Slice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Period(_Slice):
    """Inclusive date range."""

    start: Time
    end: Time

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
    nlat: int = Field(32, ge=8, le=721)
    nlon: int = Field(64, ge=16, le=1440)
    seed: Seed = 0
    spinup_days: float = Field(30.0, ge=0)


class ClusterConfig(_Slice):
    """Dask cluster: a LocalCluster of ``n_workers`` or an existing scheduler."""

    n_workers: int = Field(2, ge=1, le=1024)
    threads_per_worker: int = Field(1, ge=1, le=1024)
    memory_limit: str = Field("4GiB", description="per worker: a size (4GiB, 500MB; 0: no limit) or 'auto'")
    scheduler_address: str | None = None
    dashboard_address: str = Field("127.0.0.1:0", description="host:port of a LocalCluster's dashboard")

    @field_validator("memory_limit")
    @classmethod
    def _size(cls, value: str) -> str:
        if value == "auto":
            return value
        try:
            size = parse_bytes(value)
        except ValueError:
            size = -1
        if not value.strip() or size < 0:
            raise ValueError(f"expected a size such as 4GiB or 500MB, or 'auto', found {value!r}")
        return value


class CdsConfig(_Slice):
    """ERA5 from the Climate Data Store: what to request and how to fetch it.

    The key is never configured here: it comes from ``CDSAPI_URL``/``CDSAPI_KEY`` or
    ``~/.cdsapirc``, so it cannot end up in a config file, a log or MLflow. Pressure levels come
    from the variable ids (``z500`` is geopotential at 500 hPa).
    """

    period: Period
    step_hours: int = Field(6, ge=1, le=24)
    data_format: Literal["netcdf", "grib"] = "netcdf"
    download_format: Literal["unarchived", "zip"] = "unarchived"
    grid: tuple[float, float] | None = Field(None, description="(dlat, dlon) in degrees; None: native 0.25°")
    area: tuple[float, float, float, float] | None = Field(
        None, description="(north, west, south, east) in degrees"
    )
    max_fields: int | None = Field(None, ge=1, description="fields per request; None: the format's default")
    concurrency: int = Field(2, ge=1, le=16)
    retries: int = Field(3, ge=0)
    backoff_seconds: float = Field(10.0, ge=0)
    poll_max_seconds: float = Field(120.0, gt=0)
    cache_dir: UserPath | None = Field(None, description="default: <workdir>/era5/cds")

    @field_validator("step_hours")
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if 24 % value:
            raise ValueError(f"step_hours must divide 24 (1, 2, 3, 4, 6, 8, 12, 24), found {value}")
        return value


class IngestConfig(_Slice):
    """Files → training store; ``source`` says where the files come from."""

    variables: list[str] = Field(min_length=1)
    statistics: Period | None = Field(
        None,
        description="training period of the statistics and the climatology; "
        "default: the data less its last statistics_leave_out_years years",
    )
    statistics_leave_out_years: int = Field(3, ge=0)
    coarsen: int = Field(
        1, ge=1, description="integer factor coarsening the grid with area weights (4: 0.25° → 1°)"
    )
    shard_steps: int = Field(64, ge=1, le=MAX_SHARD_STEPS)
    compressor: Literal["none", "zstd", "blosc"] = "zstd"
    source: Literal["synthetic", "files", "cds"] = "synthetic"
    cds: CdsConfig | None = None
    assume_units: dict[str, str] = Field(
        default_factory=dict,
        description="{variable id: units} for input fields stored without a units attribute "
        "(otherwise refused), e.g. {z500: 'm**2 s**-2'}",
    )

    @model_validator(mode="after")
    def _cds_configured(self) -> IngestConfig:
        if self.source == "cds" and self.cds is None:
            raise ValueError("ingest.source is 'cds' but there is no ingest.cds section (period, grid, ...)")
        return self

    @field_validator("variables")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in LEXICON]
        if unknown:
            raise ValueError(
                f"unknown variable ids {unknown}; expected lexicon ids such as z500, t850, u10m, t2m, msl"
            )
        return value

    @field_validator("assume_units")
    @classmethod
    def _known_ids(cls, value: dict[str, str]) -> dict[str, str]:
        cls._known(list(value))
        return value


class PhaseConfig(_Slice):
    rollout_steps: int = Field(ge=1)
    optimizer_steps: int = Field(ge=1)
    learning_rate: float = Field(gt=0)


class LoaderConfig(_Slice):
    """How training windows reach the model (see :class:`fourcast.data.StoreWindows`)."""

    cache: Literal["none", "memory"] = Field(
        "none",
        description="none: stream windows from the store (bounded memory); memory: read the range once",
    )
    prefetch_factor: int = Field(2, ge=1, description="batches each loader worker reads ahead")


class ModesConfig(_Slice):
    """Incremental spectral modes (iFNO) for an SFNO: ``start`` degrees, ``grow_by`` more whenever the
    validation score improved by less than the fraction ``grow_when`` since the last validation, up to
    ``max``."""

    start: int = Field(ge=1)
    max: int | None = Field(None, ge=1, description="default: all the model's degrees")
    grow_when: float = Field(0.02, gt=0, lt=1)
    grow_by: int | None = Field(None, ge=1, description="default: start")

    @model_validator(mode="after")
    def _ordered(self) -> ModesConfig:
        if self.max is not None and self.max < self.start:
            raise ValueError(f"modes.max ({self.max}) must be >= modes.start ({self.start})")
        return self


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
    validation_lead_hours: list[Annotated[int, Field(ge=1, le=MAX_LEAD_HOURS)]] = Field(
        default_factory=lambda: [6, 24, 72], min_length=1
    )
    validation_samples: int = Field(32, ge=1)
    seed: Seed = 0
    device: Device = None
    checkpoint_every: int = Field(200, ge=1, description="optimiser steps between resumable training states")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    loader_workers: int | None = Field(None, ge=0, description="per rank; default 2 on CUDA, 0 on CPU")
    loader: LoaderConfig = LoaderConfig()
    register_model: bool = Field(True, description="register the trained model as fourcast-<model> in MLflow")
    modes: ModesConfig | None = Field(None, description="incremental Fourier modes (SFNO presets only)")
    physics_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the shallow-water residual loss (PINO); needs "
        "z500, u500, v500 on an equiangular grid with poles",
    )

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
    """Initial-condition perturbation: none, Gaussian, spherical Gaussian random field, balanced fields, bred
    vectors.

    ``balanced`` (the default) draws one smooth streamfunction per pressure level with the
    length scale ``length_scale_km`` and derives z, u and v from it in geostrophic balance
    (:class:`ensembles.perturbations.BalancedRandomFieldPerturbation`). ``amplitudes`` gives
    per-variable sizes (in units of each channel's std) in place of ``amplitude``; the
    calibration stage writes them, and ``forecast`` takes them from there by default.
    """

    kind: Literal["none", "gaussian", "grf", "balanced", "bred"] = "balanced"
    amplitude: float = Field(0.05, ge=0, description="in units of each channel's std")
    amplitudes: dict[str, Annotated[float, Field(ge=0)]] | None = Field(
        None, description="per-variable amplitudes {z500: 0.02, ...}; variables left out take amplitude"
    )
    alpha: float | None = Field(
        None, gt=1, description="grf/balanced: spectral exponent (smoothness); default 2 (grf), 3 (balanced)"
    )
    tau: float = Field(3.0, gt=0, description="grf: inverse correlation length on the unit sphere")
    length_scale_km: float = Field(
        1000.0, gt=0, description="balanced: length scale of the streamfunction (km)"
    )
    cycles: int = Field(2, ge=1, description="bred: breeding cycles")

    @field_validator("amplitudes")
    @classmethod
    def _known_amplitudes(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        unknown = [v for v in (value or {}) if v not in LEXICON]
        if unknown:
            raise ValueError(
                f"unknown variable ids {unknown} in amplitudes; expected lexicon ids such as z500"
            )
        return value


class ModelErrorConfig(_Slice):
    """Stochastic model error of every forecast step: none, or SPPT-like multiplicative noise on the
    increments
    (:class:`ensembles.model_error.StochasticTendencyPerturbation`)."""

    kind: Literal["none", "sppt"] = "none"
    amplitude: float = Field(0.0, ge=0, le=5, description="std of the multiplier's pattern")
    amplitudes: dict[str, Annotated[float, Field(ge=0, le=5)]] | None = Field(
        None,
        description="per-variable std of the multiplier (one pattern for all); variables left out take "
        "amplitude",
    )
    length_scale_km: float = Field(2000.0, gt=0)
    decorrelation_hours: float = Field(72.0, gt=0)


class CalibrationConfig(_Slice):
    """``fourcast calibrate``: per-variable perturbation amplitudes (and the model-error amplitude) chosen on
    the
    validation period so that the debiased spread/skill ratio is 1.

    The initial amplitudes are matched at ``reference_lead_hours``, the model-error amplitude
    at ``long_lead_hours`` (default: ``forecast.lead_hours``; model error is used only when the
    spread at that lead falls short by more than ``tolerance`` without it). Init times:
    ``n_inits`` spread evenly over ``period`` (default: ``train.validation``), never the scored
    ones. ``enabled`` runs the stage in ``fourcast run``/``demo`` (the demo config turns it on);
    ``fourcast calibrate`` runs it whatever ``enabled`` says.
    """

    enabled: bool = Field(False, description="run the calibrate stage in `fourcast run` before the forecast")
    period: Period | None = Field(None, description="default: train.validation")
    n_inits: int = Field(6, ge=1, le=1000)
    members: int = Field(8, ge=2, le=MAX_MEMBERS)
    reference_lead_hours: int = Field(24, ge=1, le=MAX_LEAD_HOURS)
    long_lead_hours: int | None = Field(
        None, ge=1, le=MAX_LEAD_HOURS, description="default forecast.lead_hours"
    )
    iterations: int = Field(4, ge=1, le=20)
    tolerance: float = Field(0.1, gt=0, lt=1)
    model_error: bool = Field(
        True, description="allow SPPT model error when initial perturbations fall short"
    )
    seed: Seed = 1

    @model_validator(mode="after")
    def _ordered(self) -> CalibrationConfig:
        if self.long_lead_hours is not None and self.long_lead_hours < self.reference_lead_hours:
            raise ValueError(
                f"calibrate.long_lead_hours {self.long_lead_hours} must be >= reference_lead_hours "
                f"{self.reference_lead_hours}"
            )
        return self


class ForecastConfig(_Slice):
    """Ensemble campaign over init times in ``inits`` every ``init_every_hours`` (or the list ``init_times``).

    ``model`` is a checkpoint path or an MLflow model URI (``models:/name/version``,
    ``runs:/<run id>/<path>``); by default the pipeline's own checkpoint. ``step_hours``, when
    given, must equal the model's step. Under ``torchrun`` the (init time, member block) work
    items are split over the processes.
    """

    inits: Period
    init_every_hours: int = Field(24, ge=1)
    init_times: list[Time] | None = Field(
        None, min_length=1, description="explicit init times; replaces inits"
    )
    model: str | None = None
    members: int = Field(8, ge=1, le=MAX_MEMBERS)
    lead_hours: int = Field(120, ge=1, le=MAX_LEAD_HOURS)
    step_hours: int | None = Field(None, ge=1, le=MAX_LEAD_HOURS)
    members_per_batch: int = Field(8, ge=1, le=MAX_MEMBERS)
    control_member: bool = True
    perturbation: PerturbationConfig = PerturbationConfig()
    model_error: ModelErrorConfig = ModelErrorConfig()
    calibrated: bool = Field(
        True,
        description="take the amplitudes of <workdir>/calibration.json when it is there "
        "and was made for the same model",
    )
    seed: Seed = 0
    device: Device = None
    autocast: bool = Field(True, description="bfloat16 autocast of the network on CUDA")
    cuda_graphs: bool = Field(False, description="replay each model step from a CUDA graph (CUDA only)")
    compile: bool = Field(False, description="run the network through torch.compile (not with cuda_graphs)")
    archive: UserPath | None = Field(
        None, description="archive path; default <workdir>/forecasts/archive.zarr"
    )
    overwrite: bool = Field(
        False, description="replace an archive of a different campaign at the archive path"
    )
    wait_timeout_s: float = Field(
        600.0, gt=0, description="how long a process waits for the others without progress"
    )
    stream_scores: bool = Field(
        False,
        description="also score members as they are produced, into "
        "<workdir>/scores/streamed (one process only)",
    )

    @model_validator(mode="after")
    def _fast_path_fits(self) -> ForecastConfig:
        """``cuda_graphs`` needs a CUDA device (or the default one) and excludes ``compile``."""
        if self.cuda_graphs and self.compile:
            raise ValueError("forecast.cuda_graphs and forecast.compile are exclusive: choose one")
        if self.cuda_graphs and self.device is not None and not self.device.startswith("cuda"):
            raise ValueError(
                f"forecast.cuda_graphs needs a CUDA device; found forecast.device {self.device!r}"
            )
        return self

    @field_validator("model")
    @classmethod
    def _expand_model_path(cls, value: str | None) -> str | None:
        """A checkpoint path gets ``~``/variables expanded; an MLflow URI (``models:/``, ``runs:/``) is left
        as is."""
        return value if value is None or ":/" in value else expand_path(value)


class RegionBoxConfig(_Slice):
    """A latitude/longitude box to score over, edges included (``lon`` read eastwards from west, mod 360)."""

    name: str = Field(min_length=1)
    lat: tuple[float, float] = Field(description="(south, north), degrees north")
    lon: tuple[float, float] = Field((0.0, 360.0), description="(west, east), degrees east")

    @model_validator(mode="after")
    def _valid_box(self) -> RegionBoxConfig:
        Region.box(self.lat[0], self.lat[1], self.lon[0], self.lon[1], name=self.name)  # raises on a bad box
        return self


class ScoreConfig(_Slice):
    """Verification against the store's truth; ``lead_hours`` go into the summary and the training run.

    ``regions`` are preset names (global, extra-tropics-north, extra-tropics-south, tropics),
    ``boxes`` extra lat/lon boxes. ``nan_policy``: ``fail`` stops at the first NaN in a forecast,
    the truth or the climatology; ``skip`` leaves that forecast out for every system and counts
    it. ``partial`` scores an archive that was never finalised, leaving unwritten forecasts out.
    ``map_init``/``map_lead_hours`` choose the maps (default: first init, first of ``lead_hours``).
    ``max_lead_hours`` scores only the archive's lead times up to it (all by default).
    """

    lead_hours: list[LeadHours] = Field(default_factory=lambda: [24, 72, 120], min_length=1)
    max_lead_hours: LeadHours | None = Field(
        None, description="score only lead times up to this; default all"
    )
    variables: list[str] | None = None
    regions: list[str] = Field(default_factory=lambda: list(REGIONS), min_length=1)
    boxes: list[RegionBoxConfig] = Field(default_factory=list)
    nan_policy: Literal["fail", "skip"] = "fail"
    partial: bool = False
    plots: bool = True
    map_init: Time | None = None
    map_lead_hours: LeadHours | None = None
    archive: UserPath | None = Field(
        None, description="archive to score; default forecast.archive or the workdir's"
    )

    @field_validator("regions")
    @classmethod
    def _preset_regions(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in REGIONS]
        if unknown:
            raise ValueError(
                f"unknown regions {unknown}; expected preset names {list(REGIONS)} (add boxes under "
                "score.boxes)"
            )
        return value

    @model_validator(mode="after")
    def _distinct_region_names(self) -> ScoreConfig:
        names = [*self.regions, *(b.name for b in self.boxes)]
        if len(set(names)) != len(names):
            raise ValueError(f"region names must be distinct, found {names}")
        return self

    @model_validator(mode="after")
    def _leads_scored(self) -> ScoreConfig:
        if self.max_lead_hours is None:
            return self
        beyond = [
            h for h in [*self.lead_hours, self.map_lead_hours] if h is not None and h > self.max_lead_hours
        ]
        if beyond:
            raise ValueError(
                f"score.lead_hours {beyond} exceed score.max_lead_hours {self.max_lead_hours}, the last "
                "lead time scored (score.map_lead_hours too)"
            )
        return self


class TrackingConfig(_Slice):
    """MLflow; ``tracking_uri`` defaults to a SQLite file in the workdir."""

    tracking_uri: str | None = None
    experiment: str = "fourcast"


class CatalogueConfig(_Slice):
    """The forecast-archive catalogue and its retention policy (``fourcast archive``)."""

    url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<workdir>/catalogue.db")
    keep_members_days: float = Field(30.0, ge=0, description="older archives keep only their ensemble mean")
    delete_after_days: float = Field(
        365.0, ge=0, description="older archives are deleted (their row is kept)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> CatalogueConfig:
        if self.delete_after_days < self.keep_members_days:
            raise ValueError(
                f"catalogue.delete_after_days {self.delete_after_days} must be >= "
                f"catalogue.keep_members_days {self.keep_members_days}"
            )
        return self


class RunConfig(_Slice):
    """A whole pipeline run, stage by stage."""

    workdir: UserPath = Path("demo")
    synthetic: SyntheticConfig | None = None
    cluster: ClusterConfig = ClusterConfig()
    ingest: IngestConfig
    train: TrainConfig
    forecast: ForecastConfig
    score: ScoreConfig = ScoreConfig()
    calibrate: CalibrationConfig = CalibrationConfig()
    tracking: TrackingConfig = TrackingConfig()
    catalogue: CatalogueConfig = CatalogueConfig()

    @model_validator(mode="after")
    def _periods_fit(self) -> RunConfig:
        if self.ingest.source == "synthetic" and self.synthetic is None:
            raise ValueError("ingest.source is 'synthetic' but there is no synthetic section")
        data = self.data_period
        for name, period in (
            ("ingest.statistics", self.ingest.statistics),
            ("train.train", self.train.train),
            ("train.validation", self.train.validation),
            ("forecast.inits", self.forecast.inits),
        ):
            if data is not None and period is not None and not data.contains(period):
                raise ValueError(
                    f"{name} {period.start}..{period.end} lies outside the data {data.start}..{data.end}"
                )
        calibration = self.calibrate.period
        if calibration is not None and calibration.overlaps(self.forecast.inits):
            raise ValueError(
                "calibrate.period overlaps forecast.inits: calibration must never see the scored inits"
            )
        for name, period in (("train.train", self.train.train), ("train.validation", self.train.validation)):
            if period.overlaps(self.forecast.inits):
                raise ValueError(f"forecast.inits overlaps {name}: forecasts must be scored on unseen dates")
        if self.ingest.statistics is not None and not self.train.train.contains(self.ingest.statistics):
            raise ValueError(
                "ingest.statistics must lie within train.train (no statistics from unseen dates)"
            )
        unknown = [v for v in (self.score.variables or []) if v not in self.ingest.variables]
        if unknown:
            raise ValueError(f"score.variables {unknown} are not ingested; ingested: {self.ingest.variables}")
        return self

    @property
    def data_period(self) -> Period | None:
        """Dates the source provides: the CDS request period, the synthetic period, or unknown (files)."""
        if self.ingest.source == "cds":
            return self.ingest.cds.period
        return self.synthetic.period if self.ingest.source == "synthetic" else None


def _describe(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}; allowed here: {_allowed_keys(problem['loc'])}")
        elif problem["type"] == "value_error":  # our validators' messages say what was found
            lines.append(f"{key}: {problem['ctx']['error']}")
        else:
            lines.append(f"{key}: {problem['msg']} (found {problem.get('input')!r})")
    return "; ".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        models = [
            a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        annotation = models[0] if models else annotation  # ``CdsConfig | None`` → CdsConfig
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
        raise ConfigError(f"{source} is invalid: {_describe(err)}") from err


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice (plain YAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first given on line {first_line[key] + 1})",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base class says so
                continue
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    """One line: where in ``path`` the YAML error is, and what it is."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).replace("\n", " ")
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    return f"{where}: {problem}"


def read_yaml(path: Path) -> object:
    """The YAML document in ``path``; raises :class:`ConfigError` (one line) if it cannot be read or
    parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {err.start}; "
            "save the config as UTF-8"
        ) from err
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {_yaml_problem(path, err)}") from err


def load_config(path: str | Path, workdir: str | Path | None = None) -> RunConfig:
    """Read and validate a YAML config; ``workdir`` (or ``$FOURCAST_WORKDIR``) overrides its workdir.

    ``$FOURCAST_TRACKING_URI``, when set, replaces ``tracking.tracking_uri``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = read_yaml(path)
    workdir = workdir or os.environ.get(WORKDIR_ENV)
    if workdir and isinstance(raw, dict):
        raw = {**raw, "workdir": str(workdir)}
    tracking_uri = os.environ.get(TRACKING_URI_ENV)
    if tracking_uri and isinstance(raw, dict):  # e.g. the tracking server a Cylc workflow started
        tracking = raw.get("tracking") if isinstance(raw.get("tracking"), dict) else {}
        raw = {**raw, "tracking": {**tracking, "tracking_uri": tracking_uri}}
    return parse_config(raw, source=str(path))
