"""The accuracy contract of half-precision (float16 / bfloat16) results, as the README states it.

For each output element, with y64 the float64 result from float64 reference statistics::

    |y - y64| <= ulp(y64) + 2**-21 * (|x̂·γ| + |β|)

``ulp(v)`` is the spacing of the output format at |v| (its smallest subnormal spacing at 0). The
second term is what float32 evaluation of ``x̂·γ + β`` may cost where the bias cancels. A y64
beyond the format's range must give the infinity it rounds to; NaN must give NaN.
"""

from __future__ import annotations

import numpy as np

#: (precision p in bits incl. the implicit one, smallest normal exponent) per format name
#: (float32 for the gradients of float32 parameters).
_FORMATS = {"float16": (11, -14), "bfloat16": (8, -126), "float32": (24, -126)}
#: The float32-evaluation term of the bound.
AFFINE_SLACK = 2.0**-21


def ulp(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Spacing of the half format ``dtype`` at |v| (float64), at least its subnormal spacing."""
    p, emin = _FORMATS[np.dtype(dtype).name]
    a = np.abs(np.asarray(v, np.float64))
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    e = np.maximum(np.where(a > 0, e, emin), emin)
    return np.exp2(e - (p - 1))


def contract_excess(y: np.ndarray, y64: np.ndarray, affine_mag: np.ndarray) -> np.ndarray:
    """|y - y64| / bound per element (<= 1 meets the contract; 0 where both are the same
    non-finite value). ``affine_mag`` is |x̂·γ| + |β| in float64, broadcastable to y."""
    dt = np.dtype(y.dtype)
    got = np.asarray(y).astype(np.float64)
    y64 = np.broadcast_to(np.asarray(y64, np.float64), got.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        want_rounded = y64.astype(np.float32).astype(dt).astype(np.float64)
    bound = ulp(y64, dt) + AFFINE_SLACK * np.broadcast_to(np.asarray(affine_mag, np.float64), got.shape)
    finite = np.isfinite(want_rounded) & np.isfinite(y64)
    excess = np.zeros(got.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        excess[finite] = np.abs(got[finite] - y64[finite]) / bound[finite]
    nonfinite = ~finite
    # Beyond the range, or NaN: the value it rounds to (NaN matches NaN).
    same = (got[nonfinite] == want_rounded[nonfinite]) | (np.isnan(got[nonfinite]) & np.isnan(want_rounded[nonfinite]))
    excess[nonfinite] = np.where(same, 0.0, np.inf)
    return excess


def assert_contract(y: np.ndarray, y64: np.ndarray, beta: np.ndarray | float = 0.0, what: str = "") -> None:
    """``y`` (a half array) meets the contract against the float64 result ``y64`` of an affine
    ``x̂·γ + β`` with bias ``beta`` (broadcastable; |x̂·γ| is taken as |y64 - β|)."""
    beta = np.asarray(beta, np.float64)
    assert_within(y, y64, np.abs(np.asarray(y64, np.float64) - beta) + np.abs(beta), what)


def assert_within(y: np.ndarray, y64: np.ndarray, mag: np.ndarray, what: str = "") -> None:
    """|y - y64| <= ulp(y64) + 2**-21 * mag per element: the contract of a result that float32
    evaluates from terms whose magnitudes add up to ``mag`` (the gradients: see
    ``test_half_backward``)."""
    excess = contract_excess(y, y64, mag)
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape) if excess.size else ()
    assert not excess.size or excess.max() <= 1.0, (
        f"{what}: {excess.max():.3g}x the bound at {worst}: got {np.asarray(y)[worst]!r}, "
        f"y64 {np.broadcast_to(y64, excess.shape)[worst]!r}")
