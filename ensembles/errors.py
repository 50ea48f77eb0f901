"""Exception types raised by :mod:`ensembles`.

Every message says what was expected and what was found, so a failing campaign can be fixed
from the message alone.
"""

from ingest.errors import CoordinateMismatchError


class EnsembleError(Exception):
    """Base class of every error raised by :mod:`ensembles`."""


class EnsembleInputError(EnsembleError, ValueError):
    """Arguments of an ensemble run or a perturbation do not fit together.

    Raised before any work starts: non-positive member/step counts, channels or grids that do
    not match the prognostic's input coordinates, a perturbation scale of the wrong length.
    """


class EnsembleGridError(EnsembleInputError, CoordinateMismatchError):
    """An initial state is on another grid than the prognostic's input coordinates."""


class ArchiveError(EnsembleError, ValueError):
    """A forecast archive cannot be written or opened as asked.

    Raised for writes whose labels or shapes do not fit the archive's extents, and for opening
    an archive that is missing or was never finalised.
    """


class ArchiveGridError(ArchiveError, CoordinateMismatchError):
    """A write is on another grid than the archive's."""


class CampaignMismatchError(ArchiveError):
    """An archive path already holds (or is building) a different campaign.

    The message lists the settings that differ; pass ``overwrite`` to replace that archive.
    """


class CampaignIncompleteError(EnsembleError, RuntimeError):
    """A campaign's work items stayed incomplete past the waiting time (a process died).

    Relaunching the same campaign resumes it: only the missing items are computed.
    """


class NonFiniteForecastError(EnsembleError, FloatingPointError):
    """A forecast block holds NaN or infinite values; it is neither written nor recorded complete.

    The message names the init time, the member block, the lead time and the variables.
    """


class ScoringError(EnsembleError, ValueError):
    """Forecasts cannot be scored against the given truth.

    Raised when grids differ, valid times or variables are missing from the truth, NaNs appear
    in forecast or truth, or a metric's requirements (e.g. two members for fair CRPS) are
    not met.
    """


class ScoringGridError(ScoringError, CoordinateMismatchError):
    """Truth or climatology is on another grid than the forecasts."""


class RegionError(ScoringError):
    """A region is malformed, unknown, or holds no point of the grid it is applied to."""


class MissingStatisticsError(ScoringError):
    """Merged statistics lack one that a metric's finaliser reads (the message names them).

    Raised instead of a ``KeyError`` deep in a finaliser, or a silently missing score, when
    statistics were summed from a subset of :data:`ensembles.metrics.STATISTICS`.
    """
