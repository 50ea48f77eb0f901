"""Progress of long work, the same way everywhere: a live bar on a terminal, plain log lines otherwise.

``FOURCAST_PROGRESS`` chooses: ``bar`` (tqdm), ``log`` (a line on the ``fourcast.progress``
logger every ``FOURCAST_PROGRESS_EVERY`` seconds, default 30, and one when done: readable in log
files, no carriage returns), ``off``. Unset: ``bar`` when stderr is a terminal, else ``log``.
Every stage that makes a person wait (synthesis, ingest, training, forecast, scoring) reports through
:func:`progress`, which returns an object with tqdm's ``update``/``set_postfix``/``n`` and a context manager.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping

MODE_ENV = "FOURCAST_PROGRESS"
EVERY_ENV = "FOURCAST_PROGRESS_EVERY"
MODES = ("bar", "log", "off")

log = logging.getLogger("fourcast.progress")


def progress_mode() -> str:
    """``bar``, ``log`` or ``off`` from ``$FOURCAST_PROGRESS`` (unknown values: the default for this
    stderr)."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in MODES:
        return mode
    return "bar" if sys.stderr.isatty() else "log"


def _every_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(EVERY_ENV, "30")))
    except ValueError:
        return 30.0


def _duration(seconds: float) -> str:
    """``1h02m``, ``4m05s``, ``12s``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LogProgress:
    """Progress as log lines: ``label: 120/400 steps (30%), 2.1 steps/s, ETA 2m13s, loss=0.0123``.

    Parameters
    ----------
    total : int
        Units of work in all (including ``initial``).
    label : str
        What is being done, as a person would say it (``training afno-tiny``).
    unit : str
        Name of one unit, plural (``steps``, ``member-steps``, ``shards``).
    initial : int
        Units already done (a resumed job).
    every_s : float
        Seconds between lines; a line is also written when the work completes.
    """

    def __init__(self, total: int, label: str, unit: str, initial: int = 0, every_s: float = 30.0) -> None:
        self.total, self.label, self.unit, self.every_s = int(total), label, unit, every_s
        self.n = self._start_n = int(initial)
        self._started = self._last = time.monotonic()
        self._postfix: dict[str, object] = {}
        self._logged_n = self.n

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if self.n >= self.total or now - self._last >= self.every_s:
            self._line(now)

    def set_postfix(self, values: Mapping[str, object] | None = None, refresh: bool = True, **kwargs) -> None:
        self._postfix = {**dict(values or {}), **kwargs}

    def _line(self, now: float) -> None:
        """Log one line. Rate and ETA come from the units done since the previous line, so work whose
        units slow down on the way (longer training rollouts) is not promised an early end."""
        since_n, since_s = self.n - self._logged_n, now - self._last
        self._last, self._logged_n = now, self.n
        overall = (self.n - self._start_n) / max(now - self._started, 1e-9)
        rate = since_n / since_s if since_n > 0 and since_s > 0 else overall
        eta = (self.total - self.n) / rate if rate > 0 else math.inf
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        extra = "".join(f", {key}={value}" for key, value in self._postfix.items())
        log.info(
            "%s: %d/%d %s%s, %.3g %s/s, elapsed %s, ETA %s%s",
            self.label,
            self.n,
            self.total,
            self.unit,
            share,
            rate,
            self.unit,
            _duration(now - self._started),
            _duration(eta) if self.n < self.total else "0s",
            extra,
        )

    def close(self) -> None:
        """A last line, unless the last one already said where the work stopped."""
        if self.n != self._logged_n:
            self._line(time.monotonic())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Off(LogProgress):
    """Counts, says nothing."""

    def _line(self, now: float) -> None:
        self._last, self._logged_n = now, self.n


def progress(total: int, label: str, unit: str, initial: int = 0, enabled: bool = True):
    """A progress reporter for ``total`` units of work, as ``$FOURCAST_PROGRESS`` asks (see the module).

    ``enabled=False`` (another rank reports, nothing to do) gives one that says nothing.
    """
    mode = progress_mode() if enabled and total else "off"
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=label,
            unit=unit.rstrip("s") or unit,
            dynamic_ncols=True,
            smoothing=0.1,
            mininterval=0.5,
        )
    if mode == "log":
        return LogProgress(total, label, unit, initial, _every_seconds())
    return _Off(total, label, unit, initial)
