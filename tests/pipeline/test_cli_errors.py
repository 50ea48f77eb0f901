"""Every error a user can trigger reaches the CLI as one typed line on stderr: exit 1, or 2 for usage."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ensembles.errors import EnsembleError
from fourcast.device import default_device
from fourcast.errors import DeviceUnavailableError, FourcastError, NormaliserError
from fourcast.normaliser import Normaliser
from ingest.errors import IngestError
from pipeline.cli import _run_errors, main
from pipeline.errors import ConfigError, OptionError, PipelineError, StageInputError, UsageError

ROOT = Path(__file__).resolve().parents[2]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_missing_config_is_one_line_and_exit_2_from_a_real_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "check-config", "--config", "absent.yaml"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert _one_line(done.stderr) == "fourcast: config file absent.yaml does not exist"


def test_a_config_that_is_not_yaml_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("ingest: [1\n")
    assert main(["check-config", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert _one_line(capsys.readouterr().err).startswith("fourcast: not valid YAML: ")


def test_a_missing_store_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["ingest", "inspect", str(tmp_path / "absent.zarr")]) == 1
    expected = f"fourcast ingest inspect: StoreSchemaError: no training store at {tmp_path / 'absent.zarr'}"
    assert _one_line(capsys.readouterr().err) == expected


def test_an_unknown_registered_model_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["model", "aliases", "--workdir", str(tmp_path), "nosuchmodel"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("fourcast model aliases: AliasError: the registry holds no model 'nosuchmodel'")


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["cycle", "await-data", "--point", "x"],
            "OptionError: expected a cycle point such as 20010101T0000Z or 2001-01-01T00:00Z, found 'x'",
        ),
        (
            [
                "model",
                "promote-if-better",
                "fourcast",
                "1",
                "--candidate-scores",
                "x.nc",
                "--headline",
                "z",
            ],
            "OptionError: expected a headline score VARIABLE:METRIC:LEAD_HOURS (z500:rmse:24), found 'z'",
        ),
    ],
)
def test_a_malformed_option_value_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main([*argv[:2], "--workdir", str(tmp_path), *argv[2:]]) == 2
    assert _one_line(capsys.readouterr().err) == f"fourcast {' '.join(argv[:2])}: {message}"


def test_package_errors_are_typed_and_caught_by_the_cli():
    caught = _run_errors()
    for family in (IngestError, FourcastError, EnsembleError, PipelineError):
        assert family in caught
    assert issubclass(ConfigError, UsageError) and issubclass(OptionError, UsageError)
    assert issubclass(StageInputError, PipelineError) and not issubclass(StageInputError, UsageError)
    with pytest.raises(NormaliserError, match="std must be positive"):
        Normaliser([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(DeviceUnavailableError, match="expected a device such as cpu, cuda, cuda:1 or mps"):
        default_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            default_device("cuda")
