"""Host-side drivers of the CUDA ops: the CPU path's argument checks on array metadata (no copy
to the host), the canonical ``(outer, C, inner)`` geometry, allocation and launches."""

from __future__ import annotations

import math

import numpy as np

from .._checks import (
    batch_norm_args,
    check_disjoint,
    check_float_dtype,
    check_like_shape_dtype,
    check_shape_dtype,
    is_device_array,
    layer_norm_args,
)
from . import _arrays, _kernels
from ._arrays import DEVICE_DTYPES, DevArray
from ._launch import launch, stream_for

__all__ = ["layer_norm", "batch_norm"]


def _acc(dtype: str) -> int:
    return 64 if dtype == "float64" else 32


def _io(dtype: str) -> str:
    return "b" if dtype == "bfloat16" else "f"


def stats_dtype(dtype: str) -> str:
    """float64 stats for float64 input, float32 otherwise (like torch and the CPU path)."""
    return "float64" if dtype == "float64" else "float32"


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _threads(n: int, cap: int) -> int:
    """A power-of-two block size for ``n`` items, within [MIN_THREADS, cap]."""
    return max(_kernels.MIN_THREADS, min(cap, _next_pow2(n)))


# --------------------------------------------------------------------------------------------
# Checks: the CPU path's, on metadata
# --------------------------------------------------------------------------------------------
def _wrap_x(x) -> DevArray:
    dx = _arrays.wrap(x, "x")
    check_float_dtype(dx.dtype, "x", DEVICE_DTYPES)
    return dx


def _param_dtypes(x: DevArray) -> tuple[str, ...]:
    # Half-precision inputs may come with float32 parameters / running stats (mixed precision).
    return (x.dtype, "float32") if x.dtype in ("float16", "bfloat16") else (x.dtype,)


def _wrap_param(p, name: str, shape: tuple[int, ...], x: DevArray) -> DevArray | None:
    if p is None:
        return None
    dp = _arrays.wrap(p, name)
    allowed = _param_dtypes(x)
    check_shape_dtype(name, dp.shape, dp.dtype, shape, dp.dtype if dp.dtype in allowed else x.dtype)
    if dp.memory_order(0) != "c":
        dp = _arrays.contiguous(dp, name)
    return dp


def _wrap_running(p, name: str, num_channels: int, x: DevArray, will_update: bool) -> DevArray | None:
    dp = _wrap_param(p, name, (num_channels,), x)
    if dp is not None and will_update:
        if dp.readonly:
            raise ValueError(f"{name} must be writeable: training=True updates it in place")
        if _arrays.wrap(p, name).memory_order(0) != "c":  # an update of a copy would be lost
            raise ValueError(f"{name} must be contiguous: training=True updates it in place")
    return dp


def _wrap_out(out, x: DevArray, name: str = "out", x_name: str = "x") -> DevArray | None:
    """``_checks.check_out`` on device arrays."""
    if out is None:
        return None
    do = _arrays.wrap(out, name)
    check_like_shape_dtype(name, do.shape, do.dtype, x.shape, x.dtype, x_name)
    if do.readonly:
        raise ValueError(f"{name} must be writeable")
    return do


def _wrap_like(a, name: str, x: DevArray) -> DevArray:
    """``_checks.check_like`` on a device array: shape and dtype of x."""
    da = _arrays.wrap(a, name)
    check_float_dtype(da.dtype, name, DEVICE_DTYPES)
    check_like_shape_dtype(name, da.shape, da.dtype, x.shape, x.dtype)
    return da


def _wrap_stat(s, name: str, shape: tuple[int, ...]) -> DevArray:
    """``_checks.check_stat`` on a device array (any float dtype), made contiguous if it is not."""
    ds = _arrays.wrap(s, name)
    check_float_dtype(ds.dtype, name, DEVICE_DTYPES)
    if ds.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (as returned by the forward), got {ds.shape}")
    return ds if ds.memory_order(0) == "c" else _arrays.contiguous(ds, name)


def _check_disjoint(outputs, inputs) -> None:
    """``_checks.check_disjoint`` on device arrays (the arguments as the caller passed them)."""
    def dev(a):
        return _arrays.wrap(a, "") if a is not None and (isinstance(a, DevArray) or is_device_array(a)) else None

    check_disjoint([(n, dev(a), p) for n, a, p in outputs], [(n, dev(a)) for n, a in inputs], overlaps, _same)


def overlaps(a: DevArray, b: DevArray) -> bool:
    (a0, a1), (b0, b1) = a.extent(), b.extent()
    return a0 < b1 and b0 < a1


def _same(a: DevArray, b: DevArray) -> bool:
    return a.ptr == b.ptr and a.strides == b.strides and a.shape == b.shape


def out_target(dout: DevArray | None, src: DevArray, axis: int = 0, order: str = "c") -> tuple[DevArray, DevArray]:
    """(array to return, array the kernels write): ``out`` itself when its memory layout is
    ``src``'s (``order`` "c" or "moved" about ``axis``), else a new array of src's layout (copied
    into ``out`` at the end, when there is one)."""
    if dout is not None and dout.memory_order(axis) == order and (order == "c" or dout.strides == src.strides):
        return dout, dout
    target = _arrays.empty_like(src)
    return (dout if dout is not None else target), target


class DeviceArgs:
    """``_checks.HostArgs`` on device-array metadata: the shared check sequences of
    ``numbanorm._checks`` call these for CUDA arrays (no copy to the host)."""

    param = staticmethod(_wrap_param)
    running = staticmethod(_wrap_running)
    out = staticmethod(_wrap_out)
    like = staticmethod(_wrap_like)
    stat = staticmethod(_wrap_stat)
    disjoint = staticmethod(_check_disjoint)


DEVICE = DeviceArgs()


# --------------------------------------------------------------------------------------------
# layer_norm
# --------------------------------------------------------------------------------------------
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    """``numbanorm.layer_norm`` on a CUDA array; outputs are arrays of x's kind."""
    dx = _wrap_x(x)
    shape, w, b, eps, dout = layer_norm_args(DEVICE, dx, normalized_shape, weight, bias, eps, out)

    D = math.prod(shape)
    rows = dx.size // D if D else math.prod(dx.shape[: dx.ndim - len(shape)])
    batch_shape = dx.shape[: dx.ndim - len(shape)]
    src = dx if dx.memory_order(0) == "c" else _arrays.contiguous(dx, "x")
    result, target = out_target(dout, src)
    sdt = stats_dtype(dx.dtype)
    if D == 0:  # nothing to reduce: mean 0, rstd 1/sqrt(eps), as the CPU path
        mean = _arrays.from_host(dx, np.zeros(rows, sdt))
        rstd = _arrays.from_host(dx, np.full(rows, 1.0 / math.sqrt(eps), sdt))
    else:
        mean = _arrays.empty(dx, (rows,), sdt)
        rstd = _arrays.empty(dx, (rows,), sdt)
        if rows:
            row_norm("ln", src, None, None, w, b, target, mean, rstd, rows, D, eps)
    if result is not target:
        _arrays.copy_into(result, target)
    if not return_stats:
        return result.obj
    return result.obj, _arrays.reshape(mean, batch_shape), _arrays.reshape(rstd, batch_shape)


def row_norm(mode: str, x: DevArray, res: DevArray | None, s: DevArray | None, w: DevArray | None,
             b: DevArray | None, y: DevArray, mean: DevArray | None, rstd: DevArray, rows: int, D: int,
             eps: float) -> None:
    """Launch the row kernel (``_kernels.layer_norm_kernel``) in ``mode`` "ln", "rms" or "add"
    over ``rows`` C-contiguous rows of length ``D > 0``."""
    vec = _kernels.LN_VEC
    if not (mode != "add" and x.dtype == "float32" and D % vec == 0 and x.ptr % 16 == 0 and y.ptr % 16 == 0):
        vec = 1  # wide loads only where the row allows them
    regs = max(1, _kernels.LN_REGS // vec)  # units of vec elements: the same row share in registers
    kernel = _kernels.layer_norm_kernel(_acc(x.dtype), _io(x.dtype), _io(_pdtype(w, b, x)), regs,
                                        w is not None, b is not None, mode, vec)
    block = (_threads(-(-(D // vec) // regs), _kernels.MAX_THREADS),)
    fx = _arrays.flat(x)
    launch(kernel, (rows,), block, stream_for(x), fx, _flat(res, fx), _flat(s, fx), _flat(w, fx), _flat(b, fx),
           _arrays.flat(y), _flat(mean, fx), _arrays.flat(rstd), D, eps)


def _flat(p: DevArray | None, placeholder):
    """The kernel argument for an optional array. numba-cuda cannot pass None to a kernel, so an
    absent one is compiled out of the kernel and ``placeholder`` (any array) fills its slot."""
    return placeholder if p is None else _arrays.flat(p)


def _pdtype(w: DevArray | None, b: DevArray | None, x: DevArray) -> str:
    """The one storage dtype of the affine parameters (weight and bias must agree)."""
    if w is not None and b is not None and w.dtype != b.dtype:
        raise TypeError(f"weight and bias must have one dtype, got {w.dtype} and {b.dtype}")
    return w.dtype if w is not None else (b.dtype if b is not None else x.dtype)


# --------------------------------------------------------------------------------------------
# batch_norm
# --------------------------------------------------------------------------------------------
def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, out=None, return_stats=False):
    """``numbanorm.batch_norm`` on a CUDA array; running stats (CUDA arrays) update in place."""
    dx, axis, rm, rv, w, b, momentum, eps, dout = _check_batch_norm(
        x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out)
    C = dx.shape[axis]
    order = dx.memory_order(axis)
    src = dx if order is not None else _arrays.contiguous(dx, "x")
    order = order or "c"
    outer, _, inner = _arrays.canonical_dims(src, axis, order)
    result, target = out_target(dout, src, axis, order)
    sdt = stats_dtype(dx.dtype)
    stream = stream_for(dx)
    acc, xio = _acc(dx.dtype), _io(dx.dtype)
    pio = _io(_pdtype(w, b, dx))
    rio = _io(rm.dtype) if rm is not None else "f"
    if rm is not None and rm.dtype != rv.dtype:
        raise TypeError(f"running_mean and running_var must have one dtype, got {rm.dtype} and {rv.dtype}")

    if C == 0:  # no channels: nothing to compute or launch
        mean, invstd = _arrays.empty(dx, (0,), sdt), _arrays.empty(dx, (0,), sdt)
    elif training and dx.size == 0:  # empty batch: NaN stats, running stats untouched (as the CPU)
        mean = _arrays.from_host(dx, np.full(C, np.nan, sdt))
        invstd = _arrays.from_host(dx, np.full(C, np.nan, sdt))
    else:
        mean = _arrays.empty(dx, (C,), sdt)
        invstd = _arrays.empty(dx, (C,), sdt)
        coeffs = [_arrays.scratch(dx, C, "float64" if acc == 64 else "float32", k) for k in range(3)]
        fshift, fscale, foffset = (_arrays.flat(a) for a in coeffs)
        fmean = _arrays.flat(mean)
        finalize_block = (_threads(C, _kernels.BN_THREADS),)
        finalize_grid = (-(-C // finalize_block[0]),)
        has = (w is not None, b is not None)
        fx = _arrays.flat(src) if dx.size else None
        if training:
            fpart = _partial_moments(fx, outer, C, inner, acc, xio, stream, dx)
            kernel = _kernels.bn_finalize_kernel(acc, pio, rio, *has, rm is not None)
            launch(kernel, finalize_grid, finalize_block, stream,
                   fpart[0], fpart[1], fpart[2], fpart[3], _flat(w, fmean), _flat(b, fmean), _flat(rm, fmean),
                _flat(rv, fmean), momentum, eps, fmean, _arrays.flat(invstd), fshift, fscale, foffset)
        else:
            launch(_kernels.bn_eval_coeffs_kernel(acc, pio, rio, *has), finalize_grid, finalize_block, stream,
                   _flat(w, fmean), _flat(b, fmean), _arrays.flat(rm), _arrays.flat(rv), eps, fmean,
                _arrays.flat(invstd), fshift, fscale, foffset)
        if dx.size:
            _normalize(fx, outer, C, inner, fshift, fscale, foffset, _arrays.flat(target), acc, xio, stream)
    if result is not target:
        _arrays.copy_into(result, target)
    if not return_stats:
        return result.obj
    return result.obj, mean.obj, invstd.obj


def _partial_moments(fx, outer, C, inner, acc, xio, stream, like, N=1):
    """Launch the per-block moments of each (sample, channel) of ``N`` equal samples (BatchNorm:
    1); returns flat (n, mean, M2) partials (N*C x P) and P."""
    M = outer // N * inner  # values per (sample, channel)
    if inner == 1:
        TX, TY = _kernels.BN_TX, _kernels.BN_TY
        col_blocks = -(-C // TX)
        P = _blocks_per_channel(M, col_blocks * N)
        kernel, grid, block = _kernels.bn_partials_cl_kernel(acc, xio, TX, TY), (col_blocks, P, N), (TX, TY)
    else:
        P = _blocks_per_channel(M, C * N)
        block = (_threads(-(-M // P), _kernels.BN_THREADS),)
        kernel, grid = _kernels.bn_partials_kernel(acc, xio), (C, P, N)
    parts = [_arrays.flat(_arrays.scratch(like, N * C * P, "float64", 3 + k)) for k in range(3)]
    if inner == 1:
        launch(kernel, grid, block, stream, fx, C, P, *parts)
    else:
        launch(kernel, grid, block, stream, fx, C, inner, P, *parts)
    return parts[0], parts[1], parts[2], P


def _blocks_per_channel(M: int, column_blocks: int) -> int:
    """Split each channel so the grid fills the GPU even for small C, but never into pieces
    smaller than BN_MIN_PER_BLOCK elements."""
    want = -(-_kernels.BN_TARGET_BLOCKS // max(column_blocks, 1))
    return max(1, min(want, -(-M // _kernels.BN_MIN_PER_BLOCK), 65535))


def _normalize(fx, outer, C, inner, shift, scale, offset, fy, acc, xio, stream, N=1):
    """Launch ``y = (x - shift)·scale + offset`` with the coefficients of each (sample, channel)
    of ``N`` equal samples (BatchNorm: 1, per channel)."""
    if inner == 1:
        TX, TY = _kernels.BN_TX, _kernels.BN_TY
        grid = (-(-C // TX), max(1, min(65535, -(-outer // (TY * 4)))))
        launch(_kernels.bn_normalize_cl_kernel(acc, xio, TX, TY), grid, (TX, TY), stream,
               fx, C, outer // N, shift, scale, offset, fy)
    else:
        T = _threads(inner, _kernels.BN_THREADS)
        grid = (outer * C, max(1, min(65535, -(-inner // (T * 4)))))
        launch(_kernels.bn_normalize_kernel(acc, xio), grid, (T,), stream, fx, C, inner, outer // N * C, shift, scale,
               offset, fy)


def _check_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out):
    """The CPU path's checks (``_checks.batch_norm_args``) on device-array metadata."""
    dx = _wrap_x(x)
    axis, rm, rv, w, b, momentum, eps, dout, _ = batch_norm_args(DEVICE, dx, running_mean, running_var, weight,
                                                                 bias, training, momentum, eps, channel_axis, out)
    return dx, axis, rm, rv, w, b, momentum, eps, dout
