"""Progress: a bar on a terminal, plain log lines in log files, nothing when off."""

from __future__ import annotations

import logging

from ingest.progress import LogProgress, progress, progress_mode


def test_log_lines_say_count_share_rate_eta_and_postfix(caplog):
    caplog.set_level(logging.INFO, logger="fourcast.progress")
    with LogProgress(4, "training afno-tiny", "steps", every_s=0.0) as bar:
        for step in range(1, 5):
            bar.set_postfix({"loss": f"{1 / step:.3g}"})
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and "\r" not in "".join(lines)
    assert lines[0].startswith("training afno-tiny: 1/4 steps (25%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("training afno-tiny: 4/4 steps (100%)") and lines[-1].endswith("loss=0.25")


def test_lines_come_at_most_every_interval_and_once_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="fourcast.progress")
    with LogProgress(1000, "forecast", "member-steps", every_s=3600) as bar:
        for _ in range(999):
            bar.update(1)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["forecast: 999/1000 member-steps (99%)"]


def test_the_environment_chooses_the_mode(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="fourcast.progress")
    monkeypatch.setenv("FOURCAST_PROGRESS", "off")
    assert progress_mode() == "off"
    with progress(3, "quiet", "steps") as bar:
        bar.update(3)
    assert bar.n == 3 and caplog.records == []
    monkeypatch.setenv("FOURCAST_PROGRESS", "log")
    assert isinstance(progress(3, "x", "steps"), LogProgress)
    monkeypatch.setenv("FOURCAST_PROGRESS", "bar")
    assert (
        type(progress(3, "x", "steps")).__name__ == "tqdm"
        or "tqdm" in type(progress(3, "x", "steps")).__module__
    )
    monkeypatch.delenv("FOURCAST_PROGRESS")
    assert progress_mode() == "log"  # pytest's stderr is not a terminal


def test_rate_and_eta_follow_the_recent_pace_when_units_slow_down(caplog, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("ingest.progress.time.monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="fourcast.progress")
    bar = LogProgress(200, "training", "steps", every_s=5.0)
    for _ in range(100):  # 100 steps at 10 steps/s
        clock[0] += 0.1
        bar.update(1)
    for _ in range(10):  # then rollouts lengthen: 1 step/s
        clock[0] += 1.0
        bar.update(1)
    bar.close()
    last = caplog.records[-1].getMessage()
    assert last.startswith("training: 110/200 steps (55%), 1 steps/s")  # not the 5.5 steps/s average
    assert "ETA 1m30s" in last  # 90 steps left at the recent 1 step/s
