"""Ensemble throughput (member-steps/s) of the CPU presets versus member count and batch size.

Run from the repository root::

    .venv/bin/python benchmarks/ensemble_throughput.py [--steps 4] [--threads 2] [--grid 32 64]

Each case forecasts ``members`` perturbed members for ``--steps`` model steps with
:func:`ensembles.runner.run_ensemble` — Gaussian perturbation, :class:`fourcast.forecaster.Forecaster`
of an untrained preset (throughput does not depend on the weights), every step written to a
:class:`ensembles.archive.MemoryArchive` — after one untimed warm-up call, best of ``--repeats``.
All cases of a preset run in this one process, taking turns repeat after repeat, so they share
the machine's load; the
``vs batch 1`` column divides by the same preset and member count stepped one member at a time,
so compare ratios, measured in the same run, not absolute figures.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ensembles.archive import MemoryArchive
from ensembles.perturbations import GaussianPerturbation
from ensembles.runner import forecast_lead_times, run_ensemble
from fourcast.forecaster import Forecaster
from fourcast.models.registry import build_model
from fourcast.normaliser import Normaliser
from ingest.dims import CHANNEL, LAT, LON
from ingest.grid import equiangular_lats, regular_lons

PRESETS = ("afno-tiny", "sfno-small", "afno-small")
MEMBERS = (8, 32)
BATCHES = (1, 8, 32)
CHANNELS = ["z500", "u500", "v500"]
INIT = np.datetime64("2020-01-01T00", "ns")


def _forecaster(preset: str, nlat: int, nlon: int) -> Forecaster:
    torch.manual_seed(0)
    model = build_model(preset, (nlat, nlon), len(CHANNELS))
    ones = np.ones(len(CHANNELS))
    lat = equiangular_lats(nlat) if preset.startswith("sfno") else np.linspace(90, -90, nlat)
    return Forecaster(
        model,
        Normaliser(0 * ones, ones),
        CHANNELS,
        lat,
        regular_lons(nlon),
        np.timedelta64(6, "h"),
        device=torch.device("cpu"),
        autocast=False,
    )


def _seconds(forecaster: Forecaster, members: int, batch: int, steps: int) -> float:
    """Wall time of one ensemble forecast of ``members`` members in batches of ``batch``."""
    coords = forecaster.input_coords
    initial = torch.randn(
        len(CHANNELS), coords[LAT].size, coords[LON].size, generator=torch.Generator().manual_seed(1)
    )
    archive = MemoryArchive(
        CHANNELS, [INIT], forecast_lead_times(forecaster.step_size, steps), members, coords[LAT], coords[LON]
    )
    started = time.perf_counter()
    run_ensemble(
        forecaster,
        initial,
        {CHANNEL: np.array(CHANNELS), LAT: coords[LAT], LON: coords[LON]},
        INIT,
        n_members=members,
        n_steps=steps,
        perturbation=GaussianPerturbation(np.ones(len(CHANNELS)), 0.3),
        archive=archive,
        seed=0,
        members_per_batch=batch,
    )
    return time.perf_counter() - started


def _best_rates(
    forecaster: Forecaster, cases: list[tuple[int, int]], steps: int, repeats: int
) -> list[float]:
    """Best member-steps/s of each (members, batch) case; the cases take turns, so load bursts hit all
    alike."""
    for members, batch in cases:
        _seconds(forecaster, members, batch, steps)  # warm-up
    best = [np.inf] * len(cases)
    for _ in range(repeats):
        for i, (members, batch) in enumerate(cases):
            best[i] = min(best[i], _seconds(forecaster, members, batch, steps))
    return [members * steps / seconds for (members, _), seconds in zip(cases, best, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", type=int, nargs=2, default=(32, 64), metavar=("NLAT", "NLON"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nlat, nlon = args.grid
    print(
        f"torch {torch.__version__}, {args.threads} threads, grid {nlat}x{nlon}, {len(CHANNELS)} channels, "
        f"{args.steps} steps, best of {args.repeats}"
    )
    print(f"{'preset':<12}{'members':>8}{'batch':>7}{'member-steps/s':>16}{'vs batch 1':>12}")
    for preset in PRESETS:
        forecaster = _forecaster(preset, nlat, nlon)
        cases = [(members, batch) for members in MEMBERS for batch in BATCHES if batch <= members]
        rates = dict(zip(cases, _best_rates(forecaster, cases, args.steps, args.repeats), strict=True))
        for (members, batch), rate in rates.items():
            print(
                f"{preset:<12}{members:>8}{batch:>7}{rate:>16.1f}{rate / rates[(members, 1)]:>11.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
