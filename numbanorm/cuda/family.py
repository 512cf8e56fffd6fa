"""The rest of the norm family on the GPU (the peer of ``cpu/family.py``): RMSNorm and
residual-add LayerNorm on the LN row kernel (``layer_norm.row_norm``), GroupNorm and
InstanceNorm on the BatchNorm kernels batched over samples (grid.z = N).

GroupNorm: ``moments.partial_moments`` gives per-(n, c) partial moments, ``group_finalize_kernel``
merges them per (n, g) with Chan's formula in float64 and writes per-(n, c) normalize
coefficients, which ``batch_norm.normalize`` applies. InstanceNorm is GroupNorm with G = C, plus
``instance_running_kernel`` for torch's running-stat update. Checks are the CPU path's (the
sequences in ``numbanorm/_checks.py``), on metadata.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .._checks import add_layer_norm_args, check_float_dtype, group_norm_args, instance_norm_checked, rms_norm_args
from . import arrays, plan
from .arrays import DEVICE_DTYPES, DevArray, GpuArray
from .batch_norm import batch_norm, coefficients, normalize
from .checks import DEVICE, param_dtype, running_dtype, wrap_x
from .compat import cuda
from .launch import launch, stream_for
from .layer_norm import row_norm
from .loads import acc_of, coeff_dtype, io_of, loader, np_float, stats_dtype, storer
from .moments import chan_add, group_channels, merge_partials, partial_moments

__all__ = ["rms_norm", "add_layer_norm", "group_norm", "instance_norm"]


# --------------------------------------------------------------------------------------------
# Row ops
# --------------------------------------------------------------------------------------------
def rms_norm(x: GpuArray, normalized_shape: int | tuple[int, ...], weight: GpuArray | None = None,
             eps: float | None = None, *, out: GpuArray | None = None,
             return_stats: bool = False) -> GpuArray | tuple[GpuArray, GpuArray]:
    """``numbanorm.rms_norm`` on a CUDA array; with ``return_stats`` also rstd (shape ``x.shape[:-k]``)."""
    dx = wrap_x(x)
    shape, w, eps, dout = rms_norm_args(DEVICE, dx, normalized_shape, weight, eps, out)
    D = math.prod(shape)
    batch_shape = dx.shape[: dx.ndim - len(shape)]
    rows = math.prod(batch_shape)
    src = arrays.dense(dx, "x")
    res = arrays.Output(dout, src)
    sdt = stats_dtype(dx.dtype)
    if D == 0:  # mean(x²) of no values: NaN rstd, as the CPU path
        rstd = arrays.from_host(dx, np.full(rows, np.nan, sdt))
    else:
        rstd = arrays.empty(dx, (rows,), sdt) if return_stats else arrays.scratch(dx, rows, sdt, 14)
        if rows:
            row_norm("rms", src, None, None, w, None, res.target, None, rstd, rows, D, eps)
    y = res.finish()
    return (y, arrays.reshape(rstd, batch_shape)) if return_stats else y


def add_layer_norm(x: GpuArray, residual: GpuArray, normalized_shape: int | tuple[int, ...],
                   weight: GpuArray | None = None, bias: GpuArray | None = None, eps: float = 1e-5, *,
                   out: GpuArray | None = None, residual_out: GpuArray | None = None) -> tuple[GpuArray, GpuArray]:
    """``numbanorm.add_layer_norm`` on CUDA arrays: ``(layer_norm(x + residual), x + residual)``."""
    dx = wrap_x(x)
    dr = arrays.wrap(residual, "residual")
    check_float_dtype(dr.dtype, "residual", DEVICE_DTYPES)
    shape, w, b, eps, dout, dsum = add_layer_norm_args(DEVICE, dx, dr, normalized_shape, weight, bias, eps, out,
                                                       residual_out)
    D = math.prod(shape)
    rows = math.prod(dx.shape[: dx.ndim - len(shape)])
    src, rsrc = arrays.dense(dx, "x"), arrays.dense(dr, "residual")
    res, total = arrays.Output(dout, src), arrays.Output(dsum, src)
    if rows and D:
        sdt = stats_dtype(dx.dtype)
        mean, rstd = arrays.scratch(dx, rows, sdt, 14), arrays.scratch(dx, rows, sdt, 15)
        row_norm("add", src, rsrc, total.target, w, b, res.target, mean, rstd, rows, D, eps)
    return res.finish(), total.finish()


# --------------------------------------------------------------------------------------------
# Per-sample ops
# --------------------------------------------------------------------------------------------
def group_norm(x: GpuArray, num_groups: int, weight: GpuArray | None = None, bias: GpuArray | None = None,
               eps: float = 1e-5, *, channel_axis: int = 1, out: GpuArray | None = None,
               return_stats: bool = False) -> GpuArray | tuple[GpuArray, GpuArray, GpuArray]:
    """``numbanorm.group_norm`` on a CUDA array; stats (with ``return_stats``) of shape (N, G)."""
    dx = wrap_x(x)
    axis, G, w, b, eps, dout = group_norm_args(DEVICE, dx, num_groups, weight, bias, eps, channel_axis, out)
    y, gmean, grstd, _, _ = _grouped(dx, axis, G, w, b, eps, dout)
    if not return_stats:
        return y
    N = dx.shape[0]
    return y, arrays.reshape(gmean, (N, G)), arrays.reshape(grstd, (N, G))


def instance_norm(x: GpuArray, running_mean: GpuArray | None = None, running_var: GpuArray | None = None,
                  weight: GpuArray | None = None, bias: GpuArray | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *, channel_axis: int = 1,
                  out: GpuArray | None = None) -> GpuArray:
    """``numbanorm.instance_norm`` on a CUDA array; running stats (CUDA arrays) update in place."""
    dx = wrap_x(x)
    return instance_norm_checked(DEVICE, x, dx, running_mean, running_var, weight, bias, use_input_stats, momentum,
                                 eps, channel_axis, out, batch_norm, lambda *checked: _instance_norm(dx, *checked))


def _instance_norm(dx: DevArray, axis, update, rm, rv, w, b, momentum, eps, dout):
    """CUDA instance_norm after the checks (``instance_norm_args``' values)."""
    C = dx.shape[axis]
    rio = io_of(running_dtype(rm, rv))
    y, _, _, cmean, cm2 = _grouped(dx, axis, C, w, b, eps, dout)
    if update and cmean is not None:
        N = dx.shape[0]
        count = float(dx.size // (N * C))
        grid, block = plan.one_thread_each(C)
        launch(instance_running_kernel(rio), grid, block, stream_for(dx), arrays.flat(cmean), arrays.flat(cm2), N,
               C, count, momentum, arrays.flat(rm), arrays.flat(rv))
    return y


def _grouped(dx: DevArray, axis: int, G: int, w, b, eps: float, dout):
    """GroupNorm of ``dx`` into ``dout`` (or a new array); returns (result object, group mean,
    group rstd (N*G,), per-(n, c) float64 mean and M2 (None for an empty input))."""
    N = dx.shape[0]
    src, order, shape3 = arrays.channel_view(dx, axis)
    res = arrays.Output(dout, src, axis, order)
    if dx.size == 0:
        nan = np.full(N * G, np.nan, stats_dtype(dx.dtype))
        return res.finish(), arrays.from_host(dx, nan), arrays.from_host(dx, nan.copy()), None, None
    if N > plan.MAX_SAMPLES:
        raise ValueError(f"the CUDA group_norm/instance_norm handle at most {plan.MAX_SAMPLES} samples, got {N}")
    stats = _group_launches(dx, arrays.flat(src), shape3, G, w, b, eps, arrays.flat(res.target))
    return (res.finish(), *stats)


def _group_launches(dx: DevArray, fx, shape3, G: int, w, b, eps: float, fy) -> tuple:
    """The kernels of a GroupNorm of N samples with G groups: per-(n, c) partial moments, the
    per-(n, g) finalize, the normalize pass. Returns (group mean, group rstd, per-(n, c) float64
    mean and M2)."""
    N, C, sdt = dx.shape[0], shape3[1], stats_dtype(dx.dtype)
    acc, xio, stream = acc_of(dx.dtype), io_of(dx.dtype), stream_for(dx)
    *parts, P = partial_moments(fx, shape3, acc, xio, stream, dx, N)
    gmean, grstd = arrays.empty(dx, (N * G,), sdt), arrays.empty(dx, (N * G,), sdt)
    cmean, cm2 = arrays.scratch(dx, N * C, "float64", 12), arrays.scratch(dx, N * C, "float64", 13)
    coeffs = [arrays.flat(arrays.scratch(dx, N * C, coeff_dtype(acc), k)) for k in range(3)]
    grid, block = plan.one_thread_each(N * G)
    fin = group_finalize_kernel(acc, io_of(param_dtype(w, b, dx)), w is not None, b is not None)
    launch(fin, grid, block, stream, *parts, P, C, G, arrays.flat_or(w, fx), arrays.flat_or(b, fx), eps,
           arrays.flat(gmean), arrays.flat(grstd), arrays.flat(cmean), arrays.flat(cm2), *coeffs)
    normalize(fx, shape3, coeffs, fy, acc, xio, stream, N)
    return gmean, grstd, cmean, cm2


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@functools.cache
def group_finalize_kernel(acc: int, pio: str, has_w: bool, has_b: bool):
    """One thread per (n, g): merge the P partials of each of the group's channels, then the
    channels; write the group's mean/rstd (stats), the per-(n, c) float64 mean and M2 (for the
    InstanceNorm running stats) and the coefficients ``y = (x - shift)·scale + offset``."""
    ld_p = loader(64, pio)
    A = np_float(acc)

    @cuda.jit
    def kernel(part_n, part_mean, part_m2, P, C, G, w, b, eps, gmean_out, grstd_out, cmean, cm2,
               shift, scale, offset):
        t = cuda.grid(1)
        if t >= gmean_out.shape[0]:
            return
        n, c0, c1 = group_channels(t, C, G)
        cnt = 0.0
        m = 0.0
        m2 = 0.0
        for c in range(c0, c1):  # each channel's partials, then the channel into the group (Chan)
            k = n * C + c
            cn, cmu, cv = merge_partials(part_n, part_mean, part_m2, k, P)
            cmean[k] = cmu
            cm2[k] = cv
            cnt, m, m2 = chan_add(cnt, m, m2, cn, cmu, cv)
        rstd = 1.0 / math.sqrt(m2 / cnt + eps)
        gmean_out[t] = m
        grstd_out[t] = rstd
        hi = A(m)
        for c in range(c0, c1):
            coefficients(m, rstd, w, b, c, n * C + c, ld_p, hi, shift, scale, offset, has_w, has_b)

    return kernel


@functools.cache
def instance_running_kernel(rio: str):
    """One thread per channel: running = (1 - momentum)·running + momentum·(batch value averaged
    over the N samples), with the unbiased per-(n, c) variance, as torch's InstanceNorm."""
    ld_r, st_r = loader(64, rio), storer(rio)

    @cuda.jit
    def kernel(cmean, cm2, N, C, count, momentum, rmean, rvar):
        c = cuda.grid(1)
        if c >= C:
            return
        sm = 0.0
        sv = 0.0
        for n in range(N):
            sm += cmean[n * C + c]
            sv += cm2[n * C + c] / (count - 1.0)
        st_r(rmean, c, (1.0 - momentum) * ld_r(rmean, c) + momentum * (sm / N))
        st_r(rvar, c, (1.0 - momentum) * ld_r(rvar, c) + momentum * (sv / N))

    return kernel
