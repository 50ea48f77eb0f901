from pathlib import Path

import pytest
import yaml

from pipeline.cli import DEFAULT_CONFIG, main
from pipeline.config import ConfigError, load_config, parse_config


def _demo() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_demo_config_validates():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.train.model == "afno-tiny" and cfg.ingest.variables[0] == "z500"
    assert not cfg.train.train.overlaps(cfg.forecast.inits)


def test_unknown_key_is_named_with_the_allowed_keys():
    raw = _demo()
    raw["train"]["learning_rat"] = 0.1
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rat'; allowed here: \[.*'batch_size'.*'phases'"):
        parse_config(raw)


def test_wrong_type_names_the_key_and_value():
    raw = _demo()
    raw["forecast"]["members"] = "many"
    with pytest.raises(ConfigError, match=r"forecast.members: .*integer.*'many'"):
        parse_config(raw)


def test_unknown_preset_and_variable_list_the_choices():
    raw = _demo()
    raw["train"]["model"] = "afno-huge"
    raw["ingest"]["variables"] = ["z500", "zz"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert "afno-tiny" in str(info.value) and "unknown variable ids ['zz']" in str(info.value)


def test_forecasting_on_training_dates_is_refused():
    raw = _demo()
    raw["forecast"]["inits"] = {"start": "2000-06-01T00:00", "end": "2000-06-10T00:00"}
    with pytest.raises(ConfigError, match="forecast.inits overlaps train.train"):
        parse_config(raw)


def test_cli_stops_before_any_work_on_a_bad_config(tmp_path, capsys):
    raw = _demo()
    raw["ingest"]["shards"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["run", "--config", str(bad), "--workdir", str(tmp_path / "work")]) == 2
    assert "unknown key 'ingest.shards'" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_cli_help_lists_the_stages(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("demo", "run", "ingest", "train", "forecast", "score"):
        assert command in out


def test_missing_and_non_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("a: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "x.yaml")
    assert isinstance(DEFAULT_CONFIG, Path)
