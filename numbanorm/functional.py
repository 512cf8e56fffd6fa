"""Public functional API on NumPy arrays, modelled on ``torch.nn.functional``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Literal, overload

import numba
import numpy as np
from numba import types
from numpy.typing import ArrayLike

from . import _engine
from ._arena import empty
from ._checks import HOST, as_float_array, batch_norm_args, bn_common_channels, layer_norm_args, ln_common_width
from ._config import MIN_TASK_ELEMENTS, NEEDS_CALL_LOCK, kernel_guard, num_threads
from ._device import backend, is_device_array
from ._halfio import kernel_array
from ._layout import Output, channel_output, contiguous_shape3, input_view, rows_output, rows_view

__all__ = ["layer_norm", "batch_norm"]

Stats = tuple[np.ndarray, np.ndarray, np.ndarray]

#: Below this many elements the engine plans a single task (see ``_engine.plan_tasks``) whatever
#: the thread count, so the call neither asks numba for it nor takes the launch lock.
_SERIAL_SIZE = 2 * MIN_TASK_ELEMENTS
_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)
_NO_LOCK = nullcontext()  # reusable; one per call cost ~0.2 us on tiny inputs


def stats_dtype(dtype: np.dtype) -> np.dtype:
    """dtype of returned mean/rstd: float64 for float64 input, else float32 (like torch)."""
    return _F64 if dtype == _F64 else _F32


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
    if type(x) is np.ndarray:
        D = -1 if out is not None else ln_common_width(x, normalized_shape, weight, bias, eps)
        if 0 < D and x.size < _SERIAL_SIZE:  # tiny and common: checked, straight to the serial kernel
            return _layer_norm_tiny(x, D, weight, bias, eps, return_stats)
    elif is_device_array(x):
        return backend().layer_norm(x, normalized_shape, weight, bias, eps, out=out, return_stats=return_stats)
    x = as_float_array(x)
    shape, weight, bias, eps, out = layer_norm_args(HOST, x, normalized_shape, weight, bias, eps, out)

    D = shape[0] if len(shape) == 1 else math.prod(shape)
    x2 = x.reshape(x.size // D, D) if D and x.flags.c_contiguous else rows_view(x, len(shape))
    output = rows_output(out, x, x2.shape)
    mean = np.empty(x2.shape[0], stats_dtype(x.dtype))
    rstd = np.empty_like(mean)
    x2 = kernel_array(x2)  # float16/bfloat16 reach the kernels as 16-bit views (_halfio.py)
    if x.size < _SERIAL_SIZE:
        _engine.layer_norm_forward(x2, weight, bias, eps, output.kernel, mean, rstd, 1)
    else:
        with kernel_guard:
            _engine.layer_norm_forward(x2, weight, bias, eps, output.kernel, mean, rstd, num_threads())
    result = output.finish()
    if not return_stats:
        return result
    batch_shape = x.shape[: x.ndim - len(shape)]
    return result, mean.reshape(batch_shape), rstd.reshape(batch_shape)


def _layer_norm_tiny(x, D, weight, bias, eps, return_stats):
    """layer_norm of a small input whose arguments ``ln_common_width`` accepted (rows of D)."""
    dt = x.dtype
    tiny = _TINY[dt]
    R = x.size // D
    target = np.empty((R, D), dt)
    if x.ndim == 2:
        x2, result = x, target
    else:
        x2, result = x.reshape(R, D), target.reshape(x.shape)
    if return_stats:
        mean, rstd = np.empty(R, tiny.sdt), np.empty(R, tiny.sdt)
    else:
        # Statistics nobody reads: the kernel only writes them, so one shared scratch serves as
        # both (and serves concurrent calls too: whatever they leave in it is never read).
        mean = rstd = tiny.scratch
    k = _LN + (weight is None) * 2 + (bias is None)
    entry = tiny.entries[k] or tiny.entry(k)
    entry(x2, weight, bias, eps, target, mean, rstd)
    if not return_stats:
        return result
    batch_shape = x.shape[:-1]
    return result, mean.reshape(batch_shape), rstd.reshape(batch_shape)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, out=None, return_stats=False, stats=None):
    """Batch normalization per channel, as ``F.batch_norm`` (``channel_axis=-1``: channels-last).

    ``training=True`` normalizes with the batch statistics (biased variance) and, when running
    stats are given, updates them in place: ``r = (1 - momentum) * r + momentum * batch`` with the
    unbiased batch variance. ``training=False`` uses the running stats. With
    ``return_stats=True`` returns ``(y, mean, invstd)`` for the statistics actually used.
    ``stats``: a ``numbanorm.Moments`` of shape (C,) (e.g. merged across workers) used instead of
    the batch's or running statistics; training then updates running stats from it (unbiased
    variance ``m2 / (count - 1)``), as torch's SyncBatchNorm does with the global statistics.
    """
    if type(x) is not np.ndarray and is_device_array(x):  # (an ndarray never is one)
        if stats is not None:
            raise TypeError("stats= is supported for NumPy arrays only, not CUDA arrays")
        return backend().batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                    channel_axis=channel_axis, out=out, return_stats=return_stats)
    C = -1 if out is not None or stats is not None else bn_common_channels(
        x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis)
    if 0 < C and x.size < _SERIAL_SIZE:  # tiny and common: no view mapper, thread count or lock
        return _batch_norm_tiny(x, C, running_mean, running_var, weight, bias, training, momentum, eps,
                                channel_axis, return_stats)
    if C < 0:
        x, axis, running_mean, running_var, weight, bias, momentum, eps, out = _check_batch_norm(
            x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out, stats)
    else:
        axis = channel_axis % x.ndim
    shape = x.shape
    if out is None and x.flags.c_contiguous:  # the common case, without the general view mapping
        if C < 0:
            C = shape[axis]
        x3 = x.reshape(contiguous_shape3(shape, x.size, axis, C))
        result = empty(shape, x.dtype)
        output = Output(result, result.reshape(x3.shape))
    else:
        view = input_view(x, axis)
        x3 = view.x3
        output = channel_output(out, x, view, axis)
    target = output.kernel
    rm, rv = running_mean, running_var
    if x.dtype.itemsize == 2:  # float16/bfloat16 reach the kernels as 16-bit views (_halfio.py)
        x3, rm, rv = kernel_array(x3), kernel_array(rm), kernel_array(rv)
    sdt = stats_dtype(x.dtype)
    stats_out = np.empty((2, x.shape[axis]), sdt) if return_stats else _engine.no_stats(sdt)
    # One jitted dispatch per call (statistics, scale/offset, normalize and the running-stats
    # update fused); small inputs run serially without the thread count or the launch lock.
    serial = x.size < _SERIAL_SIZE
    nthreads = 1 if serial else num_threads()
    lock = kernel_guard if NEEDS_CALL_LOCK and not serial else _NO_LOCK
    with lock:
        if stats is not None:  # external statistics normalize like running ones do in eval
            _engine.batch_norm_eval_forward(x3, stats.mean, stats.var(), weight, bias, eps, target, nthreads,
                                            stats_out)
        elif not training:
            _engine.batch_norm_eval_forward(x3, rm, rv, weight, bias, eps, target, nthreads, stats_out)
        elif x.size:
            _engine.batch_norm_train_forward(x3, weight, bias, rm, rv, momentum, eps, target, nthreads, stats_out)
        elif return_stats:  # empty batch: nothing to normalize, no statistics (torch leaves running stats alone)
            mean = np.full(x.shape[axis], np.nan)
            stats_out[0], stats_out[1] = mean, _engine.channel_scale_offset(mean, mean, weight, bias, eps)[0]
    if stats is not None and training and running_mean is not None:
        _update_running(running_mean, running_var, stats.mean, stats.var(1), momentum)
    result = output.finish()
    if not return_stats:
        return result
    return result, stats_out[0], stats_out[1]


def _batch_norm_tiny(x, C, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                     return_stats):
    """batch_norm of a small input whose arguments ``bn_common_channels`` accepted (C channels):
    the serial jitted entry called directly (per-call Python is most of a tiny call's time)."""
    shape = x.shape
    dt = x.dtype
    tiny = _TINY[dt]
    shape3 = contiguous_shape3(shape, x.size, channel_axis % len(shape), C)
    x3 = x.reshape(shape3)
    target = np.empty(shape3, dt)
    stats_out = np.empty((2, C), tiny.sdt) if return_stats else tiny.no_stats
    none = tiny.none
    w = none if weight is None else weight
    b = none if bias is None else bias
    k = _CL if shape3[2] == 1 else 0  # one entry per layout (_engine.train_serial_entry)
    if training:
        if running_mean is None:
            running_mean = running_var = none
        k += _TRAIN
        entry = tiny.entries[k] or tiny.entry(k)
        entry(x3, w, b, running_mean, running_var, momentum, eps, target, stats_out)
    else:
        k += _EVAL
        entry = tiny.entries[k] or tiny.entry(k)
        entry(x3, running_mean, running_var, w, b, eps, target, stats_out)
    result = target.reshape(shape)
    if return_stats:
        return result, stats_out[0], stats_out[1]
    return result


#: Indices of _TinyPath.entries: BN (+ _CL for channels-last), LN (+ 2 * (weight is None) + (bias is None)).
_TRAIN, _EVAL, _LN, _CL = 0, 1, 2, 6
#: LayerNorm's serial entry for tiny inputs (the one of ``_engine.layer_norm_serial``'s size class;
#: the pipelined one is correct for any size, only slower on small ones).
_TINY_LN = _engine.layer_norm_serial_cached if _SERIAL_SIZE <= _engine._LN_PIPELINE_ELEMENTS \
    else _engine.layer_norm_serial_pipelined


class _TinyPath:
    """What the tiny paths need per x dtype (float32/float64), found with one lookup per call.

    They call the serial entries' compiled specializations directly (``compiled_entry``): their
    fast-path checks have fixed every argument's numba type. Until a specialization exists (the
    first call compiles it or loads it from the on-disk cache) the dispatcher is called.
    """

    __slots__ = ("dtype", "sdt", "none", "no_stats", "scratch", "entries", "argtypes")

    def __init__(self, dt: np.dtype) -> None:
        self.dtype = dt
        self.sdt = stats_dtype(dt)
        self.none = _engine._none_of(dt)
        self.no_stats = _engine.no_stats(self.sdt)
        # LN statistics nobody reads; a tiny input has fewer rows than this (pages untouched
        # until written, so the unused part costs no memory).
        self.scratch = np.empty(_SERIAL_SIZE, self.sdt)
        self.entries: list = [None] * 8
        self.argtypes: list = [None] * 8

    def entry(self, k: int):
        """Entry ``k`` (see ``_TRAIN``...): the compiled one once it exists, else the dispatcher."""
        dispatcher = (_engine.batch_norm_train_rows, _engine.batch_norm_eval_rows, *[_TINY_LN] * 4,
                      _engine.batch_norm_train_cl, _engine.batch_norm_eval_cl)[k]
        argtypes = self.argtypes[k]
        if argtypes is None:
            argtypes = self.argtypes[k] = self._argtypes(k)
        entry = _engine.compiled_entry(dispatcher, argtypes)
        if entry is None:  # not compiled yet (or only for other types, e.g. a read-only x)
            return dispatcher
        self.entries[k] = entry
        return entry

    def _argtypes(self, k: int) -> tuple:
        """The numba types of the tiny path's arguments to entry ``k``."""
        a = types.Array(numba.from_dtype(self.dtype), 1, "C")
        s = numba.from_dtype(self.sdt)
        if k < _LN or k >= _CL:
            x3 = types.Array(a.dtype, 3, "C")
            stats = types.Array(s, 2, "C")
            if k % _CL == _TRAIN:
                return (x3, a, a, a, a, types.float64, types.float64, x3, stats)
            return (x3, a, a, a, a, types.float64, x3, stats)
        x2 = types.Array(a.dtype, 2, "C")
        s1 = types.Array(s, 1, "C")
        variant = k - _LN
        return (x2, types.none if variant & 2 else a, types.none if variant & 1 else a, types.float64, x2, s1, s1)


_TINY = {dt: _TinyPath(dt) for dt in (_F32, _F64)}


def _check_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out,
                      stats=None):
    """Validate every batch_norm argument before anything is computed or mutated."""
    x = as_float_array(x)
    axis, running_mean, running_var, weight, bias, momentum, eps, out, _ = batch_norm_args(
        HOST, x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out, stats)
    return x, axis, running_mean, running_var, weight, bias, momentum, eps, out


def _update_running(running_mean, running_var, mean, unbiased_var, momentum):
    """torch's rule, computed in float64 and written in place, for statistics combined outside
    the fused kernel (``stats=``, numbanorm.dask)."""
    keep = np.float64(1.0 - momentum)  # a float64 scalar, so half running stats are not rounded twice
    running_mean[...] = keep * running_mean + momentum * mean
    running_var[...] = keep * running_var + momentum * unbiased_var
