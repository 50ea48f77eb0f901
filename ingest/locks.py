"""One writer per store: an OS advisory lock (``fcntl.flock``) on a file beside what is written.

The lock file ``.NAME.lock`` sits next to ``NAME`` and holds, as text, who took the lock (process
id, host, start time) so that a refused writer can say who holds it. The lock belongs to the
open file, not to the text: the kernel releases it when its holder exits, however it exits
(a SIGKILL included), so a dead writer never leaves a stale lock behind, and whoever holds the
lock may treat every temporary sibling of ``NAME`` as abandoned. The file itself stays (removing
it would let two writers lock two different files of the same name).

:func:`exclusive_lock` is one writer; :func:`campaign_lock` lets the processes of one campaign
share the lock while refusing those of another.
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


def lock_path(target: str | Path) -> Path:
    """The lock file of ``target``: ``.NAME.lock`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _holder_text(owner: str = "") -> str:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"{os.getpid()} {socket.gethostname()} {started} {owner}".rstrip()


def describe_holder(text: str) -> str:
    """``process N on HOST since T`` from the text a holder wrote into its lock file."""
    parts = text.split()
    if len(parts) < 3:
        return "another process (it has not written its name yet)"
    return f"process {parts[0]} on {parts[1]} since {parts[2]}"


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace")


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _try_lock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _acquire(fd: int, mode: int, timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not _try_lock(fd, mode):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


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
    fd = _open(path)
    try:
        if not _acquire(fd, fcntl.LOCK_EX, timeout):
            raise LockHeldError(f"{what} {target} is being written by {describe_holder(_read(fd))} "
                                f"(lock {path}); wait for it to finish, or stop it, then run again")
        _write(fd, _holder_text())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class CampaignLock:
    """A lock of ``target`` shared by the processes of one campaign, refused to any other.

    Every process of the campaign holds the lock file shared (``LOCK_SH``); the file names the
    campaign (its ``owner`` key) and the process that first took it. Taking or joining the lock
    happens under a short exclusive *gate* (``.NAME.lock.gate``), so that the check "who holds
    it" and the taking are one step. Released by :meth:`release` or when the process exits.

    Parameters
    ----------
    target : path-like
        The archive.
    owner : str
        Key shared by the processes allowed together (a campaign fingerprint), no spaces.

    Raises
    ------
    LockHeldError
        If processes of another campaign hold the lock; the message names the first of them.
    """

    def __init__(self, target: str | Path, owner: str, what: str = "archive", gate_timeout: float = 30.0) -> None:
        self.path = lock_path(target)
        gate = _open(self.path.with_name(self.path.name + ".gate"))
        try:
            if not _acquire(gate, fcntl.LOCK_EX, gate_timeout):
                raise LockHeldError(f"{what} {target}: could not take {self.path}.gate within {gate_timeout:.0f} s")
            self._fd = _open(self.path)
            try:
                self._join(target, owner, what)
            except BaseException:
                os.close(self._fd)
                raise
        finally:
            os.close(gate)

    def _join(self, target: str | Path, owner: str, what: str) -> None:
        if _try_lock(self._fd, fcntl.LOCK_EX):  # nobody holds it: name the campaign, then share it
            _write(self._fd, _holder_text(owner))
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            return
        text = _read(self._fd)
        held_by = text.split()[3] if len(text.split()) > 3 else ""
        if held_by != owner:
            raise LockHeldError(f"{what} {target} is being written by {describe_holder(text)} for another campaign "
                                f"({held_by or 'unknown'}; this one is {owner}); wait for it to finish, or stop it, "
                                "then run again")
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        """Let go of the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
