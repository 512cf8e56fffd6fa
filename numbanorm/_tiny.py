"""The tiny-call paths: small inputs whose arguments the fast checks accepted (``_checks``'
``*_common_*``), run by one serial jitted entry called directly.

Per-call Python is most of a tiny call's time (a (1,16,768) LayerNorm kernel is ~3 us), so these
skip the general view mapping, the thread count and the launch lock, and once a specialization
exists they call its compiled entry point (``_numba.compiled_entry``), which skips numba's typing
of every argument.

Arguments typed ``Any`` are the caller's, as the fast checks admitted them (ndarrays of the right
shape and dtype, or None; Python floats and ints): those tests are not something mypy can follow.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types

from . import _numba
from ._backend import cpu
from ._layout import contiguous_shape3, stats_dtype

_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)


def layer_norm_tiny(x: np.ndarray, D: int, weight: Any, bias: Any, eps: Any,
                    return_stats: bool) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """layer_norm of a small input whose arguments ``ln_common_width`` accepted (rows of D)."""
    dt = x.dtype
    tiny = _TINY.get(dt) or _tiny_path(dt)
    R = x.size // D
    kdt = tiny.kdt
    if kdt is dt:
        target = np.empty((R, D), dt)
        if x.ndim == 2:
            x2, result = x, target
        else:
            x2, result = x.reshape(R, D), target.reshape(x.shape)
    else:  # float16/bfloat16: the kernels' 16-bit views (cpu/halfio.py), N-D (layer_norm_serial_nd)
        x2 = x.view(kdt)
        target = np.empty(x.shape, kdt)
        result = target.view(dt)
    if return_stats:
        mean, rstd = np.empty(R, tiny.sdt), np.empty(R, tiny.sdt)
    else:
        # Statistics nobody reads: the kernel only writes them, so one shared scratch serves as
        # both (and serves concurrent calls too: whatever they leave in it is never read).
        mean = rstd = tiny.scratch
    k = _LN + (weight is None) * 2 + (bias is None)
    if kdt is not dt:
        k += _ND * x.ndim
    entry = tiny.entries.get(k) or tiny.entry(k)
    entry(x2, weight, bias, eps, target, mean, rstd)
    if not return_stats:
        return result
    batch_shape = x.shape[:-1]
    return result, mean.reshape(batch_shape), rstd.reshape(batch_shape)


def batch_norm_tiny(x: np.ndarray, C: int, running_mean: Any, running_var: Any, weight: Any, bias: Any,
                    training: object, momentum: Any, eps: Any, channel_axis: Any,
                    return_stats: bool) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """batch_norm of a small input whose arguments ``bn_common_channels`` accepted (C channels):
    the serial jitted entry called directly (per-call Python is most of a tiny call's time)."""
    shape = x.shape
    dt = x.dtype
    tiny = _TINY.get(dt) or _tiny_path(dt)
    ndim = len(shape)
    axis = channel_axis % ndim
    kdt = tiny.kdt
    if kdt is not dt and (axis == 1 or axis == ndim - 1):
        # float16/bfloat16: N-D 16-bit views (cpu/batch_norm.*_nd_*: channels on axis 1 or last;
        # an (N, C, 1, ...) input takes the row entry, correct for runs of one too)
        x3 = x.view(kdt)
        target = np.empty(shape, kdt)
        k = (_CL if axis == ndim - 1 else 0) + _ND * ndim
    else:
        shape3 = contiguous_shape3(shape, x.size, axis, C)
        k = _CL if shape3[2] == 1 else 0  # one entry per layout (batch_norm.train_serial_entry)
        x3 = x.reshape(shape3)
        target = np.empty(shape3, kdt)
        if kdt is not dt:
            x3 = x3.view(kdt)
    stats_out = np.empty((2, C), tiny.sdt) if return_stats else tiny.no_stats
    none = tiny.none
    w = none if weight is None else weight
    b = none if bias is None else bias
    if training:
        if running_mean is None:
            running_mean = running_var = none
        k += _TRAIN
        entry = tiny.entries.get(k) or tiny.entry(k)
        entry(x3, w, b, running_mean, running_var, momentum, eps, target, stats_out)
    else:
        k += _EVAL
        entry = tiny.entries.get(k) or tiny.entry(k)
        entry(x3, running_mean, running_var, w, b, eps, target, stats_out)
    result = target.reshape(shape) if k < _ND else target
    if kdt is not dt:
        result = result.view(dt)
    if return_stats:
        return result, stats_out[0], stats_out[1]
    return result


#: Keys of _TinyPath.entries: BN (+ _CL for channels-last), LN (+ 2 * (weight is None) + (bias is None)),
#: + _ND * ndim for the N-D entries of the half path.
_TRAIN, _EVAL, _LN, _CL, _ND = 0, 1, 2, 6, 8
#: LayerNorm's serial entry for tiny inputs (the one of their size class; the pipelined one is
#: correct for any size, only slower on small ones).
_TINY_LN = (cpu.layer_norm_serial_cached if cpu.SERIAL_SIZE <= cpu.LN_PIPELINE_ELEMENTS
            else cpu.layer_norm_serial_pipelined)


class _TinyPath:
    """What the tiny paths need per x dtype (float32/float64, float16/bfloat16), found with one
    lookup per call.

    They call the serial entries' compiled specializations directly (``compiled_entry``): their
    fast-path checks have fixed every argument's numba type. Until a specialization exists (the
    first call compiles it or loads it from the on-disk cache) the dispatcher is called. Half x
    reaches the kernels as its 16-bit view (``kdt``), with float32 parameters and running stats.
    """

    __slots__ = ("dtype", "kdt", "pdt", "sdt", "none", "no_stats", "scratch", "entries", "argtypes")

    def __init__(self, dt: np.dtype) -> None:
        self.dtype = dt
        self.kdt = cpu.kernel_array(np.empty(0, dt)).dtype
        self.pdt = dt if self.kdt is dt else _F32
        self.sdt = stats_dtype(dt)
        self.none = cpu.none_of(self.pdt)
        self.no_stats = cpu.no_stats(self.sdt)
        # LN statistics nobody reads; a tiny input has fewer rows than this (pages untouched
        # until written, so the unused part costs no memory).
        self.scratch = np.empty(cpu.SERIAL_SIZE, self.sdt)
        self.entries: dict = {}
        self.argtypes: dict = {}

    def entry(self, k: int):
        """Entry ``k`` (see ``_TRAIN``...): the compiled one once it exists, else the dispatcher."""
        ndim, j = divmod(k, _ND)
        if ndim:  # the N-D entries of the half path
            dispatcher = (cpu.batch_norm_train_nd_rows, cpu.batch_norm_eval_nd_rows, *[cpu.layer_norm_serial_nd] * 4,
                          cpu.batch_norm_train_nd_cl, cpu.batch_norm_eval_nd_cl)[j]
        else:
            dispatcher = (cpu.batch_norm_train_rows, cpu.batch_norm_eval_rows, *[_TINY_LN] * 4,
                          cpu.batch_norm_train_cl, cpu.batch_norm_eval_cl)[j]
        argtypes = self.argtypes.get(k)
        if argtypes is None:
            argtypes = self.argtypes[k] = self._argtypes(j, ndim)
        entry = _numba.compiled_entry(dispatcher, argtypes)
        if entry is None:  # not compiled yet (or only for other types, e.g. a read-only x)
            return dispatcher
        self.entries[k] = entry
        return entry

    def _argtypes(self, k: int, ndim: int = 0) -> tuple:
        """The numba types of the tiny path's arguments to entry ``k`` (of ``ndim``-D arrays for
        the N-D entries)."""
        e = numba.from_dtype(self.kdt)
        a = types.Array(numba.from_dtype(self.pdt), 1, "C")
        s = numba.from_dtype(self.sdt)
        if k < _LN or k >= _CL:
            x3 = types.Array(e, ndim or 3, "C")
            stats = types.Array(s, 2, "C")
            if k % _CL == _TRAIN:
                return (x3, a, a, a, a, types.float64, types.float64, x3, stats)
            return (x3, a, a, a, a, types.float64, x3, stats)
        x2 = types.Array(e, ndim or 2, "C")
        s1 = types.Array(s, 1, "C")
        variant = k - _LN
        return (x2, types.none if variant & 2 else a, types.none if variant & 1 else a, types.float64, x2, s1, s1)


_TINY = {dt: _TinyPath(dt) for dt in (_F32, _F64, np.dtype(np.float16))}


def _tiny_path(dt: np.dtype) -> _TinyPath:
    """The ``_TinyPath`` of a dtype first seen now (bfloat16: ml_dtypes is never imported here)."""
    tiny = _TINY[dt] = _TinyPath(dt)
    return tiny


def batch_norm_backward_tiny(grad_out: Any, x: np.ndarray, mean: Any, invstd: Any, weight: Any, channel_axis: Any,
                             C: int, out: np.ndarray | None = None
                             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Training batch_norm_backward of a small input whose arguments
    ``bn_backward_common_channels`` (and ``out``, ``_common_out``) accepted: one serial jitted
    entry does both passes (it reads every element of x and dy before it writes that of grad_x)."""
    shape = x.shape
    dt = x.dtype
    shape3 = contiguous_shape3(shape, x.size, channel_axis % len(shape), C)
    target = np.empty(shape3, dt) if out is None else out.reshape(shape3)
    pdt = mean.dtype  # x's for float32/float64, float32 for half x (the fast check's)
    if weight is None:  # zero-length stand-ins (one compiled specialization per dtype)
        weight, grads = cpu.none_of(pdt), cpu.no_stats(pdt)
    else:
        grads = np.empty((2, C), pdt)
    g3, x3 = grad_out.reshape(shape3), x.reshape(shape3)
    if pdt is not dt:  # float16/bfloat16: the kernels' 16-bit views (cpu/halfio.py)
        g3, x3, target = cpu.kernel_array(g3), cpu.kernel_array(x3), cpu.kernel_array(target)
    cpu.batch_norm_backward_serial(g3, x3, mean, invstd, weight, target, grads)
    result = target.reshape(shape) if out is None else out
    if out is None and pdt is not dt:
        result = result.view(dt)
    if not grads.size:
        return result, None, None
    return result, grads[0], grads[1]
