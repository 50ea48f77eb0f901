"""Exception types raised by :mod:`ingest`."""


class IngestError(Exception):
    """Base class of every error raised by :mod:`ingest`."""


class UnknownVariableError(IngestError, KeyError):
    """A variable id is not in the lexicon, or a source lacks a requested variable."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class StoreSchemaError(IngestError, ValueError):
    """A store, or a dataset about to be written, does not have the fourcast layout."""


class CoordinateMismatchError(IngestError, ValueError):
    """Two sets of coordinates that must agree do not (raised by :func:`ingest.grid.check_coords`).

    Other packages raise subclasses that also belong to their own hierarchy (e.g. a checkpoint's
    grid against the data's is also a ``CheckpointError``), so one handshake serves every door.
    """

    #: The dim that differs, both axes (``found`` is ``None`` when it lacks the dim), and the
    #: largest difference (``None`` when sizes or labels differ).
    dim: str | None = None
    expected: object = None
    found: object = None
    max_difference: float | None = None


class StoreGridError(StoreSchemaError, CoordinateMismatchError):
    """New data is on another grid (or has other channels) than the store it should extend."""


class SourceLayoutError(IngestError, ValueError):
    """An input file does not look like any ERA5 layout fourcast reads."""


class SourceRequestError(IngestError, ValueError):
    """A request to a :class:`~ingest.source.Source` is malformed (e.g. its times are not dates)."""


class CdsRequestError(IngestError, ValueError):
    """The Climate Data Store refused a request or failed the job it started for it."""


class RequestTooLargeError(CdsRequestError):
    """A CDS request holds more fields than the configured (or the CDS's own) cost limit."""


class CdsAuthError(IngestError, PermissionError):
    """No CDS key was found, or the CDS did not accept it (or a dataset licence is not accepted)."""


class DownloadError(IngestError, OSError):
    """A CDS download kept failing after every retry, or delivered a file of the wrong size."""


class CdsResultMismatchError(DownloadError):
    """A CDS download holds other variables, levels, times or another grid than its request asked for."""


class CorruptFileError(SourceLayoutError):
    """An input file contradicts its own structure (e.g. a GRIB message whose length or end marker is
    wrong)."""


class TruncatedFileError(CorruptFileError):
    """An input file ends before its own header says it should (an interrupted download or copy)."""


class GridMismatchError(SourceLayoutError, CoordinateMismatchError):
    """Input files disagree on the latitude/longitude grid, or a grid is not a regular one."""


class MissingVariableError(UnknownVariableError):
    """A requested variable (or pressure level) is absent from the inputs, or absent at some times."""


class SourceGridError(GridMismatchError, CoordinateMismatchError):
    """An input file is on another latitude/longitude grid than the first one read (grid.check_coords)."""


class DuplicateTimeError(SourceLayoutError):
    """The same valid time comes twice from equally preferred sources with different values."""


class UnitsError(SourceLayoutError):
    """A field's ``units`` attribute is missing, or neither the lexicon's units nor convertible to them."""


class StepTypeError(SourceLayoutError):
    """A field is a statistic over time (monthly mean, accumulation, maximum, …) where the lexicon
    expects another kind of product (an instantaneous analysis), or the other way round."""


class NonFiniteValueError(IngestError, ValueError):
    """A field that must be finite everywhere holds NaN or infinity after decoding."""


class PhysicalRangeError(IngestError, ValueError):
    """A field holds values outside its variable's physical range (wrong units or corrupt data)."""
