"""Kill-and-resume, append and re-run of the store build, with real process kills (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ingest.inspect import validate_store
from ingest.locks import LockHeldError
from ingest.store import StoreLayout, open_sources, write_store
from tests.conftest import STATS, VARIABLES

REPO = Path(__file__).resolve().parents[2]
SHARD_STEPS = 10  # 240 steps -> 24 shards
#: The child builds the store from the fixture files, slowed to ~40 ms per shard so that kills
#: land at chosen points of the build (only this test's input is slowed, not the code under test).
CHILD = """
import sys, time
import dask, numpy as np
from ingest.store import StatsPeriod, StoreLayout, open_sources, write_store

def slow(block):
    time.sleep(0.04)
    return block

files, store, end = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
data = open_sources(files, {variables}, {shard})
data = data.sel(time=slice(None, np.datetime64(end)))
data = data.copy(data=data.data.map_blocks(slow, dtype=data.dtype))
period = StatsPeriod(np.datetime64("{start}"), np.datetime64("{stop}"))
with dask.config.set(scheduler="threads", num_workers=2):
    write_store(data, store, period, StoreLayout(shard_steps={shard}))
"""


def _files_of(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _launch(script: Path, files, store: Path, end: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), ",".join(map(str, files)), str(store), end],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _progress(store: Path) -> Path:
    return store.with_name(f".{store.name}.progress")


def _kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``process`` once ``ready()`` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.002)
    process.kill()
    raise AssertionError("the build neither reached the kill point nor finished in time")


def _done(store: Path) -> int:
    done = _progress(store) / "done"
    return len(list(done.iterdir())) if done.is_dir() else 0


def _reference(era5_files, root: Path, end: str) -> Path:
    data = open_sources(era5_files, VARIABLES, SHARD_STEPS).sel(time=slice(None, np.datetime64(end)))
    return write_store(data, root / "reference.zarr", STATS, StoreLayout(shard_steps=SHARD_STEPS))


def _child(tmp_path: Path) -> Path:
    script = tmp_path / "build.py"
    script.write_text(CHILD.format(variables=VARIABLES, shard=SHARD_STEPS, start=STATS.start, stop=STATS.end))
    return script


@pytest.mark.slow
def test_a_build_killed_at_several_points_resumes_to_the_same_bytes(era5_files, tmp_path):
    end = "2000-02-29T18"
    reference = _reference(era5_files, tmp_path, end)
    script, store = _child(tmp_path), tmp_path / "store.zarr"
    kill_points = [
        lambda: (_progress(store) / "plan.json").exists(),  # right after the empty store is made
        lambda: _done(store) >= 7,  # part-way through the shards
        lambda: _done(store) >= 20,  # later, from the resumed state
    ]
    kills = 0
    for ready in kill_points:
        kills += _kill_when(_launch(script, era5_files, store, end), ready)
        assert not store.exists(), "a killed first build must leave nothing at the final path"
    assert kills >= 2
    final = _launch(script, era5_files, store, end)
    assert final.wait(timeout=120) == 0, final.stdout.read().decode()
    assert _files_of(store) == _files_of(reference)
    assert not _progress(store).exists() and not store.with_name(f".{store.name}.building").exists()


@pytest.mark.slow
def test_extending_links_finished_shards_and_a_killed_extension_resumes(era5_files, tmp_path):
    reference = _reference(era5_files, tmp_path, "2000-02-29T18")
    script, store = _child(tmp_path), tmp_path / "store.zarr"
    first = _launch(script, era5_files, store, "2000-01-31T18")  # 124 steps: 12 full shards and 4 steps
    assert first.wait(timeout=120) == 0, first.stdout.read().decode()
    shard_0 = store / "data" / "c" / "0" / "0" / "0" / "0"
    inode, before = shard_0.stat().st_ino, _files_of(store)

    extension = _launch(script, era5_files, store, "2000-02-29T18")
    assert _kill_when(extension, lambda: _done(store) >= 14)
    assert _files_of(store) == before, "a killed extension must leave the old store as it was"
    resumed = _launch(script, era5_files, store, "2000-02-29T18")
    assert resumed.wait(timeout=120) == 0, resumed.stdout.read().decode()
    assert _files_of(store) == _files_of(reference)
    assert shard_0.stat().st_ino == inode, "a finished shard must be linked, not rewritten"

    untouched = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    write_store(
        open_sources(era5_files, VARIABLES, SHARD_STEPS), store, STATS, StoreLayout(shard_steps=SHARD_STEPS)
    )
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == untouched, (
        "re-running present dates changes nothing"
    )


def test_a_second_build_of_the_same_store_is_refused_and_the_first_completes_intact(era5_files, tmp_path):
    script, store = _child(tmp_path), tmp_path / "store.zarr"
    first = _launch(script, era5_files, store, "2000-02-29T18")
    deadline = time.monotonic() + 60
    while _done(store) < 2:  # the first build is writing shards
        assert first.poll() is None and time.monotonic() < deadline, (
            "the first build ended before the test ran"
        )
        time.sleep(0.005)
    data = open_sources(era5_files, VARIABLES, SHARD_STEPS)
    with pytest.raises(
        LockHeldError, match=rf"store {store} is being written by process {first.pid} on \S+ since "
    ):
        write_store(data, store, STATS, StoreLayout(shard_steps=SHARD_STEPS))
    assert first.wait(timeout=120) == 0, first.stdout.read().decode()
    assert validate_store(store) == []
    assert _files_of(store) == _files_of(_reference(era5_files, tmp_path, "2000-02-29T18"))
    write_store(data, store, STATS, StoreLayout(shard_steps=SHARD_STEPS))  # the lock went with its holder
