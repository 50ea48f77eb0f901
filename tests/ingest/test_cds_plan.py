"""The CDS request planner: new-CDS request form, monthly and variable-group splits, field costs."""

from __future__ import annotations

from datetime import datetime

import pytest
import yaml
from cds_server import cds_run_config

from ingest.cds import (
    DEFAULT_MAX_FIELDS,
    PlanOptions,
    check_request,
    describe_plan,
    plan_requests,
    request_fields,
    request_key,
)
from ingest.errors import CdsRequestError, RequestTooLargeError, UnknownVariableError
from ingest.lexicon import LEXICON, PRESSURE_LEVELS_DATASET, SINGLE_LEVELS_DATASET
from pipeline.cli import main

JAN, FEB_END = datetime(2000, 1, 1), datetime(2000, 2, 29, 18)
TWO_LEVELS = ["z500", "z850", "t500", "t850", "t2m"]


def _delivered(plan) -> dict[str, list[str]]:
    """Canonical id → months it is requested for, read back from the request dicts themselves."""
    months: dict[str, list[str]] = {}
    for item in plan:
        levels = item.request.get("pressure_level", [None])
        for name in item.request["variable"]:
            for level in levels:
                matches = [
                    v.id
                    for v in LEXICON.values()
                    if v.cds_name == name and v.level == (int(level) if level else None)
                ]
                assert len(matches) == 1
                months.setdefault(matches[0], []).append(item.month)
    return months


def test_two_months_two_levels_in_the_new_cds_form():
    plan = plan_requests(TWO_LEVELS, JAN, FEB_END, 6, PlanOptions(grid=(10.0, 10.0), area=(90, 0, -90, 359)))
    assert [(p.month, p.dataset) for p in plan] == [
        ("2000-01", PRESSURE_LEVELS_DATASET),
        ("2000-01", SINGLE_LEVELS_DATASET),
        ("2000-02", PRESSURE_LEVELS_DATASET),
        ("2000-02", SINGLE_LEVELS_DATASET),
    ]
    january = plan[0].request
    assert list(january) == [
        "product_type",
        "variable",
        "pressure_level",
        "year",
        "month",
        "day",
        "time",
        "data_format",
        "download_format",
        "grid",
        "area",
    ]
    assert january["product_type"] == ["reanalysis"]
    assert january["variable"] == ["geopotential", "temperature"]
    assert january["pressure_level"] == ["500", "850"]
    assert (january["year"], january["month"]) == (["2000"], ["01"])
    assert january["day"] == [f"{d:02d}" for d in range(1, 32)]
    assert january["time"] == ["00:00", "06:00", "12:00", "18:00"]
    assert (january["data_format"], january["download_format"]) == ("netcdf", "unarchived")
    assert january["grid"] == [10.0, 10.0] and january["area"] == [90.0, 0.0, -90.0, 359.0]
    assert "pressure_level" not in plan[1].request and plan[1].request["variable"] == ["2m_temperature"]
    assert plan[2].request["day"][-1] == "29"  # 2000 is a leap year
    # cost = variables x levels x days x times, and it is what request_fields counts
    assert [p.fields for p in plan] == [2 * 2 * 31 * 4, 31 * 4, 2 * 2 * 29 * 4, 29 * 4]
    assert all(p.fields == request_fields(p.request) for p in plan)
    assert _delivered(plan) == {vid: ["2000-01", "2000-02"] for vid in TWO_LEVELS}
    assert {p.variable_ids for p in plan} == {("z500", "z850", "t500", "t850"), ("t2m",)}


def test_variables_at_different_levels_are_not_cross_multiplied():
    plan = plan_requests(["z500", "t850", "u500", "u850"], JAN, datetime(2000, 1, 31, 18))
    wanted = {"z500", "t850", "u500", "u850"}
    assert set(_delivered(plan)) == wanted  # no z850 or t500 fetched on the side
    assert sum(p.fields for p in plan) == len(wanted) * 31 * 4


def test_requests_are_cut_under_the_field_limit_without_losing_or_repeating_a_field():
    ids = [v.id for v in LEXICON.values()]
    limit = 1000
    plan = plan_requests(ids, JAN, FEB_END, 6, PlanOptions(max_fields=limit))
    assert all(p.fields <= limit for p in plan)
    assert all(months == ["2000-01", "2000-02"] for months in _delivered(plan).values())
    assert set(_delivered(plan)) == set(ids)
    assert sum(p.fields for p in plan) == len(ids) * (31 + 29) * 4
    assert len(plan) > 2 * 2  # the limit forced cuts beyond month x dataset


def test_netcdf_gets_a_lower_default_limit_than_grib():
    assert DEFAULT_MAX_FIELDS["netcdf"] < DEFAULT_MAX_FIELDS["grib"]
    every_level = [v.id for v in LEXICON.values() if v.level is not None]
    hourly_month = (datetime(2000, 1, 1), datetime(2000, 1, 31, 23))
    grib = plan_requests(every_level, *hourly_month, 1, PlanOptions(data_format="grib"))
    netcdf = plan_requests(every_level, *hourly_month, 1, PlanOptions(data_format="netcdf"))
    assert len(grib) == 1 and grib[0].fields == len(every_level) * 31 * 24
    assert len(netcdf) > 1 and all(p.fields <= DEFAULT_MAX_FIELDS["netcdf"] for p in netcdf)
    assert grib[0].filename.endswith(".grib") and netcdf[0].filename.endswith(".nc")


def test_a_month_of_one_field_over_the_limit_is_refused_before_anything_is_sent():
    with pytest.raises(RequestTooLargeError, match=r"124 fields, over the limit of 100"):
        plan_requests(["z500"], JAN, datetime(2000, 1, 31, 18), 6, PlanOptions(max_fields=100))


def test_a_hand_made_request_over_the_limit_is_refused():
    request = {
        "variable": ["geopotential", "temperature"],
        "pressure_level": ["500", "850"],
        "year": ["2000"],
        "month": ["01", "02"],
        "day": [f"{d:02d}" for d in range(1, 32)],
        "time": ["00:00", "12:00"],
    }
    # February has 29 days in 2000: 30 and 31 February are not fields
    assert request_fields(request) == 2 * 2 * (31 + 29) * 2
    assert check_request(request, 480) == 480
    with pytest.raises(RequestTooLargeError, match="request of 480 fields is over the limit of 479"):
        check_request(request, 479)
    with pytest.raises(CdsRequestError, match="could not count fields"):
        request_fields({"variable": ["geopotential"]})


@pytest.mark.parametrize(
    "start, end, step, message",
    [
        (datetime(2000, 1, 1, 6), datetime(2000, 1, 31, 18), 6, "must start at 00:00 and end at 18:00"),
        (datetime(2000, 1, 1), datetime(2000, 1, 31, 12), 6, "must start at 00:00 and end at 18:00"),
        (datetime(2000, 1, 1), datetime(2000, 1, 31, 18), 5, "step_hours must divide 24"),
        (datetime(2000, 1, 31), datetime(2000, 1, 1), 6, "must be after start"),
    ],
)
def test_periods_that_are_not_whole_days_on_the_step_grid_are_refused(start, end, step, message):
    with pytest.raises(CdsRequestError, match=message):
        plan_requests(["z500"], start, end, step)


def test_bad_options_and_unknown_variables_are_refused():
    with pytest.raises(UnknownVariableError, match="unknown variable id 'z501'"):
        plan_requests(["z501"], JAN, FEB_END)
    with pytest.raises(CdsRequestError, match="data_format must be one of"):
        PlanOptions(data_format="netcdf4")
    with pytest.raises(CdsRequestError, match="area needs -90 <= south < north <= 90"):
        PlanOptions(area=(-10, 0, 10, 20))
    with pytest.raises(CdsRequestError, match=r"grid must be \(dlat, dlon\)"):
        PlanOptions(grid=(0.0, 1.0))


def test_request_key_ignores_key_order_and_names_the_cache_file():
    plan = plan_requests(["z500"], JAN, datetime(2000, 1, 31, 18))
    item = plan[0]
    shuffled = dict(reversed(list(item.request.items())))
    assert request_key(item.dataset, shuffled) == item.key
    assert request_key(SINGLE_LEVELS_DATASET, item.request) != item.key
    assert item.filename == f"era5-pl_2000-01_{item.key[:12]}.nc"
    other_grid = plan_requests(["z500"], JAN, datetime(2000, 1, 31, 18), 6, PlanOptions(grid=(1.0, 1.0)))[0]
    assert other_grid.filename != item.filename


def test_describe_plan_lists_every_request_and_the_total():
    plan = plan_requests(TWO_LEVELS, JAN, FEB_END, 6)
    text = describe_plan(plan)
    assert text.count("\n") == len(plan) + 2
    assert "geopotential, temperature at 500/850 hPa" in text and "2m_temperature ->" in text
    assert text.endswith(f"total: 4 requests, {sum(p.fields for p in plan)} fields\n")


def _cds_config(tmp_path, **cds) -> str:
    path = tmp_path / "cds.yaml"
    path.write_text(yaml.safe_dump(cds_run_config(tmp_path / "work", TWO_LEVELS, **cds)))
    return str(path)


def test_cli_ingest_plan_prints_requests_and_cost_without_sending(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CDSAPI_URL", "http://127.0.0.1:9/api")  # nothing listens there: any send would fail
    monkeypatch.setenv("CDSAPI_KEY", "not-used")
    assert main(["ingest", "plan", "--config", _cds_config(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1 + 4 + 1
    assert (
        "2000-01  reanalysis-era5-pressure-levels       496  geopotential, temperature at 500/850 hPa" in out
    )
    assert "2000-02  reanalysis-era5-single-levels         116  2m_temperature" in out
    assert lines[-1] == f"total: 4 requests, {496 + 124 + 464 + 116} fields"
    assert not (tmp_path / "work").exists()  # nothing fetched, nothing written


def test_cli_ingest_plan_refuses_a_non_cds_source_and_an_oversized_plan(tmp_path, capsys):
    assert main(["ingest", "plan", "--workdir", str(tmp_path)]) == 1  # the synthetic demo
    assert "ingest plan needs ingest.source: cds, found 'synthetic'" in capsys.readouterr().err
    assert main(["ingest", "plan", "--config", _cds_config(tmp_path, max_fields=100)]) == 1
    assert "RequestTooLargeError" in capsys.readouterr().err
    assert main(["ingest", "plan", "--config", _cds_config(tmp_path, key="secret")]) == 2
    assert "unknown key 'ingest.cds.key'" in capsys.readouterr().err
