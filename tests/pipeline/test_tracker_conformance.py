"""NullTracker and MlflowTracker (on MLflow's SQLite store) through the Tracker conformance suite."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import MlflowTracker, NullTracker, default_tracking_uri, mlflow_run
from tests.conformance.tracker import Recorded, TrackerConformance


class TestNullTracker(TrackerConformance):
    @pytest.fixture
    def tracker(self, tmp_path):
        return NullTracker()

    def recorded(self, tracker):
        return None


class TestMlflowTracker(TrackerConformance):
    @pytest.fixture
    def tracker(self, tmp_path):
        with mlflow_run(
            default_tracking_uri(tmp_path), "conformance", "run", artifact_root=tmp_path / "artifacts"
        ) as tracker:
            yield tracker

    def recorded(self, tracker: MlflowTracker) -> Recorded:
        client: MlflowClient = tracker.client
        run = client.get_run(tracker.run_id)
        metrics = {
            name: [
                (m.step, m.value)
                for m in sorted(client.get_metric_history(tracker.run_id, name), key=lambda m: m.step)
            ]
            for name in run.data.metrics
        }
        return Recorded(
            params=dict(run.data.params),
            metrics=metrics,
            tags=dict(run.data.tags),
            artifacts=set(_artifacts(client, tracker.run_id)),
        )


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return found
