"""Training throughput (samples/s) and peak memory of the model presets on CPU, side by side.

Run from the repository root::

    .venv/bin/python benchmarks/train_throughput.py [--steps 10] [--threads 2]

Each case runs in a fresh process (so the peak resident memory of one case does not hide in
another's) and times ``--steps`` optimizer steps after two warm-up steps: forward, the
latitude-weighted MSE of :class:`fourcast.training.LatWeightedMSE`, backward, AdamW. Inputs are
seeded random normalised fields; throughput does not depend on their values. Reported per
case: samples/s, seconds per step, parameter count and peak RSS growth over the process's
baseline after imports (MiB, from ``getrusage``). The ratio column divides by the first case
of the same grid size, so compare ratios, measured in the same run, not absolute figures.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from dataclasses import dataclass

import torch

from fourcast.models.registry import build_model, count_parameters
from fourcast.training import LatWeightedMSE
from ingest.grid import equiangular_lats


@dataclass(frozen=True)
class Case:
    """One model preset on one grid with one batch size."""

    preset: str
    grid: tuple[int, int]
    channels: int
    batch: int


CASES = (
    Case("afno-tiny", (32, 64), 3, 16),
    Case("sfno-small", (32, 64), 3, 16),
    Case("afno-small", (32, 64), 3, 16),
    Case("afno-tiny", (128, 256), 20, 4),
    Case("sfno-small", (129, 256), 20, 4),
    Case("afno-small", (128, 256), 20, 4),
)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure(case: Case, steps: int, threads: int, compiled: bool = False) -> dict[str, float]:
    """Time ``steps`` training steps of ``case`` in this process (``compiled``: under ``torch.compile``)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    baseline = _peak_rss_mib()
    model = build_model(case.preset, case.grid, case.channels)
    if compiled:
        model = torch.compile(model)
    loss_fn = LatWeightedMSE(equiangular_lats(case.grid[0]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(case.batch, case.channels, *case.grid)
    y = torch.randn(case.batch, case.channels, *case.grid)

    def step() -> None:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {
        "samples_per_s": case.batch / seconds,
        "s_per_step": seconds,
        "parameters": float(count_parameters(model)),
        "peak_mib": _peak_rss_mib() - baseline,
    }


def _run_isolated(case: Case, steps: int, threads: int, compiled: bool = False) -> dict[str, float]:
    """:func:`_measure` in a fresh process, so each case's peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (case, steps, threads, compiled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per case")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} timed steps per case (CPU)")
    print(
        f"{'preset':<12}{'grid':>10}{'ch':>4}{'batch':>6}{'params':>11}{'samples/s':>11}{'s/step':>9}"
        f"{'peak MiB':>10}{'ratio':>7}"
    )
    first_of_size: dict[int, float] = {}  # keyed by longitudes: the SFNO's grid has one more (pole) row
    for case in CASES:
        r = _run_isolated(case, args.steps, args.threads)
        reference = first_of_size.setdefault(case.grid[1], r["samples_per_s"])
        grid = f"{case.grid[0]}x{case.grid[1]}"
        print(
            f"{case.preset:<12}{grid:>10}{case.channels:>4}{case.batch:>6}{int(r['parameters']):>11,}"
            f"{r['samples_per_s']:>11.2f}{r['s_per_step']:>9.3f}{r['peak_mib']:>10.0f}"
            f"{r['samples_per_s'] / reference:>7.2f}"
        )


if __name__ == "__main__":
    main()
