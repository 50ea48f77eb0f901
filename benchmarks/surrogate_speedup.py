"""Speed-up of the SFNO surrogate over the numerical model it imitates, on equal terms.

Run from the repository root::

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/surrogate_speedup.py [--days 10] [--threads 1]

The numerical model is the synthetic world's own forced shallow-water solver
(:mod:`ingest.synthetic`, torch-harmonics spectral transforms, Adams–Bashforth 3 at its stable
time step, float64 as the generator runs it); the surrogate is ``sfno-small`` (6-hour steps,
float32, weights as built: the cost of a forward pass does not depend on their values). Both
advance the same simulated span (``--days``) on the same grid and hardware, side by side in
one process. The solver is timed over one day and scaled to the span (its cost per step is
constant); the model is timed for the whole span at batch 1 and at batches 4, 16, 64 (seconds
per member: one batched rollout advances that many states at once; the solver has no batch).

Grids: 32x64, then doubling while the solver needs at most ``--solver-limit`` seconds (120)
for the span. CPU only: the generator draws its stirring from a CPU random generator, so a GPU
comparison needs the solver's noise moved to the device first (not done; no GPU was lent).
"""

from __future__ import annotations

import argparse
import time

import torch

from fourcast.models.registry import build_model
from fourcast.training import seeded_initialisation
from ingest import synthetic

STEP_HOURS = 6


def solver_seconds_per_day(nlat: int, nlon: int, device: torch.device) -> tuple[float, float]:
    """Seconds the solver needs for one simulated day, and its time step (s)."""
    flow = synthetic._ForcedShallowWater(nlat, nlon, STEP_HOURS * 3600.0, seed=0)
    flow.advance(3)  # warm-up, and the multistep history filled
    _sync(device)
    started = time.perf_counter()
    flow.advance(round(86400 / flow.dt))
    _sync(device)
    return time.perf_counter() - started, flow.dt


def model_seconds(nlat: int, nlon: int, steps: int, batch: int, device: torch.device) -> float:
    """Seconds of a ``steps``-step rollout of ``sfno-small`` at ``batch`` (float32, no gradients)."""
    with seeded_initialisation(0):
        model = build_model("sfno-small", (nlat, nlon), 3).to(device).eval()
    x = torch.randn(batch, 3, nlat, nlon, device=device)
    with torch.no_grad():
        model(x)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            x = model(x)
        _sync(device)
    return time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, default=10.0, help="simulated span")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--solver-limit", type=float, default=120.0, help="largest solver time (s) for the span"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 64])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    steps = round(args.days * 24 / STEP_HOURS)
    print(
        f"{args.days:g} simulated days ({steps} model steps of {STEP_HOURS} h), device {device}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    print(
        "| grid | solver dt (s) | solver (s) | SFNO batch 1 (s) | speed-up batch 1 | best batch | "
        "SFNO s/member at best | speed-up at best batch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    nlat, nlon = 32, 64
    while True:
        per_day, dt = solver_seconds_per_day(nlat, nlon, device)
        solver = per_day * args.days
        if solver > args.solver_limit and nlat > 32:
            print(
                f"\n{nlat}x{nlon}: the solver would need {solver:.0f} s for the span (> "
                f"{args.solver_limit:g} s); "
                "stopped"
            )
            break
        single = model_seconds(nlat, nlon, steps, 1, device)
        per_member = {1: single}
        for batch in args.batches:
            per_member[batch] = model_seconds(nlat, nlon, steps, batch, device) / batch
        best = min(per_member, key=per_member.get)
        print(
            f"| {nlat}x{nlon} | {dt:.0f} | {solver:.2f} | {single:.3f} | {solver / single:.1f}x | {best} | "
            f"{per_member[best]:.4f} | {solver / per_member[best]:.1f}x |",
            flush=True,
        )
        if solver > args.solver_limit:
            break
        nlat, nlon = 2 * nlat, 2 * nlon


if __name__ == "__main__":
    main()
