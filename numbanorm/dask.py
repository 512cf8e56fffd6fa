"""numbanorm on Dask arrays: normalization of arrays larger than memory, on one machine or a cluster.

Statistics are per-chunk ``Moments`` computed by numbanorm's kernels, combined by a tree
reduction with ``merge_moments`` (``dask.array.reduction``); normalization is blockwise with the
same kernels. Install with ``pip install 'numbanorm[dask]'``. Importing ``numbanorm`` never
imports this module or dask.

Each chunk runs numbanorm's kernels on one thread: dask already runs one task per core, and
nested thread pools would oversubscribe the cores. ``batch_norm``/``standardize`` compute the
statistics when called (one pass over the data) and return a lazy normalized array (a second
pass when computed); ``persist()`` the input first if it fits in the cluster's memory. Work goes
to whatever scheduler is active: a ``distributed.Client`` (local or a remote cluster) if one
exists, else dask's default.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Literal, overload

import numba
import numpy as np
from numpy.typing import ArrayLike

try:
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("numbanorm.dask needs dask: pip install 'numbanorm[dask]'") from exc

from . import functional
from ._checks import (
    SUPPORTED_DTYPES,
    check_axes,
    check_channel_axis,
    check_eps,
    check_momentum,
    check_normalized_shape,
    check_param,
    check_running_stat,
)
from .moments import MOMENTS_DTYPE, Moments, merge_moments
from .stats import _kept_axes
from .stats import moments as _np_moments
from .stats import standardize as _np_standardize

__all__ = ["RechunkWarning", "moments", "batch_norm", "layer_norm", "standardize"]


class RechunkWarning(UserWarning):
    """The input's chunks split dims that must be whole in each block, so it was rechunked.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> import dask.array as da
    >>> import numbanorm.dask as nbd
    >>> x = da.from_array(np.arange(24.0).reshape(6, 4), chunks=(3, 2))  # rows split in two blocks
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     y = nbd.layer_norm(x, 4)
    >>> [type(w.message).__name__ for w in caught], y.chunks
    (['RechunkWarning'], ((3, 3), (4,)))
    """


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """numba's thread count is per calling thread: use one inside a dask task, then restore."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _check_darr(darr: object, min_ndim: int = 1) -> da.Array:
    if not isinstance(darr, da.Array):
        raise TypeError(f"darr must be a dask.array.Array, got {type(darr).__name__} (use numbanorm.* for NumPy)")
    if darr.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"darr must have dtype float32 or float64, got {darr.dtype}")
    if darr.ndim < min_ndim:
        raise ValueError(f"darr must have at least {min_ndim} dims, got shape {darr.shape}")
    return darr


# ------------------------------------------------------------------------------------------
# Moments: per-chunk kernels, tree-merged with Chan's formula
# ------------------------------------------------------------------------------------------
def _chunk_moments(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Records of one chunk's moments, with the reduced axes kept as size 1 (dask's contract)."""
    with _one_thread():
        rec = _np_moments(x, axis).to_records()
    return np.expand_dims(rec, axis) if keepdims else rec


def _merge_records(rec: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Merge the pieces laid along ``axis`` (several chunks' records) into one."""
    kept_shape = tuple(n for i, n in enumerate(rec.shape) if i not in axis)
    pieces = np.moveaxis(rec, axis, tuple(range(len(axis)))).reshape((-1, *kept_shape))
    total = Moments.from_records(pieces[0])
    for piece in pieces[1:]:
        total = merge_moments(total, Moments.from_records(piece))
    out = total.to_records()
    return np.expand_dims(out, axis) if keepdims else out


def _moments_graph(darr: da.Array, reduced: tuple[int, ...], keepdims: bool, split_every: int | None) -> da.Array:
    ndim = darr.ndim if keepdims else darr.ndim - len(reduced)
    graph: da.Array = da.reduction(darr, _chunk_moments, _merge_records, combine=_merge_records, axis=reduced,
                        keepdims=keepdims, dtype=MOMENTS_DTYPE, split_every=split_every, concatenate=True,
                        meta=np.empty((0,) * ndim, MOMENTS_DTYPE), name="numbanorm-moments")
    return graph


@overload
def moments(darr: da.Array, axis: int | tuple[int, ...] | None = ..., *, channel_axis: int | None = ...,
            split_every: int | None = ..., compute: Literal[True] = ...) -> Moments: ...
@overload
def moments(darr: da.Array, axis: int | tuple[int, ...] | None = ..., *, channel_axis: int | None = ...,
            split_every: int | None = ..., compute: Literal[False]) -> da.Array: ...
@overload
def moments(darr: da.Array, axis: int | tuple[int, ...] | None = ..., *, channel_axis: int | None = ...,
            split_every: int | None = ..., compute: bool) -> Moments | da.Array: ...
def moments(darr: da.Array, axis: int | tuple[int, ...] | None = None, *, channel_axis: int | None = None,
            split_every: int | None = None, compute: bool = True) -> Moments | da.Array:
    """``numbanorm.moments`` of a dask array: per-chunk kernels, then a tree of exact merges.

    Parameters
    ----------
    darr : dask.array.Array
        A float32 or float64 dask array.
    axis : int or tuple of int, optional
        The axes reduced over (None: all), as for ``numbanorm.moments``.
    channel_axis : int, optional
        The one axis kept, as for ``numbanorm.moments``; give ``axis`` or ``channel_axis``.
    split_every : int, optional
        Merge fan-in of the reduction tree (dask's default when None).
    compute : bool, default True
        Compute now and return the ``Moments``, or return the lazy graph.

    Returns
    -------
    Moments or dask.array.Array
        The computed ``Moments``; with ``compute=False`` a lazy dask array of ``MOMENTS_DTYPE``
        records (``Moments.from_records(arr.compute())``).

    Raises
    ------
    TypeError
        ``darr`` is not a dask array of float32/float64; ``axis`` is not an int (or ints).
    ValueError
        Both ``axis`` and ``channel_axis``; an axis out of range or repeated.

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> import numbanorm.dask as nbd
    >>> x = da.from_array(np.arange(24.0).reshape(6, 4), chunks=(2, 4))
    >>> nbd.moments(x, 0)
    Moments(shape=(4,), count=6, mean=[10., 11., 12., 13.], var=[46.666667, 46.666667, 46.666667, 46.666667])
    """
    darr = _check_darr(darr)
    keep = _kept_axes(darr.ndim, axis, channel_axis)
    reduced = tuple(i for i in range(darr.ndim) if i not in keep)
    graph = _moments_graph(darr, reduced, False, split_every)
    return Moments.from_records(np.asarray(graph.compute())) if compute else graph


def _stats_array(stats: Moments, darr: da.Array, keep: tuple[int, ...]) -> da.Array:
    """Computed stats as records broadcastable against ``darr``, chunked like its kept axes."""
    shape = tuple(darr.shape[i] if i in keep else 1 for i in range(darr.ndim))
    chunks = tuple(darr.chunks[i] if i in keep else (1,) for i in range(darr.ndim))
    records: da.Array = da.from_array(stats.to_records().reshape(shape), chunks=chunks)
    return records


# ------------------------------------------------------------------------------------------
# BatchNorm and standardize: statistics over the reduced axes, then blockwise normalize
# ------------------------------------------------------------------------------------------
def _bn_block(x: np.ndarray, st: np.ndarray, *params: np.ndarray, channel_axis: int, eps: float, has_weight: bool,
              has_bias: bool) -> np.ndarray:
    it = iter(params)
    weight = next(it).reshape(-1) if has_weight else None
    bias = next(it).reshape(-1) if has_bias else None
    with _one_thread():
        return functional.batch_norm(x, weight=weight, bias=bias, eps=eps, channel_axis=channel_axis,
                                     stats=Moments.from_records(st.reshape(-1)))


def batch_norm(darr: da.Array, running_mean: np.ndarray | None = None, running_var: np.ndarray | None = None,
               weight: ArrayLike | None = None, bias: ArrayLike | None = None, training: bool = True,
               momentum: float = 0.1, eps: float = 1e-5, *,
               channel_axis: int = 1, stats: Moments | None = None,
               split_every: int | None = None) -> tuple[da.Array, Moments | None]:
    """Batch normalization of a dask array, as ``numbanorm.batch_norm`` on the whole array.

    ``training=True`` computes the statistics now (tree reduction over all chunks) and updates
    the NumPy running stats in place; ``training=False`` uses the running stats. The normalized
    array is lazy (a second pass when computed).

    Parameters
    ----------
    darr : dask.array.Array
        A float32 or float64 dask array. Shape ``(N, C, ...)``, channels on ``channel_axis``.
    running_mean : numpy.ndarray, optional
        Running mean, shape (C,), x's dtype; updated in place when training.
    running_var : numpy.ndarray, optional
        Running variance, as ``running_mean``; give both or neither.
    weight : array_like, optional
        Per-channel scale, shape (C,), x's dtype.
    bias : array_like, optional
        Per-channel offset, as ``weight``.
    training : bool, default True
        Normalize with the statistics of the whole array (and update the running ones), or with
        the running statistics.
    momentum : float, default 0.1
        Weight of the batch statistics in the running-stats update; in [0, 1].
    eps : float, default 1e-5
        Added to the variance; positive and finite.
    channel_axis : int, default 1
        The channel axis.
    stats : Moments, optional
        Statistics of shape (C,) to use instead, as in ``numbanorm.batch_norm(stats=...)``.
    split_every : int, optional
        Merge fan-in of the statistics' reduction tree.

    Returns
    -------
    y : dask.array.Array
        The normalized array (lazy).
    stats : Moments or None
        The statistics it was normalized with (shape (C,)); None with ``training=False``.

    Raises
    ------
    TypeError
        ``darr`` is not a dask array of float32/float64; a parameter has the wrong type or dtype.
    ValueError
        ``darr`` has fewer than 2 dims; a shape is wrong; only one running stat, or none with
        ``training=False``; one value per channel when training; ``momentum`` or ``eps`` out of
        range.

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> import numbanorm.dask as nbd
    >>> x = da.from_array(np.arange(24.0).reshape(4, 3, 2), chunks=(2, 3, 2))
    >>> running_mean, running_var = np.zeros(3), np.ones(3)
    >>> y, stats = nbd.batch_norm(x, running_mean, running_var)
    >>> print(stats.mean, running_mean.round(3))
    [ 9.5 11.5 13.5] [0.95 1.15 1.35]
    >>> print(y.compute()[0].round(4))
    [[-1.4123 -1.2636]
     [-1.4123 -1.2636]
     [-1.4123 -1.2636]]
    """
    darr = _check_darr(darr, 2)
    axis = check_channel_axis(channel_axis, darr.ndim)
    C = darr.shape[axis]
    update = bool(training) and running_mean is not None
    running_mean, running_var, params, momentum, eps = _check_batch_norm(
        darr, C, running_mean, running_var, weight, bias, training, update, momentum, eps, stats)
    returned = stats
    if stats is None and training:
        reduced = tuple(i for i in range(darr.ndim) if i != axis)
        stats = returned = Moments.from_records(np.asarray(_moments_graph(darr, reduced, False, split_every).compute()))
    elif stats is None:  # eval: running stats as moments with count 1, so var() is running_var
        if running_mean is None or running_var is None:  # pragma: no cover - _check_batch_norm refused it
            raise ValueError("training=False needs running_mean and running_var (pass them, or training=True)")
        stats = Moments(1.0, running_mean, running_var)
    if update and running_mean is not None and running_var is not None:  # (update: they are given)
        functional._update_running(running_mean, running_var, stats.mean, stats.var(1), momentum)

    bshape = tuple(C if i == axis else 1 for i in range(darr.ndim))
    pchunks = tuple(darr.chunks[axis] if i == axis else (1,) for i in range(darr.ndim))
    y = da.map_blocks(_bn_block, darr, _stats_array(stats, darr, (axis,)),
                      *(da.from_array(p.reshape(bshape), chunks=pchunks) for p in params),
                      channel_axis=axis, eps=eps, has_weight=weight is not None, has_bias=bias is not None,
                      dtype=darr.dtype, meta=np.empty((0,) * darr.ndim, darr.dtype), token="numbanorm-batch-norm")
    return y, returned


def _check_batch_norm(darr: da.Array, C: int, running_mean: object, running_var: object, weight: object,
                      bias: object, training: object, update: bool, momentum: object, eps: object,
                      stats: object) -> tuple[np.ndarray | None, np.ndarray | None, list[np.ndarray], float, float]:
    """``batch_norm``'s checks, before anything is computed: (running_mean, running_var, the
    given parameters, momentum, eps)."""
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or both be None")
    running_mean = check_running_stat(running_mean, "running_mean", C, darr.dtype, update)
    running_var = check_running_stat(running_var, "running_var", C, darr.dtype, update)
    params = [p for p in (check_param(weight, "weight", (C,), darr.dtype),
                          check_param(bias, "bias", (C,), darr.dtype)) if p is not None]
    momentum, eps = check_momentum(momentum), check_eps(eps)
    if stats is not None and (not isinstance(stats, Moments) or stats.shape != (C,)):
        raise ValueError(f"stats must be a numbanorm.Moments of shape ({C},)")
    if not training and stats is None and running_mean is None:
        raise ValueError("training=False needs running_mean and running_var (pass them, or training=True)")
    if training and C and darr.size // C == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {darr.shape}")
    return running_mean, running_var, params, momentum, eps


def _std_block(x: np.ndarray, st: np.ndarray, *, axis: tuple[int, ...], ddof: int, eps: float) -> np.ndarray:
    with _one_thread():
        return _np_standardize(x, axis, stats=Moments.from_records(np.squeeze(st, axis)), ddof=ddof, eps=eps)


@overload
def standardize(darr: da.Array, axis: int | tuple[int, ...] | None = ..., *, ddof: int = ..., eps: float = ...,
                stats: Moments | None = ..., split_every: int | None = ...,
                return_stats: Literal[False] = ...) -> da.Array: ...
@overload
def standardize(darr: da.Array, axis: int | tuple[int, ...] | None = ..., *, ddof: int = ..., eps: float = ...,
                stats: Moments | None = ..., split_every: int | None = ...,
                return_stats: Literal[True]) -> tuple[da.Array, Moments]: ...
@overload
def standardize(darr: da.Array, axis: int | tuple[int, ...] | None = ..., *, ddof: int = ..., eps: float = ...,
                stats: Moments | None = ..., split_every: int | None = ...,
                return_stats: bool) -> da.Array | tuple[da.Array, Moments]: ...
def standardize(darr: da.Array, axis: int | tuple[int, ...] | None = 0, *, ddof: int = 0, eps: float = 0.0,
                stats: Moments | None = None, split_every: int | None = None,
                return_stats: bool = False) -> da.Array | tuple[da.Array, Moments]:
    """Column standardization ``(x - mean) / std`` over ``axis`` (default: samples, axis 0).

    As ``numbanorm.standardize`` on the whole array (zero-variance columns are only centred).
    Statistics are computed now (or taken from ``stats``); the result is lazy.

    Parameters
    ----------
    darr : dask.array.Array
        A float32 or float64 dask array.
    axis : int or tuple of int, optional
        The axes the statistics are computed over (None: all). Default 0.
    ddof : int, default 0
        Delta degrees of freedom of the variance.
    eps : float, default 0.0
        Added to the variance; finite and >= 0.
    stats : Moments, optional
        Statistics to use instead, of ``darr``'s shape without the ``axis`` dims.
    split_every : int, optional
        Merge fan-in of the statistics' reduction tree.
    return_stats : bool, default False
        Also return the statistics used.

    Returns
    -------
    y : dask.array.Array
        The standardized array (lazy). Alone unless ``return_stats``.
    stats : Moments
        With ``return_stats=True``: the statistics used.

    Raises
    ------
    TypeError
        ``darr`` is not a dask array of float32/float64; ``axis`` is not an int (or ints).
    ValueError
        An axis out of range or repeated; ``ddof`` or ``eps`` out of range; ``stats`` of the wrong
        shape.

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> import numbanorm.dask as nbd
    >>> x = da.from_array(np.arange(24.0).reshape(6, 4), chunks=(2, 4))
    >>> print(nbd.standardize(x).compute()[:2].round(4))
    [[-1.4639 -1.4639 -1.4639 -1.4639]
     [-0.8783 -0.8783 -0.8783 -0.8783]]
    """
    darr = _check_darr(darr)
    reduced = check_axes(axis, darr.ndim)
    keep = tuple(i for i in range(darr.ndim) if i not in reduced)
    stats_shape = tuple(darr.shape[i] for i in keep)
    _np_standardize(np.zeros((1,) * darr.ndim, darr.dtype), reduced, ddof=ddof, eps=eps)  # checks ddof, eps
    if stats is None:
        stats = Moments.from_records(np.asarray(_moments_graph(darr, reduced, False, split_every).compute()))
    elif not isinstance(stats, Moments) or stats.shape != stats_shape:
        raise ValueError(f"stats must be a numbanorm.Moments of shape {stats_shape}")
    y = da.map_blocks(_std_block, darr, _stats_array(stats, darr, keep), axis=reduced, ddof=ddof, eps=eps,
                      dtype=darr.dtype, meta=np.empty((0,) * darr.ndim, darr.dtype), token="numbanorm-standardize")
    return (y, stats) if return_stats else y


# ------------------------------------------------------------------------------------------
# LayerNorm: rows are independent, so it is purely blockwise once each block holds whole rows
# ------------------------------------------------------------------------------------------
def _ln_block(x: np.ndarray, *, normalized_shape: tuple[int, ...], weight: np.ndarray | None,
              bias: np.ndarray | None, eps: float) -> np.ndarray:
    with _one_thread():
        return functional.layer_norm(x, normalized_shape, weight, bias, eps)


def layer_norm(darr: da.Array, normalized_shape: int | Sequence[int], weight: ArrayLike | None = None,
               bias: ArrayLike | None = None, eps: float = 1e-5) -> da.Array:
    """``numbanorm.layer_norm`` blockwise (lazy).

    Rows are independent, so it is purely blockwise once each block holds whole rows: blocks must
    span the normalized (trailing) dims, and if the chunks split them, the array is rechunked there
    with a ``RechunkWarning``.

    Parameters
    ----------
    darr : dask.array.Array
        A float32 or float64 dask array.
    normalized_shape : int or sequence of int
        The trailing dims normalized over.
    weight : array_like, optional
        Elementwise scale of shape ``normalized_shape``, x's dtype.
    bias : array_like, optional
        Elementwise offset, as ``weight``.
    eps : float, default 1e-5
        Added to the variance; positive and finite.

    Returns
    -------
    dask.array.Array
        The normalized array (lazy).

    Raises
    ------
    TypeError
        ``darr`` is not a dask array of float32/float64; a parameter has the wrong dtype.
    ValueError
        ``normalized_shape`` is not the trailing dims; a parameter has the wrong shape; ``eps`` is
        out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> import numbanorm.dask as nbd
    >>> x = da.from_array(np.arange(24.0).reshape(6, 4), chunks=(2, 4))
    >>> print(nbd.layer_norm(x, 4).compute()[:1].round(4))
    [[-1.3416 -0.4472  0.4472  1.3416]]
    """
    darr = _check_darr(darr)
    shape = check_normalized_shape(normalized_shape, darr.shape)
    weight = check_param(weight, "weight", shape, darr.dtype)
    bias = check_param(bias, "bias", shape, darr.dtype)
    eps = check_eps(eps)
    trailing = range(darr.ndim - len(shape), darr.ndim)
    split = [i for i in trailing if len(darr.chunks[i]) > 1]
    if split:
        warnings.warn(f"layer_norm: chunks split the normalized dims {split} of {darr.shape}; rechunking them "
                      "whole (chunk the input that way to avoid the copy)", RechunkWarning, stacklevel=2)
        darr = darr.rechunk({i: -1 for i in split})
    if weight is not None:
        weight = weight.reshape(shape)
    if bias is not None:
        bias = bias.reshape(shape)
    y: da.Array = da.map_blocks(_ln_block, darr, normalized_shape=shape, weight=weight, bias=bias, eps=eps,
                                dtype=darr.dtype, meta=np.empty((0,) * darr.ndim, darr.dtype),
                                token="numbanorm-layer-norm")
    return y
