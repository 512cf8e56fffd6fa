"""BatchNorm on the GPU: the finalize / coefficient / normalize kernels and the BatchNorm
driver (the peer of ``cpu/batch_norm.py``). The partial moments are ``moments.py``'s; GroupNorm
and InstanceNorm (``family.py``) reuse ``normalize`` and ``coefficients`` batched over samples.

Training: per-block partial moments -> one thread per channel merges them (Chan, float64),
writes the stats, updates the running stats and writes the normalize coefficients -> one fused
elementwise pass ``y = (x - shift)·scale + offset``. Eval: the coefficients from the running
stats, then the same pass.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .._checks import batch_norm_args
from . import arrays, plan
from .arrays import DevArray, GpuArray
from .checks import DEVICE, param_dtype, running_dtype, wrap_x
from .compat import cuda, jit_device
from .launch import launch, stream_for
from .loads import acc_of, coeff_dtype, io_of, loader, np_float, stats_dtype, storer
from .moments import merge_partials, partial_moments

__all__ = ["batch_norm", "normalize", "coefficients"]


def batch_norm(x: GpuArray, running_mean: GpuArray | None = None, running_var: GpuArray | None = None,
               weight: GpuArray | None = None, bias: GpuArray | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, channel_axis: int = 1, out: GpuArray | None = None,
               return_stats: bool = False) -> GpuArray | tuple[GpuArray, GpuArray, GpuArray]:
    """``numbanorm.batch_norm`` on a CUDA array; running stats (CUDA arrays) update in place."""
    dx = wrap_x(x)
    axis, rm, rv, w, b, momentum, eps, dout, _ = batch_norm_args(DEVICE, dx, running_mean, running_var, weight,
                                                                 bias, training, momentum, eps, channel_axis, out)
    src, order, shape3 = arrays.channel_view(dx, axis)
    res = arrays.Output(dout, src, axis, order)
    pio, rio = io_of(param_dtype(w, b, dx)), io_of(running_dtype(rm, rv))
    C, sdt = shape3[1], stats_dtype(dx.dtype)
    if C == 0:  # no channels: nothing to compute or launch
        mean, invstd = arrays.empty(dx, (0,), sdt), arrays.empty(dx, (0,), sdt)
    elif training and dx.size == 0:  # empty batch: NaN stats, running stats untouched (as the CPU)
        mean = arrays.from_host(dx, np.full(C, np.nan, sdt))
        invstd = arrays.from_host(dx, np.full(C, np.nan, sdt))
    else:
        mean, invstd = arrays.empty(dx, (C,), sdt), arrays.empty(dx, (C,), sdt)
        _launches(dx, src, shape3, (w, b, rm, rv), training, momentum, eps, (mean, invstd), res.target, pio, rio)
    y = res.finish()
    return (y, mean.obj, invstd.obj) if return_stats else y


def _launches(dx: DevArray, src: DevArray, shape3, params, training: bool, momentum: float, eps: float, stats,
              target: DevArray, pio: str, rio: str) -> None:
    """The kernels of a BatchNorm of ``C > 0`` channels: the coefficients (training: from the
    partial moments, with the stats and the running update; eval: from the running stats),
    then the normalize pass (when there is anything to normalize)."""
    w, b, rm, rv = params
    C = shape3[1]
    acc, xio, stream = acc_of(dx.dtype), io_of(dx.dtype), stream_for(dx)
    coeffs = [arrays.flat(arrays.scratch(dx, C, coeff_dtype(acc), k)) for k in range(3)]
    fmean, finvstd = (arrays.flat(s) for s in stats)
    fw, fb = arrays.flat_or(w, fmean), arrays.flat_or(b, fmean)
    grid, block = plan.one_thread_each(C)
    has = (w is not None, b is not None)
    fx = arrays.flat(src) if dx.size else None
    if training:
        *parts, P = partial_moments(fx, shape3, acc, xio, stream, dx)
        launch(bn_finalize_kernel(acc, pio, rio, *has, rm is not None), grid, block, stream, *parts, P, fw, fb,
               arrays.flat_or(rm, fmean), arrays.flat_or(rv, fmean), momentum, eps, fmean, finvstd, *coeffs)
    else:
        launch(bn_eval_coeffs_kernel(acc, pio, rio, *has), grid, block, stream, fw, fb, arrays.flat(rm),
               arrays.flat(rv), eps, fmean, finvstd, *coeffs)
    if dx.size:
        normalize(fx, shape3, coeffs, arrays.flat(target), acc, xio, stream)


def normalize(fx, shape3: tuple[int, int, int], coeffs, fy, acc: int, xio: str, stream, N: int = 1) -> None:
    """Launch ``y = (x - shift)·scale + offset`` over the canonical view ``shape3``, with the
    coefficients ``coeffs`` = (shift, scale, offset) of each (sample, channel) of ``N`` equal
    samples (BatchNorm: 1, per channel)."""
    outer, C, inner = shape3
    grid, block = plan.elementwise_launch(outer, C, inner)
    if inner == 1:
        launch(bn_normalize_cl_kernel(acc, xio, *block), grid, block, stream, fx, C, outer // N, *coeffs, fy)
    else:
        launch(bn_normalize_kernel(acc, xio), grid, block, stream, fx, C, inner, outer // N * C, *coeffs, fy)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@jit_device
def coefficients(m, invstd, w, b, c, k, ld_p, hi, shift, scale, offset, has_w, has_b):
    """Normalize coefficients ``y = (x - shift) * scale + offset`` of channel ``c`` (its weight and
    bias), written at ``k`` (BatchNorm: c; GroupNorm: n*C + c), from float64 stats.

    The mean is split into ``hi`` (its value in the accumulation type) and ``lo = m - hi``;
    ``x - hi`` is exact near the mean (Sterbenz), and ``-lo * scale`` folds into the offset, so
    float32 kernels centre x as accurately as a float64 subtraction would (matters when
    |mean| >> std: at 1e4 + N(0, 2) a float32 mean alone costs ~1e-4 relative error)."""
    sc = invstd
    if has_w:
        sc *= ld_p(w, c)
    of = 0.0
    if has_b:
        of = ld_p(b, c)
    lo = m - np.float64(hi)
    shift[k] = hi
    scale[k] = sc
    offset[k] = of - lo * sc


@functools.cache
def bn_finalize_kernel(acc: int, pio: str, rio: str, has_w: bool, has_b: bool, has_running: bool):
    """One thread per channel: Chan-merge the P partials in float64, write the returned stats,
    the normalize coefficients, and update the running stats in place (training). Absent
    arguments are compiled out (``has_*``); pass any array in their place."""
    ld_p, ld_r, st_r = loader(64, pio), loader(64, rio), storer(rio)
    A = np_float(acc)

    @cuda.jit
    def kernel(part_n, part_mean, part_m2, P, w, b, rmean, rvar, momentum, eps,
               mean_out, invstd_out, shift, scale, offset):
        c = cuda.grid(1)
        if c >= mean_out.shape[0]:
            return
        n, m, m2 = merge_partials(part_n, part_mean, part_m2, c, P)
        invstd = 1.0 / math.sqrt(m2 / n + eps)
        mean_out[c] = m
        invstd_out[c] = invstd
        coefficients(m, invstd, w, b, c, c, ld_p, A(m), shift, scale, offset, has_w, has_b)
        if has_running:
            st_r(rmean, c, (1.0 - momentum) * ld_r(rmean, c) + momentum * m)
            st_r(rvar, c, (1.0 - momentum) * ld_r(rvar, c) + momentum * (m2 / (n - 1.0)))

    return kernel


@functools.cache
def bn_eval_coeffs_kernel(acc: int, pio: str, rio: str, has_w: bool, has_b: bool):
    """Inference: coefficients from the running stats, one thread per channel."""
    ld_p, ld_r = loader(64, pio), loader(64, rio)
    A = np_float(acc)

    @cuda.jit
    def kernel(w, b, rmean, rvar, eps, mean_out, invstd_out, shift, scale, offset):
        c = cuda.grid(1)
        if c >= mean_out.shape[0]:
            return
        m = np.float64(ld_r(rmean, c))
        invstd = 1.0 / math.sqrt(np.float64(ld_r(rvar, c)) + eps)
        mean_out[c] = m
        invstd_out[c] = invstd
        coefficients(m, invstd, w, b, c, c, ld_p, A(m), shift, scale, offset, has_w, has_b)

    return kernel


@functools.cache
def bn_normalize_kernel(acc: int, xio: str):
    """(outer, C, inner > 1): ``y = (x - shift[k]) * scale[k] + offset[k]``, ``k = n*C + c`` for
    run ``oc`` of sample ``n = oc // OC`` (BatchNorm: OC = outer*C, one sample). grid.x walks
    the (o, c) runs, grid.y the chunks of one run, so no per-element division is needed."""
    ld_x, st_y = loader(acc, xio), storer(xio)
    A = np_float(acc)

    @cuda.jit
    def kernel(x, C, inner, OC, shift, scale, offset, y):
        oc = cuda.blockIdx.x
        k = (oc // OC) * C + oc % C
        m = A(shift[k])
        s = A(scale[k])
        f = A(offset[k])
        base = oc * inner
        i = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        step = cuda.gridDim.y * cuda.blockDim.x
        while i < inner:
            st_y(y, base + i, (ld_x(x, base + i) - m) * s + f)
            i += step

    return kernel


@functools.cache
def bn_normalize_cl_kernel(acc: int, xio: str, TX: int, TY: int):
    """Channels-last (rows, C): grid (ceil(C/TX), row blocks), blocks (TX, TY) over
    (channels, rows), grid-stride over rows. Row r belongs to sample ``r // S`` whose
    coefficients are ``[n*C + c]`` (BatchNorm: S = rows, one sample)."""
    ld_x, st_y = loader(acc, xio), storer(xio)
    A = np_float(acc)

    @cuda.jit
    def kernel(x, C, S, shift, scale, offset, y):
        c = cuda.blockIdx.x * TX + cuda.threadIdx.x
        if c >= C:
            return
        R = x.shape[0] // C
        r = cuda.blockIdx.y * TY + cuda.threadIdx.y
        step = cuda.gridDim.y * TY
        n = -1
        m = A(0.0)
        s = A(0.0)
        f = A(0.0)
        while r < R:
            if r // S != n:  # a new sample: its coefficients (BatchNorm: once)
                n = r // S
                m = A(shift[n * C + c])
                s = A(scale[n * C + c])
                f = A(offset[n * C + c])
            st_y(y, r * C + c, (ld_x(x, r * C + c) - m) * s + f)
            r += step

    return kernel
