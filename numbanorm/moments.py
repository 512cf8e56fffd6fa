"""Mergeable moments: per-channel (count, mean, M2) that combine exactly across any split.

``moments`` computes them in one pass with the engine's kernels; ``merge_moments`` combines two
sets with Chan et al.'s parallel formula (the same ``chan_merge`` the engine uses between its own
blocks), so statistics of data spread over chunks, processes or machines equal, up to float64
rounding, the statistics of the whole. ``batch_norm(..., stats=...)`` then normalizes with them
(SyncBatchNorm), and ``standardize`` is the column-standardization use case.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from . import _engine
from ._checks import (
    as_float_array,
    check_axes,
    check_channel_axis,
)
from ._config import kernel_guard, num_threads
from ._engine import chan_merge
from ._halfio import kernel_array
from ._layout import reduction_output, reduction_view

__all__ = ["Moments", "MOMENTS_DTYPE", "moments", "merge_moments", "standardize"]

#: Structured dtype of one (count, mean, m2) record; ``Moments.to_records`` / ``from_records``.
MOMENTS_DTYPE = np.dtype([("count", np.float64), ("mean", np.float64), ("m2", np.float64)])


class _Fields(NamedTuple):
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray


class Moments(_Fields):
    """Count, mean and M2 = sum((x - mean)**2) per channel (or row), all float64 arrays of one shape.

    A NamedTuple, so ``count, mean, m2 = m`` works. ``count`` may differ between entries
    (e.g. masked data); a scalar count is broadcast. An entry with count 0 is the identity of
    ``merge`` (its mean and m2 are ignored, and ``var`` is NaN there).
    """

    __slots__ = ()

    def __new__(cls, count: ArrayLike, mean: ArrayLike, m2: ArrayLike) -> Moments:
        mean = np.array(mean, dtype=np.float64)
        m2 = np.array(m2, dtype=np.float64)
        if mean.shape != m2.shape:
            raise ValueError(f"mean and m2 must have one shape, got {mean.shape} and {m2.shape}")
        try:
            count = np.array(np.broadcast_to(np.asarray(count, np.float64), mean.shape))
        except ValueError:
            raise ValueError(f"count must be a scalar or have the shape of mean, {mean.shape}") from None
        if np.any(count < 0) or not np.all(np.isfinite(count)):
            raise ValueError("count must be finite and non-negative")
        if np.any(m2 < 0):
            raise ValueError("m2 (sum of squared deviations) must be non-negative")
        return super().__new__(cls, count, mean, m2)

    # -- construction and conversion -------------------------------------------------------
    @classmethod
    def empty(cls, shape: int | tuple[int, ...]) -> Moments:
        """Moments of no data (count 0): the identity of ``merge``, to start a running merge."""
        return cls(0.0, np.zeros(shape), np.zeros(shape))

    @classmethod
    def from_mean_var(cls, count: ArrayLike, mean: ArrayLike, var: ArrayLike, ddof: int = 0) -> Moments:
        """From a count, mean and variance computed with ``ddof`` (e.g. stored statistics)."""
        count = np.asarray(count, np.float64)
        return cls(count, mean, np.asarray(var, np.float64) * np.maximum(count - ddof, 0.0))

    def to_array(self) -> np.ndarray:
        """One float64 buffer ``(3, *shape)``: rows count, mean, m2 (e.g. for MPI)."""
        return np.stack([self.count, self.mean, self.m2])

    @classmethod
    def from_array(cls, buf: ArrayLike) -> Moments:
        """Inverse of ``to_array``."""
        buf = np.asarray(buf, np.float64)
        if buf.ndim < 1 or buf.shape[0] != 3:
            raise ValueError(f"buf must have shape (3, ...) (count, mean, m2), got {buf.shape}")
        return cls(buf[0], buf[1], buf[2])

    def to_records(self) -> np.ndarray:
        """A structured array of ``MOMENTS_DTYPE`` with this shape."""
        rec = np.empty(self.shape, MOMENTS_DTYPE)
        rec["count"], rec["mean"], rec["m2"] = self.count, self.mean, self.m2
        return rec

    @classmethod
    def from_records(cls, rec: np.ndarray) -> Moments:
        """Inverse of ``to_records``."""
        if isinstance(rec, np.void):  # one record, e.g. an element of a record array
            rec = np.asarray(rec)
        if not isinstance(rec, np.ndarray) or rec.dtype != MOMENTS_DTYPE:
            got = getattr(rec, 'dtype', type(rec))
            raise TypeError(f"rec must be an ndarray of dtype {MOMENTS_DTYPE}, got {got!r}")
        return cls(rec["count"], rec["mean"], rec["m2"])

    # -- statistics ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.mean.shape

    def var(self, ddof: int = 0) -> np.ndarray:
        """Variance ``m2 / (count - ddof)``; NaN where ``count <= ddof``."""
        denom = self.count - ddof
        return np.divide(self.m2, denom, out=np.full(self.shape, np.nan), where=denom > 0)

    def std(self, ddof: int = 0) -> np.ndarray:
        return np.sqrt(self.var(ddof))

    def merge(self, *others: Moments) -> Moments:
        """Moments of the union of this data and ``others``' (Chan's formula, left to right)."""
        result = self
        for other in others:
            result = merge_moments(result, other)
        return result

    # -- dunder ----------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Moments) and all(
            np.array_equal(a, b, equal_nan=True) for a, b in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def __repr__(self) -> str:
        def fmt(a: np.ndarray) -> str:
            return np.array2string(a, precision=6, threshold=8, edgeitems=3, separator=", ")

        count = self.count
        c = (f"{count.flat[0]:g}" if count.size and np.all(count == count.flat[0]) else fmt(count))
        return f"Moments(shape={self.shape}, count={c}, mean={fmt(self.mean)}, var={fmt(self.var())})"


@_engine._serial
def _merge_arrays(na, ma, m2a, nb, mb, m2b, n, m, m2):
    for i in range(na.shape[0]):
        n[i], m[i], m2[i] = chan_merge(na[i], ma[i], m2a[i], nb[i], mb[i], m2b[i])


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Moments of the union of the data behind ``a`` and ``b`` (Chan et al.'s combine).

    Exact in real arithmetic for any split of the data, so a tree of merges over chunks,
    processes or machines reproduces the moments of the whole up to float64 rounding.
    """
    if not isinstance(a, Moments) or not isinstance(b, Moments):
        raise TypeError(f"merge_moments needs two Moments, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"cannot merge Moments of shapes {a.shape} and {b.shape}")
    flat = [np.ascontiguousarray(f).reshape(-1) for f in (*a, *b)]
    out = [np.empty(a.count.size) for _ in range(3)]
    _merge_arrays(*flat, *out)
    return Moments(*(o.reshape(a.shape) for o in out))


def _kept_axes(ndim: int, axis: object, channel_axis: object) -> tuple[int, ...]:
    """The axes statistics are kept per, from exactly one of ``axis`` (reduced) or ``channel_axis``."""
    if channel_axis is not None:
        if axis is not None:
            raise ValueError("give either axis (the axes reduced over) or channel_axis (the axis kept), not both")
        if ndim < 1:
            raise ValueError("channel_axis needs an input with at least 1 dim")
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
    with kernel_guard:
        count, mean, m2 = _engine.channel_moments(kernel_array(x3), num_threads())
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
    with kernel_guard:
        _engine.channel_affine(kernel_array(x3), stats.mean.reshape(-1), scale, np.zeros_like(scale),
                               kernel_array(out3), num_threads())
    return result
