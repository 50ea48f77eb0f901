"""The tracker against MLflow's real backends: a SQLite store, and a local ``mlflow server``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import NullTracker, default_tracking_uri, mlflow_run


def _exercise(uri: str, artifact_root: Path | None, tmp_path: Path) -> str:
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with mlflow_run(uri, "tests", "train", {"stage": "train"}, artifact_root) as tracker:
        tracker.log_params({"model": "afno-tiny", "lr": 0.002})
        for step in range(3):
            tracker.log_metrics({"loss": 1.0 / (step + 1), "nan_is_skipped": float("nan")}, step=step * 10)
        tracker.log_artifact(note, "notes")
        tracker.set_tags({"git_commit": "abc123"})
        run_id = tracker.run_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model": "afno-tiny", "lr": "0.002"}
    assert run.data.tags["git_commit"] == "abc123" and run.data.tags["stage"] == "train"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(0, 1.0), (10, 0.5), (20, 0.3333)]
    assert "nan_is_skipped" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
    return run_id


def test_sqlite_store(tmp_path):
    _exercise(default_tracking_uri(tmp_path), tmp_path / "artifacts", tmp_path)
    assert (tmp_path / "mlflow.db").is_file() and any((tmp_path / "artifacts").rglob("note.txt"))


def test_failed_block_marks_the_run_failed(tmp_path):
    uri = default_tracking_uri(tmp_path)
    with pytest.raises(RuntimeError):
        with mlflow_run(uri, "tests", "boom", artifact_root=tmp_path / "a") as tracker:
            run_id = tracker.run_id
            raise RuntimeError("boom")
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"


def test_null_tracker_accepts_everything(tmp_path):
    tracker = NullTracker()
    tracker.log_params({"a": 1})
    tracker.log_metrics({"b": 2.0}, step=1)
    tracker.log_artifact(tmp_path)
    assert tracker.run_id is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", str(tmp_path / "served"), "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer /health within 90 s")
        yield uri, tmp_path / "served"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.distributed
def test_remote_tracking_server(mlflow_server, tmp_path):
    uri, served = mlflow_server
    _exercise(uri, None, tmp_path)
    assert any(served.rglob("note.txt"))  # the artifact went through the server's proxy
