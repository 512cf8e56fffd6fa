"""Host-side drivers of the CUDA backward ops: the CPU path's checks (same order, same messages)
on array metadata, then the launches of ``_kernels_backward.py``."""

from __future__ import annotations

import math

from .._checks import batch_norm_backward_args, group_norm_backward_args, rows_backward_args
from . import _arrays, _kernels
from . import _kernels_backward as _kb
from . import _kernels_family as _kf
from ._arrays import DevArray
from ._family import MAX_SAMPLES
from ._functional import DEVICE, _acc, _blocks_per_channel, _flat, _io, _threads, _wrap_x, out_target
from ._launch import launch, stream_for

__all__ = ["layer_norm_backward", "batch_norm_backward", "rms_norm_backward", "group_norm_backward"]

#: Most blocks the LayerNorm backward launches (each writes one row of grad_weight partials).
LN_BWD_BLOCKS = 528
#: LayerNorm backward register budget per thread: row elements cached (x̂ and dy·γ), and
#: grad_weight/grad_bias column accumulators; with at most LN_BWD_MAX_THREADS threads a block
#: stays within the 64K registers of an SM (benchmarks/ptx_check.py checks it: sm_90 float32
#: needs 168 registers per thread, float64 233). Rows up to 4 * 256 elements are cached between
#: the reduction and the write; columns up to 16 * 256 accumulate in registers, further ones in
#: the block's float64 partial row in global memory.
LN_BWD_REGS = 4
LN_BWD_WREGS = 16
LN_BWD_MAX_THREADS = 256


def _stat_io(*stats: DevArray) -> str:
    if len({s.dtype == "bfloat16" for s in stats}) != 1:
        raise TypeError("the saved statistics must have one dtype")
    return _io(stats[0].dtype)


def _grad_params(w: DevArray | None, like: DevArray, shape: tuple[int, ...]):
    """grad_weight / grad_bias arrays of the weight's dtype (None without a weight)."""
    if w is None:
        return None, None
    return _arrays.empty(like, shape, w.dtype), _arrays.empty(like, shape, w.dtype)


# --------------------------------------------------------------------------------------------
# layer_norm_backward
# --------------------------------------------------------------------------------------------
def layer_norm_backward(grad_out, x, normalized_shape, mean, rstd, weight=None, *, out=None):
    """``numbanorm.layer_norm_backward`` on CUDA arrays; returns arrays of x's kind."""
    return _rows_backward(grad_out, x, normalized_shape, mean, rstd, weight, out, centered=True)


def rms_norm_backward(grad_out, x, normalized_shape, rstd, weight=None, *, out=None):
    """``numbanorm.rms_norm_backward`` on CUDA arrays: ``(grad_x, grad_weight)``, arrays of x's kind."""
    gx, gw, _ = _rows_backward(grad_out, x, normalized_shape, None, rstd, weight, out, centered=False)
    return gx, gw


def _rows_backward(grad_out, x, normalized_shape, mean, rstd, weight, out, *, centered: bool):
    """LayerNorm (``centered``) or RMSNorm backward over the rows of the trailing dims: one
    kernel, ``layer_norm_backward_kernel``, in either mode."""
    dx = _wrap_x(x)
    shape, dg, dm, dr, w, dout = rows_backward_args(DEVICE, dx, normalized_shape, grad_out, mean, rstd, weight, out,
                                                    centered)
    batch_shape = dx.shape[: dx.ndim - len(shape)]

    D = math.prod(shape)
    R = math.prod(batch_shape)
    src = dx if dx.memory_order(0) == "c" else _arrays.contiguous(dx, "x")
    gsrc = dg if dg.memory_order(0) == "c" else _arrays.contiguous(dg, "grad_out")
    result, target = out_target(dout, src)
    gw, gb = _grad_params(w, dx, shape)
    stream = stream_for(dx)
    if R and D:
        acc, xio, sio = _acc(dx.dtype), _io(dx.dtype), _stat_io(*(s for s in (dm, dr) if s is not None))
        pio = _io(w.dtype) if w is not None else "f"
        regs = LN_BWD_REGS
        T = _threads(-(-D // regs), min(LN_BWD_MAX_THREADS, _kernels.MAX_THREADS))
        P = min(R, LN_BWD_BLOCKS)
        fg = _arrays.flat(gsrc)
        if w is not None:
            parts = [_arrays.flat(_arrays.scratch(dx, P * D, "float64", 6 + k)) for k in range(2)]
        else:
            parts = [fg, fg]
        kernel = _kb.layer_norm_backward_kernel(acc, xio, pio, sio, regs, max(regs, LN_BWD_WREGS), w is not None,
                                                centered)
        launch(kernel, (P,), (T,), stream, fg, _arrays.flat(src), _flat(dm, fg), _arrays.flat(dr),
               _flat(w, fg), _arrays.flat(target), parts[0], parts[1], R, D)
        if w is not None:
            Tr = _threads(D, 256)
            launch(_kb.ln_param_reduce_kernel(pio), (-(-D // Tr),), (Tr,), stream, parts[0], parts[1], P, D,
                   _arrays.flat(gw), _arrays.flat(gb))
    elif w is not None:  # no rows: the sums are empty
        gw, gb = _arrays.zeros(dx, shape, w.dtype), _arrays.zeros(dx, shape, w.dtype)
    return _grads(result, target, w, gw, gb)


# --------------------------------------------------------------------------------------------
# batch_norm_backward
# --------------------------------------------------------------------------------------------
def batch_norm_backward(grad_out, x, mean, invstd, weight=None, training=True, *, channel_axis=1, out=None):
    """``numbanorm.batch_norm_backward`` on CUDA arrays; returns arrays of x's kind."""
    dx = _wrap_x(x)
    axis, dg, dm, ds, w, dout = batch_norm_backward_args(DEVICE, dx, grad_out, mean, invstd, weight, channel_axis,
                                                         out)
    C = dx.shape[axis]
    training = bool(training)

    src, gsrc, order = _common_layout(dx, dg, axis)
    outer, _, inner = _arrays.canonical_dims(src, axis, order)
    result, target = out_target(dout, src, axis, order)
    gw, gb = _grad_params(w, dx, (C,))
    if C and dx.size:
        _bn_backward_launches(gsrc, src, dm, ds, w, gw, gb, target, outer, C, inner, training, dx)
    elif w is not None:  # empty batch: the sums are empty (no channels: nothing at all)
        gw, gb = _arrays.zeros(dx, (C,), w.dtype), _arrays.zeros(dx, (C,), w.dtype)
    return _grads(result, target, w, gw, gb)


def _grads(result: DevArray, target: DevArray, w, gw, gb):
    """(grad_x, grad_weight, grad_bias) as the caller's arrays; grad_x copied into ``out`` if
    the kernels wrote a scratch array; no parameter grads without a weight."""
    if result is not target:
        _arrays.copy_into(result, target)
    if w is None:
        return result.obj, None, None
    return result.obj, gw.obj, gb.obj


def _common_layout(dx: DevArray, dg: DevArray, axis: int) -> tuple[DevArray, DevArray, str]:
    """(x, grad_out, memory order) laid out alike, so both are read with the same indices: as
    stored when they agree (C-contiguous or channels-last), else both C-contiguous (one copy
    each at most)."""
    order = dx.memory_order(axis)
    src = dx if order is not None else _arrays.contiguous(dx, "x")
    order = order or "c"
    gsrc = dg
    if dg.memory_order(axis) != order or (order == "moved" and dg.strides != src.strides):
        src = src if order == "c" else _arrays.contiguous(src, "x")
        gsrc = dg if dg.memory_order(0) == "c" else _arrays.contiguous(dg, "grad_out")
        order = "c"
    return src, gsrc, order


def _bn_backward_launches(dg, dx, dm, ds, w, gw, gb, target, outer, C, inner, training, like):
    stream = stream_for(like)
    acc, sio = _acc(like.dtype), _stat_io(dm, ds)
    pio = _io(w.dtype) if w is not None else "f"
    fg, fx, fm, fs, fy = (_arrays.flat(a) for a in (dg, dx, dm, ds, target))
    fw = _flat(w, fg)
    write_gx = not training and w is not None  # eval: grad_x = dy·γ·invstd written by the sums' pass
    P = 0
    parts = [fg, fg]
    if training or w is not None:
        parts[0], parts[1], P = grad_partials(fg, fx, fm, fs, fw, fy, outer, C, inner, 1, 1, pio, sio, write_gx,
                                              like)
    cdt = "float64" if acc == 64 else "float32"
    coeffs = [_arrays.flat(_arrays.scratch(like, C, cdt, k)) for k in range(8, 12)]
    fin_block = (_threads(C, _kernels.BN_THREADS),)
    launch(_kb.bn_grad_finalize_kernel(acc, pio, sio, w is not None, training), (-(-C // fin_block[0]),), fin_block,
           stream, parts[0], parts[1], P, fm, fs, fw, float(outer * inner), _flat(gw, fg), _flat(gb, fg), *coeffs)
    if not write_gx:
        grad_input(fg, fx if training else None, fy, coeffs, outer, C, inner, 1, like)


def grad_partials(fg, fx, fm, fs, fw, fy, outer, C, inner, N, cpg, pio, sio, write_gx, like):
    """Launch the per-block Σdy and Σdy·(x - hi) of each (sample, channel) over the canonical
    ``(outer, C, inner)`` view of ``N`` equal samples, channel c of sample n centred on
    ``mean[(n*C + c) // cpg]``; returns the flat float64 (N*C, P) partials and P."""
    acc, xio = _acc(like.dtype), _io(like.dtype)
    stream = stream_for(like)
    M = outer // N * inner  # elements per (sample, channel)
    if inner == 1:
        TX, TY = _kernels.BN_TX, _kernels.BN_TY
        col_blocks = -(-C // TX)
        P = _blocks_per_channel(M, col_blocks * N)
        parts = [_arrays.flat(_arrays.scratch(like, N * C * P, "float64", 3 + k)) for k in range(2)]
        launch(_kb.bn_grad_partials_cl_kernel(acc, xio, pio, sio, write_gx, TX, TY), (col_blocks, P, N), (TX, TY),
               stream, fg, fx, fm, fs, fw, C, P, cpg, fy, parts[0], parts[1])
    else:
        P = _blocks_per_channel(M, C * N)
        block = (_threads(-(-M // P), _kernels.BN_THREADS),)
        parts = [_arrays.flat(_arrays.scratch(like, N * C * P, "float64", 3 + k)) for k in range(2)]
        launch(_kb.bn_grad_partials_kernel(acc, xio, pio, sio, write_gx), (C, P, N), block, stream,
               fg, fx, fm, fs, fw, C, inner, P, cpg, fy, parts[0], parts[1])
    return parts[0], parts[1], P


def grad_input(fg, fx, fy, coeffs, outer, C, inner, N, like):
    """Launch ``gx = p·dy - q·(x - hi) + r`` with per-(sample, channel) coefficients ``coeffs``
    = (p, hi, q, r) over the canonical view of ``N`` equal samples (without ``fx``: ``p·dy``)."""
    acc, xio = _acc(like.dtype), _io(like.dtype)
    stream = stream_for(like)
    has_x = fx is not None
    fx = fx if has_x else fg
    if inner == 1:
        TX, TY = _kernels.BN_TX, _kernels.BN_TY
        grid = (-(-C // TX), max(1, min(65535, -(-outer // (TY * 4)))))
        launch(_kb.bn_grad_input_cl_kernel(acc, xio, has_x, TX, TY), grid, (TX, TY), stream,
               fg, fx, C, outer // N, *coeffs, fy)
    else:
        T = _threads(inner, _kernels.BN_THREADS)
        grid = (outer * C, max(1, min(65535, -(-inner // (T * 4)))))
        launch(_kb.bn_grad_input_kernel(acc, xio, has_x), grid, (T,), stream, fg, fx, C, inner, outer // N * C,
               *coeffs, fy)


# --------------------------------------------------------------------------------------------
# group_norm_backward
# --------------------------------------------------------------------------------------------
def group_norm_backward(grad_out, x, num_groups, mean, rstd, weight=None, *, channel_axis=1, out=None):
    """``numbanorm.group_norm_backward`` on CUDA arrays: the BatchNorm backward's partial sums
    batched over samples (grid.z), a per-(n, g) finalize, and its grad_x pass."""
    dx = _wrap_x(x)
    axis, G, dg, dm, dr, w, dout = group_norm_backward_args(DEVICE, dx, num_groups, grad_out, mean, rstd, weight,
                                                            channel_axis, out)
    N, C = dx.shape[0], dx.shape[axis]
    if N > MAX_SAMPLES:
        raise ValueError(f"the CUDA group_norm_backward handles at most {MAX_SAMPLES} samples, got {N}")

    src, gsrc, order = _common_layout(dx, dg, axis)
    outer, _, inner = _arrays.canonical_dims(src, axis, order)
    result, target = out_target(dout, src, axis, order)
    gw, gb = _grad_params(w, dx, (C,))
    if dx.size:
        acc, sio = _acc(dx.dtype), _stat_io(dm, dr)
        pio = _io(w.dtype) if w is not None else "f"
        fg, fx, fm, fs, fy = (_arrays.flat(a) for a in (gsrc, src, dm, dr, target))
        stream = stream_for(dx)
        part_dy, part_dyx, P = grad_partials(fg, fx, fm, fs, fg, fy, outer, C, inner, N, C // G, pio, sio, False,
                                             dx)
        cdt = "float64" if acc == 64 else "float32"
        coeffs = [_arrays.flat(_arrays.scratch(dx, N * C, cdt, k)) for k in range(8, 12)]
        pw, pb = (_arrays.flat(_arrays.scratch(dx, N * C, "float64", k)) for k in (12, 13))
        T = _threads(N * G, _kernels.BN_THREADS)
        launch(_kf.group_grad_finalize_kernel(acc, pio, sio, w is not None), (-(-(N * G) // T),), (T,), stream,
               part_dy, part_dyx, P, C, G, fm, fs, _flat(w, fg), float(dx.size // (N * C)), pw, pb, *coeffs)
        if w is not None:
            Tr = _threads(C, 256)
            launch(_kb.ln_param_reduce_kernel(pio), (-(-C // Tr),), (Tr,), stream, pw, pb, N, C,
                   _arrays.flat(gw), _arrays.flat(gb))
        grad_input(fg, fx, fy, coeffs, outer, C, inner, N, dx)
    elif w is not None:  # empty input: the sums are empty
        gw, gb = _arrays.zeros(dx, (C,), w.dtype), _arrays.zeros(dx, (C,), w.dtype)
    return _grads(result, target, w, gw, gb)
