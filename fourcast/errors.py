"""Exception types raised by :mod:`fourcast`."""

from ingest.errors import CoordinateMismatchError


class FourcastError(Exception):
    """Base class of every error raised by :mod:`fourcast`."""


class ModelSpecError(FourcastError, ValueError):
    """A model preset or its settings do not fit the data."""


class DataWindowError(FourcastError, ValueError):
    """A requested training/validation period does not fit the store."""


class CheckpointError(FourcastError):
    """A checkpoint is missing, unreadable, holds non-finite values, or disagrees with the data."""


class CheckpointGridError(CheckpointError, CoordinateMismatchError):
    """Data (or a resumed run) has other channels or another grid than the model/checkpoint."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, file-size limit, …); the previous one is intact."""


class NonFiniteLossError(FourcastError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


class StoreStatisticsError(FourcastError, ValueError):
    """The training store lacks usable normalisation statistics (``mean``/``std`` per channel)."""


class DeviceUnavailableError(FourcastError, RuntimeError):
    """A requested compute device is not a device name torch knows, or is absent on this machine."""


class NormaliserError(FourcastError, ValueError):
    """Normalisation statistics of the wrong shape, or a standard deviation that is not positive."""


class DistributedSetupError(FourcastError, RuntimeError):
    """The process-group environment (``torchrun`` variables, device, batch split) is inconsistent."""


class ResolutionTransferError(CheckpointError, ValueError):
    """A model cannot run on a grid other than the one it was trained on (the message says why)."""


class CudaGraphsUnavailableError(FourcastError, ValueError):
    """CUDA graphs were asked for on a device that is not CUDA (the message names the device)."""
