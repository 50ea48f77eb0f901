"""Replace a file or directory in one step, so readers never see a half-written result.

Every writer of fourcast (stores, archives, checkpoints, manifests, catalogue, summaries, reports)
goes through :func:`atomic_output`::

    with atomic_output(path) as tmp:
        tmp.write_text(text)          # or dataset.to_zarr(tmp), torch.save(..., tmp), …

On success ``tmp`` is renamed onto ``path``; on any exception — ``KeyboardInterrupt`` included —
``tmp`` is removed and ``path`` keeps its previous content (or stays absent).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(
    path: str | Path, *, temporary: str | Path | None = None, tag: str = "partial"
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or Path
        The file or directory to produce (replaced as a whole if it exists, see :func:`replace_path`).
    temporary : str or Path, optional
        The temporary to use, for writers that name theirs (e.g. recording the writing process);
        by default a fresh :func:`temporary_sibling` of ``path`` tagged ``tag``.

    Yields
    ------
    Path
        The temporary path: absent at first; the block creates it (file or directory).

    Notes
    -----
    Catches :class:`BaseException`, so Ctrl-C or ``SystemExit`` inside the block (or in the final
    rename) leaves neither a partial file nor a temporary behind.
    """
    final = Path(path)
    tmp = Path(temporary) if temporary is not None else temporary_sibling(final, tag)
    try:
        yield tmp
        replace_path(tmp, final)
    except BaseException:
        discard(tmp)
        raise


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
