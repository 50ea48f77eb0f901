"""Experiment tracking: the only module that imports MLflow.

Stages talk to a :class:`Tracker`; :class:`MlflowTracker` records one MLflow run through the
tracking client (explicit run ids, no global active-run state), :class:`NullTracker` records
nothing. Every MLflow client comes from :func:`tracking_client`, which initialises a SQLite store
under a file lock, so processes starting together on a fresh store do not race its migration.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import signal
import socket

# The system SQLite must load before anything loads ecCodes (ingest reading GRIB): eckit bundles
# SQLite 3.26, which MLflow's SQLAlchemy store refuses. The one home of this workaround.
import sqlite3  # noqa: F401
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
from mlflow.artifacts import download_artifacts
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient

from ingest.atomic import atomic_output
from ingest.locks import process_running
from pipeline.errors import AliasError, ModelUriError, TrackingServerError  # re-exported

_BATCH = 200  # MLflow caps a batch at 1000 metrics / 100 params

log = logging.getLogger(__name__)

# mlflow installs its own INFO handler on import ("Creating initial MLflow database tables..."), which
# would turn a one-line CLI error into three; its chatter is shown only when debugging (-v).
if not logging.getLogger().isEnabledFor(logging.DEBUG):
    logging.getLogger("mlflow").setLevel(logging.WARNING)

#: MLflow's tag of a nested run's parent; the UI draws the run tree from it.
PARENT_RUN_TAG = "mlflow.parentRunId"
#: Standard MLflow source tags (the UI shows the commit on every run).
GIT_COMMIT_TAG = "mlflow.source.git.commit"
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
#: MLflow 3 opens an experiment in GenAI mode unless it is tagged as model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def val_metric_name(var: str, metric: str, lead_h: int) -> str:
    """MLflow name of a validation metric: ``val/<var>/<metric>_<lead>h`` (``val/z500/rmse_24h``)."""
    return f"val/{var}/{metric}_{int(lead_h)}h"


def score_metric_name(var: str, metric: str, lead_h: int, campaign: str | None = None) -> str:
    """MLflow name of a score: ``score/<var>/<metric>_<lead>h`` on the score run.

    With ``campaign`` (a headline score copied onto the training run):
    ``score/<campaign>/<var>/<metric>_<lead>h``, so scoring a second campaign adds metrics and
    never overwrites the first campaign's.
    """
    head = f"score/{campaign}/" if campaign else "score/"
    return f"{head}{var}/{metric}_{int(lead_h)}h"


class Tracker(Protocol):
    """What stages may record about a run."""

    @property
    def run_id(self) -> str | None:
        """The run's id, or None for a tracker that keeps nothing."""

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None: ...

    def log_metric_history(self, records: Sequence[tuple[int, Mapping[str, float]]]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def register_model(
        self,
        name: str,
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> str | None: ...

    def log_input(
        self, name: str, digest: str, source: str, context: str, profile: Mapping[str, object] | None = None
    ) -> None: ...

    def log_model(
        self, checkpoint: Path, artifact_path: str, metadata: Mapping[str, object]
    ) -> str | None: ...


class NullTracker:
    """A tracker that keeps nothing (tests, dry runs)."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, object]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_metric_history(self, records: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def register_model(
        self,
        name: str,
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> str | None:
        return None

    def log_input(
        self, name: str, digest: str, source: str, context: str, profile: Mapping[str, object] | None = None
    ) -> None:
        pass

    def log_model(self, checkpoint: Path, artifact_path: str, metadata: Mapping[str, object]) -> str | None:
        return None


class MlflowTracker:
    """One MLflow run.

    Parameters
    ----------
    client : mlflow.tracking.MlflowClient
    run_id : str
    """

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_metric_history([(step, metrics)])

    def log_metric_history(self, records: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Metrics of many steps (``[(step, {name: value}), …]``) in as few requests as possible."""
        now = int(time.time() * 1000)
        items = [
            Metric(str(k), float(v), now, int(step))
            for step, metrics in records
            for k, v in metrics.items()
            if math.isfinite(float(v))
        ]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def register_model(
        self,
        name: str,
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> str | None:
        """Register this run's artifacts under ``artifact_path`` as a new version of model ``name``.

        The registered model is created on first use (with ``description``). Returns the new
        version number.
        """
        try:
            self.client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(name, description=description)
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(
            name,
            source=source,
            run_id=self.run_id,
            tags={k: str(v) for k, v in (tags or {}).items()},
            description=description,
        )
        return str(version.version)

    def log_input(
        self, name: str, digest: str, source: str, context: str, profile: Mapping[str, object] | None = None
    ) -> None:
        """Record a dataset the run read (MLflow's *Inputs*): ``digest`` is its fingerprint, ``source`` its
        path.

        ``context`` says how it was used (``training``, ``initial_conditions``, ``forecasts``).
        """
        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(dict(profile or {}), default=str),
        )
        self.client.log_inputs(
            self.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
        )

    def log_model(self, checkpoint: Path, artifact_path: str, metadata: Mapping[str, object]) -> str | None:
        """Log ``checkpoint`` as an MLflow pyfunc model at ``artifact_path`` of this run (see
        :func:`save_pyfunc`).

        Returns the model's ``runs:/`` URI.
        """
        with tempfile.TemporaryDirectory(prefix="fourcast-mlflow-model-") as scratch:
            folder = save_pyfunc(checkpoint, Path(scratch) / "model", metadata)
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)
        return f"runs:/{self.run_id}/{artifact_path}"


def default_tracking_uri(workdir: Path) -> str:
    """SQLite tracking store inside the work directory."""
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


_INITIALISED: set[str] = set()  # tracking URIs whose store this process has opened
_INITIALISING = threading.Lock()


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; ``None`` for other stores and in-memory SQLite."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<database>.lock`` beside a SQLite store (nothing for other stores)."""
    database = _sqlite_path(tracking_uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def tracking_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client of ``tracking_uri`` (tracking store and model registry): fourcast's only way to one.

    The first client of a URI in a process opens its stores while holding the store's file lock
    (:func:`_store_lock`): opening a fresh SQLite store creates and migrates its tables, which
    processes doing it at once corrupt (``duplicate column name``), while under the lock the
    first one migrates and the others find the tables there.
    """
    with _INITIALISING:
        if tracking_uri in _INITIALISED:
            return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        with _store_lock(tracking_uri):
            client = MlflowClient(
                tracking_uri=tracking_uri, registry_uri=tracking_uri
            )  # opens the tracking store
            client.search_registered_models(max_results=1)  # and the registry's, in the same database
        _INITIALISED.add(tracking_uri)
        return client


def _experiment_id(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # made by an older fourcast, or by hand
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    try:
        return client.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    except MlflowException as err:  # another process created it since we looked
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def attach_run(tracking_uri: str, run_id: str) -> MlflowTracker:
    """A tracker for an existing run (e.g. to add verification scores to a finished training run)."""
    return MlflowTracker(tracking_client(tracking_uri), run_id)


def run_exists(tracking_uri: str, run_id: str) -> bool:
    """Whether the store of ``tracking_uri`` holds the run ``run_id``."""
    try:
        tracking_client(tracking_uri).get_run(run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    return True


def run_tags(tracking_uri: str, run_id: str) -> dict[str, str]:
    """The tags of the run ``run_id`` (e.g. ``registered_model`` of a training run)."""
    return dict(tracking_client(tracking_uri).get_run(run_id).data.tags)


#: Tags naming the process that records a run, so a later start can tell the run was abandoned.
PROCESS_TAGS = ("process_id", "process_started", "host_id")


def _process_started(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc); ``""`` if unknown or gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _host_id() -> str:
    """An opaque id of this host and boot: a hash, so no host name is recorded."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return hashlib.sha256(f"{socket.gethostname()}/{boot}".encode()).hexdigest()[:16]


def _process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {"process_id": str(pid), "process_started": _process_started(pid), "host_id": _host_id()}


def _process_alive(tags: Mapping[str, str]) -> bool:
    """Whether the process recorded in ``tags`` (see :func:`_process_tags`) still runs on this host."""
    try:
        pid = int(tags.get("process_id", ""))
    except ValueError:
        return True  # not recorded: nothing to tell, leave the run alone
    if not process_running(pid):
        return False
    return not tags.get("process_started") or _process_started(pid) == tags["process_started"]


def mark_abandoned_runs(
    client: MlflowClient, experiment_id: str, run_name: str, stage: str | None = None
) -> list[str]:
    """End as KILLED the runs of ``stage`` (tag ``stage``; else named ``run_name``) left RUNNING by a gone
    process.

    A process killed outright (SIGKILL, power loss) cannot end its run; the next start of the
    same stage in the same store does. Runs of other hosts, and of processes still running, are
    left alone. Returns the ids of the runs marked.
    """
    which = f"tags.stage = '{stage}'" if stage else f"attributes.run_name = '{run_name}'"
    runs = client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and {which} and tags.host_id = '{_host_id()}'",
        max_results=1000,
    )
    abandoned = [run.info.run_id for run in runs if not _process_alive(run.data.tags)]
    for run_id in abandoned:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        log.warning(
            "MLflow run %s (%s) was left running by a process that is gone; marked KILLED", run_id, run_name
        )
    return abandoned


class Terminated(SystemExit):
    """The process was asked to stop (SIGTERM)."""


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(128 + signum)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in the block (main thread only; elsewhere signals cannot be
    caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags: the git commit of fourcast's checkout (when in one) and the entry
    point."""
    tags = {SOURCE_NAME_TAG: "fourcast", SOURCE_TYPE_TAG: "LOCAL"}
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return tags
    commit = out.stdout.strip()
    return {**tags, GIT_COMMIT_TAG: commit} if out.returncode == 0 and commit else tags


@contextmanager
def mlflow_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    artifact_root: Path | None = None,
    parent_run_id: str | None = None,
) -> Iterator[MlflowTracker]:
    """Start an MLflow run; it ends FINISHED, FAILED if the block raises, KILLED if the process is stopped.

    Stopped means interrupted (Ctrl-C), terminated (SIGTERM) or exiting (``SystemExit``) inside
    the block. The run records which process holds it (:data:`PROCESS_TAGS`: process id and
    start, and a hash of host and boot), and starting it first ends as KILLED the runs of the
    same stage (tag ``stage``, else the same name) that a killed process of this host left
    RUNNING (:func:`mark_abandoned_runs`). ``artifact_root`` sets where a newly created
    experiment keeps artifacts (a folder); the experiment is tagged for model training
    (:data:`EXPERIMENT_KIND_TAG`). With ``parent_run_id`` the run is nested under that run (the
    pipeline invocation). Every run carries :func:`source_tags` (the git commit).
    """
    client = tracking_client(tracking_uri)
    experiment_id = _experiment_id(client, experiment, artifact_root)
    mark_abandoned_runs(client, experiment_id, run_name, (tags or {}).get("stage"))
    nested = {PARENT_RUN_TAG: parent_run_id} if parent_run_id else {}
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={**source_tags(), **dict(tags or {}), **nested, **_process_tags()},
    )
    tracker = MlflowTracker(client, run.info.run_id)
    try:
        with _sigterm_raises():
            yield tracker
    except (KeyboardInterrupt, SystemExit):
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


def nest_runs_under(
    tracking_uri: str, experiment: str, parent_run_id: str, tags: Mapping[str, str]
) -> list[str]:
    """Nest the experiment's runs that carry all ``tags`` and have no parent yet under ``parent_run_id``.

    A scheduled cycle's stages run as separate tasks, each with its own run tagged with the cycle
    point; the cycle's report run adopts them afterwards, so the MLflow UI shows one run tree per
    cycle point without the tasks having to agree on a parent while they run.

    Returns
    -------
    list of str
        The ids of the runs nested now.
    """
    client = tracking_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    adopted = []
    for run in client.search_runs([found.experiment_id], query, max_results=10_000):
        if run.info.run_id != parent_run_id and PARENT_RUN_TAG not in run.data.tags:
            client.set_tag(run.info.run_id, PARENT_RUN_TAG, parent_run_id)
            adopted.append(run.info.run_id)
    return adopted


MODEL_URI_SCHEMES = ("models:/", "runs:/")


def download_checkpoint(model_uri: str, tracking_uri: str, dst: Path) -> Path:
    """The checkpoint file behind an MLflow model URI, downloaded under ``dst``.

    Parameters
    ----------
    model_uri : str
        ``models:/<name>/<version>``, ``models:/<name>@<alias>`` (the registry of
        ``tracking_uri``) or ``runs:/<run id>/<artifact path>``; the artifact is a checkpoint file
        written by :func:`fourcast.checkpoint.save_checkpoint`, or a folder holding exactly one
        ``*.pt`` file.
    tracking_uri : str
        Tracking (and registry) server or store.
    dst : pathlib.Path
        Folder to download into.

    Raises
    ------
    ModelUriError
        If the URI has another scheme, names nothing MLflow knows, or holds no single checkpoint.
    """
    if not model_uri.startswith(MODEL_URI_SCHEMES):
        raise ModelUriError(
            f"expected an MLflow model URI starting with {' or '.join(MODEL_URI_SCHEMES)}, "
            f"found {model_uri!r}"
        )
    dst.mkdir(parents=True, exist_ok=True)
    tracking_client(tracking_uri)  # the store opened under its lock before download_artifacts opens it
    try:
        source = (
            _registered_source(model_uri, tracking_uri) if model_uri.startswith("models:/") else model_uri
        )
        local = Path(download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri))
    except (MlflowException, OSError) as err:
        raise ModelUriError(f"cannot download {model_uri} from {tracking_uri}: {err}") from err
    if local.is_file():
        return local
    found = sorted(local.rglob("*.pt"))
    if len(found) != 1:
        raise ModelUriError(
            f"expected {model_uri} to hold one checkpoint (*.pt), found {[p.name for p in found]}"
        )
    return found[0]


def _registered_source(model_uri: str, registry_uri: str) -> str:
    """Where the artifacts of ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` live.

    Resolved with a client of ``registry_uri`` (``download_artifacts`` would consult the global
    registry URI instead).
    """
    client = tracking_client(registry_uri)
    name, version = resolve_model_version(model_uri, registry_uri)
    return client.get_model_version_download_uri(name, version)


def _registered_model(client: MlflowClient, name: str):
    """The registered model ``name``; :class:`AliasError` naming the models there are if it does not exist."""
    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        known = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise AliasError(
            f"the registry holds no model {name!r}; registered models: {known or 'none'}"
        ) from err


def model_aliases(tracking_uri: str, name: str) -> dict[str, str]:
    """The aliases of registered model ``name`` → the version each points to.

    Raises
    ------
    AliasError
        If the registry holds no model ``name``.
    """
    return {
        alias: str(version)
        for alias, version in (_registered_model(tracking_client(tracking_uri), name).aliases or {}).items()
    }


def model_versions(tracking_uri: str, name: str) -> list[str]:
    """The version numbers of registered model ``name``, oldest first (:class:`AliasError` if there is
    none)."""
    client = tracking_client(tracking_uri)
    _registered_model(client, name)
    versions = client.search_model_versions(f"name = '{name}'", max_results=1000)
    return sorted((str(v.version) for v in versions), key=int)


#: ``models:/NAME/latest`` names the highest version number of NAME.
LATEST = "latest"


def resolve_model_version(model_uri: str, tracking_uri: str) -> tuple[str, str]:
    """``(name, version)`` that ``models:/NAME/VERSION``, ``models:/NAME/latest`` or ``models:/NAME@ALIAS``
    names now.

    Raises
    ------
    AliasError
        If the model or the alias does not exist; the message names the model and its aliases.
    ModelUriError
        If the URI is not of one of those forms.
    """
    reference = model_uri.removeprefix("models:/")
    if not model_uri.startswith("models:/") or not reference:
        raise ModelUriError(
            f"expected models:/<name>/<version> or models:/<name>@<alias>, found {model_uri!r}"
        )
    if "@" in reference:
        name, alias = reference.split("@", 1)
        aliases = model_aliases(tracking_uri, name)
        if alias not in aliases:
            held = ", ".join(f"{a} -> version {v}" for a, v in sorted(aliases.items())) or "none"
            raise AliasError(
                f"registered model {name!r} has no alias {alias!r}; its aliases: {held} (move one with "
                f"`fourcast model promote {name} VERSION --alias {alias}`)"
            )
        return name, aliases[alias]
    if reference.count("/") != 1:
        raise ModelUriError(
            f"expected models:/<name>/<version> or models:/<name>@<alias>, found {model_uri!r}"
        )
    name, version = reference.split("/")
    versions = model_versions(tracking_uri, name)
    if version == LATEST:
        if not versions:
            raise AliasError(f"registered model {name!r} has no versions")
        return name, versions[-1]
    if version not in versions:
        raise AliasError(f"registered model {name!r} has no version {version!r}; its versions: {versions}")
    return name, version


def set_model_alias(tracking_uri: str, name: str, alias: str, version: str) -> str | None:
    """Point ``alias`` of model ``name`` at ``version``; returns the version it pointed to before (or
    ``None``).

    Raises
    ------
    AliasError
        If the model or the version does not exist.
    """
    client = tracking_client(tracking_uri)
    previous = model_aliases(tracking_uri, name).get(alias)
    _, version = resolve_model_version(f"models:/{name}/{version}", tracking_uri)
    client.set_registered_model_alias(name, alias, version)
    return previous


def tag_model_version(tracking_uri: str, name: str, version: str, tags: Mapping[str, object]) -> None:
    """Set tags (e.g. headline scores) on a registered model version."""
    client = tracking_client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _server_answers(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_tracking_server(
    backend_uri: str, artifact_root: Path, state_dir: Path, host: str = "127.0.0.1", timeout_s: float = 120.0
) -> str:
    """Start ``mlflow server`` (one process, detached) over ``backend_uri``; returns its ``http://`` URI.

    Many processes logging at once (overlapping Cylc cycles) then talk to one server, which alone
    opens the database: no two processes race to create or migrate a fresh SQLite store. The
    server's URI, process id and log go to ``state_dir`` (``uri``, ``pid``, ``server.log``); if a
    server recorded there still answers, its URI is returned and nothing is started.

    Raises
    ------
    TrackingServerError
        If the server does not answer ``/health`` within ``timeout_s`` (its log's tail is quoted).
    """
    import subprocess
    import sys

    state_dir.mkdir(parents=True, exist_ok=True)
    uri_file, pid_file, log_file = state_dir / "uri", state_dir / "pid", state_dir / "server.log"
    if uri_file.exists() and _server_answers(uri_file.read_text().strip()):
        return uri_file.read_text().strip()
    with _store_lock(backend_uri):  # the store created and migrated once, before the server opens it
        MlflowClient(tracking_uri=backend_uri, registry_uri=backend_uri).search_registered_models(
            max_results=1
        )
    port = _free_port(host)
    uri = f"http://{host}:{port}"
    artifact_root.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--default-artifact-root",
        artifact_root.resolve().as_uri(),
        "--no-serve-artifacts",
    ]
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=state_dir,
        )  # outlives the caller's folder
    with atomic_output(pid_file) as tmp:
        tmp.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _server_answers(uri):
            with atomic_output(uri_file) as tmp:
                tmp.write_text(uri + "\n")
            return uri
        if process.poll() is not None:
            break
        time.sleep(0.5)
    stop_tracking_server(state_dir)
    tail = log_file.read_text(errors="replace")[-2000:]
    raise TrackingServerError(
        f"mlflow server over {backend_uri} did not answer on {uri} within {timeout_s:.0f} s; "
        f"its log ({log_file}) ends:\n{tail}"
    )


def stop_tracking_server(state_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the server :func:`start_tracking_server` recorded in ``state_dir``; ``False`` if none was
    running."""
    pid_file = state_dir / "pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    running = process_running(pid)
    if running:
        os.killpg(pid, signal.SIGTERM)  # the server and its workers: it leads its own session
        deadline = time.monotonic() + timeout_s
        while process_running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process_running(pid):
            os.killpg(pid, signal.SIGKILL)
    for name in ("pid", "uri"):
        (state_dir / name).unlink(missing_ok=True)
    return running


# --- The model as an MLflow model ---------------------------------------------------------------------

#: Key of the checkpoint among a fourcast pyfunc model's artifacts.
CHECKPOINT_ARTIFACT = "checkpoint"
#: Requirements recorded with the model (no inference: that would load the model once more).
_MODEL_REQUIREMENTS = ("torch", "torch-harmonics", "numpy", "xarray", "zarr", "mlflow-skinny")


class FourcastPyfunc(PythonModel):
    """fourcast's :class:`~fourcast.forecaster.Forecaster` as an MLflow pyfunc model.

    ``predict`` takes states ``(batch, channel, lat, lon)`` float32 in physical units (channel
    order and grid as in the model's metadata ``fourcast``) and returns the states ``steps``
    model steps later (param ``steps``, default 1), same shape and units. Loading needs fourcast
    installed (``pip install fourcast``): the checkpoint is rebuilt by
    :meth:`~fourcast.forecaster.Forecaster.from_checkpoint` on CPU (CUDA when available).
    """

    def load_context(self, context) -> None:
        from fourcast.forecaster import Forecaster

        self.forecaster = Forecaster.from_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        import torch

        steps = int((params or {}).get("steps", 1))
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        coords = self.forecaster.input_coords
        for _ in range(steps):
            x, coords = self.forecaster.step(x, coords)
        return x.cpu().numpy()


def model_signature(n_channels: int, n_lat: int, n_lon: int):
    """Input and output ``(batch, channel, lat, lon)`` float32 tensors, and the ``steps`` parameter."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    state = Schema([TensorSpec(np.dtype(np.float32), (-1, n_channels, n_lat, n_lon))])
    return ModelSignature(inputs=state, outputs=state, params=ParamSchema([ParamSpec("steps", "long", 1)]))


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in _MODEL_REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            if name == "mlflow-skinny":  # the full mlflow package brings it
                pinned.append(f"mlflow-skinny=={version('mlflow')}")
    return pinned


def save_pyfunc(checkpoint: Path, folder: Path, metadata: Mapping[str, object]) -> Path:
    """Write ``checkpoint`` as an MLflow pyfunc model folder (:class:`FourcastPyfunc`) at ``folder``.

    Parameters
    ----------
    checkpoint : pathlib.Path
        A file of :func:`fourcast.checkpoint.save_checkpoint`; copied to ``artifacts/``.
    folder : pathlib.Path
        Must not exist yet.
    metadata : mapping
        fourcast facts (preset, channels, units, grid size, step, store fingerprint, run ids),
        recorded under the ``fourcast`` key of the MLmodel file's metadata; ``channels``,
        ``n_lat`` and ``n_lon`` also make the signature.
    """
    from mlflow.pyfunc import save_model

    signature = model_signature(len(metadata["channels"]), int(metadata["n_lat"]), int(metadata["n_lon"]))
    with (
        warnings.catch_warnings()
    ):  # the signature says what an input is; an example would run the model again
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        save_model(
            str(folder),
            python_model=FourcastPyfunc(),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
            signature=signature,
            pip_requirements=_requirements(),
            metadata={"fourcast": json.loads(json.dumps(dict(metadata), default=str))},
        )
    return folder
