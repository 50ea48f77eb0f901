"""The behaviour every :class:`pipeline.tracking.Tracker` promises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.tracking import Tracker


@dataclass
class Recorded:
    """What a tracker kept of a run; ``None`` for a tracker that keeps nothing."""

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: set[str] = field(default_factory=set)


class TrackerConformance:
    """Subclass as ``Test<Tracker>``; implement the ``tracker`` fixture and :meth:`recorded`."""

    @pytest.fixture
    def tracker(self, tmp_path):
        raise NotImplementedError

    def recorded(self, tracker: Tracker) -> Recorded | None:
        raise NotImplementedError

    @staticmethod
    def exercise(tracker: Tracker, tmp_path: Path) -> None:
        """Everything a stage may hand a tracker, in one run."""
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "a.txt").write_text("a")
        (tmp_path / "note.txt").write_text("note")
        tracker.log_params({"model": "afno-tiny", "lr": 0.002, "layers": 4, "long": "x" * 7000})
        for step in range(3):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1), "train/nan": float("nan")}, step=10 * step)
        tracker.log_metric_history(
            [(step, {f"m{k}": float(k + step) for k in range(150)}) for step in range(8)]
        )
        tracker.log_artifact(tmp_path / "note.txt")
        tracker.log_artifact(tmp_path / "folder", "nested")
        tracker.set_tags({"stage": "train", "cycle": "3"})

    def test_a_run_records_what_it_was_given(self, tracker, tmp_path):
        assert tracker.run_id is None or isinstance(tracker.run_id, str)
        self.exercise(tracker, tmp_path)
        recorded = self.recorded(tracker)
        if recorded is None:
            return
        assert recorded.params["model"] == "afno-tiny" and recorded.params["lr"] == "0.002"
        assert recorded.params["layers"] == "4" and recorded.params["long"].startswith("xxx")
        assert recorded.metrics["train/loss"] == [(0, 1.0), (10, 0.5), (20, pytest.approx(1 / 3))]
        assert "train/nan" not in recorded.metrics  # non-finite values are skipped, not an error
        assert len([name for name in recorded.metrics if name.startswith("m")]) == 150
        assert recorded.metrics["m149"] == [(step, 149.0 + step) for step in range(8)]
        assert recorded.tags["stage"] == "train" and recorded.tags["cycle"] == "3"
        assert {"note.txt", "nested/a.txt"} <= recorded.artifacts

    def test_a_missing_artifact_is_an_error_not_silence(self, tracker, tmp_path):
        if self.recorded(tracker) is None:
            tracker.log_artifact(tmp_path / "absent.txt")  # a tracker that keeps nothing reads nothing
            return
        with pytest.raises(FileNotFoundError):
            tracker.log_artifact(tmp_path / "absent.txt")
