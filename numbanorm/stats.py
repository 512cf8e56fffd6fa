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

    Give ``axis`` (the axes reduced over, as in ``np.mean``) or ``channel_axis`` (the BatchNorm
    way of saying the same thing: the one axis statistics are kept per), not both: BN on NCHW is
    ``channel_axis=1``; LN rows of (N, L, D) are ``axis=-1``; feature columns of an (N, F) table
    are ``axis=0``.

    Parameters
    ----------
    x : array_like
        Float16, bfloat16, float32 or float64. Lists and tuples are converted as NumPy converts
        them, and integers in them become float64; an integer ndarray is refused.
    axis : int or tuple of int, optional
        The axes reduced over (None: all); the result has the shape of ``x`` without them.
    channel_axis : int, optional
        The one axis kept (every other axis is reduced).

    Returns
    -------
    Moments
        Count, mean and M2 of each kept entry (float64).

    Raises
    ------
    TypeError
        x is None or not floating point; ``axis`` or ``channel_axis`` is not an int (or ints).
    ValueError
        Both ``axis`` and ``channel_axis`` given; an axis is out of range or repeated, or x is 0-d
        and an axis is given.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x = np.arange(24.0).reshape(2, 3, 4)  # (N, C, L)
    >>> m = nb.moments(x, channel_axis=1)
    >>> print(m.mean, m.var().round(3))
    [ 7.5 11.5 15.5] [37.25 37.25 37.25]
    >>> nb.moments(x, axis=-1).shape
    (2, 3)
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

    Statistics come from ``x`` (one pass) or from ``stats`` (e.g. merged over chunks). Entries
    with zero variance (and ``eps=0``) are only centered, as scikit-learn's ``StandardScaler``
    does.

    Parameters
    ----------
    x : array_like
        Float16, bfloat16, float32 or float64. Lists and tuples are converted as NumPy converts
        them, and integers in them become float64; an integer ndarray is refused.
    axis : int or tuple of int, optional
        The axes the statistics are computed over (None: all). Default 0.
    stats : Moments, optional
        Statistics to use instead of x's, of x's shape without the ``axis`` dims.
    ddof : int, default 0
        Delta degrees of freedom of the variance.
    eps : float, default 0.0
        Added to the variance; finite and >= 0.

    Returns
    -------
    numpy.ndarray
        x standardized, of x's shape and dtype.

    Raises
    ------
    TypeError
        x is None or not floating point; ``axis`` is not an int (or ints).
    ValueError
        An axis is out of range or repeated; ``eps`` or ``ddof`` is out of range; ``stats`` is not
        a ``Moments`` of the right shape.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    >>> print(nb.standardize(x).round(4))
    [[-1.2247 -1.2247]
     [ 0.      0.    ]
     [ 1.2247  1.2247]]
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
