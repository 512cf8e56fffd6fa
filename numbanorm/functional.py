"""Public functional API on NumPy arrays, modelled on ``torch.nn.functional``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import numpy as np
from numba import get_num_threads
from numpy.typing import ArrayLike

from . import _engine
from ._checks import (
    as_float_array,
    check_channel_axis,
    check_eps,
    check_momentum,
    check_normalized_shape,
    check_out,
    check_param,
    check_running_stat,
)
from ._config import kernel_guard
from ._device import backend, is_device_array
from ._halfio import kernel_array
from ._layout import copy_back, input_view, output_view, rows_view

__all__ = ["layer_norm", "batch_norm"]

Stats = tuple[np.ndarray, np.ndarray, np.ndarray]


def stats_dtype(dtype: np.dtype) -> np.dtype:
    """dtype of returned mean/rstd: float64 for float64 input, else float32 (like torch)."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


@overload
def layer_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = ...,
               bias: ArrayLike | None = ..., eps: float = ..., *, out: np.ndarray | None = ...,
               return_stats: Literal[False] = ...) -> np.ndarray: ...
@overload
def layer_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = ...,
               bias: ArrayLike | None = ..., eps: float = ..., *, out: np.ndarray | None = ...,
               return_stats: Literal[True]) -> Stats: ...
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    """Layer normalization over the trailing ``normalized_shape`` dims, as ``F.layer_norm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with biased variance per row.
    With ``return_stats=True`` returns ``(y, mean, rstd)``, stats of shape ``x.shape[:-k]``.
    """
    if is_device_array(x):
        return backend().layer_norm(x, normalized_shape, weight, bias, eps, out=out, return_stats=return_stats)
    x = as_float_array(x)
    shape = check_normalized_shape(normalized_shape, x.shape)
    weight = check_param(weight, "weight", shape, x.dtype)
    bias = check_param(bias, "bias", shape, x.dtype)
    eps = check_eps(eps)
    out = check_out(out, x)

    x2 = rows_view(x, len(shape))
    result = np.empty(x.shape, x.dtype) if out is None else out
    target = result.reshape(x2.shape) if result.flags.c_contiguous else np.empty(x2.shape, x.dtype)
    mean = np.empty(x2.shape[0], stats_dtype(x.dtype))
    rstd = np.empty_like(mean)
    with kernel_guard:
        _engine.layer_norm_forward(kernel_array(x2), weight, bias, eps, kernel_array(target), mean, rstd,
                                   get_num_threads())
    if not result.flags.c_contiguous:
        np.copyto(result, target.reshape(x.shape))
    if not return_stats:
        return result
    batch_shape = x.shape[: x.ndim - len(shape)]
    return result, mean.reshape(batch_shape), rstd.reshape(batch_shape)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, out=None, return_stats=False, stats=None):
    """Batch normalization per channel, as ``F.batch_norm`` (``channel_axis=-1``: channels-last).

    ``training=True`` normalizes with the batch statistics (biased variance) and, when running
    stats are given, updates them in place: ``r = (1 - momentum) * r + momentum * batch`` with the
    unbiased batch variance. ``training=False`` uses the running stats. With
    ``return_stats=True`` returns ``(y, mean, invstd)`` for the statistics actually used.
    ``stats``: a ``numbanorm.Moments`` of shape (C,) (e.g. merged across workers) used instead of
    the batch's or running statistics; training then updates running stats from it.
    """
    if stats is not None:  # externally combined statistics (SyncBatchNorm): see moments.py
        from .moments import batch_norm_with_stats
        if is_device_array(x):
            raise TypeError("stats= is supported for NumPy arrays only, not CUDA arrays")
        return batch_norm_with_stats(x, stats, running_mean, running_var, weight, bias, training, momentum,
                                     eps, channel_axis, out, return_stats)
    if is_device_array(x):
        return backend().batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                    channel_axis=channel_axis, out=out, return_stats=return_stats)
    x, axis, running_mean, running_var, weight, bias, momentum, eps, out = _check_batch_norm(
        x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out)
    view = input_view(x, axis)
    result, target, needs_copy = output_view(out, x, view, axis)
    num_channels = x.shape[axis]
    count = 0.0
    with kernel_guard:
        if not training:
            mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        elif x.size:
            count, mean, m2 = _engine.channel_moments(kernel_array(view.x3), get_num_threads())
            var = m2 / count
        else:  # empty batch: nothing to normalize, no statistics (torch leaves running stats alone)
            mean = var = np.full(num_channels, np.nan)
        invstd, scale, offset = _engine.channel_scale_offset(mean, var, weight, bias, eps)
        if x.size:
            _engine.channel_affine(kernel_array(view.x3), mean, scale, offset, kernel_array(target), get_num_threads())
    if needs_copy:
        copy_back(result, target, axis, view.channels_moved)
    if training and running_mean is not None and count > 0:
        _update_running(running_mean, running_var, mean, m2 / (count - 1.0), momentum)
    if not return_stats:
        return result
    sdt = stats_dtype(x.dtype)
    return result, mean.astype(sdt), invstd.astype(sdt)


def _check_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out):
    """Validate every batch_norm argument before anything is computed or mutated."""
    x = as_float_array(x)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims (N, C, ...), got shape {x.shape}")
    axis = check_channel_axis(channel_axis, x.ndim)
    num_channels = x.shape[axis]
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or both be None")
    running_mean = check_running_stat(running_mean, "running_mean", num_channels, x.dtype, bool(training))
    running_var = check_running_stat(running_var, "running_var", num_channels, x.dtype, bool(training))
    weight = check_param(weight, "weight", (num_channels,), x.dtype)
    bias = check_param(bias, "bias", (num_channels,), x.dtype)
    momentum = check_momentum(momentum)
    eps = check_eps(eps)
    if not training and running_mean is None:
        raise ValueError("training=False needs running_mean and running_var (pass them, or training=True)")
    if training and num_channels and x.size // num_channels == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    out = check_out(out, x)
    return x, axis, running_mean, running_var, weight, bias, momentum, eps, out


def _update_running(running_mean, running_var, mean, unbiased_var, momentum):
    """torch's rule, computed in float64 and written in place."""
    keep = np.float64(1.0 - momentum)  # a float64 scalar, so half running stats are not rounded twice
    running_mean[...] = keep * running_mean + momentum * mean
    running_var[...] = keep * running_var + momentum * unbiased_var
