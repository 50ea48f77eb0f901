"""Checkpoints: model checkpoints that rebuild a :class:`~fourcast.forecaster.Forecaster`, and
training states that let ``fourcast train --resume`` continue a run exactly.

Both are written atomically (temporary name, then rename), so a kill at any moment leaves the
previous complete file in place, and read with ``torch.load(weights_only=True)`` so a checkpoint
can never run code: they hold only tensors, numbers, strings, lists and dicts. The temporary name
``.<name>.partial-<pid>-<random>`` carries the writer's process id, so the leftovers of a killed
writer are recognised and removed (:func:`remove_stale_partials`). Loading refuses weights or
normalisation statistics that are not finite, and a standard deviation that is not positive.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from fourcast.errors import CheckpointError, CheckpointGridError, CheckpointWriteError
from ingest.atomic import atomic_output
from ingest.dims import LAT, LON
from ingest.grid import check_coords
from ingest.locks import process_running

FORMAT_VERSION = 1
TRAINING_STATE_VERSION = 1
TRAINING_STATE_KEYS = (
    "model_state",
    "optimizer_state",
    "scheduler_state",
    "scaler_state",
    "step",
    "phase",
    "phase_step",
    "cursor",
    "rng_states",
    "best_score",
    "best_step",
    "history",
    "config",
    "meta",
    "lineage",
)
#: Temporary names of checkpoints being written: ``.<name>.partial-<pid>-<random hex>``.
_PARTIAL = re.compile(r"^\..+\.partial-(?:(?P<pid>\d+)-)?[0-9a-f]+$")

log = logging.getLogger(__name__)


@dataclass
class CheckpointMeta:
    """Data facts a model was trained on; checked against the data it is later used with.

    Attributes
    ----------
    preset : str
        Model preset name in :data:`fourcast.models.registry.PRESETS`.
    channels : list of str
        Lexicon ids in channel order.
    lat, lon : list of float
        Grid in degrees.
    step_hours : int
        Forecast step.
    mean, std : list of float
        Normalisation statistics per channel, physical units.
    extra : dict
        Free-form provenance (store fingerprint, training step, …): strings and numbers only.
    """

    preset: str
    channels: list[str]
    lat: list[float]
    lon: list[float]
    step_hours: int
    mean: list[float]
    std: list[float]
    extra: dict = field(default_factory=dict)

    def check_matches(self, channels: list[str], lat: np.ndarray, lon: np.ndarray) -> None:
        """Raise :class:`CheckpointError` unless channels and grid equal the checkpoint's."""
        if list(channels) != list(self.channels):
            raise CheckpointError(
                f"checkpoint channels {self.channels} differ from the data's {list(channels)}"
            )
        check_coords(
            {LAT: self.lat, LON: self.lon},
            {LAT: lat, LON: lon},
            what="the data",
            reference="the checkpoint",
            error=CheckpointGridError,
        )

    def check_usable(self, where: str | Path) -> None:
        """Raise :class:`CheckpointError` naming the channels whose statistics cannot normalise.

        Each channel needs a finite mean and a finite, positive standard deviation.
        """
        if not len(self.mean) == len(self.std) == len(self.channels):
            raise CheckpointError(
                f"{where}: expected a mean and a std per channel ({len(self.channels)}), found "
                f"{len(self.mean)} means and {len(self.std)} stds"
            )
        for name, values, usable in (
            ("mean", self.mean, np.isfinite),
            ("std", self.std, lambda v: np.isfinite(v) & (v > 0)),
        ):
            bad = {
                c: v
                for c, v, ok in zip(
                    self.channels, values, usable(np.asarray(values, dtype=float)), strict=True
                )
                if not ok
            }
            if bad:
                wanted = "finite values" if name == "mean" else "finite, positive values"
                raise CheckpointError(
                    f"{where}: normalisation {name} of channels {sorted(bad)} is {bad}; expected "
                    f"{wanted} (the statistics it was trained with are broken)"
                )

    def check_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Raise :class:`CheckpointError` unless the normalisation statistics equal the checkpoint's."""
        for name, mine, theirs in (("mean", self.mean, mean), ("std", self.std, std)):
            theirs = np.asarray(theirs, dtype=float)
            if theirs.shape != (len(mine),) or not np.allclose(mine, theirs, rtol=1e-6, atol=0.0):
                # the store may hold a different number of channels: name those that differ in the shared
                # prefix
                differ = [
                    c
                    for c, a, b in zip(self.channels, mine, theirs.tolist(), strict=False)
                    if not np.isclose(a, b, rtol=1e-6)
                ]
                raise CheckpointError(
                    f"checkpoint normalisation {name} differs from the store's for channels "
                    f"{differ}: checkpoint {mine}, store {theirs.tolist()}"
                )


def _save_atomically(payload: dict, path: str | Path) -> Path:
    """Write ``payload`` to a temporary sibling of ``path``, then move it onto ``path``.

    Raises
    ------
    CheckpointWriteError
        If the file system refuses the write (no space, file-size limit, I/O error); the file
        at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(path, tag=f"partial-{os.getpid()}") as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as err:  # torch's zip writer reports a failed write as a RuntimeError
        raise CheckpointWriteError(_write_failure(path, err)) from err
    return path


def _write_failure(path: Path, err: BaseException) -> str:
    """Why writing ``path`` failed, the free space there, and what is left of the previous file."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    previous = (
        f"the previous {path.name} is intact" if path.exists() else f"there was no previous {path.name}"
    )
    return (
        f"the checkpoint could not be written to {path} ({type(err).__name__}: {err}); the "
        "file system there has "
        f"{free} (a full disk or a file-size limit stops a write); {previous}"
    )


def remove_stale_partials(directory: str | Path) -> list[Path]:
    """Remove the temporary checkpoint files in ``directory`` left by writers that no longer run.

    A temporary file whose name carries the id of a live process is kept (it may be being
    written); one without a process id is from an older writer and is removed too.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    directory = Path(directory)
    removed = []
    for path in sorted(directory.glob(".*.partial-*")) if directory.is_dir() else []:
        match = _PARTIAL.match(path.name)
        if not path.is_file() or match is None or (match["pid"] and process_running(int(match["pid"]))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        log.info("removed %s, the leftover of a checkpoint write that was killed", path)
    return removed


def set_aside(directory: str | Path) -> Path | None:
    """Move the checkpoints (``*.pt``) of an earlier run in ``directory`` into a new subfolder.

    Returns
    -------
    pathlib.Path or None
        ``directory/replaced-<UTC time>``, holding them; None if there were none.
    """
    directory = Path(directory)
    earlier = sorted(p for p in directory.glob("*.pt") if p.is_file()) if directory.is_dir() else []
    if not earlier:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = directory / f"replaced-{stamp}"
    aside.mkdir()
    for path in earlier:
        os.replace(path, aside / path.name)
    return aside


def _load_payload(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (truncated or corrupt?): {err}"
        ) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a fourcast {what} (a dict), found {type(payload).__name__}")
    return payload


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` atomically."""
    return _save_atomically(
        {"format_version": FORMAT_VERSION, "model_state": model.state_dict(), "meta": asdict(meta)}, path
    )


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    state_dict : dict
        Model weights (on CPU).
    meta : CheckpointMeta

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable, or not a fourcast checkpoint.
    """
    payload = _load_payload(path, "checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: expected a fourcast checkpoint of format {FORMAT_VERSION}, "
            f"found format {payload.get('format_version')!r}"
        )
    meta = _meta(payload, path)
    _check_finite(payload["model_state"], path)
    return payload["model_state"], meta


def _meta(payload: dict, path: str | Path) -> CheckpointMeta:
    try:
        meta = CheckpointMeta(**payload["meta"])
    except (TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: checkpoint metadata does not match CheckpointMeta: {err}") from err
    meta.check_usable(path)
    return meta


def _check_finite(state: dict, path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first weight tensor holding a NaN or an infinity."""
    for name, tensor in state.items():
        if (
            isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and not torch.isfinite(tensor).all()
        ):
            count = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: weight tensor {name!r} holds {count} non-finite values (NaN or inf) of "
                f"{tensor.numel()}; expected finite weights (the run that wrote it diverged?)"
            )


def save_training_state(path: str | Path, state: dict) -> Path:
    """Write a training state (see :data:`TRAINING_STATE_KEYS`) to ``path`` atomically.

    ``state["meta"]`` is a :class:`CheckpointMeta`; everything else must already be made of
    tensors, numbers, strings, lists and dicts (what ``weights_only`` loading accepts).
    """
    missing = [key for key in TRAINING_STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"training state lacks {missing}")
    payload = {**state, "meta": asdict(state["meta"]), "training_state_version": TRAINING_STATE_VERSION}
    return _save_atomically(payload, path)


def load_training_state(path: str | Path) -> dict:
    """Read a training state written by :func:`save_training_state` (``meta`` as :class:`CheckpointMeta`).

    Raises
    ------
    CheckpointError
        If the file is missing, truncated or corrupt, a model-only checkpoint, or of another version.
    """
    payload = _load_payload(path, "training state")
    version = payload.get("training_state_version")
    if version != TRAINING_STATE_VERSION:
        hint = " (a model-only checkpoint cannot resume training)" if "format_version" in payload else ""
        raise CheckpointError(
            f"{path}: expected a fourcast training state of version {TRAINING_STATE_VERSION}, "
            f"found version {version!r}{hint}"
        )
    missing = [key for key in TRAINING_STATE_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: training state lacks {missing}")
    meta = _meta(payload, path)
    _check_finite(payload["model_state"], path)
    return {**payload, "meta": meta}
