"""Mergeable moments: per-channel (count, mean, M2) that combine exactly across any split.

``merge_moments`` combines two sets with Chan et al.'s parallel formula (the formula of the CPU
engine's ``chan_merge``, which merges the kernels' own blocks; here vectorized in NumPy), so
statistics of data spread over chunks, processes or machines equal, up to float64 rounding, the
statistics of the whole. ``numbanorm.moments(x, ...)`` computes them in one pass,
``batch_norm(..., stats=...)`` normalizes with them (SyncBatchNorm), and ``standardize`` is the
column-standardization use case.

A leaf: it imports nothing of the package, so the argument checks and every backend may use it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Moments", "MOMENTS_DTYPE", "merge_moments"]

#: Structured dtype of one (count, mean, m2) record; ``Moments.to_records`` / ``from_records``.
MOMENTS_DTYPE = np.dtype([("count", np.float64), ("mean", np.float64), ("m2", np.float64)])


class _Fields(NamedTuple):
    # (a field named like tuple.count, which mypy reports as an incompatible override)
    count: np.ndarray  # type: ignore[assignment]
    mean: np.ndarray
    m2: np.ndarray


class Moments(_Fields):
    """Count, mean and M2 = sum((x - mean)**2) per channel (or row), all float64 arrays of one shape.

    A NamedTuple, so ``count, mean, m2 = m`` works. ``count`` may differ between entries (e.g.
    masked data); a scalar count is broadcast. An entry with count 0 is the identity of ``merge``
    (its mean and m2 are ignored, and ``var`` is NaN there). ``Moments(count, mean, m2)``
    builds one (see ``__new__``).

    See Also
    --------
    numbanorm.moments : compute them from an array, in one pass.
    merge_moments : combine two sets.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> m = nb.Moments(3, [3.0, 6.0], [8.0, 32.0])
    >>> m
    Moments(shape=(2,), count=3, mean=[3., 6.], var=[ 2.666667, 10.666667])
    >>> print(m.var(ddof=1), m.std(ddof=1))
    [ 4. 16.] [2. 4.]
    >>> count, mean, m2 = m
    >>> print(count)
    [3. 3.]
    """

    __slots__ = ()

    def __new__(cls, count: ArrayLike, mean: ArrayLike, m2: ArrayLike) -> Moments:
        """Moments from their three fields, converted to float64 arrays of one shape.

        Parameters
        ----------
        count : array_like
            The number of values per entry: a scalar, or of ``mean``'s shape; finite and >= 0.
        mean : array_like
            The mean per entry.
        m2 : array_like
            The sum of squared deviations from the mean per entry (>= 0), of ``mean``'s shape.

        Returns
        -------
        Moments
            The moments.

        Raises
        ------
        ValueError
            ``mean`` and ``m2`` differ in shape; ``count`` does not broadcast to it, or is negative or
            not finite; ``m2`` is negative.
        """
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
        """Moments of no data (count 0): the identity of ``merge``, to start a running merge.

        Parameters
        ----------
        shape : int or tuple of int
            The shape of the entries.

        Returns
        -------
        Moments
            Count 0, mean and m2 0, of ``shape``.
        """
        return cls(0.0, np.zeros(shape), np.zeros(shape))

    @classmethod
    def from_mean_var(cls, count: ArrayLike, mean: ArrayLike, var: ArrayLike, ddof: int = 0) -> Moments:
        """From a count, mean and variance computed with ``ddof`` (e.g. stored statistics).

        Parameters
        ----------
        count : array_like
            The number of values per entry (a scalar, or of ``mean``'s shape).
        mean : array_like
            The mean per entry.
        var : array_like
            The variance per entry, ``m2 / (count - ddof)``.
        ddof : int, default 0
            The delta degrees of freedom ``var`` was computed with (1: unbiased).

        Returns
        -------
        Moments
            ``m2 = var * max(count - ddof, 0)``.
        """
        count = np.asarray(count, np.float64)
        return cls(count, mean, np.asarray(var, np.float64) * np.maximum(count - ddof, 0.0))

    def to_array(self) -> np.ndarray:
        """One float64 buffer ``(3, *shape)``: rows count, mean, m2 (e.g. for MPI).

        Returns
        -------
        numpy.ndarray
            ``np.stack([count, mean, m2])``; ``from_array`` is the inverse.
        """
        return np.stack([self.count, self.mean, self.m2])

    @classmethod
    def from_array(cls, buf: ArrayLike) -> Moments:
        """Inverse of ``to_array``.

        Parameters
        ----------
        buf : array_like
            Shape ``(3, ...)``: count, mean, m2.

        Returns
        -------
        Moments
            The moments ``buf`` holds.

        Raises
        ------
        ValueError
            ``buf`` is not of shape ``(3, ...)``.
        """
        buf = np.asarray(buf, np.float64)
        if buf.ndim < 1 or buf.shape[0] != 3:
            raise ValueError(f"buf must have shape (3, ...) (count, mean, m2), got {buf.shape}")
        return cls(buf[0], buf[1], buf[2])

    def to_records(self) -> np.ndarray:
        """A structured array of ``MOMENTS_DTYPE`` with this shape.

        Returns
        -------
        numpy.ndarray
            Fields ``count``, ``mean``, ``m2``; ``from_records`` is the inverse.
        """
        rec = np.empty(self.shape, MOMENTS_DTYPE)
        rec["count"], rec["mean"], rec["m2"] = self.count, self.mean, self.m2
        return rec

    @classmethod
    def from_records(cls, rec: np.ndarray) -> Moments:
        """Inverse of ``to_records``.

        Parameters
        ----------
        rec : numpy.ndarray or numpy.void
            A structured array (or one record) of ``MOMENTS_DTYPE``.

        Returns
        -------
        Moments
            The moments ``rec`` holds.

        Raises
        ------
        TypeError
            ``rec`` is not of ``MOMENTS_DTYPE``.
        """
        if isinstance(rec, np.void):  # one record, e.g. an element of a record array
            rec = np.asarray(rec)
        if not isinstance(rec, np.ndarray) or rec.dtype != MOMENTS_DTYPE:
            got = getattr(rec, 'dtype', type(rec))
            raise TypeError(f"rec must be an ndarray of dtype {MOMENTS_DTYPE}, got {got!r}")
        return cls(rec["count"], rec["mean"], rec["m2"])

    # -- statistics ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the entries (of ``mean``)."""
        return self.mean.shape

    def var(self, ddof: int = 0) -> np.ndarray:
        """Variance ``m2 / (count - ddof)``; NaN where ``count <= ddof``.

        Parameters
        ----------
        ddof : int, default 0
            Delta degrees of freedom (1: the unbiased variance).

        Returns
        -------
        numpy.ndarray
            Float64, of this shape.
        """
        denom = self.count - ddof
        var: np.ndarray = np.divide(self.m2, denom, out=np.full(self.shape, np.nan), where=denom > 0)
        return var

    def std(self, ddof: int = 0) -> np.ndarray:
        """Standard deviation ``sqrt(var(ddof))``.

        Parameters
        ----------
        ddof : int, default 0
            Delta degrees of freedom.

        Returns
        -------
        numpy.ndarray
            Float64, of this shape; NaN where ``count <= ddof``.
        """
        std: np.ndarray = np.sqrt(self.var(ddof))
        return std

    def merge(self, *others: Moments) -> Moments:
        """Moments of the union of this data and ``others``' (Chan's formula, left to right).

        Parameters
        ----------
        *others : Moments
            Moments of this shape.

        Returns
        -------
        Moments
            The merged moments.

        Raises
        ------
        TypeError, ValueError
            As ``merge_moments``.
        """
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


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Moments of the union of the data behind ``a`` and ``b`` (Chan et al.'s combine).

    Exact in real arithmetic for any split of the data, so a tree of merges over chunks,
    processes or machines reproduces the moments of the whole up to float64 rounding. An entry
    with count 0 is the identity; one whose mean is ±inf or nan gives ±inf or nan (as the sum of
    all values would) and M2 nan, as the kernels do.

    Parameters
    ----------
    a : Moments
        Moments of one part of the data.
    b : Moments
        Moments of another part, of ``a``'s shape.

    Returns
    -------
    Moments
        Moments of both parts.

    Raises
    ------
    TypeError
        ``a`` or ``b`` is not a ``Moments``.
    ValueError
        Their shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    >>> merged = nb.merge_moments(nb.moments(x[:1], 0), nb.moments(x[1:], 0))
    >>> merged == nb.moments(x, 0)
    True
    >>> print(merged.mean, merged.var())
    [3. 6.] [ 2.66666667 10.66666667]
    """
    if not isinstance(a, Moments) or not isinstance(b, Moments):
        raise TypeError(f"merge_moments needs two Moments, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"cannot merge Moments of shapes {a.shape} and {b.shape}")
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    with np.errstate(all="ignore"):  # the masked entries below compute 0/0 or inf - inf
        fb = nb / n
        delta = mb - ma
        mean = ma + delta * fb
        m2 = m2a + m2b + delta * delta * na * fb
        finite = np.isfinite(ma) & np.isfinite(mb)
        mean = np.where(finite, mean, ma + mb)
        m2 = np.where(finite, m2, np.nan)
    mean = np.where(nb == 0, ma, np.where(na == 0, mb, mean))
    m2 = np.where(nb == 0, m2a, np.where(na == 0, m2b, m2))
    return Moments(n, mean, m2)
