"""Checkpoints: model checkpoints that rebuild a :class:`~fourcast.forecaster.Forecaster`, and
training states that let ``fourcast train --resume`` continue a run exactly.

Both are written atomically (temporary name, then rename), so a kill at any moment leaves the
previous complete file in place, and read with ``torch.load(weights_only=True)`` so a checkpoint
can never run code: they hold only tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fourcast.errors import CheckpointError
from ingest.atomic import discard, replace_path, temporary_sibling

FORMAT_VERSION = 1
TRAINING_STATE_VERSION = 1
TRAINING_STATE_KEYS = ("model_state", "optimizer_state", "scheduler_state", "scaler_state", "step", "phase",
                       "phase_step", "cursor", "rng_states", "best_score", "best_step", "history", "config", "meta",
                       "lineage")


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
            raise CheckpointError(f"checkpoint channels {self.channels} differ from the data's {list(channels)}")
        for name, mine, theirs in (("lat", self.lat, lat), ("lon", self.lon, lon)):
            theirs = np.asarray(theirs, dtype=float)
            if len(mine) != theirs.size or not np.allclose(mine, theirs, atol=1e-6):
                raise CheckpointError(
                    f"checkpoint {name} grid ({len(mine)} points, {mine[0]:.3f}..{mine[-1]:.3f}) differs from the data's "
                    f"({theirs.size} points, {theirs[0]:.3f}..{theirs[-1]:.3f})"
                )


    def check_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Raise :class:`CheckpointError` unless the normalisation statistics equal the checkpoint's."""
        for name, mine, theirs in (("mean", self.mean, mean), ("std", self.std, std)):
            theirs = np.asarray(theirs, dtype=float)
            if theirs.shape != (len(mine),) or not np.allclose(mine, theirs, rtol=1e-6, atol=0.0):
                differ = [c for c, a, b in zip(self.channels, mine, theirs.tolist()) if not np.isclose(a, b, rtol=1e-6)]
                raise CheckpointError(f"checkpoint normalisation {name} differs from the store's for channels "
                                      f"{differ}: checkpoint {mine}, store {theirs.tolist()}")


def _save_atomically(payload: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        torch.save(payload, tmp)
        return replace_path(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def _load_payload(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {err}") from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a fourcast {what} (a dict), found {type(payload).__name__}")
    return payload


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` atomically."""
    return _save_atomically({"format_version": FORMAT_VERSION, "model_state": model.state_dict(), "meta": asdict(meta)},
                            path)


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
        raise CheckpointError(f"{path}: expected a fourcast checkpoint of format {FORMAT_VERSION}, "
                              f"found format {payload.get('format_version')!r}")
    return payload["model_state"], _meta(payload, path)


def _meta(payload: dict, path: str | Path) -> CheckpointMeta:
    try:
        return CheckpointMeta(**payload["meta"])
    except (TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: checkpoint metadata does not match CheckpointMeta: {err}") from err


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
        raise CheckpointError(f"{path}: expected a fourcast training state of version {TRAINING_STATE_VERSION}, "
                              f"found version {version!r}{hint}")
    missing = [key for key in TRAINING_STATE_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: training state lacks {missing}")
    return {**payload, "meta": _meta(payload, path)}
