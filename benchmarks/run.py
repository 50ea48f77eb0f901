"""One benchmark command: every comparison as a ratio measured side by side in this one run.

Run from the repository root (``make bench``, ``make bench-full``)::

    .venv/bin/python benchmarks/run.py [--full] [--only ingest,loader,...] [--out bench.json]

Sections (quick sizes by default, ERA5-like sizes with ``--full``):

``ingest``
    MB/s of float32 fields: :func:`ingest.readers.open_sources` + :func:`ingest.store.write_store`
    vs plain ``xr.open_mfdataset(files).chunk(...).to_zarr(...)`` vs a file copy of the same
    netCDF files; each route in a fresh process, the routes taking turns, median of the rounds.
``loader``
    Samples/s of the training loader (:func:`fourcast.data.batch_stream` over a streaming
    :class:`fourcast.data.StoreWindows`) vs reading the same windows (the same chunks) with
    zarr alone, and vs the rate an afno-tiny trainer consumes samples at on that grid.
``train``
    Training samples/s and peak RSS growth per preset (eager; compiled too with ``--full``),
    each in a fresh process (``benchmarks/train_throughput.py``).
``ensemble``
    Member-steps/s vs batch and member count (``benchmarks/ensemble_throughput.py``); with
    ``--full`` also the wall time of a 1000-member 5-day forecast at demo size.
``scoring``
    CRPS (plain, fair), Brier score and area-weighted RMSE vs xskillscore (numba kernel for
    its CRPS when numba is installed: the ``bench`` extra), values checked to agree.
``gpu``
    Only a note here: ``benchmarks/gpu.py`` is the script for a lent GPU.

Every ratio is "ours per second / theirs per second" (above 1: ours is faster), from medians
after one warm-up, the compared calls taking turns round after round (:func:`paired_medians`). Where a ratio
misses its target the section's cProfile top entries are
printed below the table and stored in the JSON, to show where the time goes. The machine's
load average is printed and stored with the figures: a shared machine's ratios wander.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

SECTIONS = ("ingest", "loader", "train", "ensemble", "scoring", "gpu")
QUICK = {
    "ingest": {"days": 60, "nlat": 91, "nlon": 180, "rounds": 3},
    "loader": {"steps": 240, "channels": 8, "grid": (64, 128), "batch": 8, "batches": 12, "rounds": 7},
    "train": {"cases": [("afno-tiny", (32, 64), 3, 16)], "steps": 5, "compile": False},
    "ensemble": {
        "presets": ("afno-tiny",),
        "members": (8, 32),
        "batches": (1, 8),
        "steps": 2,
        "repeats": 2,
        "campaign": None,
    },
    "scoring": {"cases": [(20, 50, 32, 64), (20, 10, 91, 180)], "repeats": 5},
}
FULL = {
    "ingest": {"days": 60, "nlat": 181, "nlon": 360, "rounds": 3},
    "loader": {"steps": 400, "channels": 20, "grid": (181, 360), "batch": 4, "batches": 20, "rounds": 3},
    "train": {
        "cases": [
            ("afno-tiny", (32, 64), 3, 16),
            ("afno-small", (32, 64), 3, 16),
            ("sfno-small", (32, 64), 3, 16),
            ("afno-small", (128, 256), 20, 4),
        ],
        "steps": 10,
        "compile": True,
    },
    "ensemble": {
        "presets": ("afno-tiny", "afno-small"),
        "members": (8, 32),
        "batches": (1, 8, 32),
        "steps": 4,
        "repeats": 3,
        "campaign": {"members": 1000, "days": 5},
    },
    "scoring": {"cases": [(20, 50, 32, 64), (20, 10, 181, 360), (20, 50, 181, 360)], "repeats": 3},
}
PROFILE_LINES = 14


@dataclass
class Row:
    """One line of the table: our figure, the reference's, their ratio and its target."""

    section: str
    measure: str
    ours: float
    reference: float | None = None
    unit: str = ""
    reference_name: str = ""
    target: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.reference else self.ours / self.reference

    @property
    def met(self) -> bool | None:
        return None if self.target is None or self.ratio is None else self.ratio >= self.target


@dataclass
class Report:
    """Everything one run measured: rows, profiles of the sections below target, machine load."""

    rows: list[Row] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    load: dict[str, list[float]] = field(default_factory=dict)


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_medians(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall time of each call, the calls taking turns round after round after one warm-up each.

    Taking turns puts the compared calls under the same load bursts of a shared machine.
    """
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def profile_top(call: Callable[[], object], lines: int = PROFILE_LINES) -> str:
    """cProfile of one call of ``call``: the top entries by own time, then by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip())


# ---------------------------------------------------------------------------------------- ingest


def ingest_breakdown(files: list[Path], out: Path, shard_steps: int) -> str:
    """Where our ingest's time goes, stage by stage, each timed alone on the same files.

    cProfile cannot see inside zarr's I/O thread or Dask's workers, so the stages are run one
    after another here: opening with decoding and checks (``.values`` of the lazy array), the
    per-shard statistics, the per-step checksums, and the whole store build from the decoded
    values already in memory (writes + statistics + checksums + finalise).
    """
    import ingest_throughput as it
    import xarray as xr

    from ingest.statistics import StatsWindow, block_partials
    from ingest.store import StatsPeriod, StoreLayout, step_checksums, write_store

    seconds = {}
    start = time.perf_counter()
    data = it.open_sources(files, it.VARIABLES, shard_steps)
    values = data.values
    seconds["open + read + decode + finite/range checks"] = time.perf_counter() - start
    times = data["time"].values
    window = StatsWindow.of(times, times[0], times[-1], 6)
    blocks = [values[i : i + shard_steps] for i in range(0, len(values), shard_steps)]
    start = time.perf_counter()
    for i, block in enumerate(blocks):
        block_partials(block, i * shard_steps, window)
    seconds["statistics (per-shard moments)"] = time.perf_counter() - start
    start = time.perf_counter()
    for block in blocks:
        step_checksums(block)
    seconds["checksums (BLAKE2b per step)"] = time.perf_counter() - start
    start = time.perf_counter()
    in_memory = xr.DataArray(values, dims=data.dims, coords=data.coords, attrs=data.attrs).chunk(
        {"time": shard_steps}
    )
    write_store(in_memory, out, StatsPeriod(times[0], times[-1]), StoreLayout(shard_steps=shard_steps))
    seconds["store build from memory (zstd shards + stats + checksums + finalise)"] = (
        time.perf_counter() - start
    )
    total = sum(seconds[k] for k in list(seconds)[:1]) + seconds[list(seconds)[-1]]
    lines = [f"{name:<72}{s:8.2f} s" for name, s in seconds.items()]
    return "\n".join(
        lines + [f"{'open..decode + build from memory (about one full ingest)':<72}{total:8.2f} s"]
    )


def bench_ingest(size: dict, report: Report) -> None:
    import ingest_throughput as it

    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        files = it._era5_files(root / "raw", size["days"], size["nlat"], size["nlon"])
        megabytes = size["days"] * 4 * len(it.VARIABLES) * size["nlat"] * size["nlon"] * 4 / 1e6
        rounds = []
        for _ in range(size["rounds"]):
            for name in it.ROUTES:
                shutil.rmtree(root / name, ignore_errors=True)
            rounds.append(
                {name: it._in_fresh_process(route, files, root / name) for name, route in it.ROUTES.items()}
            )
        seconds = {name: statistics.median(r[name] for r in rounds) for name in it.ROUTES}
        shape = f"{size['days'] * 4}x{len(it.VARIABLES)}x{size['nlat']}x{size['nlon']}"
        ours = Row(
            "ingest",
            f"store build MB/s ({shape}, {len(files)} netCDF files)",
            megabytes / seconds["ours"],
            megabytes / seconds["plain"],
            "MB/s",
            "open_mfdataset().to_zarr()",
            1.5,
            "per round: " + ", ".join(f"{r['plain'] / r['ours']:.2f}" for r in rounds),
        )
        report.rows.append(ours)
        report.rows.append(
            Row(
                "ingest",
                "store build vs file copy",
                megabytes / seconds["ours"],
                megabytes / seconds["copy"],
                "MB/s",
                "shutil.copyfile",
            )
        )
        if not ours.met:
            shutil.rmtree(root / "profiled", ignore_errors=True)
            report.profiles["ingest"] = ingest_breakdown(files, root / "profiled", it.CASE["shard_steps"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------- loader


def _loader_store(directory: Path, size: dict) -> Path:
    """A training store of seeded fields written by :func:`ingest.store.write_store`."""
    import dask.array as da
    import xarray as xr

    from ingest.dims import CHANNEL, LAT, LON, TIME
    from ingest.lexicon import LEXICON
    from ingest.store import StatsPeriod, StoreLayout, write_store

    steps, nlat, nlon = size["steps"], *size["grid"]
    channels = sorted(LEXICON)[: size["channels"]]
    times = np.datetime64("2001-01-01T00", "ns") + np.arange(steps) * np.timedelta64(6, "h")
    fields = da.random.RandomState(0).standard_normal(
        (steps, len(channels), nlat, nlon), chunks=(40, -1, -1, -1)
    )
    data = xr.DataArray(
        fields.astype(np.float32),
        dims=(TIME, CHANNEL, LAT, LON),
        coords={
            TIME: times,
            CHANNEL: channels,
            LAT: np.linspace(89.0, -89.0, nlat),
            LON: np.arange(nlon) * 360.0 / nlon,
        },
    )
    return write_store(
        data, directory / "store.zarr", StatsPeriod(times[0], times[-1]), StoreLayout(shard_steps=40)
    )


def bench_loader(size: dict, report: Report) -> None:
    import torch
    import zarr

    from fourcast.data import BatchCursor, ResumableSampler, StoreWindows, batch_stream
    from fourcast.models.registry import build_model
    from fourcast.training import LatWeightedMSE

    root = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        store = _loader_store(root, size)
        windows = StoreWindows(store, "2001-01-01", "2100-01-01", n_ahead=1)
        batch, count = size["batch"], size["batches"]
        indices = list(ResumableSampler(windows, 1, 0, seed=0))[: batch * count]
        array = zarr.open_array(store / "data", mode="r")

        def raw() -> None:
            for row in indices:
                array[row : row + 2]  # the whole store is the range: row i is window i

        def ours(workers: int = 0) -> Callable[[], None]:
            def run() -> None:
                stream = batch_stream(windows, batch, 0, 1, 0, BatchCursor(), workers=workers)
                for _ in range(count):
                    next(stream)
                stream.close()

            return run

        samples = batch * count
        timed = paired_medians({"raw": raw, "ours": ours(0), "workers": ours(2)}, size["rounds"])
        raw_s, ours_s, workers_s = timed["raw"], timed["ours"], timed["workers"]
        grid = f"{size['channels']}x{size['grid'][0]}x{size['grid'][1]}"
        main = Row(
            "loader",
            f"samples/s, streaming, 0 workers ({grid}, batch {batch})",
            samples / ours_s,
            samples / raw_s,
            "samples/s",
            "zarr reads of the same chunks",
            0.9,
        )
        report.rows.append(main)
        report.rows.append(
            Row(
                "loader",
                "samples/s, streaming, 2 workers",
                samples / workers_s,
                samples / raw_s,
                "samples/s",
                "zarr reads of the same chunks",
                note="worker processes pay off with cores to spare (a GPU host), not on 2 shared cores",
            )
        )
        model = build_model("afno-tiny", size["grid"], size["channels"])
        loss_fn = LatWeightedMSE(windows.lat)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = next(batch_stream(windows, batch, 0, 1, 0, BatchCursor()))

        def train_step() -> None:
            loss = loss_fn(model(x), y[:, 0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step_s = median_seconds(train_step, size["rounds"])
        report.rows.append(
            Row(
                "loader",
                "streaming loader vs the trainer's consumption (afno-tiny, CPU)",
                samples / ours_s,
                batch / step_s,
                "samples/s",
                "samples/s trained",
                1.0,
            )
        )
        if not main.met:
            report.profiles["loader"] = profile_top(ours(0))
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------- train


def bench_train(size: dict, report: Report) -> None:
    import train_throughput as tt

    for preset, grid, channels, batch in size["cases"]:
        case = tt.Case(preset, grid, channels, batch)
        eager = tt._run_isolated(case, size["steps"], 2)
        where = f"{preset} {grid[0]}x{grid[1]}x{channels}, batch {batch}"
        report.rows.append(
            Row(
                "train",
                f"samples/s eager ({where})",
                eager["samples_per_s"],
                unit="samples/s",
                note=f"peak RSS growth {eager['peak_mib']:.0f} MiB",
            )
        )
        if size["compile"]:
            compiled = tt._run_isolated(case, size["steps"], 2, compiled=True)
            report.rows.append(
                Row(
                    "train",
                    f"samples/s compiled vs eager ({where})",
                    compiled["samples_per_s"],
                    eager["samples_per_s"],
                    "samples/s",
                    "eager",
                    note=f"peak RSS growth {compiled['peak_mib']:.0f} MiB",
                )
            )


# -------------------------------------------------------------------------------------- ensemble


def bench_ensemble(size: dict, report: Report) -> None:
    import ensemble_throughput as et
    import torch

    torch.set_num_threads(2)
    for preset in size["presets"]:
        forecaster = et._forecaster(preset, 32, 64)
        cases = [(m, b) for m in size["members"] for b in size["batches"] if b <= m]
        rates = dict(
            zip(cases, et._best_rates(forecaster, cases, size["steps"], size["repeats"]), strict=True)
        )
        for (members, b), rate in rates.items():
            if b == 1:
                continue
            report.rows.append(
                Row(
                    "ensemble",
                    f"member-steps/s {preset} 32x64, {members} members, batch {b}",
                    rate,
                    rates[(members, 1)],
                    "member-steps/s",
                    "batch 1",
                )
            )
    if size["campaign"]:
        forecaster = et._forecaster("afno-tiny", 32, 64)
        members, days = size["campaign"]["members"], size["campaign"]["days"]
        seconds = et._seconds(forecaster, members, 32, days * 4)
        report.rows.append(
            Row(
                "ensemble",
                f"{members}-member {days}-day forecast, afno-tiny 32x64 (wall s)",
                seconds,
                unit="s",
                note=f"{members * days * 4 / seconds:.0f} member-steps/s",
            )
        )


# --------------------------------------------------------------------------------------- scoring


def bench_scoring(size: dict, report: Report) -> None:
    import importlib.util

    import xskillscore
    from scoring_vs_xskillscore import Case, fields

    from ensembles.metrics import area_weights, brier_score, crps, rmse
    from ingest.dims import INIT_TIME, LAT, LON, MEMBER

    numba = importlib.util.find_spec("numba") is not None
    reference = "xskillscore (numba)" if numba else "xskillscore (no numba: pure numpy)"
    for n_init, members, nlat, nlon in size["cases"]:
        case = Case(f"{n_init}x{members}x{nlat}x{nlon}", n_init, members, nlat, nlon)
        ensemble, truth = fields(case)
        weights = area_weights(truth[LAT])
        dims = [INIT_TIME, LAT, LON]
        full = weights.broadcast_like(truth)
        forecast = ensemble.isel({MEMBER: 0}, drop=True)
        pairs = {
            "crps plain": (
                lambda: crps(ensemble, truth, kind="plain"),
                lambda: xskillscore.crps_ensemble(
                    truth, ensemble, member_dim=MEMBER, dim=dims, weights=weights
                ),
                True,
            ),
            "crps fair": (
                lambda: crps(ensemble, truth, kind="fair"),
                lambda: xskillscore.crps_ensemble(
                    truth, ensemble, member_dim=MEMBER, dim=dims, weights=weights
                ),
                False,
            ),
            "brier (> 0)": (
                lambda: brier_score(ensemble, truth, 0.0),
                lambda: xskillscore.brier_score(
                    truth > 0, (ensemble > 0).mean(MEMBER), dim=dims, weights=full
                ),
                True,
            ),
            "rmse (area-weighted)": (
                lambda: rmse(forecast, truth),
                lambda: xskillscore.rmse(forecast, truth, dim=dims, weights=full),
                True,
            ),
        }
        for metric, (ours, theirs, checked) in pairs.items():
            timed = paired_medians({"ours": ours, "theirs": theirs}, size["repeats"])
            ours_s, theirs_s = timed["ours"], timed["theirs"]
            diff = abs(float(ours()) / float(theirs()) - 1)
            note = f"rel. diff {diff:.1e}" if checked else "same job (xs has no fair CRPS)"
            if checked and diff > 1e-10:
                note += " DISAGREE"
            row = Row(
                "scoring",
                f"{metric} {case.name} (calls/s)",
                1 / ours_s,
                1 / theirs_s,
                "1/s",
                reference,
                1.0,
                note,
            )
            report.rows.append(row)
            if not row.met and metric.startswith(("crps", "brier")):
                report.profiles[f"scoring {metric} {case.name}"] = profile_top(ours)


def bench_gpu(size: dict, report: Report) -> None:
    report.rows.append(
        Row(
            "gpu",
            "training / inference at FourCastNet size",
            float("nan"),
            note="pending: run benchmarks/gpu.py on a lent GPU (targets: train >= 48 samples/s, "
            "infer >= 200 member-steps/s on an H200)",
        )
    )


BENCHES = {
    "ingest": bench_ingest,
    "loader": bench_loader,
    "train": bench_train,
    "ensemble": bench_ensemble,
    "scoring": bench_scoring,
    "gpu": bench_gpu,
}


# ----------------------------------------------------------------------------------------- table


def table(rows: list[Row]) -> str:
    """Markdown table of every row."""
    lines = [
        "| section | measure | ours | reference | ratio | target | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = "" if r.reference is None else f"{r.reference:.4g} ({r.reference_name})"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        target = "" if r.target is None else f">= {r.target:g}x " + ("ok" if r.met else "MISSED")
        ours = "" if r.ours != r.ours else f"{r.ours:.4g} {r.unit}"
        lines.append(f"| {r.section} | {r.measure} | {ours} | {ref} | {ratio} | {target} | {r.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="ERA5-like sizes (long)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; expected some of {SECTIONS}")
    sizes = FULL if args.full else QUICK
    report = Report()
    started = time.perf_counter()
    for section in chosen:
        report.load[section] = list(os.getloadavg())
        print(
            f"[{time.perf_counter() - started:6.0f} s] {section} (load average {os.getloadavg()[0]:.2f})",
            flush=True,
        )
        BENCHES[section](sizes.get(section, {}), report)
    print(
        f"\n{'full' if args.full else 'quick'} run, {time.perf_counter() - started:.0f} s; load averages "
        f"(1 min) at each section's start: " + ", ".join(f"{k} {v[0]:.2f}" for k, v in report.load.items())
    )
    print(table(report.rows))
    for name, text in report.profiles.items():
        print(f"\n## profile: {name} (below target)\n{text}")
    args.out.write_text(
        json.dumps(
            {
                "full": args.full,
                "load": report.load,
                "profiles": report.profiles,
                "rows": [{**asdict(r), "ratio": r.ratio, "met": r.met} for r in report.rows],
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
