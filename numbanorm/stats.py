"""One-pass moments of an array, and standardization with them (the fronts of the moments engine)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._backend import cpu
from ._checks import as_float_array, check_axes, check_channel_axis
from ._layout import reduction_output, reduction_view
from .moments import Moments

__all__ = ["moments", "standardize"]


def _kept_axes(ndim: int, axis: object, channel_axis: object) -> tuple[int, ...]:
    """The axes statistics are kept per, from exactly one of ``axis`` (reduced) or ``channel_axis``."""
    if channel_axis is not None:
        if axis is not None:
            raise ValueError("give either axis (the axes reduced over) or channel_axis (the axis kept), not both")
        if ndim < 1:
            raise ValueError("channel_axis needs an input with at least 1 dim, got a 0-d array (a scalar)")
        return (check_channel_axis(channel_axis, ndim),)
    reduced = check_axes(axis, ndim)
    return tuple(i for i in range(ndim) if i not in reduced)


def moments(x: ArrayLike, axis: int | tuple[int, ...] | None = None, *, channel_axis: int | None = None) -> Moments:
    """Per-channel (or per-row) ``Moments`` of ``x`` in one pass, accumulated in float64.

    ``axis``: the axes reduced over (None: all), as in ``np.mean``; the result has the shape of
    ``x`` without them. ``channel_axis``: the BatchNorm way of saying the same thing, the one
    axis statistics are kept per (every other axis is reduced); give one or the other.
    Examples: BN on NCHW is ``channel_axis=1``; LN rows of (N, L, D) are ``axis=-1``; feature
    columns of an (N, F) table are ``axis=0``.
    """
    x = as_float_array(x)
    keep = _kept_axes(x.ndim, axis, channel_axis)
    stats_shape = tuple(x.shape[i] for i in keep)
    if x.size == 0:
        result = Moments.empty(stats_shape)
        return result
    x3, _ = reduction_view(x, keep)
    with cpu.kernel_guard:
        count, mean, m2 = cpu.channel_moments(cpu.kernel_array(x3), cpu.num_threads())
    return Moments(count, mean.reshape(stats_shape), m2.reshape(stats_shape))


def standardize(x: ArrayLike, axis: int | tuple[int, ...] | None = 0, *, stats: Moments | None = None,
                ddof: int = 0, eps: float = 0.0) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps)`` with statistics over ``axis`` (default: the sample axis 0).

    Statistics come from ``x`` (one pass) or from ``stats`` (e.g. merged over chunks), whose
    shape must be ``x``'s without the ``axis`` dims. Entries with zero variance (and ``eps=0``)
    are only centered, as scikit-learn's ``StandardScaler`` does. Returns x's dtype.
    """
    x = as_float_array(x)
    reduced = check_axes(axis, x.ndim)
    keep = tuple(i for i in range(x.ndim) if i not in reduced)
    stats_shape = tuple(x.shape[i] for i in keep)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0.0 or not np.isfinite(eps):
        raise ValueError(f"eps must be a finite real number >= 0, got {eps!r}")
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative int, got {ddof!r}")
    if stats is None:
        stats = moments(x, reduced)
    elif not isinstance(stats, Moments) or stats.shape != stats_shape:
        raise ValueError(f"stats must be a Moments of shape {stats_shape}, got {getattr(stats, 'shape', stats)!r}")
    if x.size == 0:
        return np.empty(x.shape, x.dtype)
    x3, moved = reduction_view(x, keep)
    result, out3 = reduction_output(x, keep, moved)
    denom = stats.var(ddof).reshape(-1) + eps
    scale = np.divide(1.0, np.sqrt(denom), out=np.ones_like(denom), where=denom != 0)
    with cpu.kernel_guard:
        cpu.channel_affine(cpu.kernel_array(x3), stats.mean.reshape(-1), scale, np.zeros_like(scale),
                           cpu.kernel_array(out3), cpu.num_threads())
    return result
