"""Training loop: latitude-weighted MSE, warmup + cosine schedule, multi-step rollout phases.

The loop reports metrics through a callable handed in by the caller (``report(metrics, step)``);
it knows nothing of MLflow.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fourcast.data import StoreWindows
from fourcast.errors import DataWindowError, NonFiniteLossError
from ingest.grid import cell_area_weights

Report = Callable[[dict[str, float], int], None]


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
class TrainSettings:
    """Everything the loop needs besides the model and the data."""

    phases: tuple[Phase, ...]
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 1.0
    validate_every: int = 200
    validation_leads: tuple[int, ...] = (1, 4, 12)
    validation_samples: int = 32
    seed: int = 0


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the best weights by validation score, and the history."""

    best_state: dict[str, torch.Tensor]
    best_score: float
    best_step: int
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class LatWeightedMSE(nn.Module):
    """Mean over batch, channels and grid of ``w(lat) · (pred − target)²`` with area weights of mean 1."""

    def __init__(self, lat: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(cell_area_weights(lat), dtype=torch.float32)[:, None])

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


def _batches(dataset: StoreWindows, batch_size: int, generator: torch.Generator):
    """Endless shuffled batches (each epoch a fresh permutation)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=generator)
    if len(loader) == 0:
        raise DataWindowError(f"training range yields {len(dataset)} windows, fewer than one batch of {batch_size}")
    while True:
        yield from loader


def validate(model: nn.Module, dataset: StoreWindows, leads: Sequence[int], samples: int, device: torch.device) -> dict[str, float]:
    """Latitude-weighted RMSE in physical units per channel and lead (in model steps).

    Uses ``samples`` windows spread evenly over ``dataset`` (``dataset.n_ahead >= max(leads)``).
    Keys are ``val_rmse_{channel}_{hours}h``; ``val_score`` is the mean of RMSE/std over all.
    """
    weights = torch.as_tensor(cell_area_weights(dataset.lat), dtype=torch.float32, device=device)[:, None]
    std = torch.as_tensor(dataset.std, device=device)
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(samples, len(dataset))).astype(int))
    x = torch.stack([dataset[i][0] for i in picks]).to(device)
    y = torch.stack([dataset[i][1] for i in picks]).to(device)
    model.eval()
    with torch.no_grad():
        pred = rollout(model, x, max(leads))
    model.train()
    mse = ((pred - y) ** 2 * weights).mean(dim=(0, 3, 4))  # (lead, channel), normalised units
    rmse = mse.sqrt() * std
    step_hours = int(dataset.step / np.timedelta64(1, "h"))
    metrics = {f"val_rmse_{c}_{lead * step_hours}h": float(rmse[lead - 1, i])
               for lead in leads for i, c in enumerate(dataset.channels)}
    metrics["val_score"] = float(torch.stack([mse[lead - 1].sqrt() for lead in leads]).mean())
    return metrics


def train(model: nn.Module, make_windows: Callable[[int], StoreWindows], validation: StoreWindows,
          settings: TrainSettings, report: Report, device: torch.device) -> TrainResult:
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
        Receives ``(metrics, step)``: ``loss``, ``lr``, ``rollout_steps`` every 10 steps and the
        validation metrics every ``settings.validate_every`` steps and at the end.
    """
    if validation.n_ahead < max(settings.validation_leads):
        raise DataWindowError(f"validation windows reach {validation.n_ahead} steps; leads need {max(settings.validation_leads)}")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model.to(device).train()
    loss_fn = LatWeightedMSE(validation.lat).to(device)
    result = TrainResult(copy.deepcopy(model.state_dict()), math.inf, 0, 0, 0.0)
    started, step = time.perf_counter(), 0

    def evaluate() -> None:
        metrics = validate(model, validation, settings.validation_leads, settings.validation_samples, device)
        report(metrics, step)
        result.history.append({"step": step, **metrics})
        if metrics["val_score"] < result.best_score:
            result.best_state = copy.deepcopy(model.state_dict())
            result.best_score, result.best_step = metrics["val_score"], step

    for phase in settings.phases:
        optimiser = torch.optim.AdamW(model.parameters(), lr=phase.learning_rate, weight_decay=settings.weight_decay)
        warmup = min(settings.warmup_steps, phase.optimizer_steps // 4)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, warmup, phase.optimizer_steps))
        batches = _batches(make_windows(phase.rollout_steps), settings.batch_size, generator)
        for _ in range(phase.optimizer_steps):
            x, y = (t.to(device, non_blocking=True) for t in next(batches))
            loss = loss_fn(rollout(model, x, phase.rollout_steps), y)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss became {loss.item()} at step {step} (rollout {phase.rollout_steps})")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimiser.step()
            schedule.step()
            step += 1
            if step % 10 == 0:
                report({"loss": loss.item(), "lr": schedule.get_last_lr()[0], "rollout_steps": phase.rollout_steps}, step)
            if step % settings.validate_every == 0:
                evaluate()
    if not result.history or result.history[-1]["step"] != step:
        evaluate()
    result.steps, result.seconds = step, time.perf_counter() - started
    return result
