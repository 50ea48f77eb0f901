"""Training states: what they hold, how they fail, and what they refuse to resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ensembles.regions import global_field_scores
from fourcast.checkpoint import CheckpointMeta, load_checkpoint, load_training_state, save_checkpoint
from fourcast.data import StoreWindows
from fourcast.errors import (
    CheckpointError,
    CheckpointWriteError,
    DataWindowError,
    NonFiniteLossError,
    StoreStatisticsError,
)
from fourcast.forecaster import Forecaster
from fourcast.models.registry import build_model
from fourcast.training import CheckpointPlan, Phase, TrainSettings, train

TRAIN = ("2000-01-01", "2000-01-10T18")
VALID = ("2000-02-01", "2000-02-03T18")
SETTINGS = TrainSettings(
    phases=(Phase(1, 4, 2e-3),),
    batch_size=4,
    warmup_steps=1,
    validate_every=2,
    validation_leads=(1,),
    validation_samples=4,
)


def _meta(windows: StoreWindows, **changes) -> CheckpointMeta:
    meta = CheckpointMeta(
        "afno-tiny",
        windows.channels,
        windows.lat.tolist(),
        windows.lon.tolist(),
        6,
        windows.mean.tolist(),
        windows.std.tolist(),
        {"store_fingerprint": "f"},
    )
    return replace(meta, **changes)


def _train(store, plan: CheckpointPlan, report=lambda m, s: None, settings: TrainSettings = SETTINGS):
    torch.manual_seed(0)
    validation = StoreWindows(store, *VALID, n_ahead=1)
    model = build_model("afno-tiny", (16, 32), 3)
    return model, train(
        model,
        lambda n: StoreWindows(store, *TRAIN, n_ahead=n),
        validation,
        settings,
        report,
        torch.device("cpu"),
        checkpoints=plan,
        scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
    )


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """A finished 4-step run: its directory holds ``last.pt`` and ``best.pt``."""
    directory = tmp_path_factory.mktemp("trained")
    validation = StoreWindows(store, *VALID, n_ahead=1)
    _train(store, CheckpointPlan(directory, _meta(validation), every=2, config={"note": "test"}))
    return directory


def test_training_state_holds_everything_needed_to_resume(trained, store):
    raw = torch.load(trained / "last.pt", weights_only=True)  # only plain data: safe to load
    state = load_training_state(trained / "last.pt")
    assert raw["step"] == state["step"] == 4 and state["phase"] == 0 and state["phase_step"] == 4
    assert state["optimizer_state"]["state"] and state["scheduler_state"]["last_epoch"] == 4
    assert set(state["rng_states"][0]) == {"torch", "numpy", "python"} and len(state["rng_states"]) == 1
    assert state["cursor"] == {"epoch": 0, "batch": 4, "world_size": 1}  # 4 of the epoch's 9 batches read
    assert state["config"]["note"] == "test" and state["config"]["settings"]["batch_size"] == 4
    assert state["meta"].extra["store_fingerprint"] == "f"
    assert state["meta"].mean == StoreWindows(store, *VALID).mean.tolist()
    assert [h["step"] for h in state["history"]] == [2, 4] and state["best_step"] in (2, 4)
    weights, meta = load_checkpoint(trained / "best.pt")  # best so far: a model checkpoint for the Forecaster
    assert meta.extra["best_step"] == state["best_step"]
    for name, value in state["best_model_state"].items():
        assert torch.equal(weights[name], value)
    assert sorted(p.name for p in trained.iterdir()) == ["best.pt", "last.pt"]  # no temporaries left


def test_resume_refuses_missing_corrupt_and_model_only_files(trained, store, tmp_path):
    validation = StoreWindows(store, *VALID, n_ahead=1)
    with pytest.raises(CheckpointError, match=r"no training state file at .*nowhere.pt"):
        _train(store, CheckpointPlan(tmp_path, _meta(validation), resume_from=tmp_path / "nowhere.pt"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "last.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        _train(store, CheckpointPlan(tmp_path, _meta(validation), resume_from=truncated))
    with pytest.raises(CheckpointError, match="model-only checkpoint cannot resume"):
        _train(store, CheckpointPlan(tmp_path, _meta(validation), resume_from=trained / "best.pt"))
    assert not (tmp_path / "last.pt").exists()  # nothing trained, nothing written


def test_resume_refuses_other_grids_channels_and_settings(trained, store, tmp_path):
    validation = StoreWindows(store, *VALID, n_ahead=1)
    last = trained / "last.pt"
    other_grid = _meta(validation, lat=np.linspace(89, -89, 16).tolist())
    expected = (
        r"cannot resume .*another grid .* expected lat of 16 values .*, found 16 values "
        r"89…-89; max difference "
    )
    with pytest.raises(CheckpointError, match=expected):
        _train(store, CheckpointPlan(tmp_path, other_grid, resume_from=last))
    other_channels = _meta(validation, channels=["z500", "t850", "v500"])
    with pytest.raises(CheckpointError, match=r"channels \['z500', 'u500', 'v500'\] differ .*'t850'"):
        _train(store, CheckpointPlan(tmp_path, other_channels, resume_from=last))
    other_stats = _meta(validation, std=[s * 2 for s in validation.std.tolist()])
    with pytest.raises(CheckpointError, match=r"normalisation std differs .* \['z500', 'u500', 'v500'\]"):
        _train(store, CheckpointPlan(tmp_path, other_stats, resume_from=last))
    longer = replace(SETTINGS, batch_size=8)
    with pytest.raises(CheckpointError, match=r"settings \['batch_size'\] differ"):
        _train(store, CheckpointPlan(tmp_path, _meta(validation), resume_from=last), settings=longer)


def test_non_finite_loss_names_step_and_variable_and_keeps_the_last_state(store, tmp_path):
    validation = StoreWindows(store, *VALID, n_ahead=1)
    model_holder = {}

    def poison_u500_after_step_3(metrics, step):
        if step == 3 and "train/loss" in metrics:
            with torch.no_grad():  # the head's outputs for channel 1 (u500) become NaN
                model_holder["model"].head.weight[1::3] = float("nan")

    torch.manual_seed(0)
    model = build_model("afno-tiny", (16, 32), 3)
    model_holder["model"] = model
    plan = CheckpointPlan(tmp_path, _meta(validation), every=2)
    with pytest.raises(
        NonFiniteLossError,
        match=r"at step 3 .* in variables \['u500'\].*last good training state .*"
        r"last.pt \(step 2\) is kept",
    ):
        train(
            model,
            lambda n: StoreWindows(store, *TRAIN, n_ahead=n),
            validation,
            replace(SETTINGS, validate_every=10),
            poison_u500_after_step_3,
            torch.device("cpu"),
            checkpoints=plan,
            scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
        )
    state = load_training_state(tmp_path / "last.pt")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model_state"].values())


def test_bad_date_ranges_and_stores_are_refused(store, tmp_path):
    with pytest.raises(DataWindowError, match=r"range 2000-01-05..2000-01-01 is empty"):
        StoreWindows(store, "2000-01-05", "2000-01-01")
    with pytest.raises(DataWindowError, match=r"holds 0 store times.*store covers 2000-01-01"):
        StoreWindows(store, "2000-03-10", "2000-03-20")
    copy = tmp_path / "no-stats.zarr"
    shutil.copytree(store, copy)
    for name in ("mean", "std"):
        shutil.rmtree(copy / name)
    with pytest.raises(StoreStatisticsError, match="has no normalisation statistics"):
        StoreWindows(copy, *TRAIN)


def test_model_checkpoint_write_is_atomic(store, tmp_path):
    windows = StoreWindows(store, *VALID)
    model = build_model("afno-tiny", (16, 32), 3)
    path = save_checkpoint(tmp_path / "model.pt", model, _meta(windows))
    before = path.read_bytes()

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _Exploding(), _meta(windows))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


class _Exploding(torch.nn.Module):
    """A module whose weights fail to serialise part-way (as a full disk would)."""

    def state_dict(self, *args, **kwargs):
        return {"w": torch.zeros(3), "bad": _Unpicklable()}


class _Unpicklable:
    def __reduce__(self):
        raise OSError("disk full")


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_a_new_run_over_an_earlier_one_is_refused_and_restart_sets_the_earlier_one_aside(
    trained, store, tmp_path
):
    directory = tmp_path / "checkpoints"
    shutil.copytree(trained, directory)
    before = _files(directory)
    validation = StoreWindows(store, *VALID, n_ahead=1)
    with pytest.raises(
        CheckpointError,
        match=rf"{directory} holds the checkpoints of an earlier run \(.*best.pt of "
        rf"step \d; {directory}/last.pt at step 4\); .*Continue that run with "
        r"--resume, or start over with --restart",
    ):
        _train(store, CheckpointPlan(directory, _meta(validation), every=2))
    assert _files(directory) == before  # nothing overwritten

    _train(store, CheckpointPlan(directory, _meta(validation), every=3, restart=True))
    (aside,) = directory.glob("replaced-*")
    assert _files(aside) == before  # the earlier run, moved whole
    assert load_training_state(directory / "last.pt")["step"] == 4 and (directory / "best.pt").exists()


def test_stale_partial_checkpoints_are_removed_when_training_starts(store, tmp_path):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False
    )
    dead, alive = int(finished.stdout), os.getpid()
    leftovers = {
        name: tmp_path / name
        for name in (
            f".last.pt.partial-{dead}-0a1b2c3d4e5f",  # its writer was killed
            ".best.pt.partial-0a1b2c3d4e5f",  # an older writer's, no pid
            f".last.pt.partial-{alive}-0a1b2c3d4e5f",
        )
    }  # being written
    for path in leftovers.values():
        path.write_bytes(b"half a checkpoint")
    validation = StoreWindows(store, *VALID, n_ahead=1)
    _train(store, CheckpointPlan(tmp_path, _meta(validation), every=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["best.pt", "last.pt", f".last.pt.partial-{alive}-0a1b2c3d4e5f"]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "weights",
            r"weight tensor 'head.weight' holds 3 non-finite values \(NaN or inf\) of \d+; expected finite",
        ),
        ("mean", r"normalisation mean of channels \['u500'\] is \{'u500': nan\}; expected finite values"),
        (
            "std",
            (
                r"normalisation std of channels \['v500', 'z500'\] is \{'z500': 0.0, 'v500': -1.0\}; "
                r"expected finite, "
                "positive values"
            ),
        ),
    ],
)
def test_checkpoints_with_non_finite_weights_or_unusable_statistics_are_refused(
    store, tmp_path, change, message
):
    windows = StoreWindows(store, *VALID)
    model = build_model("afno-tiny", (16, 32), 3)
    meta = _meta(windows)
    if change == "weights":
        with torch.no_grad():
            model.head.weight.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    elif change == "mean":
        meta.mean[1] = float("nan")
    else:
        meta.std[0], meta.std[2] = 0.0, -1.0
    path = save_checkpoint(tmp_path / "model.pt", model, meta)
    for load in (
        load_checkpoint,
        Forecaster.meta_of,
        lambda p: Forecaster.from_checkpoint(p, torch.device("cpu")),
    ):
        with pytest.raises(CheckpointError, match=f"{path}: {message}"):
            load(path)


def test_a_training_state_with_non_finite_weights_is_refused(trained, tmp_path):
    state = torch.load(trained / "last.pt", weights_only=True)
    state["model_state"]["head.weight"].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"weight tensor 'head.weight' holds 1 non-finite values"):
        load_training_state(tmp_path / "last.pt")


def test_a_checkpoint_write_the_file_system_refuses_names_the_path_and_free_space(store, tmp_path):
    """A real failed write: a process whose file-size limit (RLIMIT_FSIZE) is below the checkpoint's size."""
    windows = StoreWindows(store, *VALID)
    path = save_checkpoint(tmp_path / "model.pt", build_model("afno-tiny", (16, 32), 3), _meta(windows))
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from fourcast.checkpoint import CheckpointMeta, save_checkpoint
        from fourcast.errors import CheckpointWriteError
        meta = CheckpointMeta("afno-tiny", ["z500"], [0.0], [0.0], 6, [0.0], [1.0])
        # the write fails with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            save_checkpoint({str(path)!r}, torch.nn.Linear(100, 100), meta)
        except CheckpointWriteError as err:
            sys.exit(str(err))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"the checkpoint could not be written to {path} (")
    assert "MiB free" in done.stderr and "the previous model.pt is intact" in done.stderr
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert issubclass(CheckpointWriteError, CheckpointError)
