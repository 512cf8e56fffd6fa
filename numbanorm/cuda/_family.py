"""Host-side drivers of the CUDA norm family: RMSNorm and residual-add LayerNorm on the row
kernel, GroupNorm and InstanceNorm on the (sample-batched) BatchNorm kernels. Checks are the CPU
path's (the sequences in ``numbanorm/_checks.py``), on metadata."""

from __future__ import annotations

import math

import numpy as np

from .._checks import (
    add_layer_norm_args,
    check_float_dtype,
    group_norm_args,
    instance_norm_checked,
    rms_norm_args,
)
from . import _arrays, _kernels
from . import _kernels_family as _kf
from ._arrays import DEVICE_DTYPES, DevArray
from ._functional import (
    DEVICE,
    _acc,
    _flat,
    _io,
    _normalize,
    _partial_moments,
    _pdtype,
    _threads,
    _wrap_x,
    batch_norm,
    out_target,
    row_norm,
    stats_dtype,
)
from ._launch import launch, stream_for

__all__ = ["rms_norm", "add_layer_norm", "group_norm", "instance_norm"]

#: grid.z holds the samples of GroupNorm / InstanceNorm.
MAX_SAMPLES = 65535


def _finish(result: DevArray, target: DevArray):
    if result is not target:
        _arrays.copy_into(result, target)
    return result.obj


# --------------------------------------------------------------------------------------------
# Row ops
# --------------------------------------------------------------------------------------------
def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False):
    """``numbanorm.rms_norm`` on a CUDA array; with ``return_stats`` also rstd (shape ``x.shape[:-k]``)."""
    dx = _wrap_x(x)
    shape, w, eps, dout = rms_norm_args(DEVICE, dx, normalized_shape, weight, eps, out)
    D = math.prod(shape)
    rows = math.prod(dx.shape[: dx.ndim - len(shape)])
    src = dx if dx.memory_order(0) == "c" else _arrays.contiguous(dx, "x")
    result, target = out_target(dout, src)
    sdt = stats_dtype(dx.dtype)
    if D == 0:  # mean(x²) of no values: NaN rstd, as the CPU path
        rstd = _arrays.from_host(dx, np.full(rows, np.nan, sdt))
    else:
        rstd = _arrays.empty(dx, (rows,), sdt) if return_stats else _arrays.scratch(dx, rows, sdt, 14)
        if rows:
            row_norm("rms", src, None, None, w, None, target, None, rstd, rows, D, eps)
    y = _finish(result, target)
    return (y, _arrays.reshape(rstd, dx.shape[: dx.ndim - len(shape)])) if return_stats else y


def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None,
                   residual_out=None):
    """``numbanorm.add_layer_norm`` on CUDA arrays: ``(layer_norm(x + residual), x + residual)``."""
    dx = _wrap_x(x)
    dr = _arrays.wrap(residual, "residual")
    check_float_dtype(dr.dtype, "residual", DEVICE_DTYPES)
    shape, w, b, eps, dout, dsum = add_layer_norm_args(DEVICE, dx, dr, normalized_shape, weight, bias, eps, out,
                                                       residual_out)
    D = math.prod(shape)
    rows = math.prod(dx.shape[: dx.ndim - len(shape)])
    src = dx if dx.memory_order(0) == "c" else _arrays.contiguous(dx, "x")
    rsrc = dr if dr.memory_order(0) == "c" else _arrays.contiguous(dr, "residual")
    result, target = out_target(dout, src)
    sum_result, sum_target = out_target(dsum, src)
    if rows and D:
        sdt = stats_dtype(dx.dtype)
        mean, rstd = _arrays.scratch(dx, rows, sdt, 14), _arrays.scratch(dx, rows, sdt, 15)
        row_norm("add", src, rsrc, sum_target, w, b, target, mean, rstd, rows, D, eps)
    return _finish(result, target), _finish(sum_result, sum_target)


# --------------------------------------------------------------------------------------------
# Per-sample ops
# --------------------------------------------------------------------------------------------
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, out=None, return_stats=False):
    """``numbanorm.group_norm`` on a CUDA array; stats (with ``return_stats``) of shape (N, G)."""
    dx = _wrap_x(x)
    axis, G, w, b, eps, dout = group_norm_args(DEVICE, dx, num_groups, weight, bias, eps, channel_axis, out)
    result, gmean, grstd, _, _ = _grouped(dx, axis, G, w, b, eps, dout)
    if not return_stats:
        return result
    N = dx.shape[0]
    return result, _arrays.reshape(gmean, (N, G)), _arrays.reshape(grstd, (N, G))


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, channel_axis=1, out=None):
    """``numbanorm.instance_norm`` on a CUDA array; running stats (CUDA arrays) update in place."""
    dx = _wrap_x(x)
    return instance_norm_checked(DEVICE, x, dx, running_mean, running_var, weight, bias, use_input_stats, momentum,
                                 eps, channel_axis, out, batch_norm, lambda *checked: _instance_norm(dx, *checked))


def _instance_norm(dx: DevArray, axis, update, rm, rv, w, b, momentum, eps, dout):
    """CUDA instance_norm after the checks (``instance_norm_args``' values)."""
    C = dx.shape[axis]
    if rm is not None and rm.dtype != rv.dtype:
        raise TypeError(f"running_mean and running_var must have one dtype, got {rm.dtype} and {rv.dtype}")
    result, _, _, cmean, cm2 = _grouped(dx, axis, C, w, b, eps, dout)
    if update and cmean is not None:
        N = dx.shape[0]
        count = float(dx.size // (N * C))
        T = _threads(C, _kernels.BN_THREADS)
        launch(_kf.instance_running_kernel(_io(rm.dtype)), (-(-C // T),), (T,), stream_for(dx),
               _arrays.flat(cmean), _arrays.flat(cm2), N, C, count, momentum, _arrays.flat(rm), _arrays.flat(rv))
    return result


def _grouped(dx: DevArray, axis: int, G: int, w, b, eps: float, dout):
    """GroupNorm of ``dx`` into ``dout`` (or a new array); returns (result object, group mean,
    group rstd (N*G,), per-(n, c) float64 mean and M2 (None for an empty input))."""
    N, C = dx.shape[0], dx.shape[axis]
    sdt = stats_dtype(dx.dtype)
    order = dx.memory_order(axis)
    src = dx if order is not None else _arrays.contiguous(dx, "x")
    order = order or "c"
    result, target = out_target(dout, src, axis, order)
    if dx.size == 0:
        nan = np.full(N * G, np.nan, sdt)
        if result is not target:
            _arrays.copy_into(result, target)
        return result.obj, _arrays.from_host(dx, nan), _arrays.from_host(dx, nan.copy()), None, None
    if N > MAX_SAMPLES:
        raise ValueError(f"the CUDA group_norm/instance_norm handle at most {MAX_SAMPLES} samples, got {N}")
    outer, _, inner = _arrays.canonical_dims(src, axis, order)
    acc, xio = _acc(dx.dtype), _io(dx.dtype)
    stream = stream_for(dx)
    fx = _arrays.flat(src)
    *parts, P = _partial_moments(fx, outer, C, inner, acc, xio, stream, dx, N)
    gmean, grstd = _arrays.empty(dx, (N * G,), sdt), _arrays.empty(dx, (N * G,), sdt)
    cmean, cm2 = _arrays.scratch(dx, N * C, "float64", 12), _arrays.scratch(dx, N * C, "float64", 13)
    cdt = "float64" if acc == 64 else "float32"
    coeffs = [_arrays.flat(_arrays.scratch(dx, N * C, cdt, k)) for k in range(3)]
    T = _threads(N * G, _kernels.BN_THREADS)
    fin = _kf.group_finalize_kernel(acc, _io(_pdtype(w, b, dx)), w is not None, b is not None)
    launch(fin, (-(-(N * G) // T),), (T,), stream, *parts, P, C, G, _flat(w, fx), _flat(b, fx), eps,
           _arrays.flat(gmean), _arrays.flat(grstd), _arrays.flat(cmean), _arrays.flat(cm2), *coeffs)
    _normalize(fx, outer, C, inner, *coeffs, _arrays.flat(target), acc, xio, stream, N)
    if result is not target:
        _arrays.copy_into(result, target)
    return result.obj, gmean, grstd, cmean, cm2
