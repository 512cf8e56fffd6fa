"""LayerNorm on the GPU: the row kernel (modes "ln", "rms", "add") and the LayerNorm driver
(the peer of ``cpu/layer_norm.py``). RMSNorm and residual-add LayerNorm (``family.py``) run the
same kernel through ``row_norm``.

One row per block, the row held in registers between the statistics and the write: x is read
once from DRAM for rows up to ``regs * T`` units; longer rows re-read their tail (from L2).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .._checks import layer_norm_args
from . import arrays, plan
from .arrays import DevArray, GpuArray
from .checks import DEVICE, param_dtype, wrap_x
from .compat import cuda, jit_device
from .launch import launch, stream_for
from .loads import acc_of, io_of, ld1, ld4_f32, loader, np_float, numba_float, st4_f32, stats_dtype, storer, unit_loader
from .moments import SHARED_SLOTS, finite_shift, reduce2

__all__ = ["layer_norm", "layer_norm_kernel", "row_norm"]


def layer_norm(x: GpuArray, normalized_shape: int | tuple[int, ...], weight: GpuArray | None = None,
               bias: GpuArray | None = None, eps: float = 1e-5, *, out: GpuArray | None = None,
               return_stats: bool = False) -> GpuArray | tuple[GpuArray, GpuArray, GpuArray]:
    """``numbanorm.layer_norm`` on a CUDA array; outputs are arrays of x's kind."""
    dx = wrap_x(x)
    shape, w, b, eps, dout = layer_norm_args(DEVICE, dx, normalized_shape, weight, bias, eps, out)
    D = math.prod(shape)
    batch_shape = dx.shape[: dx.ndim - len(shape)]
    rows = dx.size // D if D else math.prod(batch_shape)
    src = arrays.dense(dx, "x")
    res = arrays.Output(dout, src)
    sdt = stats_dtype(dx.dtype)
    if D == 0:  # nothing to reduce: mean 0, rstd 1/sqrt(eps), as the CPU path
        mean = arrays.from_host(dx, np.zeros(rows, sdt))
        rstd = arrays.from_host(dx, np.full(rows, 1.0 / math.sqrt(eps), sdt))
    else:
        mean = arrays.empty(dx, (rows,), sdt)
        rstd = arrays.empty(dx, (rows,), sdt)
        if rows:
            row_norm("ln", src, None, None, w, b, res.target, mean, rstd, rows, D, eps)
    y = res.finish()
    if not return_stats:
        return y
    return y, arrays.reshape(mean, batch_shape), arrays.reshape(rstd, batch_shape)


def row_norm(mode: str, x: DevArray, res: DevArray | None, s: DevArray | None, w: DevArray | None,
             b: DevArray | None, y: DevArray, mean: DevArray | None, rstd: DevArray, rows: int, D: int,
             eps: float) -> None:
    """Launch the row kernel (``layer_norm_kernel``) in ``mode`` "ln", "rms" or "add" over
    ``rows`` C-contiguous rows of length ``D > 0``."""
    vec = plan.LN_VEC
    if not (mode != "add" and x.dtype == "float32" and D % vec == 0 and x.ptr % 16 == 0 and y.ptr % 16 == 0):
        vec = 1  # wide loads only where the row allows them
    regs = max(1, plan.LN_REGS // vec)  # units of vec elements: the same row share in registers
    kernel = layer_norm_kernel(acc_of(x.dtype), io_of(x.dtype), io_of(param_dtype(w, b, x)), regs,
                               w is not None, b is not None, mode, vec)
    fx = arrays.flat(x)
    launch(kernel, (rows,), plan.ln_row_launch(D, vec, regs), stream_for(x), fx, arrays.flat_or(res, fx),
           arrays.flat_or(s, fx), arrays.flat_or(w, fx), arrays.flat_or(b, fx), arrays.flat(y),
           arrays.flat_or(mean, fx), arrays.flat(rstd), D, eps)


@functools.cache
def layer_norm_kernel(acc: int, xio: str, pio: str, regs: int, has_w: bool, has_b: bool, mode: str = "ln",
                      vec: int = 1):
    """``kernel(x, res, s, w, b, y, mean, rstd, D, eps)`` over rows of length ``D``; grid = rows.
    An absent weight/bias is compiled out (``has_w``/``has_b``); pass any array in its place.

    ``mode`` (compile time): ``"ln"`` LayerNorm; ``"rms"`` RMSNorm (no mean: shift 0, mean not
    written); ``"add"`` residual-add LayerNorm: ``s = x + res`` rounded to x's dtype (summed in
    float64, stored, and read back, so the normalized values are exactly the stored sum, as the
    unfused ops give), then LayerNorm of ``s``. ``res``/``s`` are placeholders outside "add".

    ``vec``: row elements per access. 1: scalar loads and stores (any dtype, any mode); ``plan.LN_VEC``
    (float32 "ln"/"rms" only, ``D % vec == 0``, x and y 16-byte aligned): each thread reads and
    writes ``vec`` consecutive elements with one 16-byte access, so a warp moves 512 contiguous
    bytes per instruction. ``regs`` counts such units per thread."""
    ld_x, st_y, ld_p = loader(acc, xio), storer(xio), loader(acc, pio)
    A, nbt = np_float(acc), numba_float(acc)
    add, rms = mode == "add", mode == "rms"
    V = vec
    if V == 1:
        ld_v = ld1 if xio == "f" else unit_loader(ld_x)
    else:
        assert V == plan.LN_VEC and xio == "f" and acc == 32 and not add, "wide loads: float32 ln/rms only"
        ld_v = ld4_f32

    @jit_device
    def affine(v, w, b, j):
        if has_w:
            v *= ld_p(w, j)
        if has_b:
            v += ld_p(b, j)
        return v

    @jit_device
    def store_unit(y, u, vals, k):
        """Store the unit ``vals[k : k + V]`` at unit ``u``."""
        if V == 1:
            st_y(y, u, vals[k])
        else:
            st4_f32(y, u, vals[k], vals[k + 1], vals[k + 2], vals[k + 3])

    slots = SHARED_SLOTS
    nvals = regs * V  # a compile-time size for the local array

    @cuda.jit
    def kernel(x, res, s, w, b, y, mean_out, rstd_out, D, eps):
        sh_a = cuda.shared.array(slots, nbt)
        sh_b = cuda.shared.array(slots, nbt)
        vals = cuda.local.array(nvals, nbt)
        out = cuda.local.array(V, nbt)
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        base = cuda.blockIdx.x * D
        U = D // V  # units per row
        ubase = cuda.blockIdx.x * U
        src = s if add else x  # what the statistics and the tail read
        if add:
            for k in range(regs):
                j = tid + k * T
                if j < D:
                    st_y(s, base + j, A(np.float64(ld_x(x, base + j)) + np.float64(ld_x(res, base + j))))
                    vals[k] = ld_x(s, base + j)  # the rounded sum (this thread's own store)
            j = tid + regs * T
            while j < D:
                st_y(s, base + j, A(np.float64(ld_x(x, base + j)) + np.float64(ld_x(res, base + j))))
                j += T
            cuda.syncthreads()  # the row's first sum (the shift) and the tail become visible
        shift = A(0.0)
        if not rms:
            shift = finite_shift(ld_x(src, base), A(0.0))  # every thread reads the same sample: one broadcast load
        s1 = A(0.0)
        s2 = A(0.0)
        for k in range(regs):
            u = tid + k * T
            if u < U:
                if add:
                    d = vals[k] - shift
                    vals[k] = d
                    s1 += d
                    s2 += d * d
                else:
                    t = ld_v(x, ubase + u)
                    for q in range(V):
                        d = A(t[q]) - shift
                        vals[k * V + q] = d
                        s1 += d
                        s2 += d * d
        u = tid + regs * T
        while u < U:  # rows longer than regs * T units: the tail is read again below
            t = ld_v(src, ubase + u)
            for q in range(V):
                d = A(t[q]) - shift
                s1 += d
                s2 += d * d
            u += T
        s1, s2 = reduce2(s1, s2, sh_a, sh_b, tid, T)
        n = A(D)
        dm = A(0.0)
        if not rms:
            dm = s1 / n
        var = max(s2 / n - dm * dm, A(0.0))
        rstd = A(1.0) / math.sqrt(var + A(eps))
        if tid == 0:
            if not rms:
                mean_out[cuda.blockIdx.x] = shift + dm
            rstd_out[cuda.blockIdx.x] = rstd
        for k in range(regs):
            u = tid + k * T
            if u < U:
                for q in range(V):  # x - mean = (x - shift) - dm: exact for constant rows
                    vals[k * V + q] = affine((vals[k * V + q] - dm) * rstd, w, b, u * V + q)
                store_unit(y, ubase + u, vals, k * V)
        u = tid + regs * T
        while u < U:
            t = ld_v(src, ubase + u)
            for q in range(V):
                out[q] = affine((A(t[q]) - shift - dm) * rstd, w, b, u * V + q)
            store_unit(y, ubase + u, out, 0)
            u += T

    return kernel
