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
   z500 drifts more than 3 standard deviations of its truth, or a value is not finite).

Wall times depend on the machine's load; the ratios and the scores are what to compare.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fourcast.errors import ResolutionTransferError
from fourcast.models.registry import build_model
from fourcast.training import LatWeightedMSE, rollout, seeded_initialisation
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
