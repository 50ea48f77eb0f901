"""The registry as the operational contract: aliases resolved to versions, clear errors, promotion by hand."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.tracking import AliasError, model_aliases, resolve_model_version, set_model_alias


@pytest.fixture
def registry(tmp_path) -> str:
    """A SQLite registry holding model ``m`` with versions 1 and 2, ``champion`` on 1."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", f"runs:/{run.info.run_id}/checkpoint", run.info.run_id)
    client.set_registered_model_alias("m", "champion", "1")
    return uri


def test_aliases_and_latest_resolve_to_versions(registry):
    assert resolve_model_version("models:/m@champion", registry) == ("m", "1")
    assert resolve_model_version("models:/m/latest", registry) == ("m", "2")
    assert set_model_alias(registry, "m", "champion", "2") == "1"
    assert model_aliases(registry, "m") == {"champion": "2"}


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "models:/m@operational",
            "registered model 'm' has no alias 'operational'; its aliases: champion -> version 1",
        ),
        ("models:/nope@champion", r"the registry holds no model 'nope'; registered models: \['m'\]"),
        ("models:/m/7", r"registered model 'm' has no version '7'; its versions: \['1', '2'\]"),
    ],
)
def test_a_missing_alias_model_or_version_names_what_there_is(registry, uri, message):
    with pytest.raises(AliasError, match=message):
        resolve_model_version(uri, registry)


def test_the_cli_moves_and_lists_aliases_and_a_forecast_with_a_missing_alias_stops_clearly(
    registry, tmp_path, monkeypatch, capsys
):
    config = tmp_path / "run.yaml"
    config.write_text(
        "ingest: {variables: [z500], source: files}\n"
        "train: {model: afno-tiny, train: {start: 2000-01-01, end: 2000-01-10},\n"
        "        validation: {start: 2000-01-11, end: 2000-01-12},\n"
        "        phases: [{rollout_steps: 1, optimizer_steps: 1, learning_rate: 1.0e-3}]}\n"
        "forecast: {inits: {start: 2000-01-20, end: 2000-01-21}}\n"
        f"workdir: {tmp_path}\n"
    )
    monkeypatch.setenv("FOURCAST_TRACKING_URI", registry)  # as the Cylc tasks get their tracking server
    assert main(["model", "promote", "m", "latest", "--config", str(config)]) == 0
    assert "m@champion: version 1 -> 2" in capsys.readouterr().out
    assert main(["model", "aliases", "m", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "model": "m",
        "aliases": {"champion": "2"},
        "versions": ["1", "2"],
    }
    assert main(["forecast", "--config", str(config), "--model", "models:/m@nightly"]) == 1
    assert (
        "registered model 'm' has no alias 'nightly'; its aliases: champion -> version 2"
        in capsys.readouterr().err
    )
