"""CDS downloads with the unmodified ``cdsapi`` client against the local CDS server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from cds_server import CdsServer, cds_run_config, field_values, request_grid, request_times

from ingest.cds import PlanOptions, plan_requests
from ingest.cds_download import CdsCredentials, DownloadSettings, download_plan, resolve_credentials
from ingest.errors import (
    CdsAuthError,
    CdsRequestError,
    CdsResultMismatchError,
    DownloadError,
    RequestTooLargeError,
)
from ingest.lexicon import get_variable
from ingest.schema import DATA, open_store
from pipeline import sources, stages
from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.paths import Paths

TWO_LEVELS = ["z500", "z850", "t500", "t850", "t2m"]
JAN_END = datetime(2000, 1, 31, 18)


@pytest.fixture
def cds():
    """The local CDS, serving on 127.0.0.1 from a thread for one test."""
    with CdsServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _no_user_cds_config(tmp_path, monkeypatch):
    """Tests never read the developer's ~/.cdsapirc or CDSAPI_* variables."""
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "no-cdsapirc"))
    monkeypatch.delenv("CDSAPI_URL", raising=False)
    monkeypatch.delenv("CDSAPI_KEY", raising=False)


class Sleeps(list):
    """Records the downloader's waits between retries instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _settings(tmp_path: Path, **overrides) -> DownloadSettings:
    fast = dict(
        cache_dir=tmp_path / "cache",
        max_fields=10_000,
        retries=2,
        backoff_seconds=0.5,
        poll_max_seconds=0.01,
        http_tries=2,
        timeout_seconds=10,
    )
    return DownloadSettings(**{**fast, **overrides})


def _january(variables=("z500",), **options):
    return plan_requests(
        list(variables), datetime(2000, 1, 1), JAN_END, 6, PlanOptions(grid=(30.0, 30.0), **options)
    )


def _cache_names(settings: DownloadSettings) -> list[str]:
    return sorted(p.name for p in settings.cache_dir.iterdir()) if settings.cache_dir.exists() else []


def test_two_months_two_levels_download_ingest_and_open(tmp_path, cds, monkeypatch):
    cds.running_polls = 1  # accepted (POST) -> running -> successful
    monkeypatch.setenv("CDSAPI_URL", cds.url)
    monkeypatch.setenv("CDSAPI_KEY", cds.key)
    cfg = parse_config(
        cds_run_config(tmp_path / "work", TWO_LEVELS, backoff_seconds=0.01, poll_max_seconds=0.01)
    )
    paths = Paths(cfg.workdir)

    files = sources.source_files(cfg, paths)  # what run_pipeline does first

    assert [f.name[:15] for f in files] == [
        "era5-pl_2000-01",
        "era5-sl_2000-01",
        "era5-pl_2000-02",
        "era5-sl_2000-02",
    ]
    assert len(cds.executions) == 4 and sorted(cds.downloads) == sorted(f"{job}.nc" for job in cds.jobs)
    assert cds.peak_in_flight == 2  # the default concurrency, and no more
    assert all(job.status == "successful" and job.polls >= 2 for job in cds.jobs.values())
    assert sorted(p.name for p in paths.cds_cache.iterdir()) == sorted(
        [f.name for f in files] + [f.name + ".json" for f in files]
    )

    store = stages.ingest(cfg.ingest, cfg.cluster, files, paths.store, paths.climatology)
    ds = open_store(store)
    assert list(ds["channel"].values) == TWO_LEVELS
    times = request_times(
        {
            "year": ["2000"],
            "month": ["01", "02"],
            "day": [f"{d:02d}" for d in range(1, 32)],
            "time": ["00:00", "06:00", "12:00", "18:00"],
        }
    )
    np.testing.assert_array_equal(ds["time"].values, times)
    lat, lon = request_grid({"grid": [10.0, 10.0]})
    np.testing.assert_array_equal(ds["lat"].values, lat)
    for vid in ("z850", "t500", "t2m"):
        expected = field_values(get_variable(vid), times[[0, 130, -1]], lat, lon)
        np.testing.assert_array_equal(ds[DATA].sel(channel=vid).isel(time=[0, 130, -1]).values, expected)

    again = sources.download(cfg.ingest.cds, cfg.ingest.variables, paths.cds_cache)
    assert again == files and len(cds.executions) == 4  # a second run fetches nothing


def test_cli_ingest_run_fetches_from_the_cds_first(tmp_path, cds, monkeypatch, capsys):
    monkeypatch.setenv("CDSAPI_URL", cds.url)
    monkeypatch.setenv("CDSAPI_KEY", "wrong-key")
    config = tmp_path / "cds.yaml"
    config.write_text(
        yaml.safe_dump(cds_run_config(tmp_path / "work", ["z500", "t2m"], poll_max_seconds=0.01))
    )
    assert main(["ingest", "run", "--config", str(config)]) == 1
    assert "fourcast ingest run: CdsAuthError: the CDS refused the key (HTTP 401)" in capsys.readouterr().err
    assert [
        p.name for p in (tmp_path / "work").rglob("*") if p.is_file()
    ] == []  # no store, no partial download

    monkeypatch.setenv("CDSAPI_KEY", cds.key)
    assert main(["ingest", "run", "--config", str(config)]) == 0
    store = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert store == tmp_path / "work" / "store.zarr"
    assert list(open_store(store)["channel"].values) == ["z500", "t2m"] and len(cds.executions) == 4


def test_the_key_is_read_from_cdsapirc_and_never_shown(tmp_path, monkeypatch):
    rc = tmp_path / "cdsapirc"
    rc.write_text("url: https://cds.example.int/api\nkey: 1234abcd-secret\n")
    monkeypatch.setenv("CDSAPI_RC", str(rc))
    credentials = resolve_credentials()
    assert (credentials.url, credentials.key) == ("https://cds.example.int/api", "1234abcd-secret")
    assert "1234abcd-secret" not in repr(credentials) + str(credentials)


def test_a_missing_or_old_style_key_is_refused_before_anything_is_sent(tmp_path, monkeypatch, cds):
    with pytest.raises(CdsAuthError, match="no CDS key found: set CDSAPI_URL and CDSAPI_KEY"):
        download_plan(_january(), _settings(tmp_path))
    monkeypatch.setenv("CDSAPI_URL", cds.url)
    monkeypatch.setenv("CDSAPI_KEY", "12345:abcdef")
    with pytest.raises(CdsAuthError, match="old 'UID:KEY' form"):
        download_plan(_january(), _settings(tmp_path))
    assert cds.calls == []


def test_a_wrong_key_fails_with_an_auth_error_and_leaves_nothing(tmp_path, cds):
    with pytest.raises(CdsAuthError, match="refused the key \\(HTTP 401\\)"):
        download_plan(_january(), _settings(tmp_path), CdsCredentials(cds.url, "wrong-key"))
    assert cds.executions == [] and _cache_names(_settings(tmp_path)) == []


def test_a_failed_job_is_a_request_error_not_retried_and_leaves_nothing(tmp_path, cds):
    cds.fail_jobs = 1
    sleeps = Sleeps()
    with pytest.raises(CdsRequestError, match=r"(?s)job .* failed.*injected job failure"):
        download_plan(_january(), _settings(tmp_path), CdsCredentials(cds.url, cds.key), sleep=sleeps)
    assert len(cds.executions) == 1 and sleeps == []
    assert _cache_names(_settings(tmp_path)) == []


def test_transient_5xx_are_retried_with_backoff_then_succeed(tmp_path, cds):
    # the client tries each call twice (http_tries=2), so 3 failed executions need one retry of ours
    cds.transient_errors.update(execution=3, status=1, results=1, download=1)
    sleeps = Sleeps()
    settings = _settings(tmp_path)
    files = download_plan(_january(), settings, CdsCredentials(cds.url, cds.key), sleep=sleeps)
    assert sleeps == [0.5]
    assert all(count == 0 for count in cds.transient_errors.values())
    assert (
        len(cds.executions) == 1
        and files[0].stat().st_size == next(iter(cds.jobs.values())).file.stat().st_size
    )


def test_persistent_5xx_end_in_a_download_error_after_doubling_waits(tmp_path, cds):
    cds.transient_errors.update(execution=100)
    sleeps = Sleeps()
    with pytest.raises(DownloadError, match=r"(?s)failed 3 times; last error: .*503"):
        download_plan(_january(), _settings(tmp_path), CdsCredentials(cds.url, cds.key), sleep=sleeps)
    assert sleeps == [0.5, 1.0]
    assert cds.executions == [] and _cache_names(_settings(tmp_path)) == []


def test_a_truncated_transfer_resumes_with_a_range_request(tmp_path, cds):
    cds.truncate_downloads = 1
    files = download_plan(_january(["z500", "t2m"]), _settings(tmp_path), CdsCredentials(cds.url, cds.key))
    served = {job.file.name: job.file.read_bytes() for job in cds.jobs.values()}
    assert sorted(f.read_bytes() for f in files) == sorted(served.values())
    assert sum(1 for method, path in cds.calls if method == "GET" and path.startswith("/download/")) == 3


def test_oversized_requests_are_refused_by_the_planner_limit_or_by_the_cds(tmp_path, cds):
    credentials = CdsCredentials(cds.url, cds.key)
    plan = _january(["z500", "z850", "t500", "t850"])  # 4 x 124 = 496 fields
    with pytest.raises(RequestTooLargeError, match="request of 496 fields is over the limit of 400"):
        download_plan(plan, _settings(tmp_path, max_fields=400), credentials)
    assert cds.calls == []  # refused before sending
    cds.max_fields = 200  # the CDS's own cost limit is lower than ours
    sleeps = Sleeps()
    with pytest.raises(RequestTooLargeError, match=r"(?s)refused .* as too large.*cost limits exceeded"):
        download_plan(plan, _settings(tmp_path), credentials, sleep=sleeps)
    assert sleeps == [] and cds.executions == [] and _cache_names(_settings(tmp_path)) == []


def test_zip_download_format_is_cached_as_a_zip(tmp_path, cds):
    files = download_plan(
        _january(download_format="zip"), _settings(tmp_path), CdsCredentials(cds.url, cds.key)
    )
    assert files[0].suffix == ".zip" and files[0].read_bytes()[:4] == b"PK\x03\x04"


def test_a_killed_download_resumes_and_fetches_only_what_is_missing(tmp_path, cds):
    """Kill a downloading process mid-transfer; the re-run completes from the cache and leaves no partials."""
    plan = _january(["z500", "t2m"])
    settings = _settings(tmp_path, concurrency=1)
    cds.stall_downloads = 1  # the first transfer sends half its bytes, then hangs
    script = (
        "import sys; from pathlib import Path; from ingest.cds import PlanOptions, plan_requests\n"
        "from ingest.cds_download import CdsCredentials, DownloadSettings, download_plan\n"
        "from datetime import datetime\n"
        f"plan = plan_requests(['z500', 't2m'], datetime(2000, 1, 1), datetime(2000, 1, 31, 18), 6,"
        f" PlanOptions(grid=(30.0, 30.0)))\n"
        f"download_plan(plan, DownloadSettings(cache_dir=Path({str(settings.cache_dir)!r}), max_fields=10000,"
        f" concurrency=1, poll_max_seconds=0.01), CdsCredentials({cds.url!r}, {cds.key!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (
            list(settings.cache_dir.glob(".*.partial-*"))
            and ("GET", "/download/") in [(method, path[:10]) for method, path in cds.calls]
        ):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
        cds.release.set()
    assert any(".partial-" in name for name in _cache_names(settings))  # what a crash leaves behind
    submitted_before = len(cds.executions)

    files = download_plan(plan, settings, CdsCredentials(cds.url, cds.key))

    assert len(cds.executions) == submitted_before + len(plan)  # killed before any finished: all refetched
    assert _cache_names(settings) == sorted([f.name for f in files] + [f.name + ".json" for f in files])
    for path in files:
        record = json.loads(path.with_name(path.name + ".json").read_text())
        assert record["size"] == path.stat().st_size
    again = download_plan(plan, settings, CdsCredentials(cds.url, cds.key))
    assert again == files and len(cds.executions) == submitted_before + len(plan)


def test_the_key_never_appears_in_logs_output_or_the_cache(tmp_path, cds, caplog, capfd, monkeypatch):
    monkeypatch.setenv("CDSAPI_URL", cds.url)
    monkeypatch.setenv("CDSAPI_KEY", cds.key)
    caplog.set_level(logging.DEBUG)  # every logger, every level: cdsapi logs its key at debug
    settings = _settings(tmp_path)
    cds.truncate_downloads = 1
    download_plan(_january(["z500", "t2m"]), settings)
    with pytest.raises(CdsRequestError) as failed:
        cds.fail_jobs = 1
        download_plan(_january(["u500"]), settings)
    out, err = capfd.readouterr()
    # cdsapi logs its configuration, key included, at debug level: it went through the scrubber
    assert "cdsapi: CDSAPI" in caplog.text and "'key': '***'" in caplog.text
    for text in (caplog.text, out, err, str(failed.value)):
        assert cds.key not in text
    for path in settings.cache_dir.iterdir():
        assert cds.key.encode() not in path.read_bytes()


THREE_NOONS = dict(start=datetime(2000, 1, 1, 12), end=datetime(2000, 1, 3, 12), step_hours=24)


@pytest.mark.parametrize(
    ("wrong", "expected"),
    [
        # the case: hourly 07-15Z on one day instead of 12Z on three days
        (
            {"day": ["01"], "time": [f"{h:02d}:00" for h in range(7, 16)]},
            (
                r"times: expected 3 times 2000-01-01T12:00 \.\. 2000-01-03T12:00, "
                r"found 9 times 2000-01-01T07:00 \.\. 2000-01-01T15:00; "
                r"missing \[2000-01-02T12:00, 2000-01-03T12:00\], unexpected \[2000-01-01T07:00"
            ),
        ),
        ({"pressure_level": ["850"]}, r"variables: expected \['z500'\], found \['z850'\]"),
        (
            {"pressure_level": ["500", "850"]},
            r"pressure levels: expected \[500\] hPa, found \[500, 850\] hPa",
        ),
        ({"variable": ["temperature"]}, r"variables: expected \['z500'\], found \['t500'\]"),
        (
            {"grid": [10.0, 10.0]},
            (
                r"grid: expected 30° x 30°, global; "
                r"found 19 latitudes 90 \.\. -90 every 10°, 36 longitudes 0 \.\. 350"
            ),
        ),
    ],
)
def test_a_result_that_is_not_what_was_requested_is_refused_and_kept_out_of_the_cache(
    tmp_path, cds, wrong, expected
):
    plan = plan_requests(["z500"], options=PlanOptions(grid=(30.0, 30.0)), **THREE_NOONS)
    settings = _settings(tmp_path)
    cds.wrong_results.append(wrong)
    sleeps = Sleeps()
    with pytest.raises(CdsResultMismatchError, match=expected) as refused:
        download_plan(plan, settings, CdsCredentials(cds.url, cds.key), sleep=sleeps)
    message = str(refused.value)
    assert plan[0].filename in message and "reanalysis-era5-pressure-levels" in message
    assert len(cds.executions) == 1 and sleeps == []  # refused as it is, not retried
    rejected = settings.cache_dir / "rejected"
    assert _cache_names(settings) == ["rejected"]  # nothing in the cache that counts as fetched
    assert sorted(p.name for p in rejected.iterdir()) == [plan[0].filename, plan[0].filename + ".json"]
    assert json.loads((rejected / (plan[0].filename + ".json")).read_text())["mismatch"] in message
    assert f"set aside as {rejected / plan[0].filename}, not used" in message

    files = download_plan(plan, settings, CdsCredentials(cds.url, cds.key))  # the CDS answers right this time
    assert len(cds.executions) == 2 and files == [settings.cache_dir / plan[0].filename]


def test_a_wrong_result_cached_before_results_were_checked_is_rejected_and_fetched_again(tmp_path, cds):
    credentials = CdsCredentials(cds.url, cds.key)
    settings = _settings(tmp_path)
    noons = plan_requests(["z500"], options=PlanOptions(grid=(30.0, 30.0)), **THREE_NOONS)
    (january,) = download_plan(_january(), settings, credentials)
    # an older fourcast cached january's file under the three-noons request, with an unchecked sidecar
    wrong = settings.cache_dir / noons[0].filename
    wrong.write_bytes(january.read_bytes())
    record = {"key": noons[0].key, "size": wrong.stat().st_size}
    wrong.with_name(wrong.name + ".json").write_text(json.dumps(record))

    (fetched,) = download_plan(noons, settings, credentials)

    assert fetched == wrong and len(cds.executions) == 2
    assert (settings.cache_dir / "rejected" / wrong.name).read_bytes() == january.read_bytes()
    assert json.loads(wrong.with_name(wrong.name + ".json").read_text())["checked"] is True


def test_cli_ingest_run_refuses_a_wrong_cds_result_and_writes_no_store(tmp_path, cds, monkeypatch, capsys):
    monkeypatch.setenv("CDSAPI_URL", cds.url)
    monkeypatch.setenv("CDSAPI_KEY", cds.key)
    cds.wrong_results.append({"time": ["12:00"]})
    config = tmp_path / "cds.yaml"
    config.write_text(
        yaml.safe_dump(cds_run_config(tmp_path / "work", ["z500"], poll_max_seconds=0.01, concurrency=1))
    )
    assert main(["ingest", "run", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fourcast ingest run: CdsResultMismatchError: ")
    assert "times: expected 124 times 2000-01-01T00:00 .. 2000-01-31T18:00, found 31 times" in err[0]
    assert not (tmp_path / "work" / "store.zarr").exists()


def test_an_area_across_greenwich_is_accepted_and_another_area_refused(tmp_path, cds):
    credentials = CdsCredentials(cds.url, cds.key)
    europe = plan_requests(
        ["t2m"], options=PlanOptions(grid=(10.0, 10.0), area=(60.0, -10.0, 30.0, 20.0)), **THREE_NOONS
    )
    (fetched,) = download_plan(europe, _settings(tmp_path / "good"), credentials)
    assert fetched.name == europe[0].filename
    cds.wrong_results.append({"area": [60.0, 30.0, 30.0, 60.0]})
    with pytest.raises(
        CdsResultMismatchError,
        match=r"grid: expected 10° x 10°, area N 60 W -10 S 30 E 20; found 4 "
        "latitudes 60 .. 30 every 10°, 4 longitudes 30 .. 60",
    ):
        download_plan(europe, _settings(tmp_path / "bad"), credentials)
