from datetime import datetime, timedelta, timezone
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
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.learning_rat'; allowed here: \[.*'batch_size'.*'phases'"
    ):
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
    with pytest.raises(ConfigError, match=r"forecast.inits overlaps train.train"):
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


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("workdir: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text: byte 0xe9 at offset 12"):
        load_config(latin1)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("forecast", "members", 10**12, r"forecast.members: .*less than or equal to 10000"),
        ("forecast", "lead_hours", 10**9, r"forecast.lead_hours: .*less than or equal to 8760"),
        ("forecast", "seed", 2**64, r"forecast.seed: .*less than or equal to 9223372036854775807"),
        ("ingest", "shard_steps", 10**12, r"ingest.shard_steps: .*less than or equal to 10000"),
        ("train", "seed", -1, r"train.seed: .*greater than or equal to 0"),
        ("train", "seed", 2**64, r"train.seed: .*less than or equal to 9223372036854775807"),
        ("synthetic", "seed", -1, r"synthetic.seed: .*greater than or equal to 0"),
        (
            "cluster",
            "memory_limit",
            "lots",
            r"cluster.memory_limit: expected a size such as 4GiB or 500MB, or 'auto'",
        ),
        ("train", "validation_lead_hours", [], r"train.validation_lead_hours: .*at least 1 item"),
        (
            "train",
            "validation_lead_hours",
            [6, 10**9],
            r"train.validation_lead_hours.1: .*less than or equal to 8760",
        ),
        ("score", "lead_hours", [24, 10**9], r"score.lead_hours.1: .*less than or equal to 8760"),
        ("train", "device", "foo", r"train.device: expected cpu, cuda, cuda:N or mps, found 'foo'"),
        (
            "forecast",
            "device",
            "cuda:x",
            r"forecast.device: expected cpu, cuda, cuda:N or mps, found 'cuda:x'",
        ),
        ("forecast", "wait_timeout_s", float("inf"), r"forecast.wait_timeout_s: .*finite number"),
    ],
)
def test_values_out_of_their_sane_range_are_refused(section, key, value, message):
    raw = _demo()
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_memory_limit_accepts_sizes_and_auto():
    for limit in ("auto", "500MB", "4GiB"):
        raw = _demo()
        raw["cluster"]["memory_limit"] = limit
        assert parse_config(raw).cluster.memory_limit == limit


def test_timezone_aware_times_are_converted_to_utc(tmp_path):
    text = DEFAULT_CONFIG.read_text().replace(
        "inits: {start: 2001-01-01T00:00,", "inits: {start: 2001-01-01T01:00:00+01:00,"
    )
    assert "+01:00" in text
    (tmp_path / "aware.yaml").write_text(text)
    cfg = load_config(tmp_path / "aware.yaml")
    assert cfg.forecast.inits.start == datetime(2001, 1, 1, 0) and cfg.forecast.inits.start.tzinfo is None
    raw = _demo()
    raw["forecast"]["init_times"] = [
        "2001-01-02T06:00Z",
        datetime(2001, 1, 3, 8, tzinfo=timezone(timedelta(hours=2))),
    ]
    raw["score"]["map_init"] = "2001-01-02T06"
    cfg = parse_config(raw)
    assert cfg.forecast.init_times == [datetime(2001, 1, 2, 6), datetime(2001, 1, 3, 6)]
    assert cfg.score.map_init == datetime(2001, 1, 2, 6)


def test_a_time_that_is_not_iso_8601_names_the_key():
    raw = _demo()
    raw["score"]["map_init"] = "15/01/2001"
    with pytest.raises(
        ConfigError,
        match=r"score.map_init: expected an ISO 8601 time such as 2001-01-15T00 or "
        r"2001-01-15T06:00 \(UTC unless an offset is given\), found '15/01/2001'",
    ):
        parse_config(raw)


def test_a_key_given_twice_is_refused_naming_it_and_its_lines(tmp_path):
    text = DEFAULT_CONFIG.read_text().replace("  members: 8\n", "  members: 8\n  members: 80\n")
    assert text.count("members: 8") == 2
    line = text.splitlines().index("  members: 80") + 1
    (tmp_path / "twice.yaml").write_text(text)
    with pytest.raises(
        ConfigError,
        match=rf"twice.yaml, line {line}, column 3: duplicate key 'members' "
        rf"\(first given on line {line - 1}\)",
    ):
        load_config(tmp_path / "twice.yaml")


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    text = DEFAULT_CONFIG.read_text().replace("tracking:\n", "tracking:\n  <<: {experiment: base}\n")
    (tmp_path / "merged.yaml").write_text(text)
    assert (
        load_config(tmp_path / "merged.yaml").tracking.experiment
        == yaml.safe_load(text)["tracking"]["experiment"]
    )


def test_home_and_environment_variables_in_paths_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CAMPAIGNS", str(tmp_path / "campaigns"))
    raw = _demo()
    raw["workdir"] = "~/fc"
    raw["forecast"]["archive"] = "$CAMPAIGNS/q1.zarr"
    raw["forecast"]["model"] = "~/models/model.pt"
    raw["score"]["archive"] = "${CAMPAIGNS}/q1.zarr"
    cfg = parse_config(raw)
    assert cfg.workdir == tmp_path / "fc"
    assert cfg.forecast.archive == cfg.score.archive == tmp_path / "campaigns" / "q1.zarr"
    assert cfg.forecast.model == str(tmp_path / "models" / "model.pt")
    assert load_config(DEFAULT_CONFIG, workdir="~/other").workdir == tmp_path / "other"
    raw["forecast"]["model"] = "models:/fourcast/3"
    assert parse_config(raw).forecast.model == "models:/fourcast/3"


def test_an_unset_environment_variable_in_a_path_is_refused():
    raw = _demo()
    raw["workdir"] = "$FOURCAST_NO_SUCH_VARIABLE/fc"
    with pytest.raises(ConfigError, match=r"workdir: .*unset environment variable FOURCAST_NO_SUCH_VARIABLE"):
        parse_config(raw)


def test_score_max_lead_hours_bounds_the_headline_and_map_leads():
    raw = _demo()
    raw["score"]["max_lead_hours"] = 72
    with pytest.raises(ConfigError, match=r"score.lead_hours \[120\] exceed score.max_lead_hours 72"):
        parse_config(raw)
    raw["score"]["lead_hours"] = [24, 72]
    assert parse_config(raw).score.max_lead_hours == 72


def test_assumed_units_name_lexicon_variables():
    from pipeline.config import IngestConfig

    assert IngestConfig(variables=["t2m"], assume_units={"t2m": "K"}).assume_units == {"t2m": "K"}
    with pytest.raises(ValueError, match="unknown variable ids \\['t2metre'\\]"):
        IngestConfig(variables=["t2m"], assume_units={"t2metre": "K"})
