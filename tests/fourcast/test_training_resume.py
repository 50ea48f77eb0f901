"""A run killed with SIGKILL and resumed from its last training state repeats the uninterrupted run exactly.

Run as a script (``python test_training_resume.py STORE DIR LOSSES [--resume] [--hang-at STEP]``) this
module is the training process the test kills: it appends ``step loss`` lines to LOSSES as it
goes and, with ``--hang-at``, stops making progress at that step so the kill lands after a
checkpoint and after some unsaved steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fourcast.checkpoint import CheckpointMeta, load_training_state
from fourcast.data import StoreWindows
from fourcast.models.registry import build_model
from fourcast.training import CheckpointPlan, Phase, TrainSettings, train

TRAIN = ("2000-01-01", "2000-01-05T18")  # 19 windows: 4 batches of 4 per epoch, so the run crosses epochs
VALID = ("2000-02-01", "2000-02-03T18")
SETTINGS = TrainSettings(phases=(Phase(1, 8, 3e-3), Phase(2, 6, 1e-3)), batch_size=4, warmup_steps=2,
                         validate_every=4, validation_leads=(1, 2), validation_samples=4, seed=7)
CHECKPOINT_EVERY, HANG_AT = 5, 8


def _run(store: Path, directory: Path, report, resume: Path | None = None):
    torch.manual_seed(0)
    validation = StoreWindows(store, *VALID, n_ahead=2)
    model = build_model("afno-tiny", (16, 32), 3)
    meta = CheckpointMeta("afno-tiny", validation.channels, validation.lat.tolist(), validation.lon.tolist(), 6,
                          validation.mean.tolist(), validation.std.tolist(), {"store_fingerprint": "test"})
    plan = CheckpointPlan(directory, meta, CHECKPOINT_EVERY, resume_from=resume, lineage={"run_id": directory.name})
    return train(model, lambda n: StoreWindows(store, *TRAIN, n_ahead=n), validation, SETTINGS, report,
                 torch.device("cpu"), checkpoints=plan)


def _losses(path: Path) -> dict[int, str]:
    return {int(step): loss for step, loss in (line.split() for line in path.read_text().splitlines())}


def _start(store: Path, directory: Path, losses: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, str(store), str(directory), str(losses), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.distributed
@pytest.mark.slow
def test_sigkilled_run_resumes_bit_for_bit(store, tmp_path):
    killed_losses = tmp_path / "killed.txt"
    process = _start(store, tmp_path / "run", killed_losses, "--hang-at", str(HANG_AT))
    try:
        deadline = time.monotonic() + 240
        while not (killed_losses.exists() and HANG_AT in _losses(killed_losses)):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "worker never reached the hang step"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    state = load_training_state(tmp_path / "run" / "last.pt")
    assert state["step"] == CHECKPOINT_EVERY and (state["cursor"]["epoch"], state["cursor"]["batch"]) == (1, 1)
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []  # no partial files

    resumed_losses = tmp_path / "resumed.txt"
    resumed = _start(store, tmp_path / "run", resumed_losses, "--resume")
    output, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, output

    torch.set_num_threads(1)  # the workers' thread count, so reductions add up in the same order
    reference: dict[int, str] = {}
    result = _run(store, tmp_path / "reference", lambda m, s: reference.update({s: repr(m["loss"])}) if "loss" in m
                  else None)
    killed, after = _losses(killed_losses), _losses(resumed_losses)
    assert sorted(after) == list(range(CHECKPOINT_EVERY + 1, result.steps + 1))
    stitched = {**{s: v for s, v in killed.items() if s <= CHECKPOINT_EVERY}, **after}
    assert stitched == reference  # bit for bit: the losses' reprs are equal
    assert {s: killed[s] for s in range(1, HANG_AT + 1)} == {s: reference[s] for s in range(1, HANG_AT + 1)}
    final = load_training_state(tmp_path / "run" / "last.pt")
    ours = load_training_state(tmp_path / "reference" / "last.pt")
    assert final["step"] == ours["step"] == 14 and final["best_step"] == ours["best_step"]
    for name, value in ours["model_state"].items():
        assert torch.equal(final["model_state"][name], value), name


def _cli_config(tmp_path: Path, store: Path, climatology: Path) -> Path:
    (tmp_path / "store.zarr").symlink_to(store)
    (tmp_path / "climatology.zarr").symlink_to(climatology)
    config = {
        "workdir": str(tmp_path),
        "synthetic": {"period": {"start": "2000-01-01T00:00", "end": "2000-02-29T18:00"}, "nlat": 16, "nlon": 32},
        "ingest": {"variables": ["z500", "u500", "v500"],
                   "statistics": {"start": "2000-01-01T00:00", "end": "2000-01-31T18:00"}},
        "train": {"model": "afno-tiny", "train": {"start": "2000-01-01T00:00", "end": "2000-01-31T18:00"},
                  "validation": {"start": "2000-02-01T00:00", "end": "2000-02-10T18:00"}, "batch_size": 4,
                  "phases": [{"rollout_steps": 1, "optimizer_steps": 6, "learning_rate": 2e-3}], "warmup_steps": 1,
                  "validate_every": 3, "checkpoint_every": 3, "validation_lead_hours": [6, 12],
                  "validation_samples": 4},
        "forecast": {"inits": {"start": "2000-02-20T00:00", "end": "2000-02-22T00:00"}},
        "tracking": {"experiment": "resume-test"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_cli_resume_records_lineage_and_registers_each_model(store_paths, tmp_path, capsys):
    from mlflow.tracking import MlflowClient  # here, not at the top: the killed worker imports this module

    from pipeline.cli import main

    config = _cli_config(tmp_path, *store_paths)
    assert main(["train", "--config", str(config), "--resume"]) == 1
    assert "no training state file at" in capsys.readouterr().err
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config), "--resume"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume-test").experiment_id],
                              order_by=["attributes.start_time ASC"])
    first, second = (run for run in runs if run.info.status == "FINISHED")
    assert second.data.tags["resumed_from_run_id"] == first.info.run_id
    assert second.data.tags["resumed_from_step"] == "6" and second.data.tags["world_size"] == "1"
    assert first.data.tags["dataset_fingerprint"] and first.data.tags["git_commit"]
    assert [m.step for m in client.get_metric_history(first.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    assert {"val_rmse_z500_12h", "val_persistence_rmse_v500_12h"} <= set(first.data.metrics)
    assert 0.5 < first.data.metrics["val_acc_z500_6h"] <= 1.0  # anomalies against the seasonal climatology
    versions = client.search_model_versions("name='fourcast-afno-tiny'")
    assert sorted((int(v.version), v.run_id) for v in versions) == [(1, first.info.run_id), (2, second.info.run_id)]
    assert [a.path for a in client.list_artifacts(first.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]


def _worker(argv: list[str]) -> None:
    store, directory, losses = Path(argv[0]), Path(argv[1]), Path(argv[2])
    hang_at = int(argv[argv.index("--hang-at") + 1]) if "--hang-at" in argv else None
    resume = directory / "last.pt" if "--resume" in argv else None
    with losses.open("a") as out:
        def report(metrics: dict, step: int) -> None:
            if "loss" not in metrics:
                return
            out.write(f"{step} {metrics['loss']!r}\n")
            out.flush()
            while step == hang_at:  # the test kills the process here
                time.sleep(1)
        _run(store, directory, report, resume)


if __name__ == "__main__":
    _worker(sys.argv[1:])
