"""Checkpoints: everything needed to rebuild a :class:`~fourcast.forecaster.Forecaster`.

Written atomically (temporary name, then rename); read with ``torch.load(weights_only=True)``
so a checkpoint can never run code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fourcast.errors import CheckpointError
from ingest.atomic import discard, replace_path, temporary_sibling

FORMAT_VERSION = 1


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


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "model_state": model.state_dict(), "meta": asdict(meta)}
    tmp = temporary_sibling(path)
    try:
        torch.save(payload, tmp)
        return replace_path(tmp, path)
    except BaseException:
        discard(tmp)
        raise


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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a fourcast checkpoint of format {FORMAT_VERSION}, found {found!r}")
    try:
        meta = CheckpointMeta(**payload["meta"])
    except TypeError as err:
        raise CheckpointError(f"{path}: checkpoint metadata does not match CheckpointMeta: {err}") from err
    return payload["model_state"], meta
