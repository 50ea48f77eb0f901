"""A run killed with SIGKILL and resumed from its last training state repeats the uninterrupted run exactly,
on one process and on 2 gloo ranks under ``torchrun``.

Run as a script (``python test_training_resume.py STORE DIR LOSSES [--resume] [--hang-at STEP]``, or the
same under ``torchrun``) this module is the training job the test kills: rank 0 appends ``step loss``
lines to LOSSES as it goes, every rank writes its process id to ``LOSSES.rank<R>.pid``, and with
``--hang-at`` every rank stops making progress at that step, so the kill lands after a checkpoint and
after some unsaved steps.
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

from ensembles.regions import global_field_scores
from fourcast.checkpoint import CheckpointMeta, load_checkpoint, load_training_state
from fourcast.data import StoreWindows
from fourcast.distributed import DistContext, process_group
from fourcast.models.registry import build_model
from fourcast.training import CheckpointPlan, Phase, TrainSettings, seeded_initialisation, train

TRAIN = ("2000-01-01", "2000-01-05T18")  # 19 windows: 4 batches of 4 per epoch, so the run crosses epochs
VALID = ("2000-02-01", "2000-02-03T18")
SETTINGS = TrainSettings(
    phases=(Phase(1, 8, 3e-3), Phase(2, 6, 1e-3)),
    batch_size=4,
    warmup_steps=2,
    validate_every=4,
    validation_leads=(1, 2),
    validation_samples=4,
    seed=7,
)
CHECKPOINT_EVERY, HANG_AT, STEPS = 5, 8, 14


def _run(store: Path, directory: Path, report, ctx: DistContext, resume: Path | None = None):
    validation = StoreWindows(store, *VALID, n_ahead=2)
    with seeded_initialisation(
        SETTINGS.seed
    ):  # as the training stage does: every run starts from these weights
        model = build_model("afno-tiny", (16, 32), 3)
    meta = CheckpointMeta(
        "afno-tiny",
        validation.channels,
        validation.lat.tolist(),
        validation.lon.tolist(),
        6,
        validation.mean.tolist(),
        validation.std.tolist(),
        {"store_fingerprint": "test"},
    )
    plan = CheckpointPlan(
        directory, meta, CHECKPOINT_EVERY, resume_from=resume, lineage={"run_id": directory.name}
    )
    return train(
        model,
        lambda n: StoreWindows(store, *TRAIN, n_ahead=n),
        validation,
        SETTINGS,
        report,
        ctx.device,
        ctx=ctx,
        checkpoints=plan,
        scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
    )


def _losses(path: Path) -> dict[int, str]:
    if not path.exists():
        return {}
    return {int(step): loss for step, loss in (line.split() for line in path.read_text().splitlines())}


def _start(store: Path, directory: Path, losses: Path, ranks: int, *extra: str) -> subprocess.Popen:
    """The training job: this module as a script, under ``torchrun`` (a free port) for several ranks."""
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *launcher, __file__, str(store), str(directory), str(losses), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _worker_pids(losses: Path, ranks: int) -> list[int]:
    files = [losses.with_name(f"{losses.name}.rank{rank}.pid") for rank in range(ranks)]
    return [int(f.read_text()) for f in files if f.exists() and f.read_text()]


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie that nobody has reaped yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _kill_at_hang_step(job: subprocess.Popen, losses: Path, ranks: int) -> None:
    """Wait until rank 0 has reported ``HANG_AT``, then SIGKILL the launcher and every rank, as a preemption
    does."""
    deadline = time.monotonic() + 240
    try:
        while HANG_AT not in _losses(losses) or len(_worker_pids(losses, ranks)) < ranks:
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline, "the job never reached the hang step"
            time.sleep(0.2)
    finally:
        job.send_signal(signal.SIGKILL)  # torchrun starts its workers in sessions of their own: kill each one
        for pid in _worker_pids(losses, ranks):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        job.wait()
    while not all(_gone(pid) for pid in _worker_pids(losses, ranks)):
        time.sleep(0.05)
    assert job.returncode == -signal.SIGKILL


def _finish(job: subprocess.Popen, timeout: float = 240) -> None:
    """Wait for a job that must succeed; one that overruns is stopped (torchrun passes SIGTERM on to its
    ranks)."""
    try:
        output, _ = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.terminate()
        output, _ = job.communicate()
    assert job.returncode == 0, output


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigkilled_run_resumes_bit_for_bit(store, tmp_path, ranks):
    reference_losses = tmp_path / "reference.txt"
    reference = _start(store, tmp_path / "reference", reference_losses, ranks)  # alongside, uninterrupted
    try:
        killed_losses = tmp_path / "killed.txt"
        _kill_at_hang_step(
            _start(store, tmp_path / "run", killed_losses, ranks, "--hang-at", str(HANG_AT)),
            killed_losses,
            ranks,
        )
        state = load_training_state(tmp_path / "run" / "last.pt")
        assert state["step"] == CHECKPOINT_EVERY and (state["cursor"]["epoch"], state["cursor"]["batch"]) == (
            1,
            1,
        )
        assert state["cursor"]["world_size"] == len(state["rng_states"]) == ranks
        assert [
            p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")
        ] == []  # no partial files
        resumed_losses = tmp_path / "resumed.txt"
        _finish(_start(store, tmp_path / "run", resumed_losses, ranks, "--resume"))
    except BaseException:
        reference.terminate()
        reference.wait()
        raise
    _finish(reference)

    ours, killed, after = _losses(reference_losses), _losses(killed_losses), _losses(resumed_losses)
    assert sorted(ours) == list(range(1, STEPS + 1)) and sorted(after) == list(
        range(CHECKPOINT_EVERY + 1, STEPS + 1)
    )
    assert {s: killed[s] for s in range(1, HANG_AT + 1)} == {s: ours[s] for s in range(1, HANG_AT + 1)}
    stitched = {**{s: v for s, v in killed.items() if s <= CHECKPOINT_EVERY}, **after}
    assert stitched == ours  # bit for bit: the losses' reprs are equal
    final = load_training_state(tmp_path / "run" / "last.pt")
    uninterrupted = load_training_state(tmp_path / "reference" / "last.pt")
    assert (
        final["step"] == uninterrupted["step"] == STEPS and final["best_step"] == uninterrupted["best_step"]
    )
    for name, value in uninterrupted["model_state"].items():
        assert torch.equal(final["model_state"][name], value), name


def test_training_stage_starts_every_run_from_the_same_weights(store, tmp_path, monkeypatch):
    from pipeline.config import TrainConfig  # here, not at the top: the killed worker imports this module
    from pipeline.stages import train_model
    from pipeline.tracking import NullTracker

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = TrainConfig(
        model="afno-tiny",
        train={"start": "2000-01-01T00:00", "end": "2000-01-05T18:00"},
        validation={"start": "2000-02-01T00:00", "end": "2000-02-02T18:00"},
        batch_size=4,
        phases=[{"rollout_steps": 1, "optimizer_steps": 2, "learning_rate": 1e-3}],
        warmup_steps=1,
        validate_every=2,
        validation_lead_hours=[6],
        validation_samples=2,
        seed=5,
        register_model=False,
    )
    weights = []
    for run in ("first", "second"):
        torch.seed()  # whatever the process's random state (a fresh process starts from a random one) …
        checkpoint = train_model(cfg, store, tmp_path / run / "model.pt", NullTracker())
        weights.append(load_checkpoint(checkpoint)[0])
    for name, value in weights[0].items():  # … the run starts from, and ends with, the same weights
        assert torch.equal(weights[1][name], value), name


def _cli_config(tmp_path: Path, store: Path, climatology: Path, write_run_config) -> Path:
    (tmp_path / "store.zarr").symlink_to(store)
    (tmp_path / "climatology.zarr").symlink_to(climatology)
    return write_run_config(
        tmp_path / "config.yaml",
        tmp_path,
        train={
            "batch_size": 4,
            "phases": [{"rollout_steps": 1, "optimizer_steps": 6, "learning_rate": 2e-3}],
            "warmup_steps": 1,
            "validate_every": 3,
            "checkpoint_every": 3,
            "validation_lead_hours": [6, 12],
            "validation_samples": 4,
        },
        forecast={"inits": {"start": "2000-02-20T00:00", "end": "2000-02-22T00:00"}},
        tracking={"experiment": "resume-test"},
    )


@pytest.mark.slow
def test_cli_resume_records_lineage_and_registers_each_model(store_paths, write_run_config, tmp_path, capsys):
    from mlflow.tracking import MlflowClient  # here, not at the top: the killed worker imports this module

    from pipeline.cli import main

    config = _cli_config(tmp_path, *store_paths, write_run_config)
    assert main(["train", "--config", str(config), "--resume"]) == 1
    assert "no training state file at" in capsys.readouterr().err
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config), "--resume"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("resume-test").experiment_id], order_by=["attributes.start_time ASC"]
    )
    first, second = (run for run in runs if run.info.status == "FINISHED")
    assert second.data.tags["resumed_from_run_id"] == first.info.run_id
    assert second.data.tags["resumed_from_step"] == "6" and second.data.tags["world_size"] == "1"
    assert first.data.tags["dataset_fingerprint"] and first.data.tags["git_commit"]
    assert (
        second.data.tags["resumed_from"] == "checkpoints/last.pt" and "host" not in first.data.tags
    )  # no home path
    assert [m.step for m in client.get_metric_history(first.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert {"val/z500/rmse_12h", "val/v500/persistence_rmse_12h"} <= set(first.data.metrics)
    assert 0.5 < first.data.metrics["val/z500/acc_6h"] <= 1.0  # anomalies against the seasonal climatology
    versions = client.search_model_versions("name='fourcast-afno-tiny'")
    assert sorted((int(v.version), v.run_id) for v in versions) == [
        (1, first.info.run_id),
        (2, second.info.run_id),
    ]
    assert [a.path for a in client.list_artifacts(first.info.run_id, "model/artifacts")] == [
        "model/artifacts/model.pt"
    ]


@pytest.mark.slow
def test_cli_train_refuses_to_overwrite_an_earlier_run_unless_told_to_restart(
    store_paths, write_run_config, tmp_path, capsys
):
    from pipeline.cli import main  # here, not at the top: the killed worker imports this module

    config = _cli_config(tmp_path, *store_paths, write_run_config)
    assert main(["train", "--config", str(config)]) == 0
    checkpoints = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    assert sorted(before) == ["best.pt", "last.pt", "model.pt"]
    capsys.readouterr()
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"CheckpointError: {checkpoints} holds the checkpoints of an earlier run" in err
    assert f"{checkpoints}/last.pt at step 6" in err and "--resume" in err and "--restart" in err
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config), "--resume", "--restart"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--restart"]) == 0
    (aside,) = checkpoints.glob("replaced-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == before  # the earlier run, set aside whole
    assert load_training_state(checkpoints / "last.pt")["step"] == 6


def _worker(argv: list[str]) -> None:
    store, directory, losses = Path(argv[0]), Path(argv[1]), Path(argv[2])
    hang_at = int(argv[argv.index("--hang-at") + 1]) if "--hang-at" in argv else None
    resume = directory / "last.pt" if "--resume" in argv else None
    with process_group("cpu") as ctx, losses.open("a") as out:
        losses.with_name(f"{losses.name}.rank{ctx.rank}.pid").write_text(str(os.getpid()))

        def report(metrics: dict, step: int) -> None:
            if "train/loss" in metrics and ctx.is_main:
                out.write(f"{step} {metrics['train/loss']!r}\n")
                out.flush()
            while "train/loss" in metrics and step == hang_at:  # the test kills the job here
                time.sleep(1)

        _run(store, directory, report, ctx, resume)


if __name__ == "__main__":
    _worker(sys.argv[1:])
