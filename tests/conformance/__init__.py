"""Protocol conformance suites: one test class per seam, subclassed by every implementation.

As zarr's ``zarr.testing.store.StoreTests``: a suite class (``PrognosticConformance``,
``PerturbationConformance``, ``ArchiveConformance``, ``TrackerConformance``) holds the behaviour
the Protocol promises; an implementation's test module subclasses it as ``Test<Implementation>``
and says how to build one. The suites check behaviour (shapes, labels, dtypes, determinism,
typed errors), not method names.
"""

from __future__ import annotations

OUR_PACKAGES = ("ingest", "fourcast", "ensembles", "pipeline")


def assert_typed(err: BaseException, *fragments: str) -> None:
    """``err`` is one of our own error classes and its message names every fragment."""
    assert type(err).__module__.split(".")[0] in OUR_PACKAGES, f"untyped error {type(err).__name__}: {err}"
    for fragment in fragments:
        assert fragment in str(err), f"{fragment!r} not named in: {err}"
