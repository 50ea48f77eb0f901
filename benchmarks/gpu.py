"""Training and inference throughput at FourCastNet size on one lent GPU, side by side.

Run from the repository root on the GPU machine (one call, about 5–8 minutes on an H100/H200)::

    .venv/bin/python benchmarks/gpu.py --out "$OUT/gpu.json"

or, to check the code paths on a CPU at toy size (figures meaningless)::

    .venv/bin/python benchmarks/gpu.py --smoke

First a correctness check: the fast path (:func:`fourcast.models.afno.use_fast_filter`: the
spectral MLP as batched GEMMs over the kept modes) against the compatibility path on the same
weights and input, as ``max |fast - plain| / std(plain)``, in float32 and under bf16 autocast;
then the CUDA-graph rollout (:class:`fourcast.forecaster.Forecaster` with ``cuda_graphs=True``)
against the eager one over ``GRAPH_CHECK_STEPS`` steps, same weights, state and bf16 autocast, as
``max |graphed - eager| / std(eager)`` (on CPU: reported as skipped, with the reason).

Cases, all at ``afno-fcn-0p25`` size (20 channels, 720 × 1440, patch 8, embed 768, depth 12)
unless named otherwise, each timed over ``--steps`` steps after warm-up:

* ``reference-style``: our FourCastNet-compatible AFNO (``mode_truncation="fourcastnet"``) run the
  way NVlabs/FourCastNet trains it: eager, float16 autocast with a ``GradScaler``, the spectral
  filter in float32, unfused Adam;
* ``fourcast``: the same network in bfloat16 autocast (FFTs still float32) with fused AdamW,
  eager and under ``torch.compile``, at batch 1, 2 and 4;
* ``fourcast fast-filter``: the same weights through the batched-GEMM spectral MLP, bf16,
  eager and compiled (training) and eager (inference);
* ``fourcast full-modes``: our default filter (every Fourier mode of the token grid);
* ``sfno-0p25``: the SFNO preset on the full 721 × 1440 grid, bfloat16;
* inference (member-steps/s at batch 32, ``torch.inference_mode``): reference-style float16
  eager beside ours in bfloat16, eager and compiled;
* ``forecaster``: the whole forecast step as a rollout runs it (normalise, fast-filter network in
  bf16 on CUDA — float32 on CPU, as the forecast stage does — denormalise:
  :meth:`fourcast.forecaster.Forecaster.step`) at batch 32, eager beside
  replayed from a CUDA graph (``forecast.cuda_graphs``) and compiled (``forecast.compile``); the
  graphed row's note gives its ratio to the eager row. On CPU the graphed row is skipped with the reason.

Each case reports samples/s (or member-steps/s), seconds per step and peak allocated memory; the
ratio column divides by the reference-style case of the same kind, measured in the same run.
Results are also written as JSON (``--out``) after every case, so a run cut short keeps what it
measured. A case that runs out of memory is reported as such and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fourcast.errors import CudaGraphsUnavailableError
from fourcast.forecaster import Forecaster
from fourcast.models.afno import AFNONet, use_fast_filter
from fourcast.models.registry import PRESETS, build_model, count_parameters
from fourcast.normaliser import Normaliser
from fourcast.training import LatWeightedMSE
from ingest.grid import equiangular_lats, regular_lons

CHANNELS = 20
GRAPHED = "forecaster fast-filter cuda-graphs"
AFNO_GRID = (720, 1440)
SFNO_GRID = (721, 1440)
SMOKE_AFNO_GRID = (32, 64)
SMOKE_SFNO_GRID = (33, 64)
#: Rollout steps compared between the CUDA-graph and the eager forecaster.
GRAPH_CHECK_STEPS = 3


@dataclass
class Result:
    """One measured case."""

    kind: str  # "train" or "infer"
    name: str
    batch: int
    per_s: float = float("nan")  # samples/s (train) or member-steps/s (infer)
    s_per_step: float = float("nan")
    peak_gib: float = float("nan")
    parameters: int = 0
    note: str = ""


@dataclass(frozen=True)
class Setup:
    """Sizes for a real run or a CPU smoke run."""

    device: torch.device
    afno_grid: tuple[int, int]
    sfno_grid: tuple[int, int]
    smoke: bool


def _afno_fast(setup: Setup) -> torch.nn.Module:
    """The FourCastNet-compatible network with the batched-GEMM spectral MLP (same weights)."""
    return use_fast_filter(_afno(setup, "fourcastnet"))


def correctness(setup: Setup, batch: int = 2) -> dict[str, float]:
    """Relative error of the fast path against the compatibility path, same weights and input.

    ``fp32``: the fast filter alone (float32 summation order only); ``bf16``: the fast path as
    it trains (bf16 autocast, FFTs in float32) against the compatibility path in float32.
    Relative error = ``max |fast - plain| / std(plain)``.
    """
    torch.manual_seed(0)
    model = _afno(setup, "fourcastnet").eval()
    x = torch.randn(batch, CHANNELS, *setup.afno_grid, device=setup.device)
    with torch.inference_mode():
        plain = model(x).float()
        use_fast_filter(model)
        fast32 = model(x).float()
        with torch.autocast(setup.device.type, dtype=torch.bfloat16):
            fast16 = model(x).float()
    spread = plain.std().item()
    return {
        "fast_fp32_rel_err": (fast32 - plain).abs().max().item() / spread,
        "fast_bf16_rel_err": (fast16 - plain).abs().max().item() / spread,
    }


def _forecaster(model: torch.nn.Module, setup: Setup, **options) -> Forecaster:
    """``model`` as the forecast stage runs it: unit normaliser, bf16 autocast on CUDA, 6 h step."""
    nlat, nlon = setup.afno_grid
    ones = np.ones(CHANNELS)
    return Forecaster(
        model,
        Normaliser(0 * ones, ones),
        [f"c{i}" for i in range(CHANNELS)],
        np.linspace(90, -90, nlat),
        regular_lons(nlon),
        np.timedelta64(6, "h"),
        device=setup.device,
        **options,
    )


def graph_correctness(setup: Setup, batch: int = 2) -> dict[str, float | str]:
    """``graphed_rel_err``: the CUDA-graph rollout against the eager one (same weights and state).

    Each rollout runs :data:`GRAPH_CHECK_STEPS` steps, feeding every output back; the relative error
    is ``max |graphed - eager| / std(eager)`` over all steps. Off CUDA: ``graphed_skipped`` gives the reason.
    """
    torch.manual_seed(0)
    model = _afno_fast(setup).eval()
    with torch.no_grad():  # a head that is not all zeros, so the state really changes every step
        torch.nn.init.normal_(model.head.weight, std=0.02)
    try:
        graphed = _forecaster(model, setup, cuda_graphs=True)
    except CudaGraphsUnavailableError as err:
        return {"graphed_skipped": str(err)}
    eager = _forecaster(model, setup)
    x0 = torch.randn(batch, CHANNELS, *setup.afno_grid, device=setup.device)
    worst, spread = 0.0, 0.0
    x_eager, x_graphed = x0, x0
    for _ in range(GRAPH_CHECK_STEPS):
        x_eager, _ = eager.step(x_eager, eager.input_coords)
        x_graphed, _ = graphed.step(x_graphed, graphed.input_coords)
        worst = max(worst, (x_graphed - x_eager).abs().max().item())
        spread = max(spread, x_eager.std().item())
    return {"graphed_rel_err": worst / spread}


def _afno(setup: Setup, mode_truncation: str) -> torch.nn.Module:
    if setup.smoke:
        return AFNONet(
            setup.afno_grid,
            CHANNELS,
            CHANNELS,
            patch_size=8,
            embed_dim=64,
            depth=2,
            num_blocks=8,
            mode_truncation=mode_truncation,
        ).to(setup.device)
    settings = {**PRESETS["afno-fcn-0p25"].settings, "mode_truncation": mode_truncation}
    if mode_truncation == "full":
        settings["hard_thresholding_fraction"] = 1.0
    return AFNONet(setup.afno_grid, CHANNELS, CHANNELS, **settings).to(setup.device)


def _sfno(setup: Setup) -> torch.nn.Module:
    preset = "sfno-small" if setup.smoke else "sfno-0p25"
    return build_model(preset, setup.sfno_grid, CHANNELS).to(setup.device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """Seconds per call of ``step`` after ``warmup`` calls, and peak GiB allocated while timing."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def _train_step(
    model: torch.nn.Module,
    batch: int,
    grid: tuple[int, int],
    setup: Setup,
    *,
    dtype: torch.dtype,
    fused: bool,
    scaler: bool,
) -> Callable[[], None]:
    device = setup.device
    loss_fn = LatWeightedMSE(equiangular_lats(grid[0])).to(device)
    if fused:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=False)
    grad_scaler = torch.amp.GradScaler(device.type, enabled=scaler and device.type == "cuda")
    x = torch.randn(batch, CHANNELS, *grid, device=device)
    y = torch.randn(batch, CHANNELS, *grid, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()

    return step


def _infer_step(
    model: torch.nn.Module, batch: int, grid: tuple[int, int], setup: Setup, dtype: torch.dtype
) -> Callable[[], None]:
    x = torch.randn(batch, CHANNELS, *grid, device=setup.device)
    model.eval()

    def step() -> None:
        with torch.inference_mode(), torch.autocast(setup.device.type, dtype=dtype):
            model(x)

    return step


def _case(
    kind: str,
    name: str,
    batch: int,
    build: Callable[[], tuple[torch.nn.Module, Callable]],
    setup: Setup,
    steps: int,
    warmup: int,
) -> Result:
    result = Result(kind, name, batch)
    try:
        model, make_step = build()
        result.parameters = count_parameters(model)
        result.s_per_step, result.peak_gib = _timed(make_step(model), setup.device, warmup, steps)
        result.per_s = batch / result.s_per_step
    except torch.OutOfMemoryError:
        result.note = "out of memory"
    except CudaGraphsUnavailableError as err:
        result.note = f"skipped: {err}"
    finally:
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _forecast_step(forecaster: Forecaster, batch: int) -> Callable[[], None]:
    """One :meth:`Forecaster.step` of ``batch`` members on a fixed state (what a rollout repeats)."""
    coords = forecaster.input_coords
    x = torch.randn(batch, CHANNELS, coords["lat"].size, coords["lon"].size, device=forecaster.device)

    def step() -> None:
        forecaster.step(x, coords)

    return step


def _cases(setup: Setup, compile_: bool) -> list[tuple[str, str, int, Callable, int]]:
    """(kind, name, batch, build, warmup) for every case, reference first within each kind."""
    fp16, bf16 = torch.float16, torch.bfloat16
    afno, sfno = setup.afno_grid, setup.sfno_grid

    def train(model_fn, batch, grid, dtype, fused, scaler, compiled=False):
        def build():
            model = model_fn()
            runner = torch.compile(model) if compiled else model
            return model, lambda m: _train_step(
                runner, batch, grid, setup, dtype=dtype, fused=fused, scaler=scaler
            )

        return build

    def infer(model_fn, batch, grid, dtype, compiled=False):
        def build():
            model = model_fn()
            runner = torch.compile(model) if compiled else model
            return model, lambda m: _infer_step(runner, batch, grid, setup, dtype)

        return build

    compat = lambda: _afno(setup, "fourcastnet")  # noqa: E731
    cases = [("train", "reference-style fp16+scaler eager", 4, train(compat, 4, afno, fp16, False, True), 3)]
    cases += [
        ("train", "fourcast bf16 fused eager", b, train(compat, b, afno, bf16, True, False), 3)
        for b in (1, 2, 4)
    ]
    fast = lambda: _afno_fast(setup)  # noqa: E731
    cases.append(
        ("train", "fourcast fast-filter bf16 fused eager", 4, train(fast, 4, afno, bf16, True, False), 3)
    )
    if compile_:
        cases.append(
            (
                "train",
                "fourcast fast-filter bf16 compiled",
                4,
                train(fast, 4, afno, bf16, True, False, True),
                5,
            )
        )
    if compile_:
        cases.append(
            ("train", "fourcast bf16 fused compiled", 4, train(compat, 4, afno, bf16, True, False, True), 5)
        )
    cases.append(
        (
            "train",
            "fourcast full-modes bf16 eager",
            4,
            train(lambda: _afno(setup, "full"), 4, afno, bf16, True, False),
            3,
        )
    )
    cases.append(
        (
            "train",
            "sfno-0p25 bf16 eager (721 rows)",
            1,
            train(lambda: _sfno(setup), 1, sfno, bf16, True, False),
            3,
        )
    )
    cases.append(("infer", "reference-style fp16 eager", 32, infer(compat, 32, afno, fp16), 3))
    cases.append(("infer", "fourcast bf16 eager", 32, infer(compat, 32, afno, bf16), 3))
    cases.append(("infer", "fourcast fast-filter bf16 eager", 32, infer(fast, 32, afno, bf16), 3))
    if compile_:
        cases.append(("infer", "fourcast bf16 compiled", 32, infer(compat, 32, afno, bf16, True), 5))

    def forecaster(**options):
        def build():
            model = _afno_fast(setup)
            return model, lambda m: _forecast_step(_forecaster(m, setup, **options), 32)

        return build

    cases.append(("infer", "forecaster fast-filter eager", 32, forecaster(), 3))
    cases.append(("infer", GRAPHED, 32, forecaster(cuda_graphs=True), 3))
    if compile_:
        cases.append(("infer", "forecaster fast-filter compiled", 32, forecaster(compile=True), 5))
    return cases


def _print(result: Result, reference: Result | None) -> None:
    ratio = (
        result.per_s / reference.per_s if reference and reference.per_s == reference.per_s else float("nan")
    )
    unit = "samples/s" if result.kind == "train" else "member-steps/s"
    print(
        f"{result.kind:<6}{result.name:<38}{result.batch:>6}{result.per_s:>12.2f} {unit:<15}"
        f"{result.s_per_step:>9.4f}{result.peak_gib:>9.2f}{ratio:>7.2f}  {result.note}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU, to check the code paths")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run on the lent GPU, or pass --smoke to check the code paths on CPU")
    device = torch.device("cpu") if args.smoke else torch.device("cuda")
    setup = Setup(
        device,
        SMOKE_AFNO_GRID if args.smoke else AFNO_GRID,
        SMOKE_SFNO_GRID if args.smoke else SFNO_GRID,
        args.smoke,
    )
    name = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(device)
    print(f"device {name}, torch {torch.__version__}, {args.steps} timed steps per case")
    print(f"{'kind':<6}{'case':<38}{'batch':>6}{'rate':>12} {'':<15}{'s/step':>9}{'peak GiB':>9}{'ratio':>7}")
    checks = correctness(setup)
    print(
        "correctness (fast vs compatibility path, max |diff| / std): "
        + ", ".join(f"{k} {v:.2e}" for k, v in checks.items()),
        flush=True,
    )
    checks.update(graph_correctness(setup))
    print(
        "correctness (CUDA-graph vs eager rollout, max |diff| / std): "
        + (
            f"graphed_rel_err {checks['graphed_rel_err']:.2e}"
            if "graphed_rel_err" in checks
            else f"skipped: {checks['graphed_skipped']}"
        ),
        flush=True,
    )
    results: list[Result] = []
    references: dict[str, Result] = {}
    for kind, label, batch, build, warmup in _cases(setup, compile_=not args.no_compile):
        result = _case(kind, label, batch, build, setup, args.steps, warmup)
        references.setdefault(kind, result)
        eager = next((r for r in results if r.name == "forecaster fast-filter eager"), None)
        if label.startswith(GRAPHED) and eager and result.per_s == result.per_s:
            result.note = f"{result.per_s / eager.per_s:.2f}x forecaster eager"
        results.append(result)
        _print(result, references[kind])
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                json.dumps(
                    {
                        "device": name,
                        "torch": torch.__version__,
                        "correctness": checks,
                        "results": [asdict(r) for r in results],
                    },
                    indent=2,
                )
            )


if __name__ == "__main__":
    main()
