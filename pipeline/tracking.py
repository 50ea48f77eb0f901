"""Experiment tracking: the only module that imports MLflow.

Stages talk to a :class:`Tracker`; :class:`MlflowTracker` records one MLflow run through the
tracking client (explicit run ids, no global active-run state), :class:`NullTracker` records
nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from mlflow.artifacts import download_artifacts
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

_BATCH = 200  # MLflow caps a batch at 1000 metrics / 100 params


class Tracker(Protocol):
    """What stages may record about a run."""

    run_id: str | None

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None: ...

    def log_metric_history(self, records: Sequence[tuple[int, Mapping[str, float]]]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def register_model(self, name: str, artifact_path: str, tags: Mapping[str, str] | None = None) -> str | None: ...


class NullTracker:
    """A tracker that keeps nothing (tests, dry runs)."""

    run_id = None

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

    def register_model(self, name: str, artifact_path: str, tags: Mapping[str, str] | None = None) -> str | None:
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
        items = [Metric(str(k), float(v), now, int(step)) for step, metrics in records for k, v in metrics.items()
                 if math.isfinite(float(v))]
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

    def register_model(self, name: str, artifact_path: str, tags: Mapping[str, str] | None = None) -> str | None:
        """Register this run's artifacts under ``artifact_path`` as a new version of model ``name``.

        The registered model is created on first use. Returns the new version number.
        """
        try:
            self.client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(name)
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(name, source=source, run_id=self.run_id,
                                                   tags={k: str(v) for k, v in (tags or {}).items()})
        return str(version.version)


def default_tracking_uri(workdir: Path) -> str:
    """SQLite tracking store inside the work directory."""
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def _experiment_id(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def attach_run(tracking_uri: str, run_id: str) -> MlflowTracker:
    """A tracker for an existing run (e.g. to add verification scores to a finished training run)."""
    return MlflowTracker(MlflowClient(tracking_uri=tracking_uri), run_id)


@contextmanager
def mlflow_run(tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None = None,
               artifact_root: Path | None = None) -> Iterator[MlflowTracker]:
    """Start an MLflow run; it ends FINISHED, or FAILED if the block raises.

    ``artifact_root`` sets where a newly created experiment keeps artifacts (a folder).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, experiment, artifact_root)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    tracker = MlflowTracker(client, run.info.run_id)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


class ModelUriError(ValueError):
    """An MLflow model URI cannot be resolved to one checkpoint file."""


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
        raise ModelUriError(f"expected an MLflow model URI starting with {' or '.join(MODEL_URI_SCHEMES)}, "
                            f"found {model_uri!r}")
    dst.mkdir(parents=True, exist_ok=True)
    try:
        source = _registered_source(model_uri, tracking_uri) if model_uri.startswith("models:/") else model_uri
        local = Path(download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri))
    except (MlflowException, OSError) as err:
        raise ModelUriError(f"cannot download {model_uri} from {tracking_uri}: {err}") from err
    if local.is_file():
        return local
    found = sorted(local.rglob("*.pt"))
    if len(found) != 1:
        raise ModelUriError(f"expected {model_uri} to hold one checkpoint (*.pt), found {[p.name for p in found]}")
    return found[0]


def _registered_source(model_uri: str, registry_uri: str) -> str:
    """Where the artifacts of ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` live.

    Resolved with a client of ``registry_uri`` (``download_artifacts`` would consult the global
    registry URI instead).
    """
    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    reference = model_uri.removeprefix("models:/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    elif reference.count("/") == 1:
        name, version = reference.split("/")
    else:
        raise ModelUriError(f"expected models:/<name>/<version> or models:/<name>@<alias>, found {model_uri!r}")
    return client.get_model_version_download_uri(name, version)
