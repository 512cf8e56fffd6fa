"""The backward ops on the GPU (the peer of ``cpu/backward.py``): the CPU path's checks (same
order, same messages) on array metadata, then the launches of ``backward_kernels.py``.

* LayerNorm / RMSNorm: one row kernel in either mode, plus a column sum of the per-block
  grad_weight / grad_bias partials;
* BatchNorm: per-block partial Σdy and Σdy·(x - hi) (the forward's split of each channel), a
  per-channel float64 finalize, one elementwise grad_x pass;
* GroupNorm: the same, batched over samples (grid.z), with a per-(n, g) finalize.
"""

from __future__ import annotations

import math

from .._checks import batch_norm_backward_args, group_norm_backward_args, rows_backward_args
from . import arrays, plan
from . import backward_kernels as bk
from .arrays import DevArray, GpuArray
from .checks import DEVICE, stat_io, wrap_x
from .launch import launch, stream_for
from .loads import acc_of, coeff_dtype, io_of

__all__ = ["layer_norm_backward", "batch_norm_backward", "rms_norm_backward", "group_norm_backward"]

Grads = tuple[GpuArray, GpuArray | None, GpuArray | None]


def _grad_params(w: DevArray | None, like: DevArray, shape: tuple[int, ...], filled: bool):
    """grad_weight / grad_bias arrays of the weight's dtype (None without a weight): for the
    kernels to fill (``filled``), else zeros (the sums over no values)."""
    if w is None:
        return None, None
    make = arrays.empty if filled else arrays.zeros
    return make(like, shape, w.dtype), make(like, shape, w.dtype)


def _grads(res: arrays.Output, w, gw, gb) -> Grads:
    """(grad_x, grad_weight, grad_bias) as the caller's arrays; no parameter grads without a weight."""
    y = res.finish()
    return (y, None, None) if w is None else (y, gw.obj, gb.obj)


def _param_reduce(parts, P: int, n: int, pio: str, gw: DevArray, gb: DevArray, stream) -> None:
    """grad_weight / grad_bias as the column sums of (P, n) float64 partials."""
    grid, block = plan.one_thread_each(n, plan.PARAM_REDUCE_THREADS)
    launch(bk.ln_param_reduce_kernel(pio), grid, block, stream, *parts, P, n, arrays.flat(gw), arrays.flat(gb))


# --------------------------------------------------------------------------------------------
# layer_norm_backward, rms_norm_backward
# --------------------------------------------------------------------------------------------
def layer_norm_backward(grad_out: GpuArray, x: GpuArray, normalized_shape: int | tuple[int, ...], mean: GpuArray,
                        rstd: GpuArray, weight: GpuArray | None = None, *, out: GpuArray | None = None) -> Grads:
    """``numbanorm.layer_norm_backward`` on CUDA arrays; returns arrays of x's kind."""
    return _rows_backward(grad_out, x, normalized_shape, mean, rstd, weight, out, centered=True)


def rms_norm_backward(grad_out: GpuArray, x: GpuArray, normalized_shape: int | tuple[int, ...], rstd: GpuArray,
                      weight: GpuArray | None = None, *,
                      out: GpuArray | None = None) -> tuple[GpuArray, GpuArray | None]:
    """``numbanorm.rms_norm_backward`` on CUDA arrays: ``(grad_x, grad_weight)``, arrays of x's kind."""
    gx, gw, _ = _rows_backward(grad_out, x, normalized_shape, None, rstd, weight, out, centered=False)
    return gx, gw


def _rows_backward(grad_out, x, normalized_shape, mean, rstd, weight, out, *, centered: bool) -> Grads:
    """LayerNorm (``centered``) or RMSNorm backward over the rows of the trailing dims: one
    kernel, ``layer_norm_backward_kernel``, in either mode."""
    dx = wrap_x(x)
    shape, dg, dm, dr, w, dout = rows_backward_args(DEVICE, dx, normalized_shape, grad_out, mean, rstd, weight, out,
                                                    centered)
    D = math.prod(shape)
    R = math.prod(dx.shape[: dx.ndim - len(shape)])
    src, gsrc = arrays.dense(dx, "x"), arrays.dense(dg, "grad_out")
    res = arrays.Output(dout, src)
    gw, gb = _grad_params(w, dx, shape, bool(R and D))
    if R and D:
        _rows_launches(gsrc, src, dm, dr, w, gw, gb, res.target, R, D, centered, dx)
    return _grads(res, w, gw, gb)


def _rows_launches(dg, src, dm, dr, w, gw, gb, target, R: int, D: int, centered: bool, like: DevArray) -> None:
    acc, xio, sio = acc_of(like.dtype), io_of(like.dtype), stat_io(*(s for s in (dm, dr) if s is not None))
    pio = io_of(w.dtype) if w is not None else "f"
    stream = stream_for(like)
    P, T = plan.ln_backward_launch(R, D)
    fg = arrays.flat(dg)
    parts = [fg, fg]  # placeholders without a weight: no grad_weight partials
    if w is not None:
        parts = [arrays.flat(arrays.scratch(like, P * D, "float64", 6 + k)) for k in range(2)]
    regs = plan.LN_BWD_REGS
    kernel = bk.layer_norm_backward_kernel(acc, xio, pio, sio, regs, max(regs, plan.LN_BWD_WREGS), w is not None,
                                           centered)
    launch(kernel, (P,), (T,), stream, fg, arrays.flat(src), arrays.flat_or(dm, fg), arrays.flat(dr),
           arrays.flat_or(w, fg), arrays.flat(target), *parts, R, D)
    if w is not None:
        _param_reduce(parts, P, D, pio, gw, gb, stream)


# --------------------------------------------------------------------------------------------
# batch_norm_backward
# --------------------------------------------------------------------------------------------
def batch_norm_backward(grad_out: GpuArray, x: GpuArray, mean: GpuArray, invstd: GpuArray,
                        weight: GpuArray | None = None, training: bool = True, *, channel_axis: int = 1,
                        out: GpuArray | None = None) -> Grads:
    """``numbanorm.batch_norm_backward`` on CUDA arrays; returns arrays of x's kind."""
    dx = wrap_x(x)
    axis, dg, dm, ds, w, dout = batch_norm_backward_args(DEVICE, dx, grad_out, mean, invstd, weight, channel_axis,
                                                         out)
    C = dx.shape[axis]
    src, gsrc, order, shape3 = arrays.paired_view(dx, dg, axis)
    res = arrays.Output(dout, src, axis, order)
    gw, gb = _grad_params(w, dx, (C,), bool(C and dx.size))
    if C and dx.size:  # else the sums are empty (no channels: nothing at all)
        _bn_backward_launches(gsrc, src, dm, ds, w, gw, gb, res.target, shape3, bool(training), dx)
    return _grads(res, w, gw, gb)


def _bn_backward_launches(dg, dx, dm, ds, w, gw, gb, target, shape3, training: bool, like: DevArray) -> None:
    outer, C, inner = shape3
    stream = stream_for(like)
    acc, sio = acc_of(like.dtype), stat_io(dm, ds)
    pio = io_of(w.dtype) if w is not None else "f"
    fg, fx, fm, fs, fy = (arrays.flat(a) for a in (dg, dx, dm, ds, target))
    fw = arrays.flat_or(w, fg)
    write_gx = not training and w is not None  # eval: grad_x = dy·γ·invstd written by the sums' pass
    P = 0
    parts = [fg, fg]
    if training or w is not None:
        *parts, P = grad_partials((fg, fx, fm, fs, fw, fy), shape3, 1, 1, pio, sio, write_gx, like)
    coeffs = [arrays.flat(arrays.scratch(like, C, coeff_dtype(acc), k)) for k in range(8, 12)]
    grid, block = plan.one_thread_each(C)
    launch(bk.bn_grad_finalize_kernel(acc, pio, sio, w is not None, training), grid, block, stream, *parts, P, fm,
           fs, fw, float(outer * inner), arrays.flat_or(gw, fg), arrays.flat_or(gb, fg), *coeffs)
    if not write_gx:
        grad_input(fg, fx if training else None, fy, coeffs, shape3, 1, like)


def grad_partials(flats, shape3: tuple[int, int, int], N: int, cpg: int, pio: str, sio: str, write_gx: bool,
                  like: DevArray) -> tuple:
    """Launch the per-block Σdy and Σdy·(x - hi) of each (sample, channel) over the canonical
    view ``shape3`` of ``N`` equal samples, channel c of sample n centred on
    ``mean[(n*C + c) // cpg]``; ``flats`` = flat (grad_out, x, mean, invstd, weight, grad_x).
    Returns the flat float64 (N*C, P) partials and P."""
    outer, C, inner = shape3
    acc, xio, stream = acc_of(like.dtype), io_of(like.dtype), stream_for(like)
    grid, block, P = plan.partials_launch(outer, C, inner, N)
    parts = [arrays.flat(arrays.scratch(like, N * C * P, "float64", 3 + k)) for k in range(2)]
    fg, fx, fm, fs, fw, fy = flats
    if inner == 1:
        launch(bk.bn_grad_partials_cl_kernel(acc, xio, pio, sio, write_gx, *block), grid, block, stream,
               fg, fx, fm, fs, fw, C, P, cpg, fy, *parts)
    else:
        launch(bk.bn_grad_partials_kernel(acc, xio, pio, sio, write_gx), grid, block, stream,
               fg, fx, fm, fs, fw, C, inner, P, cpg, fy, *parts)
    return (*parts, P)


def grad_input(fg, fx, fy, coeffs, shape3: tuple[int, int, int], N: int, like: DevArray) -> None:
    """Launch ``gx = p·dy - q·(x - hi) + r`` with per-(sample, channel) coefficients ``coeffs``
    = (p, hi, q, r) over the canonical view of ``N`` equal samples (without ``fx``: ``p·dy``)."""
    outer, C, inner = shape3
    acc, xio, stream = acc_of(like.dtype), io_of(like.dtype), stream_for(like)
    has_x = fx is not None
    fx = fx if has_x else fg
    grid, block = plan.elementwise_launch(outer, C, inner)
    if inner == 1:
        launch(bk.bn_grad_input_cl_kernel(acc, xio, has_x, *block), grid, block, stream,
               fg, fx, C, outer // N, *coeffs, fy)
    else:
        launch(bk.bn_grad_input_kernel(acc, xio, has_x), grid, block, stream,
               fg, fx, C, inner, outer // N * C, *coeffs, fy)


# --------------------------------------------------------------------------------------------
# group_norm_backward
# --------------------------------------------------------------------------------------------
def group_norm_backward(grad_out: GpuArray, x: GpuArray, num_groups: int, mean: GpuArray, rstd: GpuArray,
                        weight: GpuArray | None = None, *, channel_axis: int = 1,
                        out: GpuArray | None = None) -> Grads:
    """``numbanorm.group_norm_backward`` on CUDA arrays: the BatchNorm backward's partial sums
    batched over samples (grid.z), a per-(n, g) finalize, and its grad_x pass."""
    dx = wrap_x(x)
    axis, G, dg, dm, dr, w, dout = group_norm_backward_args(DEVICE, dx, num_groups, grad_out, mean, rstd, weight,
                                                            channel_axis, out)
    N, C = dx.shape[0], dx.shape[axis]
    if N > plan.MAX_SAMPLES:
        raise ValueError(f"the CUDA group_norm_backward handles at most {plan.MAX_SAMPLES} samples, got {N}")
    src, gsrc, order, shape3 = arrays.paired_view(dx, dg, axis)
    res = arrays.Output(dout, src, axis, order)
    gw, gb = _grad_params(w, dx, (C,), bool(dx.size))
    if dx.size:  # else the sums are empty
        _gn_backward_launches(gsrc, src, dm, dr, w, gw, gb, res.target, shape3, G, dx)
    return _grads(res, w, gw, gb)


def _gn_backward_launches(dg, dx, dm, dr, w, gw, gb, target, shape3, G: int, like: DevArray) -> None:
    N, C = like.shape[0], shape3[1]
    acc, sio = acc_of(like.dtype), stat_io(dm, dr)
    pio = io_of(w.dtype) if w is not None else "f"
    fg, fx, fm, fs, fy = (arrays.flat(a) for a in (dg, dx, dm, dr, target))
    stream = stream_for(like)
    *parts, P = grad_partials((fg, fx, fm, fs, fg, fy), shape3, N, C // G, pio, sio, False, like)
    coeffs = [arrays.flat(arrays.scratch(like, N * C, coeff_dtype(acc), k)) for k in range(8, 12)]
    pw, pb = (arrays.flat(arrays.scratch(like, N * C, "float64", k)) for k in (12, 13))
    grid, block = plan.one_thread_each(N * G)
    launch(bk.group_grad_finalize_kernel(acc, pio, sio, w is not None), grid, block, stream, *parts, P, C, G, fm,
           fs, arrays.flat_or(w, fg), float(like.size // (N * C)), pw, pb, *coeffs)
    if w is not None:
        _param_reduce((pw, pb), N, C, pio, gw, gb, stream)
    grad_input(fg, fx, fy, coeffs, shape3, N, like)
