"""Fetch planned CDS requests with the unmodified ``cdsapi`` client, cached, retried and resumable.

Each request of a plan (:mod:`ingest.cds`) is fetched at most once: its result is cached under
``cache_dir`` by a hash of the dataset and request. The client downloads into a temporary name;
only a file whose size matches what the CDS announced (the client checks it, and so does the
sidecar written beside it) is renamed into place, so a crash at any moment leaves either a
finished file or nothing, and a re-run fetches only what is missing. Requests run a few at a
time (the CDS queues each user's requests and serves only a few at once), transient failures
(5xx, dropped connections, truncated transfers) are retried with exponential backoff, and
refusals (bad request, job failed, over the cost limit, wrong key) stop with a typed error.

Every download is also checked against its request (:mod:`ingest.cds_check`: variables,
pressure levels, times, grid and area) before it is renamed into the cache. A result that
differs is moved to ``cache_dir/rejected/`` (with a ``.json`` saying what differs), never used,
and stops the run with :class:`~ingest.errors.CdsResultMismatchError`; a re-run asks again.
The sidecar records that the check passed; a file cached without that record (by an older
fourcast) is checked when it is next used, and set aside and fetched again if it differs.

The key comes from ``CDSAPI_URL``/``CDSAPI_KEY`` or ``~/.cdsapirc`` (``$CDSAPI_RC``) exactly as
``cdsapi`` reads them. It is handed to the client only: it is scrubbed from everything the
client logs through this module, and never written to the cache, configs or tracking.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import cdsapi
import cdsapi.api
import requests
from ecmwf.datastores.processing import DownloadError as ClientSizeError
from ecmwf.datastores.processing import ProcessingFailedError

from ingest.atomic import atomic_output, discard
from ingest.cds import CdsRequest, check_request
from ingest.cds_check import check_result
from ingest.errors import (
    CdsAuthError,
    CdsRequestError,
    CdsResultMismatchError,
    DownloadError,
    RequestTooLargeError,
    SourceLayoutError,
)

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying: the CDS or a proxy is busy or briefly down.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: First bytes of each format, to refuse an error page saved under a data file's name.
_MAGIC = {
    ".nc": (b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02"),
    ".grib": (b"GRIB",),
    ".zip": (b"PK\x03\x04",),
}
_SIDECAR = ".json"
#: Folder of the cache where results that do not match their request are set aside.
REJECTED = "rejected"
_SECRET_MASK = "***"


@dataclass(frozen=True)
class DownloadSettings:
    """How requests are fetched.

    Attributes
    ----------
    cache_dir : pathlib.Path
        Where results are kept, one file (plus a ``.json`` sidecar) per request.
    max_fields : int
        Requests over this many fields are refused before anything is sent.
    concurrency : int
        Requests in flight at once.
    retries : int
        Further attempts of a request after a transient failure.
    backoff_seconds : float
        Wait before the first retry; doubled each retry, up to ``backoff_max_seconds``.
    backoff_max_seconds : float
        Longest wait between retries.
    poll_max_seconds : float
        Longest wait between the client's job-status polls, also its wait between its own
        HTTP retries (cdsapi's ``sleep_max``).
    http_tries : int
        Tries the client makes of one HTTP call before giving up (cdsapi's ``retry_max``).
    timeout_seconds : float
        Socket timeout of each HTTP call.
    """

    cache_dir: Path
    max_fields: int
    concurrency: int = 2
    retries: int = 3
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 300.0
    poll_max_seconds: float = 120.0
    http_tries: int = 5
    timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.retries < 0 or self.http_tries < 1:
            raise CdsRequestError(
                f"need concurrency >= 1, retries >= 0 and http_tries >= 1; found "
                f"{self.concurrency}, {self.retries}, {self.http_tries}"
            )
        if (
            min(self.backoff_seconds, self.backoff_max_seconds, self.poll_max_seconds, self.timeout_seconds)
            < 0
        ):
            raise CdsRequestError("wait times and timeouts must be >= 0")


@dataclass(frozen=True)
class CdsCredentials:
    """CDS API URL and personal access token; the token never shows in ``repr``."""

    url: str
    key: str

    def __repr__(self) -> str:
        return f"CdsCredentials(url={self.url!r}, key={_SECRET_MASK!r})"

    __str__ = __repr__


def resolve_credentials(url: str | None = None, key: str | None = None) -> CdsCredentials:
    """URL and key from the arguments, else ``CDSAPI_URL``/``CDSAPI_KEY``, else ``~/.cdsapirc``.

    Raises
    ------
    CdsAuthError
        If no complete configuration is found, or the key has the ``UID:KEY`` form of the CDS
        that was shut down in September 2024 (``cdsapi`` would then talk the old protocol).
    """
    try:
        url, key, _ = cdsapi.api.get_url_key_verify(url, key, None)
    except Exception as err:  # noqa: BLE001 - cdsapi raises a bare Exception for a missing configuration
        raise CdsAuthError(
            "no CDS key found: set CDSAPI_URL and CDSAPI_KEY, or write url: and key: lines to "
            f"~/.cdsapirc (or the file named by $CDSAPI_RC); cdsapi said: {err}"
        ) from None
    if ":" in key:
        raise CdsAuthError(
            "the CDS key has the old 'UID:KEY' form of the CDS retired in September 2024; use the personal "
            "access token from your profile page on the new CDS (a key without ':')"
        )
    return CdsCredentials(url.rstrip("/"), key)


def cached_path(item: CdsRequest, cache_dir: Path) -> Path | None:
    """The finished download of ``item`` in ``cache_dir``, or ``None`` if it is not there intact.

    A download counts as finished when its sidecar names the same request and size as the
    file on disk; anything else — including temporary files a killed run left behind — is
    removed, to be fetched again. A finished file whose sidecar does not record that it was
    checked against its request (cached by an older fourcast) is checked now; if it differs,
    it is set aside in ``rejected/`` and fetched again. (One process at a time per cache
    directory.)
    """
    path = Path(cache_dir) / item.filename
    sidecar = path.with_name(path.name + _SIDECAR)
    try:
        record = json.loads(sidecar.read_text())
        intact = record.get("key") == item.key and record.get("size") == path.stat().st_size
    except (OSError, ValueError, AttributeError):
        intact = False
    if intact and record.get("checked") is not True:
        intact = _recheck(path, item, record)
    if intact:
        return path
    leftovers = [
        *path.parent.glob(f".{path.name}.partial-*"),
        *path.parent.glob(f".{sidecar.name}.partial-*"),
    ]
    for stale in (path, sidecar, *leftovers):
        discard(stale)
    return None


def download_plan(
    plan: Sequence[CdsRequest],
    settings: DownloadSettings,
    credentials: CdsCredentials | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Path]:
    """Fetch every request of ``plan`` not already cached; returns their files in plan order.

    Parameters
    ----------
    plan : sequence of CdsRequest
        From :func:`ingest.cds.plan_requests`.
    settings : DownloadSettings
        Cache, limits, concurrency and retries.
    credentials : CdsCredentials, optional
        Default: :func:`resolve_credentials` (only looked up when something must be fetched).
    sleep : callable
        Waits between retries (tests pass a recorder).

    Returns
    -------
    list of pathlib.Path
        One finished file per request.

    Raises
    ------
    RequestTooLargeError
        If a request is over ``settings.max_fields`` (nothing is sent) or the CDS says so.
    CdsAuthError
        If no key is configured or the CDS refuses it.
    CdsRequestError
        If the CDS refuses a request or its job fails.
    DownloadError
        If a request still fails after ``settings.retries`` retries.
    """
    for item in plan:
        check_request(item.request, settings.max_fields)
    cache_dir = Path(settings.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {item.key: cached_path(item, cache_dir) for item in plan}
    missing = list({item.key: item for item in plan if paths[item.key] is None}.values())
    log.info(
        "CDS plan: %d requests, %d cached, %d to fetch", len(plan), len(plan) - len(missing), len(missing)
    )
    if missing:
        credentials = credentials or resolve_credentials()
        fetched = _fetch_all(missing, settings, credentials, sleep)
        paths.update(fetched)
    return [paths[item.key] for item in plan]


def _fetch_all(
    items: list[CdsRequest],
    settings: DownloadSettings,
    credentials: CdsCredentials,
    sleep: Callable[[float], None],
) -> dict[str, Path]:
    """Fetch ``items`` ``settings.concurrency`` at a time; on the first error, wait for those in
    flight (they finish into the cache), start no more, and raise it."""
    with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="cds") as pool:
        futures = {pool.submit(fetch_request, item, settings, credentials, sleep): item for item in items}
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
    ran = [future for future in futures if not future.cancelled()]
    failures = [future.exception() for future in ran if future.exception() is not None]
    if failures:
        raise failures[0]
    return {futures[future].key: future.result() for future in ran}


def fetch_request(
    item: CdsRequest,
    settings: DownloadSettings,
    credentials: CdsCredentials,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Fetch one request into the cache, retrying transient failures; returns the cached file.

    Raises
    ------
    CdsAuthError, CdsRequestError, RequestTooLargeError
        On a refusal (not retried).
    DownloadError
        When every attempt failed transiently.
    """
    target = Path(settings.cache_dir) / item.filename
    wait_seconds = settings.backoff_seconds
    for retry in range(1, settings.retries + 1):
        try:
            return _fetch_once(item, target, settings, credentials)
        except _TransientFailure as failure:
            log.warning(
                "%s: transient failure (%s); retry %d of %d in %.3g s",
                item.filename,
                failure,
                retry,
                settings.retries,
                wait_seconds,
            )
        sleep(wait_seconds)
        wait_seconds = min(2 * wait_seconds, settings.backoff_max_seconds)
    try:
        return _fetch_once(item, target, settings, credentials)
    except _TransientFailure as failure:
        raise DownloadError(
            f"{item.filename} ({item.dataset}, {item.month}) failed {settings.retries + 1} times; "
            f"last error: {failure}"
        ) from failure.__cause__


class _TransientFailure(Exception):
    """A failure worth retrying (kept private: callers see :class:`DownloadError`)."""


def _fetch_once(
    item: CdsRequest, target: Path, settings: DownloadSettings, credentials: CdsCredentials
) -> Path:
    """One attempt: retrieve into a temporary sibling, check it, write the sidecar, rename."""
    secret = credentials.key
    try:
        with atomic_output(target) as tmp:
            client = _client(settings, credentials)
            log.info("%s: requesting %s (%d fields)", item.filename, item.dataset, item.fields)
            client.retrieve(item.dataset, dict(item.request), str(tmp))
            size = _check_download(tmp, item)
            _check_content(tmp, target, item)
            _write_sidecar(target, item, size)
        log.info("%s: done, %d bytes", item.filename, size)
        return target
    except requests.HTTPError as err:
        raise _classify_http(err, item, secret) from err
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        ClientSizeError,
    ) as err:
        raise _TransientFailure(_scrub(f"{type(err).__name__}: {err}", secret)) from err
    except ProcessingFailedError as err:
        raise CdsRequestError(
            f"the CDS job for {item.filename} ({item.dataset}, {item.month}) failed: "
            f"{_scrub(str(err), secret)}"
        ) from err


def _client(settings: DownloadSettings, credentials: CdsCredentials) -> cdsapi.Client:
    """A fresh, quiet ``cdsapi.Client`` whose messages go to this module's logger, key scrubbed.

    One client per attempt: ``requests`` sessions are not shared between threads.
    """
    relay = _ScrubbingRelay(credentials.key)
    return cdsapi.Client(
        url=credentials.url,
        key=credentials.key,
        quiet=True,
        progress=False,
        timeout=settings.timeout_seconds,
        retry_max=settings.http_tries,
        sleep_max=settings.poll_max_seconds,
        delete=False,
        info_callback=relay.info,
        warning_callback=relay.warning,
        error_callback=relay.error,
        debug_callback=relay.debug,
    )


class _ScrubbingRelay:
    """Forwards the client's log calls to :data:`log`, with the key replaced by ``***``.

    cdsapi logs its whole configuration, key included, at debug level; this keeps it out.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def _emit(self, level: int, message, *args) -> None:
        text = str(message) % args if args else str(message)
        log.log(level, "cdsapi: %s", _scrub(text, self.secret))

    def info(self, message, *args, **_) -> None:
        self._emit(logging.INFO, message, *args)

    def warning(self, message, *args, **_) -> None:
        self._emit(logging.WARNING, message, *args)

    def error(self, message, *args, **_) -> None:
        self._emit(logging.ERROR, message, *args)

    def debug(self, message, *args, **_) -> None:
        self._emit(logging.DEBUG, message, *args)


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, _SECRET_MASK) if secret else text


def _classify_http(err: requests.HTTPError, item: CdsRequest, secret: str) -> Exception:
    """Map an HTTP error of the client onto a typed error, or a transient failure to retry."""
    status = err.response.status_code if err.response is not None else None
    message = _scrub(str(err), secret)
    where = f"{item.filename} ({item.dataset}, {item.month})"
    lowered = message.lower()
    if status in TRANSIENT_STATUS:
        return _TransientFailure(message)
    if status == 401:
        return CdsAuthError(
            f"the CDS refused the key (HTTP 401) for {where}; check CDSAPI_KEY or ~/.cdsapirc: {message}"
        )
    if "cost limit" in lowered or "too large" in lowered:
        return RequestTooLargeError(
            f"the CDS refused {where} ({item.fields} fields) as too large; lower "
            f"max_fields so the planner cuts smaller requests: {message}"
        )
    if status == 403 and "licen" in lowered:
        return CdsAuthError(
            f"the CDS requires accepting the dataset licence of {item.dataset} on its web site "
            f"first: {message}"
        )
    if err.response is not None and err.response.url.rstrip("/").endswith("/results"):
        return CdsRequestError(f"the CDS job for {where} failed: {message}")
    return CdsRequestError(f"the CDS refused {where} (HTTP {status}): {message}")


def _check_download(path: Path, item: CdsRequest) -> int:
    """Size of a finished download, after checking it starts like a file of its format."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        head = stream.read(8)
    if not any(head.startswith(magic) for magic in _MAGIC[item.suffix]):
        raise _TransientFailure(
            f"{item.filename}: the {size}-byte download does not start like a "
            f"{item.suffix} file (first bytes {head!r})"
        )
    return size


def _check_content(path: Path, target: Path, item: CdsRequest) -> None:
    """Check a download against its request; set it aside in ``rejected/`` if it differs.

    Raises
    ------
    CdsResultMismatchError
        Saying what differs and where the file was set aside.
    """
    try:
        check_result(path, item, label=target.name)
    except (CdsResultMismatchError, SourceLayoutError) as mismatch:
        kept = _reject(path, target, item, str(mismatch))
        raise CdsResultMismatchError(
            f"{mismatch} — set aside as {kept}, not used; ask the CDS again by re-running, "
            f"or report the request to the CDS if it keeps happening"
        ) from None


def _recheck(path: Path, item: CdsRequest, record: dict) -> bool:
    """Check a file cached without a record of the check; record it if it passes, else set it aside."""
    try:
        _check_content(path, path, item)
    except CdsResultMismatchError as mismatch:
        log.warning(
            "%s was cached without being checked and does not match its request; fetching it again: %s",
            path.name,
            mismatch,
        )
        discard(path.with_name(path.name + _SIDECAR))
        return False
    _write_sidecar(path, item, record["size"])
    return True


def _reject(path: Path, target: Path, item: CdsRequest, reason: str) -> Path:
    """Move ``path`` to ``rejected/<target name>`` beside a record of the request and of ``reason``."""
    folder = target.parent / REJECTED
    folder.mkdir(exist_ok=True)
    kept = folder / target.name
    os.replace(path, kept)
    record = {
        "key": item.key,
        "dataset": item.dataset,
        "request": item.request,
        "month": item.month,
        "mismatch": reason,
    }
    _write_json(kept.with_name(kept.name + _SIDECAR), record)
    log.error("%s", reason)
    return kept


def _write_sidecar(target: Path, item: CdsRequest, size: int) -> None:
    """Record what the file is (request, hash, size, checked) beside it, atomically, before it is renamed
    in."""
    record = {
        "key": item.key,
        "dataset": item.dataset,
        "request": item.request,
        "variable_ids": list(item.variable_ids),
        "month": item.month,
        "fields": item.fields,
        "size": size,
        "checked": True,
    }
    _write_json(target.with_name(target.name + _SIDECAR), record)


def _write_json(sidecar: Path, record: dict) -> None:
    """Write ``record`` as JSON at ``sidecar`` through a temporary name."""
    with atomic_output(sidecar) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
