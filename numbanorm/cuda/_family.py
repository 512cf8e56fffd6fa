"""Host-side drivers of the CUDA norm family: RMSNorm and residual-add LayerNorm on the row
kernel, GroupNorm and InstanceNorm on the (sample-batched) BatchNorm kernels. Checks are the CPU
path's (``numbanorm/family.py``), in the same order with the same messages, on metadata."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .._checks import (
    check_channel_axis,
    check_eps,
    check_float_dtype,
    check_momentum,
    check_normalized_shape,
    check_out_shape_dtype,
)
from . import _arrays, _kernels
from . import _kernels_family as _kf
from ._arrays import DEVICE_DTYPES, DevArray
from ._functional import (
    _acc,
    _blocks_per_channel,
    _flat,
    _io,
    _pdtype,
    _threads,
    _wrap_param,
    _wrap_running,
    _wrap_x,
    batch_norm,
    row_norm,
    stats_dtype,
)
from ._launch import launch, stream_for

__all__ = ["rms_norm", "add_layer_norm", "group_norm", "instance_norm"]

#: grid.z holds the samples of GroupNorm / InstanceNorm.
MAX_SAMPLES = 65535


def _wrap_out(out, x: DevArray, name: str = "out", x_name: str = "x") -> DevArray | None:
    """``_checks.check_out`` on device arrays (with the argument names of the CPU messages)."""
    if out is None:
        return None
    do = _arrays.wrap(out, name)
    try:
        check_out_shape_dtype(do.shape, do.dtype, x.shape, x.dtype)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc).replace("out must", f"{name} must", 1).replace("of x,", f"of {x_name},", 1)) from None
    if do.readonly:
        raise ValueError(f"{name} must be writeable")
    if _overlaps(do, x) and not (do.ptr == x.ptr and do.strides == x.strides):
        raise ValueError(f"{name} overlaps {x_name} without being {x_name} itself; pass {name}={x_name} for in place, "
                         "or a separate array")
    return do


def _overlaps(a: DevArray, b: DevArray) -> bool:
    (a0, a1), (b0, b1) = a.extent(), b.extent()
    return a0 < b1 and b0 < a1


def _rows_target(x: DevArray, out: DevArray | None) -> tuple[DevArray, DevArray]:
    """(array to return, C-contiguous array the kernel writes: ``out`` itself when it can)."""
    if out is not None and out.memory_order(0) == "c":
        return out, out
    target = _arrays.empty_like(x)
    return (out if out is not None else target), target


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
    shape = check_normalized_shape(normalized_shape, dx.shape)
    w = _wrap_param(weight, "weight", shape, dx)
    eps = float(np.finfo(stats_dtype(dx.dtype)).eps) if eps is None else check_eps(eps)
    dout = _wrap_out(out, dx)
    D = math.prod(shape)
    rows = math.prod(dx.shape[: dx.ndim - len(shape)])
    src = dx if dx.memory_order(0) == "c" else _arrays.contiguous(dx, "x")
    result, target = _rows_target(src, dout)
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
    if dr.shape != dx.shape or dr.dtype != dx.dtype:
        raise ValueError(f"residual must have the shape and dtype of x, {dx.shape} {dx.dtype}, "
                         f"got {dr.shape} {dr.dtype}")
    shape = check_normalized_shape(normalized_shape, dx.shape)
    w = _wrap_param(weight, "weight", shape, dx)
    b = _wrap_param(bias, "bias", shape, dx)
    eps = check_eps(eps)
    bufs = {}
    for name, buf in (("out", out), ("residual_out", residual_out)):
        _wrap_out(buf, dx, name)
        bufs[name] = _wrap_out(buf, dr, name, "residual")
    dout, dsum = bufs["out"], bufs["residual_out"]
    if dout is not None and dsum is not None and _overlaps(dout, dsum):
        raise ValueError("out and residual_out must not overlap: both results are returned")
    D = math.prod(shape)
    rows = math.prod(dx.shape[: dx.ndim - len(shape)])
    src = dx if dx.memory_order(0) == "c" else _arrays.contiguous(dx, "x")
    rsrc = dr if dr.memory_order(0) == "c" else _arrays.contiguous(dr, "residual")
    result, target = _rows_target(src, dout)
    sum_result, sum_target = _rows_target(src, dsum)
    if rows and D:
        sdt = stats_dtype(dx.dtype)
        mean, rstd = _arrays.scratch(dx, rows, sdt, 14), _arrays.scratch(dx, rows, sdt, 15)
        row_norm("add", src, rsrc, sum_target, w, b, target, mean, rstd, rows, D, eps)
    return _finish(result, target), _finish(sum_result, sum_target)


# --------------------------------------------------------------------------------------------
# Per-sample ops
# --------------------------------------------------------------------------------------------
def _check_sample_layout(dx: DevArray, channel_axis, op: str) -> int:
    if dx.ndim < 2:
        raise ValueError(f"x must have at least 2 dims (N, C, ...) for {op}, got shape {dx.shape}")
    axis = check_channel_axis(channel_axis, dx.ndim)
    if axis == 0:
        raise ValueError(f"channel_axis must not be 0, the batch axis, for {op}")
    return axis


def check_group_layout(dx: DevArray, channel_axis, num_groups) -> tuple[int, int]:
    """(channel axis, number of groups) of a group_norm input, checked (shared with the backward)."""
    axis = _check_sample_layout(dx, channel_axis, "group_norm")
    C = dx.shape[axis]
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups <= 0 or C % num_groups:
        raise ValueError(f"num_groups must be a positive divisor of the number of channels {C}, got {num_groups}")
    return axis, int(num_groups)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, out=None, return_stats=False):
    """``numbanorm.group_norm`` on a CUDA array; stats (with ``return_stats``) of shape (N, G)."""
    dx = _wrap_x(x)
    axis, G = check_group_layout(dx, channel_axis, num_groups)
    C = dx.shape[axis]
    w = _wrap_param(weight, "weight", (C,), dx)
    b = _wrap_param(bias, "bias", (C,), dx)
    eps = check_eps(eps)
    dout = _wrap_out(out, dx)
    result, gmean, grstd, _, _ = _grouped(dx, axis, G, w, b, eps, dout)
    if not return_stats:
        return result
    N = dx.shape[0]
    return result, _arrays.reshape(gmean, (N, G)), _arrays.reshape(grstd, (N, G))


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, channel_axis=1, out=None):
    """``numbanorm.instance_norm`` on a CUDA array; running stats (CUDA arrays) update in place."""
    dx = _wrap_x(x)
    axis = _check_sample_layout(dx, channel_axis, "instance_norm")
    C = dx.shape[axis]
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or both be None")
    update = bool(use_input_stats) and running_mean is not None
    rm = _wrap_running(running_mean, "running_mean", C, dx, update)
    rv = _wrap_running(running_var, "running_var", C, dx, update)
    momentum = check_momentum(momentum)
    eps = check_eps(eps)
    if not use_input_stats:
        if rm is None:
            raise ValueError("use_input_stats=False needs running_mean and running_var")
        return batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps,
                          channel_axis=channel_axis, out=out)
    w = _wrap_param(weight, "weight", (C,), dx)
    b = _wrap_param(bias, "bias", (C,), dx)
    if dx.shape[0] * C and dx.size // (dx.shape[0] * C) == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {dx.shape}")
    dout = _wrap_out(out, dx)
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
    if dout is not None and dout.memory_order(axis) == order and (order == "c" or dout.strides == src.strides):
        result = target = dout
    else:
        target = _arrays.empty_like(src)
        result = dout if dout is not None else target
    if dx.size == 0:
        nan = np.full(N * G, np.nan, sdt)
        if result is not target:
            _arrays.copy_into(result, target)
        return result.obj, _arrays.from_host(dx, nan), _arrays.from_host(dx, nan.copy()), None, None
    if N > MAX_SAMPLES:
        raise ValueError(f"the CUDA group_norm/instance_norm handle at most {MAX_SAMPLES} samples, got {N}")
    outer, _, inner = _arrays.canonical_dims(src, axis, order)
    outer_s = outer // N  # rows (or runs) per sample
    acc, xio = _acc(dx.dtype), _io(dx.dtype)
    stream = stream_for(dx)
    fx = _arrays.flat(src)
    M = outer_s * inner
    if inner == 1:
        TX, TY = _kernels.BN_TX, _kernels.BN_TY
        col_blocks = -(-C // TX)
        P = _blocks_per_channel(M, col_blocks * N)
        kernel, grid, block = _kernels.bn_partials_cl_kernel(acc, xio, TX, TY), (col_blocks, P, N), (TX, TY)
    else:
        P = _blocks_per_channel(M, C * N)
        kernel, grid = _kernels.bn_partials_kernel(acc, xio), (C, P, N)
        block = (_threads(-(-M // P), _kernels.BN_THREADS),)
    parts = [_arrays.flat(_arrays.scratch(dx, N * C * P, "float64", 3 + k)) for k in range(3)]
    if inner == 1:
        launch(kernel, grid, block, stream, fx, C, P, *parts)
    else:
        launch(kernel, grid, block, stream, fx, C, inner, P, *parts)
    gmean, grstd = _arrays.empty(dx, (N * G,), sdt), _arrays.empty(dx, (N * G,), sdt)
    cmean, cm2 = _arrays.scratch(dx, N * C, "float64", 12), _arrays.scratch(dx, N * C, "float64", 13)
    cdt = "float64" if acc == 64 else "float32"
    coeffs = [_arrays.flat(_arrays.scratch(dx, N * C, cdt, k)) for k in range(3)]
    T = _threads(N * G, _kernels.BN_THREADS)
    fin = _kf.group_finalize_kernel(acc, _io(_pdtype(w, b, dx)), w is not None, b is not None)
    launch(fin, (-(-(N * G) // T),), (T,), stream, *parts, P, C, G, _flat(w, fx), _flat(b, fx), eps,
           _arrays.flat(gmean), _arrays.flat(grstd), _arrays.flat(cmean), _arrays.flat(cm2), *coeffs)
    fy = _arrays.flat(target)
    if inner == 1:
        TX, TY = _kernels.BN_TX, _kernels.BN_TY
        grid = (-(-C // TX), max(1, min(65535, -(-outer // (TY * 4)))))
        launch(_kernels.bn_normalize_cl_kernel(acc, xio, TX, TY), grid, (TX, TY), stream, fx, C, outer_s, *coeffs, fy)
    else:
        Tn = _threads(inner, _kernels.BN_THREADS)
        grid = (outer * C, max(1, min(65535, -(-inner // (Tn * 4)))))
        launch(_kernels.bn_normalize_kernel(acc, xio), grid, (Tn,), stream, fx, C, inner, outer_s * C, *coeffs, fy)
    if result is not target:
        _arrays.copy_into(result, target)
    return result.obj, gmean, grstd, cmean, cm2
