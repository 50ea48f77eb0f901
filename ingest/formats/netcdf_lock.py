"""One lock for every call this process makes into the netCDF-C and HDF5 libraries.

netCDF4-python releases the GIL around its C calls (since 1.7), and neither netCDF-C nor
HDF5 may be entered from two threads at once: concurrent calls end in ``NetCDF: HDF error``
or a segmentation fault. xarray serialises the *data* reads of a lazily opened file with the
lock it is given, but not the metadata calls made while a file is opened or written. Threads
do meet here: the CDS downloader checks finished downloads from several threads while others
are still arriving, and Dask threads read fields while another file is opened.

So every netCDF open, write and close in the project runs under :data:`NETCDF_LOCK`, and the
same lock is handed to xarray for the lazy reads. It is reentrant (the open holds it while
xarray takes it again) and pickles to the same per-process lock, so lazy arrays can travel to
Dask worker processes, where they serialise against that process's other netCDF calls.
"""

from __future__ import annotations

import threading
from types import TracebackType

_PROCESS_LOCKS: dict[str, threading.RLock] = {}
_REGISTRY_GUARD = threading.Lock()


class ProcessRLock:
    """A reentrant lock that unpickles to the one lock of its name in each process.

    Parameters
    ----------
    name : str
        Locks of the same name are the same lock within a process.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        with _REGISTRY_GUARD:
            self._lock = _PROCESS_LOCKS.setdefault(name, threading.RLock())

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; with ``blocking=False`` return at once whether it was taken."""
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        """Give the lock back (once per :meth:`acquire`)."""
        self._lock.release()

    def __enter__(self) -> ProcessRLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __reduce__(self) -> tuple[type[ProcessRLock], tuple[str]]:
        return ProcessRLock, (self.name,)

    def __repr__(self) -> str:
        return f"ProcessRLock({self.name!r})"


NETCDF_LOCK = ProcessRLock("fourcast-netcdf-c-and-hdf5")
"""Held around every netCDF open, write and close; xarray's lock for lazy netCDF reads."""
