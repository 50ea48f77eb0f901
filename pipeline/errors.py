"""Exception types raised by :mod:`pipeline`.

Every one a user can trigger derives from :class:`PipelineError`, so the CLI turns it (like the
other packages' ``IngestError``, ``FourcastError`` and ``EnsembleError``) into one line on stderr
and exit status 1 (2 for a :class:`UsageError`: a bad config or option). The modules that
raise them re-export them.
"""

from ingest.errors import CoordinateMismatchError


class PipelineError(Exception):
    """Base class of every error raised by :mod:`pipeline`."""


class UsageError(PipelineError, ValueError):
    """A command-line value or the config is malformed: the CLI exits with status 2, not 1."""


class ConfigError(UsageError):
    """The configuration file is missing, not YAML, or does not validate."""


class OptionError(UsageError):
    """A command-line value (headline score, cycle point, …) does not parse; the message shows the form."""


class StageInputError(PipelineError, ValueError):
    """A stage's config does not fit the data it is given (store step, init times, …)."""


class OutputPathError(StageInputError):
    """A folder a stage would write to cannot be created or written (a file in the way, read-only, …)."""


class StageGridError(StageInputError, CoordinateMismatchError):
    """A stage's inputs (store, climatology) disagree on channels or grid."""


class ClusterError(PipelineError, RuntimeError):
    """The Dask cluster cannot run the work: too little memory per worker, or a worker died."""


class CylcSetupError(PipelineError, RuntimeError):
    """Cylc, its global config or rsync is missing; the message says how to get them."""


class DataNotArrivedError(PipelineError, RuntimeError):
    """The analyses a cycle needs did not reach the store within the configured wait."""


class ModelUriError(PipelineError, ValueError):
    """An MLflow model URI cannot be resolved to one checkpoint file."""


class AliasError(ModelUriError):
    """A registered model, or an alias of it, that the registry does not hold."""


class TrackingServerError(PipelineError, RuntimeError):
    """The MLflow tracking server could not be started, or is not running where its state says."""


class CalibrationError(PipelineError, ValueError):
    """The calibration cannot run on the data given (too short a period), or its file does not fit the
    model."""
