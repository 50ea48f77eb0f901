"""Replace a file or directory in one step, so readers never see a half-written result."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def temporary_sibling(path: str | Path, tag: str = "partial") -> Path:
    """A fresh, unused path next to ``path`` (same filesystem, so a rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:12]}")


def replace_path(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished ``tmp`` onto ``final``, replacing whatever was there.

    A file is replaced with one ``os.replace``. A directory cannot be renamed over a non-empty
    one, so the old directory is first renamed aside and removed only once the new one is in
    place: at every moment ``final`` is either the old complete result or the new one.
    """
    tmp, final = Path(tmp), Path(final)
    if not final.exists() or not final.is_dir():
        os.replace(tmp, final)
        return final
    retired = temporary_sibling(final, tag="retired")
    os.replace(final, retired)
    os.replace(tmp, final)
    shutil.rmtree(retired, ignore_errors=True)
    return final


def discard(tmp: str | Path) -> None:
    """Remove a temporary file or directory left by a failed write."""
    tmp = Path(tmp)
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
