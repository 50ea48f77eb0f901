"""Exception types raised by :mod:`ingest`."""


class IngestError(Exception):
    """Base class of every error raised by :mod:`ingest`."""


class UnknownVariableError(IngestError, KeyError):
    """A variable id is not in the lexicon, or a source lacks a requested variable."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class StoreSchemaError(IngestError, ValueError):
    """A store, or a dataset about to be written, does not have the fourcast layout."""


class SourceLayoutError(IngestError, ValueError):
    """An input file does not look like any ERA5 layout fourcast reads."""
