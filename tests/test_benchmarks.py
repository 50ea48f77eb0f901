"""The benchmark scripts run: ``benchmarks/gpu.py`` at toy size on CPU (the GPU figures need a lent GPU)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Fast filter vs the einsum filter in float32: summation order only.
FAST_FP32_REL = 1e-5
#: Fast path under bf16 autocast vs the float32 compatibility path: bf16 keeps 8 bits, and the
#: largest difference over every output point is a few of its steps of the field's spread.
FAST_BF16_REL = 0.1


@pytest.mark.slow
def test_gpu_script_runs_at_toy_size_on_cpu_with_its_correctness_check_first(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu.py"),
            "--smoke",
            "--no-compile",
            "--steps",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.index("correctness") < done.stdout.index("reference-style")
    result = json.loads(out.read_text())
    assert result["device"] == "cpu (smoke)"
    assert result["correctness"]["fast_fp32_rel_err"] <= FAST_FP32_REL
    assert result["correctness"]["fast_bf16_rel_err"] <= FAST_BF16_REL
    assert result["correctness"]["graphed_skipped"].startswith(
        "CUDA graphs need a CUDA device; found device cpu"
    )
    assert "graphed_rel_err" not in result["correctness"]
    rows = {r["name"]: r for r in result["results"]}
    assert {
        "fourcast fast-filter bf16 fused eager",
        "fourcast fast-filter bf16 eager",
        "forecaster fast-filter eager",
    } <= rows.keys()
    graphed = rows.pop("forecaster fast-filter cuda-graphs")  # on CPU: skipped, with the reason
    assert graphed["note"].startswith("skipped: CUDA graphs need a CUDA device") and math.isnan(
        graphed["per_s"]
    )
    assert all(math.isfinite(r["per_s"]) and r["per_s"] > 0 for r in rows.values())
