"""Choice of compute device."""

from __future__ import annotations

import torch

from fourcast.errors import DeviceUnavailableError


def default_device(requested: str | None = None) -> torch.device:
    """``requested`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``), else CUDA when present, else CPU."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as err:
            raise DeviceUnavailableError(
                f"expected a device such as cpu, cuda, cuda:1 or mps, found {requested!r}"
            ) from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {requested!r} requested but CUDA is not available on this machine"
            )
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
