"""One writer per store: an OS advisory lock (``fcntl.flock``) on a file beside what is written.

The lock file ``.NAME.lock`` sits next to ``NAME`` and holds, as text, who took the lock (process
id, host, start time) so that a refused writer can say who holds it. The lock belongs to the
open file, not to the text: the kernel releases it when its holder exits, however it exits
(a SIGKILL included), so a dead writer never leaves a stale lock behind, and whoever holds the
lock may treat every temporary sibling of ``NAME`` as abandoned. The last holder removes the
file on release; whoever takes a lock checks that the file it locked is still the one at that
path (the holder may have removed it meanwhile) and otherwise takes the new one.

:func:`exclusive_lock` is one writer; :class:`CampaignLock` lets the processes of one campaign
share the lock of an archive while refusing those of another.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ingest.errors import IngestError


class LockHeldError(IngestError, RuntimeError):
    """Another live process is writing the store (or archive) this process was asked to write."""


def process_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks without signalling).

    The one test of "is the writer of this leftover still alive" for every temporary that
    carries its writer's process id (checkpoints, climatology partials, MLflow runs).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


def lock_path(target: str | Path, owner: str = "") -> Path:
    """The lock file of ``target``: ``.NAME.lock`` beside it (``.NAME.lock-OWNER`` for an owner)."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock" + (f"-{owner}" if owner else ""))


def _holder_text() -> str:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"{os.getpid()} {socket.gethostname()} {started}"


def describe_holder(text: str) -> str:
    """``process N on HOST since T`` from the text a holder wrote into its lock file."""
    parts = text.split()
    if len(parts) < 3:
        return "another process (it has not written its name yet)"
    return f"process {parts[0]} on {parts[1]} since {parts[2]}"


def _try_lock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is (still) the file at ``path``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _take(path: Path, mode: int, timeout: float, poll: float = 0.05) -> int | None:
    """A descriptor of ``path`` locked in ``mode``, or ``None`` if others hold it past ``timeout`` s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if _try_lock(fd, mode):
            if _is_at(fd, path):
                return fd
            os.close(fd)  # its holder removed it as we took it: take the file now at the path
            continue
        os.close(fd)
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)


def _sign(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_text().encode(), 0)


def _remove_and_close(fd: int, path: Path) -> None:
    """Remove ``path`` (this process holds it exclusively), then let go of it."""
    if _is_at(fd, path):
        path.unlink()
    os.close(fd)


@contextmanager
def exclusive_lock(target: str | Path, what: str = "store", timeout: float = 0.0) -> Iterator[Path]:
    """Hold the lock of ``target`` for the body: the only writer of ``target``.

    Parameters
    ----------
    target : path-like
        What is about to be written; the lock is :func:`lock_path` of it.
    what : str
        What ``target`` is, for the message.
    timeout : float
        Seconds to wait for a holder to finish before giving up (0: refuse at once).

    Raises
    ------
    LockHeldError
        If another process holds the lock (still, after ``timeout``); the message names it.
    """
    path = lock_path(target)
    fd = _take(path, fcntl.LOCK_EX, timeout)
    if fd is None:
        raise LockHeldError(
            f"{what} {target} is being written by {describe_holder(_read(path))} "
            f"(lock {path}); wait for it to finish, or stop it, then run again"
        )
    try:
        _sign(fd)
        yield path
    finally:
        _remove_and_close(fd, path)


class CampaignLock:
    """The lock of an archive, shared by the processes of one campaign and refused to any other.

    Every process of the campaign holds ``.NAME.lock-OWNER`` shared (``LOCK_SH``), then looks at
    the lock files of other owners: one that is held means another campaign is writing, and
    this one is refused (taking one's own lock before looking means two campaigns can never both
    go on). A lock file nobody holds was left by a killed campaign and is removed. The last
    process of the campaign to :meth:`release` removes its file.

    Parameters
    ----------
    target : path-like
        The archive.
    owner : str
        Key shared by the processes allowed together (a campaign fingerprint).
    what : str
        What ``target`` is, for the message.

    Raises
    ------
    LockHeldError
        If processes of another owner hold its lock; the message names the first of them.
    """

    def __init__(self, target: str | Path, owner: str, what: str = "archive", timeout: float = 30.0) -> None:
        target = Path(target)
        self.path = lock_path(target, owner)
        self._fd = _take(self.path, fcntl.LOCK_SH, timeout)  # waits only out another owner's look at it
        if self._fd is None:
            raise LockHeldError(f"{what} {target}: could not share {self.path} within {timeout:.0f} s")
        if os.fstat(self._fd).st_size == 0:
            _sign(self._fd)
        for other in sorted(target.parent.glob(f"{lock_path(target).name}-*")):
            if other != self.path and self._held(other):
                self.release()
                raise LockHeldError(
                    f"{what} {target} is being written by {describe_holder(_read(other))} for "
                    f"another campaign ({other.name}); wait for it to finish, or stop it, then "
                    "run again"
                )

    @staticmethod
    def _held(path: Path) -> bool:
        """Whether someone holds ``path``; removes it when nobody does (its holders were killed)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        if not _try_lock(fd, fcntl.LOCK_EX):
            os.close(fd)
            return True
        _remove_and_close(fd, path)
        return False

    def release(self) -> None:
        """Let go of the lock, removing its file if no other process holds it (idempotent)."""
        fd = getattr(self, "_fd", None)
        if fd is None:
            return
        self._fd = None
        if _try_lock(fd, fcntl.LOCK_EX):
            _remove_and_close(fd, self.path)
        else:
            os.close(fd)

    def __del__(self) -> None:
        self.release()
