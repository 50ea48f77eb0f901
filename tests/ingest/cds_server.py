"""A local Climate Data Store for tests: the REST protocol of the new CDS (2024), on 127.0.0.1.

It speaks what the unmodified ``cdsapi`` client (through ``ecmwf-datastores-client``) sends:

=======================================================  =============================================
``GET  /api/catalogue/v1/messages``                      service messages (none)
``GET  /api/retrieve/v1/processes/{dataset}``            process description (inputs it accepts)
``POST /api/retrieve/v1/processes/{dataset}/execution``  ``{"inputs": request}`` → job, 201, ``accepted``
``GET  /api/retrieve/v1/jobs/{id}``                      status: accepted → running → successful or failed
``GET  /api/retrieve/v1/jobs/{id}/results``              asset ``href``, ``file:size``; 400 if the job failed
``HEAD|GET /download/{file}``                            the file, with ``Range`` support
=======================================================  =============================================

Every ``/api/retrieve`` call needs the ``PRIVATE-TOKEN`` header to equal the server's key (401
otherwise). Jobs deliver real netCDF files in the new-CDS layout (``valid_time``,
``pressure_level``, ``latitude``, ``longitude``, scalar ``number``, string ``expver``, float32 +
zlib) holding exactly the requested variables, levels, dates, times, grid and area, filled by
:func:`field_values` — smooth, deterministic fields tests can compare against.

Faults are injected by setting attributes of :class:`CdsServer` (see its docstring).
"""

from __future__ import annotations

import calendar
import hashlib
import itertools
import json
import tempfile
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import xarray as xr
import yaml

from ingest.cds_layout import basic_field_attrs, cds_dataset, write_cds_file
from ingest.lexicon import LEXICON, PRESSURE_LEVELS_DATASET, SINGLE_LEVELS_DATASET, Variable
from pipeline.cli import DEFAULT_CONFIG

GRAVITY = 9.80665
_NAMES = {
    dataset: sorted({v.cds_name for v in LEXICON.values() if v.dataset == dataset})
    for dataset in (PRESSURE_LEVELS_DATASET, SINGLE_LEVELS_DATASET)
}
_LEVELS = sorted({v.level for v in LEXICON.values() if v.level is not None})
_BY_NAME = {(v.cds_name, v.level): v for v in LEXICON.values()}
_REQUIRED = ("product_type", "variable", "year", "month", "day", "time", "data_format")
_OPTIONAL = ("pressure_level", "download_format", "grid", "area")
#: Mean and amplitude of the single-level test fields per ERA5 short name (magnitudes as in ERA5).
_SINGLE_LEVEL_CLIMATE = {
    "u10": (0.0, 6.0),
    "v10": (0.0, 5.0),
    "t2m": (282.0, 25.0),
    "msl": (101_300.0, 1500.0),
    "sp": (97_000.0, 3000.0),
    "tcwv": (22.0, 15.0),
}


def _mean_and_amplitude(variable: Variable) -> tuple[float, float]:
    """ERA5-like magnitude of a variable; pressure levels via a 7.4 km scale height."""
    if variable.level is None:
        return _SINGLE_LEVEL_CLIMATE[variable.short_name]
    height = 7400.0 * np.log(1013.25 / variable.level)
    humidity = 0.012 * (variable.level / 1000.0) ** 3
    return {
        "z": (GRAVITY * height, GRAVITY * 150.0),
        "t": (288.0 - 0.0065 * min(height, 11_000.0), 12.0),
        "u": (8.0, 15.0),
        "v": (0.0, 10.0),
        "r": (55.0, 30.0),
        "q": (humidity, 0.4 * humidity),
    }[variable.short_name]


def field_values(variable: Variable, times: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The field the server delivers for one variable: smooth in space and time, deterministic.

    Parameters
    ----------
    variable : Variable
        Lexicon entry (its short name and level pick the magnitude).
    times : numpy.ndarray of datetime64, shape (ntime,)
    lat, lon : numpy.ndarray, shapes (nlat,), (nlon,)
        Degrees.

    Returns
    -------
    numpy.ndarray, shape (ntime, nlat, nlon), float32
    """
    mean, amplitude = _mean_and_amplitude(variable)
    hours = (times - np.datetime64("2000-01-01", "ns")) / np.timedelta64(1, "h")
    phase = 2 * np.pi * hours[:, None, None] / 240.0 + 0.01 * (variable.level or 0)
    lat_rad, lon_rad = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    pattern = np.cos(lat_rad) * np.sin(3 * lon_rad + phase) + 0.3 * np.sin(2 * lat_rad) * np.cos(
        lon_rad - phase
    )
    return (mean + amplitude * pattern).astype(np.float32)


def cds_run_config(workdir: Path, variables: list[str], **cds) -> dict:
    """The demo run config turned to ``ingest.source: cds`` for Jan–Feb 2000 on a 10° grid.

    Statistics on January; train, validation and forecast dates fitted inside the two months.
    ``cds`` entries override the ``ingest.cds`` section.
    """
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    del raw["synthetic"]
    raw["workdir"] = str(workdir)
    raw["cluster"].update(n_workers=1)
    raw["ingest"].update(
        variables=list(variables),
        source="cds",
        shard_steps=40,
        statistics={"start": "2000-01-01T00:00", "end": "2000-01-31T18:00"},
        cds={"period": {"start": "2000-01-01T00:00", "end": "2000-02-29T18:00"}, "grid": [10.0, 10.0], **cds},
    )
    raw["train"].update(
        train={"start": "2000-01-01T00:00", "end": "2000-02-10T18:00"},
        validation={"start": "2000-02-11T00:00", "end": "2000-02-20T18:00"},
    )
    raw["forecast"].update(inits={"start": "2000-02-21T00:00", "end": "2000-02-24T00:00"}, lead_hours=24)
    return raw


@dataclass
class Job:
    """One submitted request."""

    id: str
    dataset: str
    inputs: dict
    fail: bool
    created: str
    polls: int = 0
    file: Path | None = None
    status: str = "accepted"
    done: bool = False


@dataclass
class CdsServer:
    """The local CDS. Start it with :meth:`start` (or as a context manager).

    Attributes set by tests to inject faults (each counts down as it fires):

    ``fail_jobs``
        the next n jobs end ``failed`` (their results answer 400 with a traceback);
    ``transient_errors``
        ``{"execution"|"status"|"results"|"download": n}``: answer the next n such calls 503;
    ``truncate_downloads``
        cut the next n file transfers in half (the client then resumes with ``Range``);
    ``stall_downloads``
        send half of the next n files, then hold the connection until ``release`` is set
        (a test kills the downloading process meanwhile);
    ``max_fields``
        refuse executions of more fields with the CDS's "cost limits exceeded" (400);
    ``running_polls``
        status polls that answer ``running`` before a job ends (the client sleeps 1 s after
        the first one, so tests keep this 0 except where the state sequence is the point);
    ``wrong_results``
        a list of request entries (``{"day": ["01"], "time": ["07:00", ...]}``), one per job,
        consumed in order: the next jobs succeed but their files hold the request with those
        entries replaced (other times, levels, variables or grid than were asked for).

    Records: ``executions`` (dataset, inputs) of every accepted job, ``downloads`` (file names
    fully served), ``calls`` (method, path) of every call, ``peak_in_flight`` (most jobs at once
    between submission and the end of their download or failure).
    """

    key: str = "0123abcd-4567-89ef-0123-456789abcdef"
    max_fields: int = 100_000
    running_polls: int = 0
    fail_jobs: int = 0
    truncate_downloads: int = 0
    stall_downloads: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    transient_errors: dict = field(default_factory=dict)
    wrong_results: list = field(default_factory=list)
    executions: list = field(default_factory=list)
    downloads: list = field(default_factory=list)
    calls: list = field(default_factory=list)
    jobs: dict = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._files = Path(tempfile.mkdtemp(prefix="cds-server-"))
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        """``http://127.0.0.1:PORT``."""
        port = self._httpd.server_address[1]
        return f"http://127.0.0.1:{port}"

    @property
    def url(self) -> str:
        """The API root to give the client (``CDSAPI_URL``)."""
        return f"{self.host}/api"

    def start(self) -> CdsServer:
        server = self

        class Handler(_Handler):
            cds = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="cds-server", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for path in self._files.glob("*"):
            path.unlink()
        self._files.rmdir()

    def __enter__(self) -> CdsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def take_fault(self, name: str) -> bool:
        """Consume one injected fault of ``name`` (an attribute or a ``transient_errors`` key)."""
        with self._lock:
            if name in ("execution", "status", "results", "download"):
                if self.transient_errors.get(name, 0) > 0:
                    self.transient_errors[name] -= 1
                    return True
                return False
            if getattr(self, name) > 0:
                setattr(self, name, getattr(self, name) - 1)
                return True
            return False

    # -- the CDS's side of a job ------------------------------------------------------------

    def submit(self, dataset: str, inputs: dict) -> Job:
        """Validate and run a request (the file is made at once; the status lags behind)."""
        problem = validate_request(dataset, inputs)
        if problem:
            raise _Refusal(400, "invalid request", problem)
        fields = request_field_count(inputs)
        if fields > self.max_fields:
            raise _Refusal(
                400,
                "cost limits exceeded",
                f"Your request is too large, please reduce your selection. "
                f"Request too large. Cost {fields} over {self.max_fields} limit.",
            )
        job = Job(uuid.uuid4().hex, dataset, inputs, self.take_fault("fail_jobs"), _now())
        with self._lock:
            delivered = {**inputs, **(self.wrong_results.pop(0) if self.wrong_results else {})}
        if not job.fail:
            job.file = write_result(dataset, delivered, self._files / job.id)  # under NETCDF_LOCK
        with self._lock:
            self.jobs[job.id] = job
            self.executions.append((dataset, inputs))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return job

    def finish(self, job: Job) -> None:
        """A job's result was delivered, or its failure reported: it no longer counts as in flight."""
        with self._lock:
            if not job.done:
                job.done = True
                self.in_flight -= 1

    def poll(self, job: Job) -> str:
        with self._lock:
            job.polls += 1
            if job.status in ("accepted", "running"):
                job.status = (
                    "running" if job.polls <= self.running_polls else ("failed" if job.fail else "successful")
                )
            return job.status


class _Refusal(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def validate_request(dataset: str, inputs: dict) -> str | None:
    """What is wrong with a request, as the CDS would say it, or ``None``."""
    if dataset not in _NAMES:
        return f"unknown dataset {dataset!r}"
    missing = [key for key in _REQUIRED if key not in inputs]
    unknown = [key for key in inputs if key not in _REQUIRED + _OPTIONAL]
    if missing or unknown:
        return f"missing keys {missing}, unknown keys {unknown}"
    bad_names = [name for name in _listed(inputs["variable"]) if name not in _NAMES[dataset]]
    if bad_names:
        return f"variable {bad_names} not in {dataset}"
    levels = _listed(inputs.get("pressure_level", []))
    if (dataset == PRESSURE_LEVELS_DATASET) != bool(levels):
        return "pressure_level is required for pressure-level data and only there"
    if any(int(level) not in _LEVELS for level in levels):
        return f"pressure_level {levels} not among {_LEVELS}"
    if inputs["data_format"] != "netcdf":
        return f"this test server delivers data_format 'netcdf' only, not {inputs['data_format']!r}"
    if any(len(t) != 5 or t[2] != ":" for t in _listed(inputs["time"])):
        return f"time must be 'HH:MM' strings, found {inputs['time']}"
    return None


def request_field_count(inputs: dict) -> int:
    """Fields of a request: variables × levels × valid dates × times."""
    return (
        len(_listed(inputs["variable"]))
        * max(len(_listed(inputs.get("pressure_level", []))), 1)
        * len(_dates(inputs))
        * len(_listed(inputs["time"]))
    )


def request_grid(inputs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes (north to south) and longitudes of a request's ``grid`` and ``area``."""
    dlat, dlon = (float(step) for step in inputs.get("grid", (0.25, 0.25)))
    lat = np.round(90.0 - dlat * np.arange(int(round(180.0 / dlat)) + 1), 6)
    lon = np.round(dlon * np.arange(int(round(360.0 / dlon))), 6)
    if "area" in inputs:
        north, west, south, east = (float(edge) for edge in inputs["area"])
        lat = lat[(lat <= north) & (lat >= south)]
        lon = np.round(west + dlon * np.arange(int(np.floor((east - west) / dlon + 1e-9)) + 1), 6)
    return lat, lon


def request_times(inputs: dict) -> np.ndarray:
    """Valid times (datetime64[ns]) of a request, sorted."""
    stamps = [
        np.datetime64(f"{day}T{time}", "ns") for day in _dates(inputs) for time in _listed(inputs["time"])
    ]
    return np.array(sorted(stamps), dtype="datetime64[ns]")


def write_result(dataset: str, inputs: dict, stem: Path) -> Path:
    """Write the request's netCDF file (zipped if asked) next to ``stem``; returns its path."""
    ds = _result_dataset(dataset, inputs)
    nc = stem.with_suffix(".nc")
    write_cds_file(ds, nc)
    if inputs.get("download_format", "unarchived") != "zip":
        return nc
    archive = stem.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(nc, "data_stream-oper_stepType-instant.nc")
    nc.unlink()
    return archive


def _result_dataset(dataset: str, inputs: dict) -> xr.Dataset:
    times = request_times(inputs)
    lat, lon = request_grid(inputs)
    levels = [int(level) for level in _listed(inputs.get("pressure_level", []))] or [None]
    variables = [_BY_NAME[(name, level)] for name in _listed(inputs["variable"]) for level in levels]
    fields = {v.id: field_values(v, times, lat, lon) for v in variables}
    attrs = {
        "GRIB_centre": "ecmf",
        "Conventions": "CF-1.7",
        "institution": "European Centre for Medium-Range Weather Forecasts",
        "history": "fourcast tests: local CDS server (smooth deterministic fields, not ERA5)",
    }
    return cds_dataset(times, lat, lon, fields, field_attrs=_field_attrs, attrs=attrs)


def _field_attrs(variable: Variable, lat: np.ndarray, lon: np.ndarray) -> dict[str, object]:
    return {**basic_field_attrs(variable, lat, lon), "GRIB_gridType": "regular_ll", "GRIB_dataType": "an"}


def _listed(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _dates(inputs: dict) -> list[str]:
    out = []
    for year, month, day in itertools.product(*(_listed(inputs[k]) for k in ("year", "month", "day"))):
        year, month, day = int(year), int(month), int(day)
        if 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]:
            out.append(f"{year:04d}-{month:02d}-{day:02d}")
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class _Handler(BaseHTTPRequestHandler):
    cds: CdsServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _json(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _problem(self, status: int, title: str, detail: str = "", **extra) -> None:
        self._json(
            status,
            {
                "type": "about:blank",
                "title": title,
                "status": status,
                "detail": detail,
                "instance": self.path,
                **extra,
            },
        )

    def _path(self) -> list[str]:
        return [part for part in urlsplit(self.path).path.split("/") if part]

    def _authorised(self) -> bool:
        if self.headers.get("PRIVATE-TOKEN") == self.cds.key:
            return True
        self._problem(
            401, "Authentication failed", "Operation not allowed: the API key is missing or invalid"
        )
        return False

    def _record(self) -> list[str]:
        parts = self._path()
        with self.cds._lock:
            self.cds.calls.append((self.command, "/" + "/".join(parts)))
        return parts

    # -- verbs ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        parts = self._record()
        if parts[:3] == ["api", "catalogue", "v1"] and parts[3:] == ["messages"]:
            return self._json(200, {"messages": []})
        if parts[:1] == ["download"] and len(parts) == 2:
            return self._send_file(parts[1], body=True)
        if parts[:3] != ["api", "retrieve", "v1"]:
            return self._problem(404, "not found")
        if not self._authorised():
            return None
        rest = parts[3:]
        if len(rest) == 2 and rest[0] == "processes":
            return self._process(rest[1])
        if len(rest) in (2, 3) and rest[0] == "jobs":
            job = self.cds.jobs.get(rest[1])
            if job is None:
                return self._problem(404, "job not found", f"job {rest[1]} does not exist")
            return self._job_status(job) if len(rest) == 2 else self._results(job)
        return self._problem(404, "not found")

    def do_HEAD(self) -> None:
        parts = self._record()
        if parts[:1] == ["download"] and len(parts) == 2:
            return self._send_file(parts[1], body=False)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        parts = self._record()
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length) if length else b""
        if parts[:3] != ["api", "retrieve", "v1"]:
            return self._problem(404, "not found")
        if not self._authorised():
            return None
        rest = parts[3:]
        if len(rest) != 3 or rest[0] != "processes" or rest[2] != "execution":
            return self._problem(404, "not found")
        if self.cds.take_fault("execution"):
            return self._problem(503, "Service Unavailable", "injected transient failure")
        try:
            inputs = json.loads(body)["inputs"]
            job = self.cds.submit(rest[1], inputs)
        except _Refusal as refusal:
            return self._problem(refusal.status, refusal.title, refusal.detail)
        except (ValueError, KeyError, TypeError) as err:
            return self._problem(400, "invalid request", f"body must be JSON with 'inputs': {err}")
        return self._json(201, self._job_body(job))

    def do_DELETE(self) -> None:
        parts = self._record()
        if parts[:4] == ["api", "retrieve", "v1", "jobs"] and len(parts) == 5 and self._authorised():
            job = self.cds.jobs.get(parts[4])
            if job is None:
                return self._problem(404, "job not found")
            job.status = "dismissed"
            return self._json(200, self._job_body(job))
        return None

    # -- endpoints --------------------------------------------------------------------------

    def _process(self, dataset: str) -> None:
        if dataset not in _NAMES:
            return self._problem(404, "process not found", f"process {dataset} does not exist")
        inputs = {
            "product_type": {"schema": {"type": "array", "items": {"enum": ["reanalysis"]}}},
            "variable": {"schema": {"type": "array", "items": {"enum": _NAMES[dataset]}}},
            "year": {"schema": {"type": "array"}},
            "month": {"schema": {"type": "array"}},
            "day": {"schema": {"type": "array"}},
            "time": {"schema": {"type": "array"}},
            "data_format": {"schema": {"type": "string", "enum": ["grib", "netcdf"]}},
            "download_format": {"schema": {"type": "string", "enum": ["unarchived", "zip"]}},
        }
        if dataset == PRESSURE_LEVELS_DATASET:
            inputs["pressure_level"] = {
                "schema": {"type": "array", "items": {"enum": [str(l) for l in _LEVELS]}}
            }
        base = f"{self.cds.url}/retrieve/v1/processes/{dataset}"
        return self._json(
            200,
            {
                "id": dataset,
                "title": dataset,
                "version": "1.0.0",
                "jobControlOptions": ["async-execute"],
                "outputTransmission": ["reference"],
                "inputs": inputs,
                "outputs": {"asset": {"schema": {"type": "object"}}},
                "links": [
                    {"href": base, "rel": "self", "type": "application/json"},
                    {"href": f"{base}/execution", "rel": "execute", "type": "application/json"},
                ],
                "metadata": {"datasetMetadata": {"messages": []}},
            },
        )

    def _job_body(self, job: Job) -> dict:
        monitor = f"{self.cds.url}/retrieve/v1/jobs/{job.id}"
        links = [
            {"href": monitor, "rel": "self", "type": "application/json"},
            {"href": monitor, "rel": "monitor", "type": "application/json", "title": "job status info"},
        ]
        if job.status in ("successful", "failed"):
            links.append({"href": f"{monitor}/results", "rel": "results", "type": "application/json"})
        return {
            "processID": job.dataset,
            "type": "process",
            "jobID": job.id,
            "status": job.status,
            "created": job.created,
            "updated": _now(),
            "links": links,
            "metadata": {"log": [], "request": {"ids": job.inputs}},
        }

    def _job_status(self, job: Job) -> None:
        if self.cds.take_fault("status"):
            return self._problem(503, "Service Unavailable", "injected transient failure")
        self.cds.poll(job)
        return self._json(200, self._job_body(job))

    def _results(self, job: Job) -> None:
        if self.cds.take_fault("results"):
            return self._problem(503, "Service Unavailable", "injected transient failure")
        if job.status == "failed":
            self.cds.finish(job)
            return self._problem(
                400, "The job has failed.", "", traceback="MARS returned no data: injected job failure"
            )
        if job.status != "successful":
            return self._problem(404, "results not ready", f"job {job.id} is {job.status}")
        size = job.file.stat().st_size
        kind = "application/zip" if job.file.suffix == ".zip" else "application/netcdf"
        return self._json(
            200,
            {
                "asset": {
                    "value": {
                        "type": kind,
                        "href": f"{self.cds.host}/download/{job.file.name}",
                        "file:size": size,
                        "file:checksum": hashlib.md5(job.file.read_bytes()).hexdigest(),
                        "file:local_path": str(job.file),
                    }
                }
            },
        )

    def _send_file(self, name: str, body: bool) -> None:
        path = self.cds._files / name
        if "/" in name or not path.is_file():
            return self._problem(404, "not found")
        if body and self.cds.take_fault("download"):
            return self._problem(503, "Service Unavailable", "injected transient failure")
        data = path.read_bytes()
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged.endswith("-"):
            start = int(ranged[6:-1])
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return None
        truncate = self.cds.take_fault("truncate_downloads")
        stall = not truncate and self.cds.take_fault("stall_downloads")
        if truncate or stall:
            self.wfile.write(data[start : start + (len(data) - start) // 2])
            self.wfile.flush()
            if stall:
                self.cds.release.wait(timeout=60)
            self.close_connection = True
            return None
        self.wfile.write(data[start:])
        with self.cds._lock:
            self.cds.downloads.append(name)
        job = self.cds.jobs.get(Path(name).stem)
        if job is not None:
            self.cds.finish(job)
        return None
