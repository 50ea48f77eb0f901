"""Experiment tracking: the only module that imports MLflow.

Stages talk to a :class:`Tracker`; :class:`MlflowTracker` records one MLflow run through the
tracking client (explicit run ids, no global active-run state), :class:`NullTracker` records
nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

_BATCH = 200  # MLflow caps a batch at 1000 metrics / 100 params


class Tracker(Protocol):
    """What stages may record about a run."""

    run_id: str | None

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


class NullTracker:
    """A tracker that keeps nothing (tests, dry runs)."""

    run_id = None

    def log_params(self, params: Mapping[str, object]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass


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
        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, int(step)) for k, v in metrics.items() if math.isfinite(float(v))]
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
