"""The one tolerance rule for comparing float32 rollouts across machines.

Two float32 computations of the same forecast that differ only in summation order (another
batch size, another BLAS kernel, another CPU's vector width) agree to a few units in the last
place *of the field's typical magnitude*, not of each element: a wind that happens to be 0.04 m/s
carries the absolute rounding error of the 10 m/s winds around it. A purely relative tolerance
therefore fails near zero crossings on some machines and not on others. The rule used everywhere
a rollout is compared is::

    |actual - expected| <= rel * std(expected)        (per variable, over all its elements)

with ``rel = 1e-5`` (about 100 float32 ulps), so the test holds on any x86-64 or ARM CPU while
still catching a wrong member, lead time or channel (those differ by O(std)).
"""

from __future__ import annotations

import numpy as np

FLOAT32_ROLLOUT_REL = 1e-5


def assert_close_to_spread(actual, expected, rel: float = FLOAT32_ROLLOUT_REL, name: str = "") -> None:
    """Assert ``actual`` equals ``expected`` within ``rel`` times the spread of ``expected``.

    Parameters
    ----------
    actual, expected : array_like
        Same shape; any float dtype. NaNs must sit at the same places.
    rel : float
        Tolerance as a fraction of ``std(expected)`` (NaNs ignored).
    name : str
        Label used in the failure message (e.g. the variable).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    spread = float(np.nanstd(expected))
    atol = rel * spread if spread > 0 else rel
    np.testing.assert_allclose(
        actual,
        expected,
        rtol=0,
        atol=atol,
        err_msg=f"{name}: tolerance {rel:g} x std {spread:.6g} = {atol:.3g}",
    )
