"""Checks made before a stage does any work: folders writable, devices present, inputs where they must be.

Each raises the pipeline's error naming what was asked and what was found
(:class:`~pipeline.errors.OutputPathError`, :class:`~pipeline.errors.StageInputError`), so a
run fails in its first second rather than after an hour of training.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ingest.dims import TIME
from ingest.schema import open_store
from pipeline.config import TrainConfig
from pipeline.errors import OutputPathError, StageInputError  # re-exported
from pipeline.lineage import minute
from pipeline.settings import config_time


def require_writable(folder: Path, what: str) -> None:
    """Raise :class:`OutputPathError` unless files can be created in ``folder``.

    A folder that does not exist yet is judged by the nearest existing one it would be created
    in. The probe creates and deletes a file there: permission bits say nothing of a read-only
    filesystem, nor of what root may do. Nothing is left behind.

    Parameters
    ----------
    folder : pathlib.Path
        Where the stage will write.
    what : str
        What the folder is, for the message (``"workdir"``, ``"archive folder"``).
    """
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise OutputPathError(f"{what} {folder} cannot be written: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".fourcast-write-probe-")
    except OSError as err:
        raise OutputPathError(f"{what} {folder} cannot be written: {err.strerror} in {existing}") from err
    os.close(handle)
    os.unlink(probe)


def tracking_folder(tracking_uri: str) -> Path | None:
    """The local folder an MLflow tracking URI writes to (a SQLite file's folder, a file store), else
    ``None``."""
    if tracking_uri.startswith("sqlite:///"):
        database = tracking_uri.removeprefix("sqlite:///").split("?")[0]
        return None if database in ("", ":memory:") else Path(database).parent
    if tracking_uri.startswith("file:"):
        return Path(tracking_uri.removeprefix("file:").removeprefix("//"))
    return None if "://" in tracking_uri else Path(tracking_uri)


def require_device(name: str | None, key: str) -> None:
    """Raise :class:`StageInputError` unless this machine has the device ``key`` asks for (``None``: any
    machine)."""
    if name is None:
        return
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StageInputError(
                f"{key} {name!r} requested but torch.cuda.is_available() is False on this machine; "
                "use cpu, or leave it unset to take CUDA when present"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StageInputError(
                f"{key} {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise StageInputError(
            f"{key} {name!r} requested but torch.backends.mps.is_available() is False on this machine"
        )


def require_periods_in_store(cfg: TrainConfig, store: Path) -> None:
    """Refuse ``train.train``/``train.validation`` periods that start before or end after the store's
    times."""
    times = open_store(store)[TIME].values
    first, last = config_time(times[0]), config_time(times[-1])
    for key, period in (("train.train", cfg.train), ("train.validation", cfg.validation)):
        if config_time(period.start) < first or config_time(period.end) > last:
            raise StageInputError(
                f"{key} {minute(period.start)}..{minute(period.end)} reaches outside the store, which covers "
                f"{minute(first)}..{minute(last)}; training would silently use less: choose dates "
                "within the store"
            )


def check_archive_path(archive: Path, protected: Mapping[str, Path | None]) -> None:
    """Refuse an archive path that is, holds or lies inside one of the ``protected`` inputs (links followed or
    not)."""
    for name, path in protected.items():
        if not path:
            continue
        for target, kept in (
            (Path(os.path.abspath(archive)), Path(os.path.abspath(path))),
            (Path(archive).resolve(), Path(path).resolve()),
        ):
            if target == kept or kept in target.parents or target in kept.parents:
                relation = "is" if target == kept else "lies inside" if kept in target.parents else "holds"
                raise StageInputError(
                    f"the archive path {archive} {relation} the {name} {path}; the forecast would "
                    "replace it: choose another archive path"
                )


def require_one_process_to_stream(streaming: bool, world_size: int) -> None:
    """Refuse to stream scores (``forecast.stream_scores``) from a campaign shared by several processes."""
    if streaming and world_size > 1:
        raise StageInputError(
            f"forecast.stream_scores needs every member of an init time in one process, but "
            f"{world_size} processes share this campaign; run one process, or score the "
            "archive afterwards with `fourcast score`"
        )
