"""``fourcast forecast``: real processes under ``torchrun``, resume after SIGKILL, lineage, refusals.

The model is a random ``afno-tiny`` checkpoint on the 16 x 32 test store: the runner, the
archive and the launcher are what is tested, not the forecast skill.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from mlflow.tracking import MlflowClient

from ensembles.archive import open_archive
from ensembles.scorecard import ScoreOptions, score_archive
from fourcast.checkpoint import CheckpointMeta, save_checkpoint
from fourcast.distributed import LaunchEnv
from fourcast.models.registry import build_model
from ingest.schema import MEAN, STD, open_climatology, open_store
from pipeline.cli import main
from pipeline.config import ForecastConfig
from pipeline.errors import StageInputError
from pipeline.lineage import store_fingerprint
from pipeline.paths import Paths
from pipeline.scoring import ScoreStream, statistics_time_mean
from pipeline.stages import forecast
from pipeline.tracking import NullTracker, default_tracking_uri
from tests.tolerances import assert_close_to_spread

ROOT = Path(__file__).resolve().parents[2]
# the campaign of the process tests: 6 init times x 4 blocks of 2 members = 24 work items
CAMPAIGN = {
    "inits": {"start": "2000-02-15T00:00", "end": "2000-02-16T06:00"},
    "init_every_hours": 6,
    "members": 8,
    "lead_hours": 48,
    "members_per_batch": 2,
    "perturbation": {"kind": "balanced", "amplitude": 0.1},
    "model_error": {"kind": "sppt", "amplitude": 0.5},
    "seed": 3,
}
SHORT = ["--init-range", "2000-02-15T00", "2000-02-15T06", "--lead-hours", "24"]  # 2 init times, 1 day


def _checkpoint(path: Path, store: Path, channels: list[str] | None = None) -> Path:
    """A random afno-tiny checkpoint for the store's grid (and its channels unless given)."""
    ds = open_store(store)
    channels = channels or [str(c) for c in ds["channel"].values]
    torch.manual_seed(0)
    model = build_model("afno-tiny", (ds["lat"].size, ds["lon"].size), len(channels))
    with torch.no_grad():  # the untrained head is zero (persistence): give every weight a seeded offset
        for weights in model.parameters():
            weights.add_(0.05 * torch.randn_like(weights))
    meta = CheckpointMeta(
        preset="afno-tiny",
        channels=channels,
        lat=ds["lat"].values.tolist(),
        lon=ds["lon"].values.tolist(),
        step_hours=6,
        mean=ds[MEAN].values[: len(channels)].tolist(),
        std=ds[STD].values[: len(channels)].tolist(),
        extra={"store_fingerprint": store_fingerprint(store)},
    )
    return save_checkpoint(path, model, meta)


@pytest.fixture(scope="module")
def workdir(store_paths, write_run_config, tmp_path_factory) -> Path:
    """A workdir holding the test store, its climatology, an afno-tiny checkpoint and ``config.yaml``."""
    work = tmp_path_factory.mktemp("forecast-cli")
    paths = Paths(work)
    store = store_paths[0]
    paths.store.symlink_to(store)
    paths.climatology.symlink_to(store_paths[1])
    _checkpoint(paths.checkpoint, store)
    write_run_config(work / "config.yaml", work, forecast=CAMPAIGN, tracking={"experiment": "forecast-cli"})
    return work


def _command(workdir: Path, archive: Path, *options: str) -> list[str]:
    return ["forecast", "--config", str(workdir / "config.yaml"), "--archive", str(archive), *options]


def _launch(workdir: Path, archive: Path, processes: int, *options: str) -> subprocess.Popen:
    """``fourcast forecast`` in fresh processes: plain Python for one, ``torchrun`` for more."""
    if processes == 1:
        launcher = [sys.executable, "-m", "pipeline.cli"]
    else:
        launcher = [
            str(Path(sys.executable).parent / "torchrun"),
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            "pipeline.cli",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*launcher, *_command(workdir, archive, *options)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def _data_bytes(archive: Path) -> dict[str, bytes]:
    ds = open_archive(archive)
    return {name: ds[name].values.tobytes() for name in ds.data_vars}


@pytest.fixture(scope="module")
def reference(workdir) -> Path:
    """The campaign run uninterrupted by one process."""
    archive = workdir / "forecasts" / "one-process.zarr"
    _finish(_launch(workdir, archive, 1))
    return archive


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_write_the_archive_of_one_byte_for_byte(workdir, reference):
    archive = workdir / "forecasts" / "two-processes.zarr"
    _finish(_launch(workdir, archive, 2))
    one, two = _data_bytes(reference), _data_bytes(archive)
    assert one.keys() == two.keys() == {"z500", "u500", "v500"}
    assert one == two
    assert not np.isnan(open_archive(archive)["z500"].values).any()

    attrs = open_archive(archive).attrs
    assert (
        attrs["complete"] is True
        and attrs["campaign_fingerprint"] == open_archive(reference).attrs["campaign_fingerprint"]
    )
    assert attrs["model"] == str(Paths(workdir).checkpoint.resolve())
    assert attrs["training_store_fingerprint"] == attrs["initial_conditions_fingerprint"] != "unknown"
    assert attrs["perturbation"] == "balanced" and attrs["model_error"] == "sppt" and attrs["seed"] == 3
    assert attrs["code_version"]
    assert attrs["start_time"] <= attrs["end_time"]

    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs(
        [client.get_experiment_by_name("forecast-cli").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    params = runs[0].data.params  # the two-process launch made one run, rank 0's
    assert params["world_size"] == "2" and params["checkpoint_sha256"] == attrs["checkpoint_sha256"]
    for key in (
        "training_store_fingerprint",
        "perturbation",
        "seed",
        "code_version",
        "start_time",
        "end_time",
    ):
        assert params[key] == str(attrs[key])
    assert (
        params["model"] == "checkpoints/model.pt" and params["initial_conditions"] == "store.zarr"
    )  # not absolute
    assert runs[0].data.metrics["forecast/member_steps_per_second"] > 0
    assert attrs["forecast_run_id"] == runs[0].info.run_id  # whichever rank created the archive

    assert (
        main(
            [
                "score",
                "--config",
                str(workdir / "config.yaml"),
                "--archive",
                str(archive),
                "--lead-hours",
                "24",
                "48",
            ]
        )
        == 0
    )
    (scored,) = client.search_runs(
        [client.get_experiment_by_name("forecast-cli").experiment_id], "tags.stage = 'score'"
    )
    assert scored.data.tags["forecast_run_id"] == runs[0].info.run_id


def _descendants(pid: int) -> list[int]:
    """Every living process descended from ``pid`` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _items_done(archive: Path) -> int:
    """Work items recorded done in the unfinished store: marker chunk files, counted without zarr."""
    return sum(
        len(files)
        for partial in archive.parent.glob(f".{archive.name}.partial-*")
        for _, _, files in os.walk(partial / "progress" / "done" / "c")
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_run_resumed_with_another_rank_count_gives_the_same_archive(workdir, reference):
    archive = workdir / "forecasts" / "killed.zarr"
    run = _launch(workdir, archive, 2)
    deadline = time.monotonic() + 300
    while _items_done(archive) < 3 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    for pid in (run.pid, *_descendants(run.pid)):  # torchrun and both workers (each in its own session)
        os.kill(pid, signal.SIGKILL)
    output, _ = run.communicate()
    done = _items_done(archive)
    assert 3 <= done < 24, (
        f"the kill came too late to test resuming: {done} of 24 items done; output:\n{output}"
    )
    assert not archive.exists()

    output = _finish(_launch(workdir, archive, 1))
    assert _data_bytes(archive) == _data_bytes(reference)
    assert [p.name for p in archive.parent.glob(".killed*")] == []
    params = (
        MlflowClient(default_tracking_uri(workdir))
        .search_runs(
            [
                MlflowClient(default_tracking_uri(workdir))
                .get_experiment_by_name("forecast-cli")
                .experiment_id
            ],
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )[0]
        .data
    )
    assert params.metrics["forecast/work_items_computed"] == 24 - done, output


def _stage(
    workdir: Path,
    archive: Path,
    *,
    launch: LaunchEnv = LaunchEnv(),
    stream: ScoreStream | None = None,
    **override,
) -> Path:
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())["forecast"]
    settings = ForecastConfig.model_validate(
        {
            **cfg,
            "inits": {"start": "2000-02-15T00:00", "end": "2000-02-15T06:00"},
            "lead_hours": 24,
            **override,
        }
    )
    paths = Paths(workdir)
    return forecast(
        settings, paths.checkpoint, paths.store, archive, NullTracker(), launch=launch, stream=stream
    )


def test_scores_streamed_while_members_are_produced_equal_the_archive_scored(
    workdir, store_paths, tmp_path, caplog
):
    store, climatology = store_paths
    stream = ScoreStream(climatology, tmp_path / "streamed", ScoreOptions())
    archive = _stage(workdir, tmp_path / "a.zarr", stream=stream)  # 2 init times x 4 blocks of 2 members
    with xr.open_dataset(tmp_path / "streamed" / "scorecard.nc") as streamed:
        truth = open_store(store)
        batch = score_archive(
            open_archive(archive),
            truth["data"],
            open_climatology(climatology),
            time_mean=statistics_time_mean(truth),  # the score stage's baselines, time mean included
        )
        xr.testing.assert_allclose(streamed["score"], batch["score"], rtol=1e-6)
    written = (tmp_path / "streamed" / "scorecard.nc").stat().st_mtime_ns
    _stage(workdir, archive, stream=stream)  # the campaign is complete: nothing is produced, nothing streamed
    assert "nothing is streamed; score the archive" in caplog.text
    assert (tmp_path / "streamed" / "scorecard.nc").stat().st_mtime_ns == written


def test_streaming_over_several_processes_is_refused(workdir, store_paths, tmp_path):
    stream = ScoreStream(store_paths[1], tmp_path / "streamed", ScoreOptions())
    with pytest.raises(
        StageInputError, match="stream_scores needs every member of an init time in one process"
    ):
        _stage(workdir, tmp_path / "a.zarr", launch=LaunchEnv(rank=0, world_size=2), stream=stream)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "streamed").exists()


def test_members_per_batch_changes_the_archive_only_by_rounding(workdir, tmp_path):
    # the random model's states grow huge and SPPT doubles increments: rounding of the batched step would
    # outgrow the tolerance; SPPT's batch independence is exact and tested in tests/ensembles/test_runner.py
    one_init = {"init_times": ["2000-02-15T00:00"], "model_error": {"kind": "none"}}
    single = open_archive(_stage(workdir, tmp_path / "one.zarr", members_per_batch=1, **one_init))
    together = open_archive(_stage(workdir, tmp_path / "eight.zarr", members_per_batch=8, **one_init))
    for name in single.data_vars:
        assert_close_to_spread(together[name].values, single[name].values, name=name)
    assert single.attrs["campaign_fingerprint"] != together.attrs["campaign_fingerprint"]


@pytest.mark.parametrize("kind", ["none", "gaussian", "grf", "balanced", "bred"])
def test_every_perturbation_runs_and_member_zero_is_the_control(workdir, tmp_path, kind):
    ds = open_archive(
        _stage(workdir, tmp_path / f"{kind}.zarr", members=3, perturbation={"kind": kind, "amplitude": 0.1})
    )
    store = open_store(Paths(workdir).store)
    initial = store["data"].sel(time=ds["init_time"].values[0], channel="z500").values
    lead0 = ds["z500"].isel(init_time=0, lead_time=0).values
    np.testing.assert_array_equal(lead0[0], initial)
    assert np.array_equal(lead0[1], initial) == (kind == "none")
    assert not np.isnan(ds["z500"].values).any()


def test_a_registered_mlflow_model_is_resolved_to_its_checkpoint(workdir, tmp_path, capsys):
    uri = default_tracking_uri(workdir)
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("forecast-cli") or client.get_experiment(
        client.create_experiment("forecast-cli")
    )
    run = client.create_run(experiment.experiment_id, run_name="train")
    client.log_artifact(run.info.run_id, str(Paths(workdir).checkpoint), "checkpoint")
    client.create_registered_model("tiny-forecaster")
    version = client.create_model_version(
        "tiny-forecaster", f"runs:/{run.info.run_id}/checkpoint", run.info.run_id
    )
    by_path = _stage(workdir, tmp_path / "path.zarr")
    archive = tmp_path / "registered.zarr"
    options = SHORT
    model_uri = f"models:/tiny-forecaster/{version.version}"
    assert main(_command(workdir, archive, "--model", model_uri, *options)) == 0, capsys.readouterr().err
    assert open_archive(archive).attrs["model"] == model_uri
    assert _data_bytes(archive) == _data_bytes(by_path)
    assert main(_command(workdir, tmp_path / "r.zarr", "--model", "models:/no-such-model/1", *options)) == 1
    assert (
        "StageInputError: the registry holds no model 'no-such-model'; registered models: ['tiny-forecaster']"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        (
            ["--init-times", "2000-02-15T00", "2000-03-09T00"],
            1,
            (
                r"StageInputError: initial conditions for \['2000-03-09T00:00:00.000000000'\] \(1 "
                r"init times\) are not in the "
                r"store, which covers 2000-01-01T00:00:00.000000000..2000-02-29T18:00:00.000000000"
            ),
        ),
        (
            ["--lead-hours", "9"],
            1,
            "StageInputError: forecast.lead_hours 9 is not a multiple of the model step 6 hours",
        ),
        (
            ["--step-hours", "12"],
            1,
            "StageInputError: forecast.step_hours 12 differs from the model's step 6 hours",
        ),
        (["--members", "0"], 2, r"forecast.members: Input should be greater than or equal to 1 \(found 0\)"),
        (
            ["--members", "-4"],
            2,
            r"forecast.members: Input should be greater than or equal to 1 \(found -4\)",
        ),
        (
            ["--members-per-batch", "0"],
            2,
            "forecast.members_per_batch: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_inputs_are_refused_before_anything_is_written(
    workdir, tmp_path, capsys, options, status, message
):
    archive = tmp_path / "forecasts" / "bad.zarr"
    assert main(_command(workdir, archive, *options)) == status
    assert re.search(message, capsys.readouterr().err)
    assert not archive.parent.exists() or list(archive.parent.iterdir()) == []


def test_a_checkpoint_with_other_channels_is_refused(workdir, store, tmp_path, capsys):
    other = _checkpoint(tmp_path / "two-channels.pt", store, channels=["z500", "u500"])
    assert main(_command(workdir, tmp_path / "a.zarr", "--model", str(other))) == 1
    assert (
        "CheckpointError: checkpoint channels ['z500', 'u500'] differ from the data's "
        "['z500', 'u500', 'v500']"
    ) in capsys.readouterr().err
    assert not (tmp_path / "a.zarr").exists()


def test_an_archive_path_holding_another_campaign_is_refused(workdir, tmp_path, capsys):
    archive = _stage(workdir, tmp_path / "a.zarr")
    before = _data_bytes(archive)
    options = SHORT
    assert main(_command(workdir, archive, *options, "--seed", "4")) == 1
    err = capsys.readouterr().err
    assert (
        "CampaignMismatchError:" in err and "holds a different campaign (seed: stored 3, requested 4)" in err
    )
    assert _data_bytes(archive) == before
    assert main(_command(workdir, archive, *options, "--seed", "4", "--overwrite")) == 0
    assert open_archive(archive).attrs["seed"] == 4


@pytest.fixture
def own_workdir(store_paths, write_run_config, tmp_path) -> Path:
    """A workdir of this test alone: links to the test store and climatology, a checkpoint,
    ``config.yaml``."""
    work = tmp_path / "work"
    paths = Paths(work)
    work.mkdir()
    paths.store.symlink_to(store_paths[0])
    paths.climatology.symlink_to(store_paths[1])
    _checkpoint(paths.checkpoint, store_paths[0])
    write_run_config(
        work / "config.yaml",
        work,
        forecast=CAMPAIGN,
        tracking={"experiment": "forecast-cli"},
        score={"lead_hours": [24], "plots": False},
    )
    return work


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "store.zarr",
            (
                r"StageInputError: the archive path .*/work/store.zarr is the store .*/work/store.zarr; the "
                "forecast would replace it"
            ),
        ),
        (
            "climatology.zarr",
            r"StageInputError: the archive path .*/work/climatology.zarr is the climatology",
        ),
        (".", r"StageInputError: the archive path .*/work holds the store"),
        (
            "store.zarr/forecast.zarr",
            (
                r"StageInputError: the archive path .*/work/store.zarr/forecast.zarr lies inside "
                "the store"
            ),
        ),
        (
            "era5",
            (
                r"ArchiveError: refusing to replace .*/work/era5: it is a folder that is not a Zarr "
                r"v3 store \(1 "
                r"entries\), not a fourcast forecast archive"
            ),
        ),
        ("notes.zarr", r"ArchiveError: refusing to replace .*/work/notes.zarr: it is a file of 5 bytes"),
    ],
)
def test_overwrite_never_replaces_the_inputs_or_what_is_not_an_archive(
    own_workdir, store_paths, capsys, target, message
):
    (own_workdir / "era5").mkdir()
    (own_workdir / "era5" / "a.nc").write_text("data")
    (own_workdir / "notes.zarr").write_text("notes")
    before = [_tree(path) for path in (*store_paths, own_workdir)]
    assert main(_command(own_workdir, own_workdir / target, *SHORT, "--overwrite")) == 1
    assert re.search(message, capsys.readouterr().err)
    after = [_tree(path) for path in (*store_paths, own_workdir)]
    assert after[:2] == before[:2]  # the store and the climatology are untouched
    assert {name: after[2].get(name) for name in before[2]} == before[2]  # as is every file of the workdir
    assert list(own_workdir.rglob(".*partial*")) == []


@pytest.mark.parametrize(
    ("poison", "message"),
    [
        ("weights", r"CheckpointError: .*bad.pt: weight tensor 'head.weight' holds 1 non-finite values"),
        ("mean", r"CheckpointError: .*bad.pt: normalisation mean of channels \['u500'\] is \{'u500': nan\}"),
        ("std", r"CheckpointError: .*bad.pt: normalisation std of channels \['v500'\] is \{'v500': 0.0\}"),
    ],
)
def test_a_checkpoint_with_nan_weights_or_broken_statistics_is_refused(
    workdir, store, tmp_path, capsys, poison, message
):
    state = torch.load(_checkpoint(tmp_path / "bad.pt", store), weights_only=True)
    if poison == "weights":
        state["model_state"]["head.weight"].view(-1)[0] = float("nan")
    else:
        state["meta"][poison][{"mean": 1, "std": 2}[poison]] = float("nan") if poison == "mean" else 0.0
    torch.save(state, tmp_path / "bad.pt")
    assert main(_command(workdir, tmp_path / "a.zarr", "--model", str(tmp_path / "bad.pt"), *SHORT)) == 1
    assert re.search(message, capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_score_partial_scores_the_init_times_a_killed_campaign_completed(own_workdir, caplog, capsys):
    """Three init times in blocks of 2 members; two stopped launches leave inits 0 and 2 complete, init 1 half
    done."""
    from ensembles.errors import CampaignIncompleteError

    archive = own_workdir / "forecasts" / "killed.zarr"
    settings = {
        "init_times": ["2000-02-15T00:00", "2000-02-15T06:00", "2000-02-15T12:00"],
        "members": 4,
        "members_per_batch": 2,
        "wait_timeout_s": 0.2,
    }
    for launch in (
        LaunchEnv(rank=0, world_size=2),
        LaunchEnv(rank=1, world_size=4),
    ):  # items 0, 2, 4, then 1 and 5
        with pytest.raises(
            CampaignIncompleteError, match=r"1 work items still missing|3 work items still missing"
        ):
            _stage(own_workdir, archive, launch=launch, **settings)
    assert (
        main(["score", "--config", str(own_workdir / "config.yaml"), "--archive", str(archive), "--partial"])
        == 0
    )
    assert re.search(
        r"scoring 2 of 3 init times of .*\.killed\.zarr\.partial-\w+ \(5 of 6 work items recorded "
        r"complete\); left out 1 init times with member blocks not recorded complete \(2000-02-15T06:00\)",
        caplog.text,
    )
    assert "z500" in capsys.readouterr().out
    with xr.open_dataset(own_workdir / "scores" / "scorecard.nc") as scorecard:
        assert (scorecard["n_forecasts"] == 2).all() and int(scorecard["n_unwritten"].sum()) == 0
