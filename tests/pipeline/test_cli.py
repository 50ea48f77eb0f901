import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
import torch

from pipeline.cli import _config, _parser, main

ROOT = Path(__file__).resolve().parents[2]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_stage_without_its_inputs_fails_with_a_named_error(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "fourcast train: StoreSchemaError: no training store at" in err
    assert "store.zarr" in err


def test_check_config_prints_the_resolved_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FOURCAST_WORKDIR", str(tmp_path / "w"))
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert '"model": "afno-tiny"' in out and str(tmp_path / "w") in out


def test_ingest_run_without_source_files_fails_with_a_named_error(tmp_path, capsys):
    assert main(["ingest", "run", "--workdir", str(tmp_path)]) == 1
    assert "fourcast ingest run:" in capsys.readouterr().err


def test_a_tilde_in_the_workdir_option_is_the_home_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["check-config", "--workdir", "~/fc"]) == 0
    assert f'"workdir": "{tmp_path / "fc"}"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--members", "1000000000000"], "forecast.members: Input should be less than or equal to 10000"),
        (["--lead-hours", "1000000000"], "forecast.lead_hours: Input should be less than or equal to 8760"),
        (["--seed", str(2**64)], "forecast.seed: Input should be less than or equal to 9223372036854775807"),
        (["--device", "foo"], "forecast.device: expected cpu, cuda, cuda:N or mps, found 'foo'"),
        (["--init-times", "2001-01-15T00", "tomorrow"], "forecast.init_times.1: expected an ISO 8601 time"),
    ],
)
def test_forecast_options_are_held_to_the_config_bounds(tmp_path, capsys, options, message):
    assert main(["forecast", "--workdir", str(tmp_path / "w"), *options]) == 2
    assert message in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "w").exists()


def test_every_time_option_takes_iso_times_with_hours_only(tmp_path):
    args = _parser().parse_args(["score", "--workdir", str(tmp_path), "--map-init", "2001-01-15T00"])
    assert _config(args).score.map_init == datetime(2001, 1, 15)
    args = _parser().parse_args(
        ["forecast", "--workdir", str(tmp_path), "--init-range", "2001-01-15T00", "2001-01-16T06"]
    )
    inits = _config(args).forecast.inits
    assert (inits.start, inits.end) == (datetime(2001, 1, 15), datetime(2001, 1, 16, 6))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, capsys):
    assert main(["forecast", "--workdir", str(tmp_path), "--device", "cuda"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "forecast.device 'cuda' requested but torch.cuda.is_available() is False" in line
    assert list(tmp_path.iterdir()) == []


def test_a_workdir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    workdir = tmp_path / "fc"
    workdir.write_text("not a folder")
    assert main(["run", "--workdir", str(workdir)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line == (
        f"fourcast run: OutputPathError: workdir {workdir} cannot be written: {workdir} is a file, "
        "not a folder"
    )


def test_an_archive_under_a_file_is_refused_before_the_model_is_loaded(tmp_path, capsys):
    blocker = tmp_path / "campaigns"
    blocker.write_text("not a folder")
    archive = blocker / "q1.zarr"
    assert main(["forecast", "--workdir", str(tmp_path / "w"), "--archive", str(archive)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"OutputPathError: archive folder {blocker} cannot be written: {blocker} is a file" in line
    assert not (tmp_path / "w" / "mlflow.db").exists()


def _unwritable_folder() -> Path:
    """A folder even root cannot create files in (sysfs); the test is skipped where there is none."""
    try:
        os.close((probe := tempfile.mkstemp(dir="/sys"))[0])
    except OSError:
        return Path("/sys")
    os.unlink(probe[1])
    pytest.skip("/sys is writable here")


def test_an_unwritable_tracking_store_is_refused_before_any_work(tmp_path, capsys, write_run_config):
    folder = _unwritable_folder() / "fourcast-tracking"
    config = write_run_config(
        tmp_path / "run.yaml", tmp_path / "w", tracking={"tracking_uri": f"sqlite:///{folder}/mlflow.db"}
    )
    assert main(["train", "--config", str(config)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"OutputPathError: MLflow tracking store folder {folder} cannot be written: " in line


def test_traceback_option_lets_the_error_through(tmp_path):
    from pipeline.errors import OutputPathError

    (tmp_path / "fc").write_text("not a folder")
    with pytest.raises(OutputPathError):
        main(["--traceback", "run", "--workdir", str(tmp_path / "fc")])


@pytest.mark.slow
def test_errors_end_as_one_line_from_a_real_process(tmp_path):
    (tmp_path / "fc").write_text("not a folder")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--workdir", "fc"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert _one_line(done.stderr) == (
        "fourcast run: OutputPathError: workdir fc cannot be written: fc is a file, not a folder"
    )


def test_a_malformed_tag_is_a_config_error_naming_it():
    from pipeline.cli import _tags
    from pipeline.config import ConfigError

    assert _tags(_parser().parse_args(["forecast", "--tag", "cycle_point=2001"])) == {"cycle_point": "2001"}
    with pytest.raises(ConfigError, match="--tag expects KEY=VALUE, found 'cycle_point'"):
        _tags(_parser().parse_args(["forecast", "--tag", "cycle_point"]))
