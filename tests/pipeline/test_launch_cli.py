"""The pipeline reads the launch through fourcast's one parser; a bad launch is one line from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from fourcast.distributed import LAUNCH_VARIABLES, LaunchEnv
from fourcast.errors import DistributedSetupError
from pipeline import stages
from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]
RENDEZVOUS = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_the_stages_use_fourcasts_launch_parser():
    assert stages.LaunchEnv is LaunchEnv


@pytest.mark.parametrize(
    "env",
    [
        {"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **RENDEZVOUS},
        {"RANK": "one", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **RENDEZVOUS},
        {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"},
    ],
)
def test_a_bad_launch_is_one_line_and_exit_1_with_fourcasts_message(env, tmp_path, monkeypatch, capsys):
    with pytest.raises(DistributedSetupError) as caught:
        LaunchEnv.from_environ(env)
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["score", "--config", str(ROOT / "configs" / "demo.yaml"), "--workdir", str(tmp_path / "work")]
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"fourcast score: DistributedSetupError: {caught.value}"]
