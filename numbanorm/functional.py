"""Public functional API: ``layer_norm`` and ``batch_norm``, modelled on ``torch.nn.functional``.

Each op is one front door for both backends: the argument checks (``_checks``, one sequence for
host and device arrays), the canonical view (``_layout``), then the backend's kernels
(``_backend``). Small, common calls take the tiny path (``_tiny``) after a few cheap tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _tiny
from ._backend import cpu, device_backend, is_device_array
from ._checks import HOST, as_float_array, batch_norm_args, layer_norm_args
from ._fast_checks import bn_common_channels, ln_common_width
from ._layout import Output, channel_output, contiguous_shape3, input_view, rows_output, rows_view, stats_dtype
from .moments import Moments

__all__ = ["layer_norm", "batch_norm"]

Stats = tuple[np.ndarray, np.ndarray, np.ndarray]

_SERIAL_SIZE = cpu.SERIAL_SIZE
_NO_LOCK = nullcontext()  # reusable; one per call cost ~0.2 us on tiny inputs


@overload
def layer_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = ...,
               bias: ArrayLike | None = ..., eps: float = ..., *, out: np.ndarray | None = ...,
               return_stats: Literal[False] = ...) -> np.ndarray: ...
@overload
def layer_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = ...,
               bias: ArrayLike | None = ..., eps: float = ..., *, out: np.ndarray | None = ...,
               return_stats: Literal[True]) -> Stats: ...
@overload
def layer_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = ...,
               bias: ArrayLike | None = ..., eps: float = ..., *, out: np.ndarray | None = ...,
               return_stats: bool) -> np.ndarray | Stats: ...
def layer_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = None,
               bias: ArrayLike | None = None, eps: float = 1e-5, *, out: np.ndarray | None = None,
               return_stats: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer normalization over the trailing ``normalized_shape`` dims, as ``F.layer_norm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with the mean and the biased variance of
    each row (the trailing ``normalized_shape`` dims of x).

    Parameters
    ----------
    x : array_like
        The input: float16, bfloat16, float32 or float64, or a CUDA array (see Notes). Lists and
        tuples are converted as NumPy converts them, and integers in them become float64 (as the same
        numbers written as floats would); an integer ndarray is refused.
    normalized_shape : int or sequence of int
        The trailing dims normalized over; they must equal ``x.shape[-k:]``.
    weight : array_like, optional
        Elementwise scale, of shape ``normalized_shape`` and x's dtype (float32 is accepted too for
        a float16/bfloat16 x).
    bias : array_like, optional
        Elementwise offset, as ``weight``.
    eps : float, default 1e-5
        Added to the variance; positive and finite.
    out : numpy.ndarray, optional
        Where y is written: x's shape and dtype, writeable. It may be ``x`` itself (in place), but
        must not overlap x, weight or bias otherwise.
    return_stats : bool, default False
        Also return the statistics, as ``layer_norm_backward`` takes them.

    Returns
    -------
    y : numpy.ndarray
        x normalized, of x's shape and dtype (``out`` when given). Alone unless ``return_stats``.
    mean : numpy.ndarray
        With ``return_stats=True``: the mean of each row, of shape ``x.shape[:-k]``; float64 for a
        float64 x, float32 otherwise.
    rstd : numpy.ndarray
        With ``return_stats=True``: ``1 / sqrt(var + eps)`` of each row, as ``mean``.

    Raises
    ------
    TypeError
        x is None or not floating point; a parameter or ``out`` has the wrong dtype or type.
    ValueError
        x is 0-d; ``normalized_shape`` is not x's trailing dims; a parameter has the wrong shape;
        ``eps`` is not positive and finite; ``out`` is read-only or overlaps an input.

    Notes
    -----
    A CUDA array (CuPy, torch, numba: anything with ``__cuda_array_interface__``) runs on the GPU
    and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x = np.array([[1.0, 2.0, 4.0], [2.0, 4.0, 8.0]])
    >>> y, mean, rstd = nb.layer_norm(x, 3, return_stats=True)
    >>> print(y.round(4))
    [[-1.069  -0.2673  1.3363]
     [-1.069  -0.2673  1.3363]]
    >>> print(mean.round(4), rstd.round(4))
    [2.3333 4.6667] [0.8018 0.4009]
    """
    if type(x) is np.ndarray:
        D = -1 if out is not None else ln_common_width(x, normalized_shape, weight, bias, eps)
        if 0 < D and x.size < _SERIAL_SIZE:  # tiny and common: checked, straight to the serial kernel
            return _tiny.layer_norm_tiny(x, D, weight, bias, eps, return_stats)
    elif is_device_array(x):
        on_device: np.ndarray | Stats = device_backend().layer_norm(x, normalized_shape, weight, bias, eps, out=out,
                                                                     return_stats=return_stats)
        return on_device
    x = as_float_array(x)
    shape, weight, bias, eps, out = layer_norm_args(HOST, x, normalized_shape, weight, bias, eps, out)

    D = shape[0] if len(shape) == 1 else math.prod(shape)
    x2 = x.reshape(x.size // D, D) if D and x.flags.c_contiguous else rows_view(x, len(shape))
    output = rows_output(out, x, x2.shape)
    mean = np.empty(x2.shape[0], stats_dtype(x.dtype))
    rstd = np.empty_like(mean)
    x2 = cpu.kernel_array(x2)  # float16/bfloat16 reach the kernels as 16-bit views (cpu/halfio.py)
    if x.size < _SERIAL_SIZE:
        cpu.layer_norm_forward(x2, weight, bias, eps, output.kernel, mean, rstd, 1)
    else:
        with cpu.kernel_guard:
            cpu.layer_norm_forward(x2, weight, bias, eps, output.kernel, mean, rstd, cpu.num_threads())
    result = output.finish()
    if not return_stats:
        return result
    batch_shape = x.shape[: x.ndim - len(shape)]
    return result, mean.reshape(batch_shape), rstd.reshape(batch_shape)


@overload
def batch_norm(x: ArrayLike, running_mean: np.ndarray | None = ..., running_var: np.ndarray | None = ...,
               weight: ArrayLike | None = ..., bias: ArrayLike | None = ..., training: bool = ...,
               momentum: float = ..., eps: float = ..., *, channel_axis: int = ..., out: np.ndarray | None = ...,
               return_stats: Literal[False] = ..., stats: Moments | None = ...) -> np.ndarray: ...
@overload
def batch_norm(x: ArrayLike, running_mean: np.ndarray | None = ..., running_var: np.ndarray | None = ...,
               weight: ArrayLike | None = ..., bias: ArrayLike | None = ..., training: bool = ...,
               momentum: float = ..., eps: float = ..., *, channel_axis: int = ..., out: np.ndarray | None = ...,
               return_stats: Literal[True], stats: Moments | None = ...) -> Stats: ...
@overload
def batch_norm(x: ArrayLike, running_mean: np.ndarray | None = ..., running_var: np.ndarray | None = ...,
               weight: ArrayLike | None = ..., bias: ArrayLike | None = ..., training: bool = ...,
               momentum: float = ..., eps: float = ..., *, channel_axis: int = ..., out: np.ndarray | None = ...,
               return_stats: bool, stats: Moments | None = ...) -> np.ndarray | Stats: ...
def batch_norm(x: ArrayLike, running_mean: np.ndarray | None = None, running_var: np.ndarray | None = None,
               weight: ArrayLike | None = None, bias: ArrayLike | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, channel_axis: int = 1, out: np.ndarray | None = None,
               return_stats: bool = False,
               stats: Moments | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalization per channel, as ``F.batch_norm`` (``channel_axis=-1``: channels-last).

    ``training=True`` normalizes with the batch statistics (biased variance) and, when running
    stats are given, updates them in place: ``r = (1 - momentum) * r + momentum * batch`` with the
    unbiased batch variance. ``training=False`` uses the running stats.

    Parameters
    ----------
    x : array_like
        The input, ``(N, C, ...)`` (or channels on ``channel_axis``): float16, bfloat16, float32 or
        float64, or a CUDA array (see Notes). Lists and tuples are converted as NumPy converts
        them, and integers in them become float64; an integer ndarray is refused.
    running_mean : numpy.ndarray, optional
        Running mean of shape (C,) and x's dtype (float32 is accepted too for a half x). Updated in
        place when training, so it must then be writeable; give both running stats or neither.
    running_var : numpy.ndarray, optional
        Running variance, as ``running_mean``.
    weight : array_like, optional
        Per-channel scale, of shape (C,) and x's dtype (float32 too for a half x).
    bias : array_like, optional
        Per-channel offset, as ``weight``.
    training : bool, default False
        Normalize with the batch statistics (and update the running ones), or with the running
        statistics, which ``training=False`` requires.
    momentum : float, default 0.1
        Weight of the batch statistics in the running-stats update; in [0, 1].
    eps : float, default 1e-5
        Added to the variance; positive and finite.
    channel_axis : int, default 1
        The channel axis (``-1`` for channels-last, read without a transpose).
    out : numpy.ndarray, optional
        Where y is written: x's shape and dtype, writeable; may be ``x`` itself (in place).
    return_stats : bool, default False
        Also return the statistics used, as ``batch_norm_backward`` takes them.
    stats : Moments, optional
        A ``numbanorm.Moments`` of shape (C,) (e.g. merged across workers) used instead of the
        batch's or the running statistics; training then updates the running stats from it
        (unbiased variance ``m2 / (count - 1)``), as torch's SyncBatchNorm does with the global
        statistics. NumPy arrays only.

    Returns
    -------
    y : numpy.ndarray
        x normalized, of x's shape, dtype and memory layout (``out`` when given). Alone unless
        ``return_stats``.
    mean : numpy.ndarray
        With ``return_stats=True``: the per-channel mean actually used, shape (C,); float64 for a
        float64 x, float32 otherwise.
    invstd : numpy.ndarray
        With ``return_stats=True``: the ``1 / sqrt(var + eps)`` actually used, as ``mean``.

    Raises
    ------
    TypeError
        x is None or not floating point; an argument has the wrong type or dtype; ``stats`` with
        a CUDA array.
    ValueError
        x has fewer than 2 dims (or is 0-d); ``channel_axis`` is out of range; a parameter or
        running stat has the wrong shape; only one running stat is given; ``training=False``
        without running stats; training with one value per channel; ``momentum`` or ``eps`` out of
        range; an output overlaps an input. Nothing is mutated when it raises.

    Notes
    -----
    A CUDA array runs on the GPU and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x = np.arange(12.0).reshape(2, 3, 2)  # (N, C, L)
    >>> running_mean, running_var = np.zeros(3), np.ones(3)
    >>> y, mean, invstd = nb.batch_norm(x, running_mean, running_var, training=True, return_stats=True)
    >>> print(y[:, 0].round(4))
    [[-1.1508 -0.822 ]
     [ 0.822   1.1508]]
    >>> print(mean, invstd.round(4))
    [3.5 5.5 7.5] [0.3288 0.3288 0.3288]
    >>> print(running_mean.round(4), running_var.round(4))
    [0.35 0.55 0.75] [2.1333 2.1333 2.1333]
    """
    if type(x) is np.ndarray:
        C = -1 if out is not None or stats is not None else bn_common_channels(
            x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis)
        if 0 < C and x.size < _SERIAL_SIZE:  # tiny and common: no view mapper, thread count or lock
            return _tiny.batch_norm_tiny(x, C, running_mean, running_var, weight, bias, training, momentum, eps,
                                         channel_axis, return_stats)
        arr = x
    elif is_device_array(x):
        if stats is not None:
            raise TypeError("stats= is supported for NumPy arrays only, not CUDA arrays")
        on_device: np.ndarray | Stats = device_backend().batch_norm(
            x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis=channel_axis, out=out,
            return_stats=return_stats)
        return on_device
    else:
        C = -1
    if C < 0:
        arr = as_float_array(x)
        axis, running_mean, running_var, weight, bias, momentum, eps, out, _ = batch_norm_args(
            HOST, arr, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out, stats)
    else:
        axis = channel_axis % arr.ndim
    x3, output = _channel_io(arr, axis, C, out)
    stats_out = _batch_norm_kernels(x3, output.kernel, running_mean, running_var, weight, bias, training, momentum,
                                    eps, stats, return_stats)
    if stats is not None and training and running_mean is not None and running_var is not None:
        _update_running(running_mean, running_var, stats.mean, stats.var(1), momentum)
    result = output.finish()
    return (result, stats_out[0], stats_out[1]) if return_stats else result


def _channel_io(x: np.ndarray, axis: int, C: int, out: np.ndarray | None) -> tuple[np.ndarray, Output]:
    """(canonical view of x, ``Output``): the common case (allocating, C-contiguous) without the
    general view mapping."""
    if out is None and x.flags.c_contiguous:
        x3 = x.reshape(contiguous_shape3(x.shape, x.size, axis, C if C >= 0 else x.shape[axis]))
        result = cpu.empty(x.shape, x.dtype)
        return x3, Output(result, result.reshape(x3.shape))
    view = input_view(x, axis)
    return view.x3, channel_output(out, x, view, axis)


def _batch_norm_kernels(x3: np.ndarray, target: np.ndarray, running_mean: np.ndarray | None,
                        running_var: np.ndarray | None, weight: ArrayLike | None, bias: ArrayLike | None,
                        training: bool, momentum: float, eps: float, stats: Moments | None,
                        return_stats: bool) -> np.ndarray:
    """The BatchNorm kernels on the canonical view: one jitted dispatch per call (statistics,
    scale/offset, normalize and the running-stats update fused). Returns ``stats_out`` (2, C):
    (mean, invstd), empty unless ``return_stats``."""
    C = x3.shape[1]
    sdt = stats_dtype(x3.dtype)
    stats_out = np.empty((2, C), sdt) if return_stats else cpu.no_stats(sdt)
    x3, rm, rv = cpu.kernel_array(x3), cpu.kernel_array(running_mean), cpu.kernel_array(running_var)
    serial = x3.size < _SERIAL_SIZE  # small inputs: neither the thread count nor the launch lock
    nthreads = 1 if serial else cpu.num_threads()
    with cpu.kernel_guard if cpu.NEEDS_CALL_LOCK and not serial else _NO_LOCK:
        if stats is not None:  # external statistics normalize like running ones do in eval
            cpu.batch_norm_eval_forward(x3, stats.mean, stats.var(), weight, bias, eps, target, nthreads, stats_out)
        elif not training:
            cpu.batch_norm_eval_forward(x3, rm, rv, weight, bias, eps, target, nthreads, stats_out)
        elif x3.size:
            cpu.batch_norm_train_forward(x3, weight, bias, rm, rv, momentum, eps, target, nthreads, stats_out)
        elif return_stats:  # empty batch: nothing to normalize, no statistics (torch leaves running stats alone)
            mean = np.full(C, np.nan)
            stats_out[0], stats_out[1] = mean, cpu.channel_scale_offset(mean, mean, weight, bias, eps)[0]
    return stats_out


def _update_running(running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray, unbiased_var: np.ndarray,
                    momentum: float) -> None:
    """torch's rule, computed in float64 and written in place, for statistics combined outside
    the fused kernel (``stats=``, numbanorm.dask)."""
    keep = np.float64(1.0 - momentum)  # a float64 scalar, so half running stats are not rounded twice
    running_mean[...] = keep * running_mean + momentum * mean
    running_var[...] = keep * running_var + momentum * unbiased_var
