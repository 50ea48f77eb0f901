"""``fourcast ingest inspect | validate STORE`` on good and deliberately damaged stores."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import zarr

from ingest.inspect import describe_store, format_description, validate_store
from ingest.store import StatsPeriod, StoreLayout, write_store
from pipeline.cli import main
from tests.ingest.fields import canonical_fields

PERIOD = StatsPeriod(np.datetime64("2001-01-01T00"), np.datetime64("2001-01-20T18"))


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    data = canonical_fields("2001-01-01T00", "2001-01-31T18")
    return write_store(
        data, tmp_path_factory.mktemp("inspect") / "store.zarr", PERIOD, StoreLayout(shard_steps=32)
    )


@pytest.fixture
def damaged(good_store, tmp_path):
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(good_store, copy)
    return copy


def test_inspect_shows_dates_layout_size_and_statistics(good_store, capsys):
    d = describe_store(good_store)
    assert (d.first, d.last, d.step) == (
        np.datetime64("2001-01-01T00"),
        np.datetime64("2001-01-31T18"),
        np.timedelta64(6, "h"),
    )
    assert d.gaps == [] and d.shape == {"time": 124, "channel": 3, "lat": 9, "lon": 16}
    assert d.shards == (32, 3, 9, 16) and d.compressors == ["ZstdCodec"] and d.bytes_on_disk > 0
    assert main(["ingest", "inspect", str(good_store)]) == 0
    out = capsys.readouterr().out
    assert "2001-01-01T00:00 .. 2001-01-31T18:00  every 6 h, 124 steps" in out
    assert format_description(d) in out and "tendency_std" in out and out.count("\nz500") == 1


def test_a_good_store_validates(good_store, capsys):
    assert validate_store(good_store) == []
    assert main(["ingest", "validate", str(good_store)]) == 0
    assert capsys.readouterr().out.strip().endswith("valid")


def test_nans_and_unphysical_values_are_reported(damaged, capsys):
    array = zarr.open_array(damaged / "data", mode="r+")
    block = array[40:41]
    block[0, 0, 2, 3] = np.nan  # z500 NaN
    block[0, 1, 0, 0] = 400.0  # u500 of 400 m/s
    array[40:41] = block
    problems = validate_store(damaged)
    assert any("z500 has 1 NaN/inf" in p for p in problems)
    assert any("u500 spans" in p and "outside its physical range -150..150" in p for p in problems)
    assert main(["ingest", "validate", str(damaged)]) == 1
    assert "2 problem(s)" in capsys.readouterr().out


def test_repeated_times_and_gaps_are_reported(damaged):
    times = zarr.open_array(damaged / "time", mode="r+")
    hours = times[:]
    hours[10] = hours[9]
    hours[50:] += 12
    times[:] = hours
    problems = validate_store(damaged)
    assert any("repeated or unsorted" in p for p in problems)
    hours[10] = hours[9] + 6
    times[:] = hours
    gap = describe_store(damaged).gaps
    assert len(gap) == 1 and gap[0].missing_steps == 2
    assert any("1 gap(s)" in p for p in validate_store(damaged))


def test_something_that_is_not_a_store_is_a_schema_problem(tmp_path, capsys):
    (tmp_path / "empty.zarr").mkdir()
    assert validate_store(tmp_path / "empty.zarr")[0].startswith("schema:")
    assert main(["ingest", "inspect", str(tmp_path / "missing.zarr")]) == 1
    assert "no training store" in capsys.readouterr().err


def test_a_truncated_shard_is_reported_by_its_file_name(damaged, capsys):
    shard = damaged / "data" / "c" / "1" / "0" / "0" / "0"
    os.truncate(shard, shard.stat().st_size // 2)
    problems = validate_store(damaged)
    assert len(problems) == 1 and problems[0].startswith(
        f"data: {shard} (steps 2001-01-09T00:00 .. 2001-01-16T18:00)"
    )
    assert "is unreadable" in problems[0]
    assert main(["ingest", "validate", str(damaged)]) == 1
    captured = capsys.readouterr()
    assert (
        f"{shard} (steps" in captured.out
        and "1 problem(s)" in captured.out
        and "Traceback" not in captured.err
    )
