"""Neural operators measured on the synthetic flow: zero-shot resolution transfer, iFNO, PINO.

Run from the repository root (about 30-40 minutes on 2 busy cores; ``--minutes`` scales it)::

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/neural_operators.py [--minutes 4] [--cache DIR]

1. **Data.** The synthetic forced shallow-water flow (:mod:`ingest.synthetic`) is simulated once
   at 64x128 (6-hourly, seed 0); the 32x64 and 16x32 truths are its first-order conservative
   remaps (:func:`ingest.coarsen.remap`), so coarse and fine truth describe the same flow.
   Cached as ``.npz`` in ``--cache``.
2. **Resolution transfer.** ``sfno-small`` is trained at 32x64 for ``--minutes`` of wall time
   (one-step MSE, then 2- and 4-step rollouts), and a second ``sfno-small`` natively at 64x128
   for the same wall time. On the validation days, z500 RMSE (area-weighted, m² s⁻²) at
   24/72/120 h against the 64x128 truth of: the coarse model zero-shot on 64x128 (started from
   the fine analysis), the native model, the coarse model's own 32x64 forecast interpolated
   bilinearly to 64x128, and persistence; and at 16x32 of the coarse model zero-shot against
   the 16x32 truth. The score "within the coarse band" filters truth and forecast to the
   degrees the 32x64 model learned (l < 16), which separates what the model forecasts from the
   fine scales it never saw; "interpolated truth" (the 32x64 truth interpolated to 64x128)
   is the floor any coarse forecast shares. AFNO is refused (its error message is printed).
3. **iFNO.** ``sfno-small`` at 32x64 trained by :func:`fourcast.training.train` for the same
   number of steps and seed, with all modes from the start and with incremental modes
   (``ModeSchedule``): wall time and step at which each first reaches the fixed-modes run's
   final validation score.
4. **PINO.** The 32x64 model fine-tuned for a few steps with and without the shallow-water
   residual (:class:`fourcast.physics.ShallowWaterResidual`) in the loss: validation z500
   RMSE at 24/120 h and rollout stability (steps of a 60-day rollout before the area-mean
   z500 leaves its truth range (:func:`area_mean_drift_steps`), or a value is not finite).

Wall times depend on the machine's load; the ratios and the scores are what to compare.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ensembles.metrics import FieldScores
from ensembles.regions import GLOBAL, global_field_scores, weight_matrix
from fourcast.errors import ResolutionTransferError
from fourcast.models.registry import build_model
from fourcast.training import VAL_SCORE, LatWeightedMSE, rollout, seeded_initialisation
from ingest.coarsen import remap
from ingest.grid import cell_area_weights, equiangular_lats, regular_lons
from ingest.synthetic import simulate

FINE, COARSE, COARSER = (64, 128), (32, 64), (16, 32)
START, TRAIN_END, END = "2000-01-01", "2000-02-29T18", "2000-03-20T18"
CHANNELS = ["z500", "u500", "v500"]
LEADS_H = (24, 72, 120)
STEP_H = 6


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synthetic_truth(cache: Path) -> dict[tuple[int, int], np.ndarray]:
    """The flow at 64x128 and its conservative remaps: ``{grid: (time, channel, lat, lon) float32}``."""
    path = cache / "truth.npz"
    if path.exists():
        data = np.load(path)
        return {FINE: data["fine"], COARSE: data["coarse"], COARSER: data["coarser"]}
    cache.mkdir(parents=True, exist_ok=True)
    log(f"simulating {START}..{END} at {FINE[0]}x{FINE[1]} (20 days of spin-up)")
    started = time.perf_counter()
    last = [0.0]

    def progress(fraction: float) -> None:
        if fraction - last[0] >= 0.1:
            last[0] = fraction
            log(f"  {fraction:.0%} after {time.perf_counter() - started:.0f} s")

    ds = simulate(START, END, nlat=FINE[0], nlon=FINE[1], seed=0, spinup_days=20.0, progress=progress)
    fine = np.concatenate([ds[name].values for name in ("z", "u", "v")], axis=1).astype(np.float32)
    lat, lon = equiangular_lats(FINE[0]), regular_lons(FINE[1])
    coarse = remap(fine, lat, lon, *COARSE)
    coarser = remap(fine, lat, lon, *COARSER)
    np.savez(path, fine=fine, coarse=coarse, coarser=coarser, seconds=time.perf_counter() - started)
    log(f"simulated in {time.perf_counter() - started:.0f} s")
    return {FINE: fine, COARSE: coarse, COARSER: coarser}


# --------------------------------------------------------------------------------------------
# shared pieces


class ArrayWindows(torch.utils.data.Dataset):
    """In-memory stand-in for :class:`fourcast.data.StoreWindows` over ``(time, channel, lat, lon)``
    arrays."""

    def __init__(self, data: np.ndarray, mean: np.ndarray, std: np.ndarray, n_ahead: int) -> None:
        self.channels = list(CHANNELS)
        self.lat, self.lon = equiangular_lats(data.shape[-2]), regular_lons(data.shape[-1])
        self.step = np.timedelta64(STEP_H, "h")
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)
        self.n_ahead = n_ahead
        self.times = np.datetime64(START) + np.arange(len(data)) * self.step
        self.data = torch.from_numpy((data - self.mean[:, None, None]) / self.std[:, None, None]).float()

    def __len__(self) -> int:
        return len(self.data) - self.n_ahead

    def input_time(self, index: int) -> np.datetime64:
        return self.times[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[index], self.data[index + 1 : index + 1 + self.n_ahead]

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch at once, as :meth:`fourcast.data.StoreWindows.__getitems__` returns it."""
        items = [self[int(i)] for i in indices]
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def split(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` rows of a ``(time, …)`` array."""
    times = np.datetime64(START) + np.arange(len(truth)) * np.timedelta64(STEP_H, "h")
    return truth[times <= np.datetime64(TRAIN_END)], truth[times > np.datetime64(TRAIN_END)]


def statistics(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of a training array (the store's statistics)."""
    return train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))


def train_for_seconds(
    model: torch.nn.Module, windows: dict[int, ArrayWindows], seconds: float, seed: int = 0
) -> int:
    """Train on 1-, 2- then 4-step rollouts (half, a third, a sixth of ``seconds``); returns the steps
    taken."""
    generator = torch.Generator().manual_seed(seed)
    loss_fn = LatWeightedMSE(windows[1].lat)
    steps = 0
    model.train()
    for rollout_steps, share, lr in ((1, 0.5, 3e-3), (2, 1 / 3, 1e-3), (4, 1 / 6, 5e-4)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        data = windows[rollout_steps]
        budget = time.perf_counter() + share * seconds
        while time.perf_counter() < budget:
            pick = torch.randint(0, len(data), (8,), generator=generator)
            x = torch.stack([data[int(i)][0] for i in pick])
            y = torch.stack([data[int(i)][1] for i in pick])
            loss = loss_fn(rollout(model, x, rollout_steps), y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            steps += 1
    return steps


def forecast(
    model: torch.nn.Module, initial: np.ndarray, mean: np.ndarray, std: np.ndarray, n_steps: int
) -> np.ndarray:
    """Roll ``model`` out from physical states ``(init, channel, lat, lon)``: ``(init, n_steps, channel, lat,
    lon)``."""
    m, s = mean[:, None, None], std[:, None, None]
    x = torch.from_numpy(((initial - m) / s).astype(np.float32))
    model.eval()
    with torch.no_grad():
        out = rollout(model, x, n_steps).numpy()
    return out * s + m


def area_rmse(error: np.ndarray) -> float:
    """Area-weighted RMSE of ``(…, lat, lon)`` errors, each a forecast, by the scorecard's statistic units.

    The root of the mean over the forecasts of their global area-weighted squared error.
    """
    nlat, nlon = error.shape[-2:]
    scores = FieldScores(("rmse",), weight_matrix([GLOBAL], equiangular_lats(nlat), regular_lons(nlon))[0])
    statistics = scores(error, 0.0, 0.0)
    return float(scores.finalise(statistics.reshape(-1, statistics.shape[-1]).mean(0))["rmse"])


def bilinear(field: np.ndarray, nlat: int, nlon: int) -> np.ndarray:
    """Bilinear interpolation between equiangular grids with poles, periodic in longitude: ``(…, lat,
    lon)``."""
    lead = field.shape[:-2]
    x = torch.from_numpy(field.reshape(-1, 1, *field.shape[-2:]).astype(np.float64))
    x = torch.cat((x, x[..., :1]), dim=-1)  # the 360° column closes the circle
    out = F.interpolate(x, size=(nlat, nlon + 1), mode="bilinear", align_corners=True)[..., :nlon]
    return out.numpy().reshape(*lead, nlat, nlon)


def band_limited(field: np.ndarray, degrees: int) -> np.ndarray:
    """``field`` ``(…, lat, lon)`` with spherical-harmonic degrees >= ``degrees`` removed."""
    from torch_harmonics import InverseRealSHT, RealSHT

    nlat, nlon = field.shape[-2:]
    forward = RealSHT(nlat, nlon, grid="equiangular").double()
    inverse = InverseRealSHT(nlat, nlon, grid="equiangular").double()
    coefficients = forward(torch.from_numpy(field.astype(np.float64)))
    coefficients[..., degrees:, :] = 0
    return inverse(coefficients).numpy()


def lead_table(title: str, rows: dict[str, np.ndarray], truth: np.ndarray, leads_h=LEADS_H) -> str:
    """Markdown table of z500 RMSE per lead: rows of forecasts ``(init, step, channel, lat, lon)`` against
    ``truth``."""
    lines = [
        f"**{title}** (z500 RMSE, m² s⁻², area-weighted)",
        "",
        "| forecast | " + " | ".join(f"{h} h" for h in leads_h) + " |",
        "|---|" + "---:|" * len(leads_h),
    ]
    for name, fc in rows.items():
        cells = [
            f"{area_rmse(fc[:, h // STEP_H - 1, 0] - truth[:, h // STEP_H - 1, 0]):.0f}" for h in leads_h
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verifying(validation: np.ndarray, inits: np.ndarray, n_steps: int) -> np.ndarray:
    """Truth after each init: ``(init, step, channel, lat, lon)``."""
    return np.stack([validation[i + 1 : i + 1 + n_steps] for i in inits])


# --------------------------------------------------------------------------------------------
# 2. resolution transfer


def resolution_transfer(truth: dict, minutes: float, cache: Path) -> tuple[str, torch.nn.Module, dict]:
    """Train at 32x64 and natively at 64x128 for the same wall time; score zero-shot, native, interpolated."""
    coarse_train, coarse_val = split(truth[COARSE])
    fine_train, fine_val = split(truth[FINE])
    coarser_val = split(truth[COARSER])[1]
    stats = {grid: statistics(split(truth[grid])[0]) for grid in (COARSE, FINE, COARSER)}
    n_steps = max(LEADS_H) // STEP_H
    inits = np.arange(0, len(coarse_val) - n_steps, 24 // STEP_H)
    models, seconds, steps = {}, minutes * 60.0, {}
    for grid, train_array in ((COARSE, coarse_train), (FINE, fine_train)):
        path = cache / f"sfno_{grid[0]}x{grid[1]}_{minutes:g}min.pt"
        with seeded_initialisation(0):
            models[grid] = build_model("sfno-small", grid, len(CHANNELS))
        if path.exists():
            saved = torch.load(path, weights_only=True)
            models[grid].load_state_dict(saved["state"])
            steps[grid] = int(saved["steps"])
            continue
        log(f"training sfno-small at {grid[0]}x{grid[1]} for {minutes:g} min")
        windows = {k: ArrayWindows(train_array, *stats[grid], n_ahead=k) for k in (1, 2, 4)}
        steps[grid] = train_for_seconds(models[grid], windows, seconds)
        torch.save({"state": models[grid].state_dict(), "steps": steps[grid]}, path)
        log(f"  {steps[grid]} optimiser steps")
    coarse_model, native = models[COARSE], models[FINE]
    verify_fine = verifying(fine_val, inits, n_steps)
    verify_coarse = verifying(coarse_val, inits, n_steps)
    verify_coarser = verifying(coarser_val, inits, n_steps)
    log("forecasting")
    coarse_fc = forecast(coarse_model, coarse_val[inits], *stats[COARSE], n_steps)
    zero_shot = coarse_model.on_grid(*FINE)
    rows = {
        "SFNO 32x64 zero-shot on 64x128 (training statistics)": forecast(
            zero_shot, fine_val[inits], *stats[COARSE], n_steps
        ),
        "SFNO 32x64 zero-shot on 64x128 (64x128 statistics)": forecast(
            zero_shot, fine_val[inits], *stats[FINE], n_steps
        ),
        "SFNO 32x64 zero-shot, initial state cut to the learned degrees l < 16": forecast(
            zero_shot, band_limited(fine_val[inits], coarse_model.modes), *stats[COARSE], n_steps
        ),
        f"SFNO native 64x128, same wall time ({steps[FINE]} vs {steps[COARSE]} steps)": forecast(
            native, fine_val[inits], *stats[FINE], n_steps
        ),
        "SFNO 32x64 forecast, bilinear to 64x128": bilinear(coarse_fc, *FINE),
        "persistence (64x128)": np.repeat(fine_val[inits][:, None], n_steps, axis=1),
        "32x64 truth, bilinear to 64x128 (floor of any 32x64 forecast)": bilinear(verify_coarse, *FINE),
    }
    table_fine = lead_table("64x128, against the 64x128 truth", rows, verify_fine)
    band = coarse_model.modes
    filtered = {
        name: band_limited(fc[:, :, :1], band)
        for name, fc in rows.items()
        if "truth" not in name and "persistence" not in name
    }
    table_band = lead_table(
        f"64x128, truth and forecasts cut to degrees l < {band} (the scales the 32x64 model learned)",
        filtered,
        band_limited(verify_fine[:, :, :1], band),
    )
    coarser_rows = {
        "SFNO 32x64 zero-shot on 16x32": forecast(
            coarse_model.on_grid(*COARSER), coarser_val[inits], *stats[COARSE], n_steps
        ),
        "SFNO 32x64 forecast, conservatively remapped to 16x32": remap(
            coarse_fc, equiangular_lats(COARSE[0]), regular_lons(COARSE[1]), *COARSER
        ),
        "persistence (16x32)": np.repeat(coarser_val[inits][:, None], n_steps, axis=1),
    }
    table_coarser = lead_table("16x32, against the 16x32 truth", coarser_rows, verify_coarser)
    own = lead_table(
        "32x64 (the training grid), against the 32x64 truth",
        {
            "SFNO 32x64": coarse_fc,
            "persistence (32x64)": np.repeat(coarse_val[inits][:, None], n_steps, axis=1),
        },
        verify_coarse,
    )
    with seeded_initialisation(0):
        afno = build_model("afno-tiny", COARSE, len(CHANNELS))
    try:
        afno.on_grid(*FINE)
        refusal = "AFNO moved (unexpected)"
    except ResolutionTransferError as err:
        refusal = f"AFNO (afno-tiny, 32x64) on 64x128 is refused: ResolutionTransferError: {err}"
    text = "\n\n".join(
        [
            (
                f"{len(inits)} initial times, {minutes:g} min of training per model "
                f"({steps[COARSE]} steps at 32x64, {steps[FINE]} at 64x128)"
            ),
            own,
            table_fine,
            table_band,
            table_coarser,
            refusal,
        ]
    )
    return (
        text,
        coarse_model,
        {"stats": stats[COARSE], "train": coarse_train, "val": coarse_val, "inits": inits},
    )


# --------------------------------------------------------------------------------------------
# 3. incremental modes, 4. physics-informed fine-tuning


def _train_settings(steps: int, **options):
    from fourcast.training import Phase, TrainSettings

    return TrainSettings(
        phases=(Phase(1, steps, 3e-3),),
        batch_size=8,
        warmup_steps=10,
        validate_every=max(1, steps // 12),
        validation_leads=(4,),
        validation_samples=16,
        seed=0,
        **options,
    )


def incremental_modes(coarse: dict, steps: int) -> str:
    """Fixed modes vs iFNO, same seed, steps and batch: when each first reaches the fixed run's final
    score."""
    from fourcast.training import ModeSchedule, train

    validation = ArrayWindows(coarse["val"], *coarse["stats"], n_ahead=4)
    runs = {}
    for name, schedule in (
        ("all 16 degrees from the start", None),
        ("iFNO: 4 degrees, +4 when the score improves < 5 %", ModeSchedule(4, None, 0.05, 4)),
    ):
        with seeded_initialisation(0):
            model = build_model("sfno-small", COARSE, len(CHANNELS))
        clock = []
        started = time.perf_counter()

        def report(metrics, step, clock=clock, started=started, model=model):
            if VAL_SCORE in metrics:
                clock.append((step, time.perf_counter() - started, metrics[VAL_SCORE], model.active_modes))

        log(f"iFNO comparison: {name}")
        train(
            model,
            lambda n: ArrayWindows(coarse["train"], *coarse["stats"], n_ahead=n),
            validation,
            _train_settings(steps, modes=schedule),
            report,
            torch.device("cpu"),
            scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
        )
        runs[name] = clock
    target = next(iter(runs.values()))[-1][2]
    lines = [
        (
            f"**iFNO** ({steps} steps, batch 8, validation every {max(1, steps // 12)} steps; "
            "target: the fixed-modes "
            f"run's final validation score {target:.4f}, normalised RMSE at 24 h)"
        ),
        "",
        (
            "| run | final score | first step at target | wall time to target (s) | total wall "
            "time (s) | degrees at end |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, clock in runs.items():
        hit = next(((step, seconds) for step, seconds, score, _ in clock if score <= target), None)
        lines.append(
            f"| {name} | {clock[-1][2]:.4f} | {hit[0] if hit else 'not reached'} | "
            f"{f'{hit[1]:.0f}' if hit else '–'} | {clock[-1][1]:.0f} | {clock[-1][3]} |"
        )
    return "\n".join(lines)


def area_mean_drift_steps(model: torch.nn.Module, coarse: dict, n_steps: int) -> int:
    """Steps of a rollout from the first validation state before the area-mean z500 leaves the truth's range.

    The range: the training period's area-mean z500 ± 3 of its standard deviations, widened by
    10 % of z500's standard deviation (the area mean is nearly conserved by the equations, so
    its truth range alone is narrower than a 6-hour error); or a non-finite value.
    """
    weights = cell_area_weights(equiangular_lats(COARSE[0]))[:, None]
    truth_means = (coarse["train"][:, 0] * weights).mean(axis=(-2, -1))
    tolerance = 3 * truth_means.std() + 0.1 * coarse["stats"][1][0]
    mean, std = coarse["stats"]
    x = torch.from_numpy(((coarse["val"][:1] - mean[:, None, None]) / std[:, None, None]).astype(np.float32))
    model.eval()
    with torch.no_grad():
        for step in range(1, n_steps + 1):
            x = model(x)
            z = x[0, 0].numpy() * std[0] + mean[0]
            if not np.isfinite(z).all() or abs((z * weights).mean() - truth_means.mean()) > tolerance:
                return step - 1
    return n_steps


def physics_informed(coarse: dict, model: torch.nn.Module, steps: int, weight: float) -> str:
    """Fine-tune the trained 32x64 model with and without the shallow-water residual in the loss."""
    from fourcast.training import train

    validation = ArrayWindows(coarse["val"], *coarse["stats"], n_ahead=20)
    n_steps = 20
    rows, stability, seconds = {}, {}, {}
    for name, physics_weight in (
        ("fine-tuned, data loss only", 0.0),
        (f"fine-tuned, data + {weight:g} x shallow-water residual (PINO)", weight),
    ):
        tuned = copy.deepcopy(model)
        log(f"PINO comparison: {name}")
        started = time.perf_counter()
        train(
            tuned,
            lambda n: ArrayWindows(coarse["train"], *coarse["stats"], n_ahead=n),
            validation,
            _train_settings(steps, physics_weight=physics_weight),
            lambda *_: None,
            torch.device("cpu"),
            scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
        )
        seconds[name] = time.perf_counter() - started
        rows[name] = forecast(tuned, coarse["val"][coarse["inits"]], *coarse["stats"], n_steps)
        stability[name] = area_mean_drift_steps(tuned, coarse, 240)
    truth = verifying(coarse["val"], coarse["inits"], n_steps)
    lines = [
        f"**PINO** ({steps} fine-tuning steps from the 32x64 model, batch 8, 1-step loss)",
        "",
        (
            "| run | z500 RMSE 24 h | z500 RMSE 120 h | steps before the area-mean drifts (of "
            "240) | wall time (s) |"
        ),
        "|---|---:|---:|---:|---:|",
    ]
    for name, fc in rows.items():
        r24 = area_rmse(fc[:, 3, 0] - truth[:, 3, 0])
        r120 = area_rmse(fc[:, 19, 0] - truth[:, 19, 0])
        lines.append(f"| {name} | {r24:.0f} | {r120:.0f} | {stability[name]} | {seconds[name]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=4.0, help="training wall time per resolution-transfer model"
    )
    parser.add_argument("--ifno-steps", type=int, default=240)
    parser.add_argument("--pino-steps", type=int, default=30)
    parser.add_argument("--pino-weight", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fourcast-neuralop"))
    parser.add_argument("--only", choices=("transfer", "ifno", "pino"), nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only or ("transfer", "ifno", "pino"))
    truth = synthetic_truth(args.cache)
    text, coarse_model, coarse = resolution_transfer(truth, args.minutes, args.cache)
    if "transfer" in only:
        print(text, "\n", flush=True)
    if "ifno" in only:
        print(incremental_modes(coarse, args.ifno_steps), "\n", flush=True)
    if "pino" in only:
        print(physics_informed(coarse, coarse_model, args.pino_steps, args.pino_weight), flush=True)


if __name__ == "__main__":
    main()
