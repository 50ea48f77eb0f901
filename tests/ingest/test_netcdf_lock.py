"""netCDF files are written, opened, read and closed from several threads without crashing."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import threading

from ingest.formats.netcdf_lock import NETCDF_LOCK, ProcessRLock

# Four threads each write, open, read and close netCDF files at once, as the CDS downloader's
# threads check results while others arrive. Without the lock this ends in a segmentation
# fault, a bus error or "NetCDF: HDF error" within a few dozen files; run in a child process so
# such a crash fails this test instead of ending the test run.
_STRESS = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    import numpy as np, pandas as pd
    from ingest.cds_layout import cds_dataset, cds_bytes, write_cds_file
    from ingest.formats.netcdf import open_netcdf

    out = Path(sys.argv[1])
    times = pd.date_range("2000-01-01", periods=8, freq="6h").values
    lat, lon = np.linspace(90, -90, 19), np.arange(0, 360, 10.0)
    failures = []

    def work(worker):
        rng = np.random.default_rng(worker)
        try:
            for i in range(25):
                values = (50_000 + 100 * rng.random((8, 19, 36))).astype("f4")
                ds = cds_dataset(times, lat, lon, {"z500": values})
                cds_bytes(ds)
                raw = open_netcdf(write_cds_file(ds, out / f"w{worker}_{i}.nc")).raw
                read = np.concatenate([v.values.ravel() for v in raw.data_vars.values()])
                raw.close()
                assert np.isin(values.ravel(), read).all(), "read back other values than written"
        except Exception as err:
            failures.append(f"worker {worker}: {err!r}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("failures:", failures)
    sys.exit(1 if failures else 0)
    """
)


def test_threads_writing_and_reading_netcdf_at_once_neither_crash_nor_fail(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _STRESS, str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert "failures: []" in done.stdout


def test_the_lock_is_reentrant_and_unpickles_to_the_same_lock():
    with NETCDF_LOCK, NETCDF_LOCK:  # the open holds it while xarray takes it again
        pass
    copy = pickle.loads(pickle.dumps(NETCDF_LOCK))
    assert copy._lock is NETCDF_LOCK._lock
    assert ProcessRLock("another")._lock is not NETCDF_LOCK._lock


def test_a_held_lock_is_not_taken_by_another_thread_without_blocking():
    taken = []
    with NETCDF_LOCK:
        other = threading.Thread(target=lambda: taken.append(NETCDF_LOCK.acquire(blocking=False)))
        other.start()
        other.join()
    assert taken == [False]


def test_a_lazily_opened_netcdf_pickles_for_dask_workers(tmp_path):
    import numpy as np
    import pandas as pd

    from ingest.cds_layout import cds_dataset, write_cds_file
    from ingest.formats.netcdf import open_netcdf

    times = pd.date_range("2000-01-01", periods=2, freq="6h").values
    values = np.full((2, 3, 4), 50_000.0, dtype="f4")
    path = write_cds_file(
        cds_dataset(times, np.array([90.0, 0, -90]), np.arange(0, 360, 90.0), {"z500": values}),
        tmp_path / "a.nc",
    )
    raw = open_netcdf(path).raw
    try:
        again = pickle.loads(pickle.dumps(raw))
        name = next(iter(raw.data_vars))
        np.testing.assert_array_equal(again[name].values, raw[name].values)
        again.close()
    finally:
        raw.close()
