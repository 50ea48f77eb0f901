"""Training loop: latitude-weighted MSE, warmup + cosine schedule, multi-step rollout phases,
data-parallel ranks, mixed precision, and checkpoints from which a run resumes exactly.

The loop reports metrics through a callable handed in by the caller (``report(metrics, step)``);
it knows nothing of MLflow. Collectives go through :mod:`fourcast.distributed`; with a single
process none is issued.

Exact resumption: a training state (``last.pt``) holds the weights, the optimiser, scheduler and
grad-scaler states, the phase and step, every rank's position in its shuffled batch stream
(:class:`~fourcast.data.BatchCursor`) and every rank's RNG states. The next batch, learning rate
and random draw after a resume are the ones the interrupted run would have used, so on CPU the
loss sequence continues bit for bit.

Repeatable runs: the initial weights must come from the seed as well — build the model inside
:func:`seeded_initialisation`; torch 2.14 starts every new process's default generator from a
different seed, so an unseeded model differs from run to run — and :func:`train` seeds each rank's
torch, NumPy and Python generators from ``(seed, rank)``. Two runs of the same configuration on
the same number of CPU ranks then produce the same losses and weights bit for bit.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute

from fourcast.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    load_training_state,
    remove_stale_partials,
    save_checkpoint,
    save_training_state,
    set_aside,
)
from fourcast.data import BatchCursor, StoreWindows, batch_stream
from fourcast.distributed import (
    DistContext,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    gather_objects,
    wrap_model,
)
from fourcast.errors import (
    CheckpointError,
    DataWindowError,
    DistributedSetupError,
    ModelSpecError,
    NonFiniteLossError,
)
from ingest.grid import cell_area_weights

Report = Callable[[dict[str, float], int], None]
Climatology = Callable[[np.ndarray], np.ndarray]


class ValidationScores(Protocol):
    """The statistics validation sums and how they become RMSE and ACC, handed in by the caller.

    ``pipeline`` hands in the statistic units of the scorecard
    (:class:`ensembles.metrics.FieldScores` with metrics ``rmse`` and ``acc``), so validation,
    persistence included, is scored by the one metric implementation.
    """

    statistics: tuple[str, ...]

    def __call__(self, forecast: np.ndarray, truth: np.ndarray, climatology: np.ndarray) -> np.ndarray:
        """Statistics of each forecast ``(..., lat, lon)``: ``(..., statistic)``, summed over forecasts."""
        ...

    def finalise(self, means: np.ndarray) -> dict[str, np.ndarray]:
        """``rmse`` and ``acc`` ``(...)`` from the statistics' means over forecasts ``(..., statistic)``."""
        ...


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)

#: Metric names reported by :func:`train` (MLflow groups charts by the prefix before ``/``).
TRAIN_LOSS, TRAIN_LR, VAL_SCORE = "train/loss", "train/lr", "val/score"


@dataclass(frozen=True)
class Phase:
    """A stretch of training on ``rollout_steps``-step autoregressive windows.

    Attributes
    ----------
    rollout_steps : int
        Steps the model is rolled out per sample; the loss averages over all of them.
    optimizer_steps : int
        Number of optimiser updates in this phase.
    learning_rate : float
        Peak learning rate (after warmup), decayed by a cosine to 0 at the phase's end.
    """

    rollout_steps: int
    optimizer_steps: int
    learning_rate: float


@dataclass(frozen=True)
class ModeSchedule:
    """Incremental Fourier modes (iFNO): train with few spectral degrees, add more as validation plateaus.

    Attributes
    ----------
    start : int
        Degrees used from the first step.
    max : int, optional
        Most degrees used; the model's own count when ``None``.
    grow_when : float
        At each validation, when the score improved by less than this fraction of the previous
        validation's score, ``grow_by`` more degrees are switched on (from zero weights).
    grow_by : int
        Degrees added per growth; ``start`` when ``None``.
    """

    start: int
    max: int | None = None
    grow_when: float = 0.02
    grow_by: int | None = None


@dataclass(frozen=True)
class TrainSettings:
    """Everything the loop needs besides the model and the data.

    Attributes
    ----------
    batch_size : int
        Global batch: split evenly over the ranks (must divide by the world size).
    precision : {"fp32", "bf16", "fp16"}
        Autocast dtype of the forward pass (the AFNO FFTs stay in fp32); fp16 adds a grad scaler.
    compile : bool
        Run the model through ``torch.compile``.
    activation_checkpointing : bool
        Recompute each block's activations in the backward pass instead of storing them.
    loader_workers : int, optional
        DataLoader worker processes per rank; ``None`` → 2 on CUDA (with pinned memory), 0 on CPU.
    prefetch_factor : int
        Batches each loader worker reads ahead (ignored without workers).
    modes : ModeSchedule, optional
        Incremental spectral modes (models with ``set_active_modes``: the SFNO).
    physics_weight : float
        Weight of the physics-informed loss (PINO): the shallow-water residual
        (:class:`fourcast.physics.ShallowWaterResidual`) of each sample's first predicted step,
        per equation relative to the true step's change, squared. 0 (off) by default: measured
        not to help on the stirred synthetic flow (README, "Neural-operator features").
    """

    phases: tuple[Phase, ...]
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 1.0
    validate_every: int = 200
    validation_leads: tuple[int, ...] = (1, 4, 12)
    validation_samples: int = 32
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    loader_workers: int | None = None
    prefetch_factor: int = 2
    modes: ModeSchedule | None = None
    physics_weight: float = 0.0


@dataclass(frozen=True)
class CheckpointPlan:
    """Where and how often the loop writes checkpoints, and what to resume from.

    Attributes
    ----------
    directory : pathlib.Path
        Receives ``last.pt`` (the training state, every ``every`` steps and at the end) and
        ``best.pt`` (a model checkpoint of the best validation score so far).
    meta : CheckpointMeta
        Data facts of this run (channels, grid, statistics, store fingerprint in ``extra``).
    every : int
        Optimiser steps between training states.
    config : dict
        The run configuration (plain JSON values), stored for the record.
    resume_from : pathlib.Path, optional
        A training state to continue from.
    lineage : dict
        Plain values recorded in every state (e.g. the tracking run id), read back as
        ``TrainResult.resumed_lineage`` by the run that resumes from it.
    restart : bool
        Start over in a directory holding an earlier run's checkpoints: they are moved into a
        ``replaced-<time>`` subfolder first. Without it (and without ``resume_from``) such a
        directory is refused, so an earlier run is never overwritten silently.
    """

    directory: Path
    meta: CheckpointMeta
    every: int = 200
    config: dict = field(default_factory=dict)
    resume_from: Path | None = None
    lineage: dict = field(default_factory=dict)
    restart: bool = False

    @property
    def last(self) -> Path:
        return Path(self.directory) / "last.pt"

    @property
    def best(self) -> Path:
        return Path(self.directory) / "best.pt"


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the best weights by validation score, and the history."""

    best_state: dict[str, torch.Tensor]
    best_score: float
    best_step: int
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int | None = None
    resumed_lineage: dict = field(default_factory=dict)


class LatWeightedMSE(nn.Module):
    """Mean over batch, channels and grid of ``w(lat) · (pred − target)²`` with area weights of mean 1."""

    weights: torch.Tensor  # buffer (lat, 1)

    def __init__(self, lat: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(cell_area_weights(lat), dtype=torch.float32)[:, None])

    def per_channel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted MSE per channel: ``(..., channel, lat, lon)`` → ``(channel,)``."""
        squared = (pred - target) ** 2 * self.weights
        return squared.movedim(-3, 0).flatten(1).mean(dim=1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred - target) ** 2 * self.weights).mean()


def rollout(model: nn.Module, x: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Apply ``model`` ``n_steps`` times: ``(batch, C, H, W) → (batch, n_steps, C, H, W)``."""
    states = []
    for _ in range(n_steps):
        x = model(x)
        states.append(x)
    return torch.stack(states, dim=1)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every block of ``model`` (each child of a ``ModuleList`` named ``blocks``) in backward.

    State-dict keys are unchanged. Returns the number of blocks wrapped.

    Raises
    ------
    ModelSpecError
        If the model has no ``blocks``.
    """
    wrapped = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks":
            for block in module:
                block.forward = _recomputed(block.forward)
                wrapped += 1
    if not wrapped:
        raise ModelSpecError(
            f"activation checkpointing needs a ModuleList named 'blocks'; {type(model).__name__} has none"
        )
    return wrapped


def _recomputed(forward: Callable) -> Callable:
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return recompute(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ModelSpecError(f"precision must be one of {sorted(PRECISIONS)}, found {precision!r}")
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def validate(
    model: nn.Module,
    dataset: StoreWindows,
    leads: Sequence[int],
    samples: int,
    device: torch.device,
    scores: ValidationScores,
    climatology: Climatology | None = None,
    ctx: DistContext | None = None,
    precision: str = "fp32",
    batch_size: int = 16,
) -> dict[str, float]:
    """Latitude-weighted RMSE and ACC per channel and lead (in model steps), and persistence's RMSE.

    Uses ``samples`` windows spread evenly over ``dataset`` (``dataset.n_ahead >= max(leads)``),
    shared out over the ranks of ``ctx`` and summed with one all-reduce.

    Parameters
    ----------
    scores : ValidationScores
        The statistics to sum and their finaliser: the scorecard's statistic units
        (:class:`ensembles.metrics.FieldScores`, handed in by ``pipeline``), so validation and
        the scorecard share one metric implementation. The forecasts go to the host and are
        scored in float64.
    climatology : callable, optional
        Valid times ``(n,)`` → normalised climatology ``(n, channel, lat, lon)``, the reference
        of the ACC's anomalies; each channel's store mean (zero) when not given.

    Returns
    -------
    dict
        ``val/{channel}/rmse_{hours}h`` (physical units), ``val/{channel}/acc_{hours}h``,
        ``val/{channel}/persistence_rmse_{hours}h`` and ``val/score`` (:data:`VAL_SCORE`), the
        mean over leads and channels of the RMSE in normalised units. The names are the ones
        MLflow shows (``pipeline.tracking.val_metric_name``), grouped under ``val/``.
    """
    ctx = ctx or DistContext(device=device)
    n_lead, n_channel = max(leads), len(dataset.channels)
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(samples, len(dataset))).astype(int))
    # model, persistence, count; per lead, channel and statistic
    sums = torch.zeros(3, n_lead, n_channel, len(scores.statistics), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    mine = picks[ctx.rank :: ctx.world_size]
    for start in range(0, len(mine), batch_size):
        chunk = [dataset[int(i)] for i in mine[start : start + batch_size]]
        x = torch.stack([c[0] for c in chunk]).to(device)
        y = torch.stack([c[1][:n_lead] for c in chunk]).to(device)
        with torch.no_grad(), _autocast(device, precision):
            pred = rollout(model, x, n_lead)
        pred = pred.float()
        clim = _climatology_of(climatology, dataset, mine[start : start + batch_size], n_lead, device)
        persistence = x[:, None].expand_as(y)  # the initial state at every lead
        truth, reference = y.cpu().numpy(), clim.cpu().numpy()
        for system, forecast in enumerate((pred, persistence)):
            statistics = scores(forecast.cpu().numpy(), truth, reference).sum(axis=0)
            sums[system] += torch.from_numpy(statistics).to(device)
        sums[2] += len(chunk)
    model.train(was_training)
    all_reduce_sum(sums, ctx)
    means = (sums[:2] / sums[2]).cpu().numpy()
    model_scores, persistence_scores = (scores.finalise(m) for m in means)
    rmse, acc, persistence_rmse = model_scores["rmse"], model_scores["acc"], persistence_scores["rmse"]
    std = dataset.std
    step_hours = int(dataset.step / np.timedelta64(1, "h"))
    metrics: dict[str, float] = {}
    for lead in leads:
        for i, c in enumerate(dataset.channels):
            hours = lead * step_hours
            metrics[f"val/{c}/rmse_{hours}h"] = float(rmse[lead - 1, i] * std[i])
            metrics[f"val/{c}/acc_{hours}h"] = float(acc[lead - 1, i])
            metrics[f"val/{c}/persistence_rmse_{hours}h"] = float(persistence_rmse[lead - 1, i] * std[i])
    metrics[VAL_SCORE] = float(np.mean([rmse[lead - 1] for lead in leads]))
    return metrics


def _climatology_of(
    climatology: Climatology | None,
    dataset: StoreWindows,
    picks: np.ndarray,
    n_lead: int,
    device: torch.device,
) -> torch.Tensor:
    """Normalised climatology at the valid times of windows ``picks``: ``(batch, lead, C, H, W)`` (or a scalar
    0)."""
    if climatology is None:
        return torch.zeros((), device=device)
    leads = np.arange(1, n_lead + 1) * dataset.step
    times = np.array([dataset.input_time(int(i)) + leads for i in picks])
    values = np.asarray(climatology(times.ravel()), dtype=np.float32)
    return torch.from_numpy(values.reshape(*times.shape, *values.shape[1:])).to(device)


@contextmanager
def seeded_initialisation(seed: int) -> Iterator[None]:
    """Draw the random numbers of the block (a model's initial weights) from ``seed`` alone.

    torch's global generator is seeded with ``seed`` on entry and put back as it was on exit,
    so building a model inside the block gives the same weights in every process and every
    run, and leaves the caller's random stream untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seed_rank(seed: int, rank: int) -> None:
    """Seed torch's, NumPy's and Python's global generators from ``(seed, rank)``.

    Reproducible for a given seed, and independent streams on different ranks (so, e.g.,
    dropout masks are not repeated across the ranks of a data-parallel job).
    """
    words = np.random.SeedSequence([seed, rank]).generate_state(4, dtype=np.uint32)
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))
    np.random.seed(words[2:])
    random.seed(int(words[2]) << 32 | int(words[3]))


def _rng_states(device: torch.device) -> dict:
    keys = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys[1].astype(np.int64)),
            "pos": int(keys[2]),
            "has_gauss": int(keys[3]),
            "cached_gaussian": float(keys[4]),
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng_states(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _plain(value):
    """JSON-plain copy (tuples → lists) that ``weights_only`` loading accepts."""
    return json.loads(json.dumps(value))


class _Run:
    """Mutable state of one training run, saved to and restored from training states."""

    def __init__(self, model: nn.Module, settings: TrainSettings, ctx: DistContext) -> None:
        self.model, self.settings, self.ctx = model, settings, ctx
        self.step = self.phase = self.phase_step = 0
        self.cursor = BatchCursor()
        self.best_score, self.best_step = math.inf, 0
        self.best_state = copy.deepcopy(model.state_dict())
        self.history: list[dict[str, float]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=settings.precision == "fp16")
        self.saved_step: int | None = None

    def new_phase(self, index: int) -> None:
        """Fresh AdamW (fused on CUDA) and warmup + cosine schedule for phase ``index``."""
        phase = self.settings.phases[index]
        fused = True if self.ctx.device.type == "cuda" else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=phase.learning_rate,
            weight_decay=self.settings.weight_decay,
            fused=fused,
        )
        warmup = min(self.settings.warmup_steps, phase.optimizer_steps // 4)
        total = phase.optimizer_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(s, warmup, total)
        )
        self.phase, self.phase_step, self.cursor = index, 0, BatchCursor()

    def state(self, plan: CheckpointPlan) -> dict:
        """Training state of this run; every rank must call it (RNG states are gathered)."""
        rng = gather_objects(_rng_states(self.ctx.device), self.ctx)
        return {
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict(),
            "step": self.step,
            "phase": self.phase,
            "phase_step": self.phase_step,
            "cursor": {**self.cursor.state(), "world_size": self.ctx.world_size},
            "rng_states": rng,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_model_state": self.best_state,
            "history": self.history,
            "config": {"settings": _plain(asdict(self.settings)), **plan.config},
            "meta": plan.meta,
            "lineage": plan.lineage,
        }

    def restore(self, state: dict) -> None:
        """Continue from a training state (the model's weights and the phase's optimiser included)."""
        self.model.load_state_dict(state["model_state"])
        self.new_phase(min(state["phase"], len(self.settings.phases) - 1))
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.scheduler.load_state_dict(state["scheduler_state"])
        self.scaler.load_state_dict(state["scaler_state"])
        self.step, self.phase, self.phase_step = state["step"], state["phase"], state["phase_step"]
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.best_state = state.get("best_model_state") or copy.deepcopy(self.model.state_dict())
        self.history = list(state["history"])
        cursor = state["cursor"]
        self.cursor = BatchCursor(cursor["epoch"], cursor["batch"])
        if (
            cursor.get("world_size") != self.ctx.world_size
        ):  # a step reads one global batch whatever the world size
            log.warning(
                "resuming %d-rank training state on %d ranks: batches continue where they stopped, but the "
                "per-rank random states start afresh",
                cursor["world_size"],
                self.ctx.world_size,
            )
        rng = state["rng_states"]
        if len(rng) == self.ctx.world_size:
            _restore_rng_states(rng[self.ctx.rank], self.ctx.device)
        self.saved_step = self.step


def _check_resumable(state: dict, plan: CheckpointPlan, settings: TrainSettings, path: Path) -> None:
    """Refuse a training state from other data or another schedule, saying what differs."""
    theirs: CheckpointMeta = state["meta"]
    try:
        theirs.check_matches(plan.meta.channels, np.asarray(plan.meta.lat), np.asarray(plan.meta.lon))
        theirs.check_statistics(np.asarray(plan.meta.mean), np.asarray(plan.meta.std))
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume from {path}: {err}") from err
    if theirs.preset != plan.meta.preset:
        raise CheckpointError(
            f"cannot resume from {path}: it trained preset {theirs.preset!r}, this run builds "
            f"{plan.meta.preset!r}"
        )
    saved = state["config"].get("settings", {})
    mine = _plain(asdict(settings))
    differing = [
        key
        for key in ("phases", "batch_size", "warmup_steps", "weight_decay", "seed")
        if saved.get(key) != mine[key]
    ]
    if differing:
        raise CheckpointError(
            f"cannot resume from {path} exactly: settings {differing} differ (checkpoint "
            f"{ {k: saved.get(k) for k in differing} }, now { {k: mine[k] for k in differing} })"
        )
    fingerprint = theirs.extra.get("store_fingerprint")
    if fingerprint != plan.meta.extra.get("store_fingerprint"):
        log.warning(
            "resuming from %s written on store %s; this store's fingerprint is %s (same channels, grid and "
            "statistics)",
            path,
            fingerprint,
            plan.meta.extra.get("store_fingerprint"),
        )


def _prepare_directory(plan: CheckpointPlan, ctx: DistContext) -> None:
    """Clear leftovers of killed writes; refuse, or set aside, an earlier run's checkpoints when starting
    afresh."""
    if ctx.is_main:
        remove_stale_partials(plan.directory)
    if plan.resume_from is not None:
        return
    if not plan.restart:
        earlier = _earlier_run(plan)
        if earlier:
            raise CheckpointError(
                f"{plan.directory} holds the checkpoints of an earlier run ({earlier}); starting "
                "afresh would overwrite "
                "them. Continue that run with --resume, or start over with --restart (its "
                "checkpoints are then moved "
                f"into {plan.directory}/replaced-<time>/), or train into another workdir"
            )
    elif ctx.is_main:
        aside = set_aside(plan.directory)
        if aside is not None:
            log.warning("starting over: the earlier run's checkpoints were moved to %s", aside)


def _earlier_run(plan: CheckpointPlan) -> str:
    """The checkpoints (``*.pt``) in ``plan.directory`` and their steps, or ``""`` if there are none."""
    found = []
    for path in sorted(Path(plan.directory).glob("*.pt")):
        try:
            if path == plan.last:
                found.append(f"{path} at step {load_training_state(path)['step']}")
            else:
                found.append(f"{path} of step {load_checkpoint(path)[1].extra.get('best_step', '?')}")
        except CheckpointError as err:
            found.append(f"{path}, unreadable: {err}")
    return "; ".join(found)


def _prepare(model: nn.Module, settings: TrainSettings, ctx: DistContext) -> tuple[nn.Module, nn.Module]:
    """``(forward module, module that trains)``: optionally recomputed and compiled; DDP across ranks."""
    if settings.activation_checkpointing:
        enable_activation_checkpointing(model)
    forward = torch.compile(model) if settings.compile else model
    return forward, wrap_model(forward, ctx)


def train(
    model: nn.Module,
    make_windows: Callable[[int], StoreWindows],
    validation: StoreWindows,
    settings: TrainSettings,
    report: Report,
    device: torch.device,
    *,
    ctx: DistContext | None = None,
    checkpoints: CheckpointPlan | None = None,
    climatology: Climatology | None = None,
    scores: ValidationScores,
) -> TrainResult:
    """Train ``model`` through ``settings.phases`` and keep the best weights by validation score.

    Parameters
    ----------
    model : torch.nn.Module
        Normalised state → normalised state one step later.
    make_windows : callable
        ``make_windows(n_ahead)`` returns the training dataset with ``n_ahead`` target steps.
    validation : StoreWindows
        Validation windows with ``n_ahead >= max(settings.validation_leads)``.
    report : callable
        Receives ``(metrics, step)``: ``train/loss`` (the latitude-weighted MSE in normalised
        units, averaged over the rollout's steps, so phases of longer rollouts stay comparable),
        ``train/lr``, ``train/rollout_steps`` after every step and
        the validation metrics every ``settings.validate_every`` steps and at the end. Only
        rank 0's reports are meant to be kept (losses are averaged over ranks first).
    device : torch.device
        Compute device of a single process (``ctx.device`` when ``ctx`` is given).
    ctx : DistContext, optional
        This rank's place in a data-parallel job (:func:`fourcast.distributed.process_group`).
    checkpoints : CheckpointPlan, optional
        Where to write training states and the best model, and a state to resume from.
    climatology : callable, optional
        Valid times → normalised climatology, for the validation ACC (see :func:`validate`).
    scores : ValidationScores
        The validation statistics and their finaliser (see :func:`validate`).

    Raises
    ------
    NonFiniteLossError
        On every rank at once, naming the step and the variables whose loss is not finite; the
        last training state written stays as it was.
    CheckpointError
        If the state to resume from is missing, corrupt, or from other data or settings; or,
        starting afresh without ``checkpoints.restart``, if the directory holds an earlier
        run's checkpoints (the message names them and their steps).
    CheckpointWriteError
        If a checkpoint cannot be written (e.g. the disk is full); the previous one is intact.
    """
    ctx = ctx or DistContext(device=device)
    device = ctx.device
    if validation.n_ahead < max(settings.validation_leads):
        raise DataWindowError(
            f"validation windows reach {validation.n_ahead} steps; leads need "
            f"{max(settings.validation_leads)}"
        )
    if settings.batch_size % ctx.world_size:
        raise DistributedSetupError(
            f"batch_size {settings.batch_size} must divide evenly over {ctx.world_size} ranks"
        )
    state = None
    if checkpoints is not None and checkpoints.resume_from is not None:
        state = load_training_state(checkpoints.resume_from)
        _check_resumable(state, checkpoints, settings, Path(checkpoints.resume_from))
    if checkpoints is not None:
        _prepare_directory(checkpoints, ctx)
    seed_rank(settings.seed, ctx.rank)
    model.to(device).train()
    forward, trainer = _prepare(model, settings, ctx)
    loss_fn = LatWeightedMSE(validation.lat).to(device)
    growth = _ModeGrowth(model, settings.modes) if settings.modes is not None else None
    physics = _PhysicsLoss(validation, device) if settings.physics_weight > 0 else None
    run = _Run(model, settings, ctx)
    result = TrainResult(run.best_state, math.inf, 0, 0, 0.0)
    if state is not None:
        run.restore(state)
        if growth is not None:
            growth.restore(state.get("active_modes"))
        result.resumed_from_step, result.resumed_lineage = run.step, dict(state["lineage"])
        log.info(
            "resuming from %s at step %d (phase %d, step %d of it)",
            checkpoints.resume_from,
            run.step,
            run.phase,
            run.phase_step,
        )
    started = time.perf_counter()
    batch_per_rank = settings.batch_size // ctx.world_size
    workers = (
        settings.loader_workers
        if settings.loader_workers is not None
        else (2 if device.type == "cuda" else 0)
    )

    def evaluate() -> None:
        metrics = validate(
            forward,
            validation,
            settings.validation_leads,
            settings.validation_samples,
            device,
            scores,
            climatology,
            ctx,
            settings.precision,
            batch_per_rank,
        )
        if growth is not None:
            growth.after_validation(metrics[VAL_SCORE], run.history)
        report(metrics, run.step)
        run.history.append({"step": run.step, **metrics})
        if metrics[VAL_SCORE] < run.best_score:
            run.best_state = copy.deepcopy(model.state_dict())
            run.best_score, run.best_step = metrics[VAL_SCORE], run.step
            if checkpoints is not None and ctx.is_main:
                meta = copy.deepcopy(checkpoints.meta)
                meta.extra.update(best_step=run.step, best_score=run.best_score)
                save_checkpoint(checkpoints.best, model, meta)

    def save_state() -> None:
        payload = run.state(checkpoints)
        if growth is not None:
            payload["active_modes"] = model.active_modes
        if ctx.is_main:
            save_training_state(checkpoints.last, payload)
        run.saved_step = run.step

    for index, phase in enumerate(settings.phases):
        if index < run.phase:
            continue
        if state is None or index > run.phase:
            run.new_phase(index)
        stream = batch_stream(
            make_windows(phase.rollout_steps),
            batch_per_rank,
            ctx.rank,
            ctx.world_size,
            settings.seed + index,
            run.cursor,
            workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=settings.prefetch_factor,
        )
        while run.phase_step < phase.optimizer_steps:
            x, y = (t.to(device, non_blocking=True) for t in next(stream))
            with _autocast(device, settings.precision):
                pred = rollout(trainer, x, phase.rollout_steps)
            per_channel = loss_fn.per_channel(pred.float(), y)
            global_loss = all_reduce_mean(per_channel.detach().clone(), ctx)
            if not torch.isfinite(global_loss).all():
                _stop_non_finite(global_loss, validation.channels, run, phase, checkpoints)
            loss = per_channel.mean()
            extra = {}
            if physics is not None:
                physical = physics(x, pred[:, 0].float(), y[:, 0])
                loss = loss + settings.physics_weight * physical
                extra["train/physics_loss"] = float(all_reduce_mean(physical.detach().reshape(1), ctx))
            if growth is not None:
                extra["train/modes"] = model.active_modes
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            run.step += 1
            run.phase_step += 1
            report(
                {
                    TRAIN_LOSS: float(global_loss.mean()),
                    TRAIN_LR: run.scheduler.get_last_lr()[0],
                    "train/rollout_steps": phase.rollout_steps,
                    **extra,
                },
                run.step,
            )
            if run.step % settings.validate_every == 0:
                evaluate()
            if checkpoints is not None and run.step % checkpoints.every == 0:
                save_state()
    if not run.history or run.history[-1]["step"] != run.step:
        evaluate()
    if checkpoints is not None and run.saved_step != run.step:
        save_state()
    barrier(ctx)
    result.best_state, result.best_score, result.best_step = run.best_state, run.best_score, run.best_step
    result.history, result.steps, result.seconds = run.history, run.step, time.perf_counter() - started
    return result


class _ModeGrowth:
    """Applies a :class:`ModeSchedule` to a model with ``set_active_modes`` (the SFNO)."""

    def __init__(self, model: nn.Module, schedule: ModeSchedule) -> None:
        if not hasattr(model, "set_active_modes"):
            raise ModelSpecError(
                f"incremental modes (train.modes) need a model with spectral degrees to switch on "
                f"(an SFNO); {type(model).__name__} has none"
            )
        most = model.modes if schedule.max is None else schedule.max
        if not 1 <= schedule.start <= most <= model.modes:
            raise ModelSpecError(
                f"train.modes needs 1 <= start <= max <= {model.modes} (the model's degrees); "
                f"found start={schedule.start}, max={schedule.max}"
            )
        if not 0 < schedule.grow_when < 1:
            raise ModelSpecError(f"train.modes.grow_when must lie in (0, 1), found {schedule.grow_when}")
        self.model, self.schedule, self.most = model, schedule, most
        self.grow_by = schedule.grow_by or schedule.start
        model.set_active_modes(schedule.start)

    def restore(self, active: int | None) -> None:
        """Continue with the degrees a training state recorded (the start count if it recorded none)."""
        if active is not None:
            self.model.set_active_modes(int(active))

    def after_validation(self, score: float, history: list[dict[str, float]]) -> None:
        """Switch on ``grow_by`` more degrees when ``score`` improved less than ``grow_when`` on the last
        one."""
        active = self.model.active_modes
        if not history or active >= self.most:
            return
        previous = history[-1][VAL_SCORE]
        if previous - score < self.schedule.grow_when * previous:
            grown = min(self.most, active + self.grow_by)
            log.info(
                "validation score %.4f after %.4f: spectral degrees %d -> %d", score, previous, active, grown
            )
            self.model.set_active_modes(grown)


class _PhysicsLoss(nn.Module):
    """PINO term: squared shallow-water residual of ``x → prediction``, per equation relative to ``x →
    truth``'s change."""

    mean: torch.Tensor  # buffers (channel, 1, 1), physical units
    std: torch.Tensor

    def __init__(self, windows: StoreWindows, device: torch.device) -> None:
        super().__init__()
        from fourcast.physics import ShallowWaterResidual  # torch-harmonics' solver only when asked for

        step = float(windows.step / np.timedelta64(1, "s"))
        self.residual = ShallowWaterResidual(windows.lat.size, windows.lon.size, step, windows.channels).to(
            device
        )
        self.register_buffer(
            "mean", torch.as_tensor(windows.mean, dtype=torch.float32, device=device)[:, None, None]
        )
        self.register_buffer(
            "std", torch.as_tensor(windows.std, dtype=torch.float32, device=device)[:, None, None]
        )

    def forward(self, x: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Normalised ``(batch, channel, lat, lon)`` each → scalar: mean over batch and equations of (|r| /
        |Δs|)²."""
        x, prediction, truth = (t * self.std + self.mean for t in (x, prediction, truth))
        r = self.residual.norms(self.residual(x, prediction))
        with torch.no_grad():
            change = self.residual.spectral(truth) - self.residual.spectral(x)
            scale = self.residual.norms(change * self.residual._mask).clamp_min(
                torch.finfo(torch.float32).tiny
            )
        return ((r / scale) ** 2).mean()


def _stop_non_finite(
    per_channel: torch.Tensor,
    channels: list[str],
    run: _Run,
    phase: Phase,
    checkpoints: CheckpointPlan | None,
) -> None:
    bad = [c for c, value in zip(channels, per_channel.tolist(), strict=True) if not math.isfinite(value)]
    losses = {c: float(v) for c, v in zip(channels, per_channel.tolist(), strict=True)}
    kept = (
        f"the last good training state {checkpoints.last} (step {run.saved_step}) is kept"
        if checkpoints is not None and run.saved_step is not None
        else "no training state had been written"
    )
    raise NonFiniteLossError(
        f"loss became non-finite at step {run.step} (rollout {phase.rollout_steps}) in variables "
        f"{bad}; per-variable loss {losses}; {kept}"
    )
