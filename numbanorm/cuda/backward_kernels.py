"""The backward kernels: LayerNorm / RMSNorm (rows), BatchNorm and GroupNorm (per-channel sums +
elementwise). Their drivers are ``backward.py`` (split from it to keep both modules short).

Same conventions as the forward kernels (flat arrays, ``acc``/``xio``/``pio`` factories, shared-memory
reductions under the simulator, shuffles on hardware). ``sio`` is how the saved statistics are
stored ("f" native float, "b" bfloat16 bits).

LayerNorm, with g = dy·γ and x̂ = (x - mean)·rstd per row::

    grad_x = rstd·(g - Σg/D - x̂·Σg·x̂/D)

one block walks rows ``blockIdx.x, blockIdx.x + gridDim.x, ...``; each row is read once (held in
registers between the row reduction and the write), and each thread keeps its columns' Σdy·x̂ and
Σdy for grad_weight/grad_bias in registers across the rows it visits. Every block then writes one
row of float64 partials, and ``ln_param_reduce_kernel`` sums them per column (no atomics).

BatchNorm (the CPU's backward has the algebra): per-block partial Σdy and Σdy·(x - hi)
(``hi`` = the mean rounded to the accumulation type; the float64 finalize adds the ``-lo·Σdy``
correction), one thread per channel merges them in float64 and writes grad_weight/grad_bias and
the grad_x coefficients, then one elementwise pass ``grad_x = p·dy - q·(x - hi) + r``.
"""

from __future__ import annotations

import functools

import numpy as np

from .compat import cuda, jit_device
from .loads import loader, np_float, numba_float, storer
from .moments import (
    SHARED_SLOTS,
    channel_span,
    group_channels,
    partial_slot,
    reduce2,
    reduce2_columns,
    run_start,
    run_step,
    sum2,
)


# --------------------------------------------------------------------------------------------
# LayerNorm
# --------------------------------------------------------------------------------------------
@functools.cache
def layer_norm_backward_kernel(acc: int, xio: str, pio: str, sio: str, regs: int, wregs: int, has_w: bool,
                               centered: bool = True):
    """``kernel(g, x, mean, rstd, w, gx, part_w, part_b, R, D)``; grid = P blocks, each writes
    row ``blockIdx.x`` of the (P, D) float64 partials (with ``has_w``). Without ``centered`` it
    is RMSNorm's backward: mean is 0 (``mean`` is not read) and there is no ``-Σg/D`` term,
    ``grad_x = rstd·(g - x̂·Σg·x̂/D)``.

    Registers: the first ``regs * T`` elements of a row are cached (x̂ and dy·γ) between the
    reduction and the write (the rest is read again, from L2); the grad_weight/grad_bias
    accumulators of the first ``wregs * T`` columns stay in registers across rows (columns past
    that add into the block's partial row in global memory). Both loops over register slots have
    compile-time bounds, so the local arrays live in registers (tools/ptx_check.py reports
    registers, spills and stack per kernel)."""
    ld_x, st_x, ld_p, ld_s = loader(acc, xio), storer(xio), loader(acc, pio), loader(acc, sio)
    A, nbt = np_float(acc), numba_float(acc)
    slots = SHARED_SLOTS

    @cuda.jit
    def kernel(g, x, mean, rstd, w, gx, part_w, part_b, R, D):
        sh_a = cuda.shared.array(slots, nbt)
        sh_b = cuda.shared.array(slots, nbt)
        xh = cuda.local.array(regs, nbt)
        gg = cuda.local.array(regs, nbt)
        aw = cuda.local.array(wregs, nbt)
        ab = cuda.local.array(wregs, nbt)
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        blk = cuda.blockIdx.x
        pbase = blk * D
        for k in range(wregs):
            aw[k] = A(0.0)
            ab[k] = A(0.0)
        if has_w:
            j = tid + wregs * T
            while j < D:  # columns past the registers accumulate in this block's partial row
                part_w[pbase + j] = 0.0
                part_b[pbase + j] = 0.0
                j += T
        r = blk
        while r < R:
            base = r * D
            m = A(ld_s(mean, r)) if centered else A(0.0)
            s = A(ld_s(rstd, r))
            a = A(0.0)
            b = A(0.0)
            for k in range(wregs):
                j = tid + k * T
                if j < D:
                    h = (ld_x(x, base + j) - m) * s
                    d = ld_x(g, base + j)
                    if has_w:
                        aw[k] += d * h
                        ab[k] += d
                        d *= ld_p(w, j)
                    if k < regs:
                        xh[k] = h
                        gg[k] = d
                    a += d
                    b += d * h
            j = tid + wregs * T
            while j < D:
                h = (ld_x(x, base + j) - m) * s
                d = ld_x(g, base + j)
                if has_w:
                    part_w[pbase + j] += np.float64(d * h)
                    part_b[pbase + j] += np.float64(d)
                    d *= ld_p(w, j)
                a += d
                b += d * h
                j += T
            a, b = reduce2(a, b, sh_a, sh_b, tid, T)
            if not centered:
                a = A(0.0)
            a /= A(D)
            b /= A(D)
            for k in range(regs):
                j = tid + k * T
                if j < D:
                    st_x(gx, base + j, (gg[k] - a - xh[k] * b) * s)
            j = tid + regs * T
            while j < D:  # the uncached part of the row is read again (from L2)
                h = (ld_x(x, base + j) - m) * s
                d = ld_x(g, base + j)
                if has_w:
                    d *= ld_p(w, j)
                st_x(gx, base + j, (d - a - h * b) * s)
                j += T
            cuda.syncthreads()  # the next row's reduction reuses the shared slots
            r += cuda.gridDim.x
        if has_w:
            for k in range(wregs):
                j = tid + k * T
                if j < D:
                    part_w[pbase + j] = np.float64(aw[k])
                    part_b[pbase + j] = np.float64(ab[k])

    return kernel


@functools.cache
def ln_param_reduce_kernel(pio: str):
    """grad_weight[j] = Σ_p part_w[p, j], grad_bias likewise; one thread per column (coalesced)."""
    st_p = storer(pio)

    @cuda.jit
    def kernel(part_w, part_b, P, D, gw, gb):
        j = cuda.grid(1)
        if j >= D:
            return
        sw, sb = sum2(part_w, part_b, j, D, P)
        st_p(gw, j, sw)
        st_p(gb, j, sb)

    return kernel


# --------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------
@jit_device
def _dy_sums(g, x, gx, k, hi, sc, s1, s2, ld_x, st_x, write_gx):
    """(s1, s2) plus dy and dy·(x - hi) of element ``k``; with ``write_gx`` also ``gx = dy·sc``."""
    d = ld_x(g, k)
    s1 += d
    s2 += d * (ld_x(x, k) - hi)
    if write_gx:
        st_x(gx, k, d * sc)
    return s1, s2


@jit_device
def _write_sums(part_dy, part_dyx, k, s1, s2):
    part_dy[k] = np.float64(s1)
    part_dyx[k] = np.float64(s2)


@jit_device
def _grad_sums(part_dy, part_dyx, k, P, lo):
    """Σdy and Σdy·(x - mean) of channel slot ``k`` from its P partials, in float64. The partials
    are centred on ``hi = mean - lo``: Σdy·(x - mean) = Σdy·(x - hi) - lo·Σdy."""
    s_dy, s2 = sum2(part_dy, part_dyx, k * P, 1, P)
    return s_dy, s2 - lo * s_dy


@functools.cache
def bn_grad_partials_kernel(acc: int, xio: str, pio: str, sio: str, write_gx: bool):
    """(outer, C, inner > 1): grid (C, P, N), 1-D blocks, the split of ``bn_partials_kernel``.
    Writes per-block Σdy and Σdy·(x - hi) in float64 at ``[(n*C + c)*P + p]``; with ``write_gx``
    (eval backward with a weight) also ``gx = dy·γ·invstd`` on the way. ``N = gridDim.z``
    samples (GroupNorm; BatchNorm: 1) whose channel ``c`` uses ``mean[(n*C + c) // cpg]``
    (GroupNorm: the (n, g) mean of its group; BatchNorm: cpg = 1)."""
    ld_x, st_x, ld_p, ld_s = loader(acc, xio), storer(xio), loader(acc, pio), loader(64, sio)
    A, nbt = np_float(acc), numba_float(acc)
    slots = SHARED_SLOTS

    @cuda.jit
    def kernel(g, x, mean, invstd, w, C, inner, P, cpg, gx, part_dy, part_dyx):
        sh_a = cuda.shared.array(slots, nbt)
        sh_b = cuda.shared.array(slots, nbt)
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        c = cuda.blockIdx.x
        nc = cuda.blockIdx.z * C + c
        xb, j0, j1 = channel_span(x.shape[0], C, P)
        hi = A(ld_s(mean, nc // cpg))
        sc = A(0.0)
        if write_gx:
            sc = A(ld_s(invstd, c) * ld_p(w, c))
        s1 = A(0.0)
        s2 = A(0.0)
        j = j0 + tid
        o, i = run_start(j, inner)
        while j < j1:
            s1, s2 = _dy_sums(g, x, gx, xb + (o * C + c) * inner + i, hi, sc, s1, s2, ld_x, st_x, write_gx)
            j += T
            o, i = run_step(o, i, T, inner)
        s1, s2 = reduce2(s1, s2, sh_a, sh_b, tid, T)
        if tid == 0:
            _write_sums(part_dy, part_dyx, partial_slot(c, C, P), s1, s2)

    return kernel


@functools.cache
def bn_grad_partials_cl_kernel(acc: int, xio: str, pio: str, sio: str, write_gx: bool, TX: int, TY: int):
    """Channels-last (rows, C): grid (ceil(C/TX), P, N), blocks (TX, TY), as ``bn_partials_cl_kernel``;
    samples and ``cpg`` as in ``bn_grad_partials_kernel``."""
    ld_x, st_x, ld_p, ld_s = loader(acc, xio), storer(xio), loader(acc, pio), loader(64, sio)
    A, nbt = np_float(acc), numba_float(acc)
    slots = TX * TY

    @cuda.jit
    def kernel(g, x, mean, invstd, w, C, P, cpg, gx, part_dy, part_dyx):
        sh_a = cuda.shared.array(slots, nbt)
        sh_b = cuda.shared.array(slots, nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = cuda.blockIdx.x * TX + tx
        nc = cuda.blockIdx.z * C + c
        xb, r0, r1 = channel_span(x.shape[0], C, P)  # rows of the sample
        s1 = A(0.0)
        s2 = A(0.0)
        if c < C:
            hi = A(ld_s(mean, nc // cpg))
            sc = A(0.0)
            if write_gx:
                sc = A(ld_s(invstd, c) * ld_p(w, c))
            r = r0 + ty
            while r < r1:
                s1, s2 = _dy_sums(g, x, gx, xb + r * C + c, hi, sc, s1, s2, ld_x, st_x, write_gx)
                r += TY
        s1, s2 = reduce2_columns(s1, s2, sh_a, sh_b, tx, ty, TX, TY)
        if ty == 0 and c < C:
            _write_sums(part_dy, part_dyx, partial_slot(c, C, P), s1, s2)

    return kernel


@functools.cache
def bn_grad_finalize_kernel(acc: int, pio: str, sio: str, has_w: bool, training: bool):
    """One thread per channel: sum the P partials in float64, write grad_weight/grad_bias (with
    ``has_w``) and the grad_x coefficients ``(p, hi, q, r)`` (q = r = 0 outside training)."""
    ld_p, st_p, ld_s = loader(64, pio), storer(pio), loader(64, sio)
    A = np_float(acc)

    @cuda.jit
    def kernel(part_dy, part_dyx, P, mean, invstd, w, count, gw, gb, cp, chi, cq, cr):
        c = cuda.grid(1)
        if c >= cp.shape[0]:
            return
        m = ld_s(mean, c)
        hi = np.float64(A(m))
        lo = m - hi
        s_dy, s_dyx = _grad_sums(part_dy, part_dyx, c, P, lo)
        istd = ld_s(invstd, c)
        scale = istd
        if has_w:
            scale *= ld_p(w, c)
            st_p(gw, c, s_dyx * istd)
            st_p(gb, c, s_dy)
        q = 0.0
        r = 0.0
        if training:
            q = scale * istd * istd * s_dyx / count
            r = -scale * s_dy / count
        cp[c] = scale
        chi[c] = hi
        cq[c] = q
        cr[c] = r + q * lo  # -q·(x - mean) = -q·(x - hi) + q·lo

    return kernel


@functools.cache
def bn_grad_input_kernel(acc: int, xio: str, has_x: bool):
    """(outer, C, inner > 1): ``gx = p[k]·dy - q[k]·(x - hi[k]) + r[k]`` (without ``has_x``:
    ``p[k]·dy``, x unread), ``k = n*C + c`` as in ``bn_normalize_kernel`` (BatchNorm: OC =
    outer*C, k = c); its grid too."""
    ld_x, st_x = loader(acc, xio), storer(xio)
    A = np_float(acc)

    @cuda.jit
    def kernel(g, x, C, inner, OC, cp, chi, cq, cr, gx):
        oc = cuda.blockIdx.x
        c = (oc // OC) * C + oc % C
        p = A(cp[c])
        h = A(chi[c])
        q = A(cq[c])
        r = A(cr[c])
        base = oc * inner
        i = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        step = cuda.gridDim.y * cuda.blockDim.x
        while i < inner:
            v = ld_x(g, base + i) * p
            if has_x:
                v += r - (ld_x(x, base + i) - h) * q
            st_x(gx, base + i, v)
            i += step

    return kernel


@functools.cache
def bn_grad_input_cl_kernel(acc: int, xio: str, has_x: bool, TX: int, TY: int):
    """Channels-last variant of ``bn_grad_input_kernel`` (the grid of ``bn_normalize_cl_kernel``;
    row r belongs to sample ``r // S``, BatchNorm: S = rows)."""
    ld_x, st_x = loader(acc, xio), storer(xio)
    A = np_float(acc)

    @cuda.jit
    def kernel(g, x, C, S, cp, chi, cq, cr, gx):
        c = cuda.blockIdx.x * TX + cuda.threadIdx.x
        if c >= C:
            return
        R = g.shape[0] // C
        row = cuda.blockIdx.y * TY + cuda.threadIdx.y
        step = cuda.gridDim.y * TY
        n = -1
        p = h = q = r = A(0.0)
        while row < R:
            if row // S != n:  # a new sample: its coefficients (BatchNorm: once)
                n = row // S
                p = A(cp[n * C + c])
                h = A(chi[n * C + c])
                q = A(cq[n * C + c])
                r = A(cr[n * C + c])
            k = row * C + c
            v = ld_x(g, k) * p
            if has_x:
                v += r - (ld_x(x, k) - h) * q
            st_x(gx, k, v)
            row += step

    return kernel


# --------------------------------------------------------------------------------------------
# GroupNorm
# --------------------------------------------------------------------------------------------
@jit_device
def _weight_or_one(w, c, ld_p, has_w):
    """γ of channel ``c``, or 1 without a weight (float64)."""
    wc = 1.0
    if has_w:
        wc = ld_p(w, c)
    return wc


@functools.cache
def group_grad_finalize_kernel(acc: int, pio: str, sio: str, has_w: bool):
    """GroupNorm backward, one thread per (n, g), after ``bn_grad_partials_kernel`` batched over
    samples: sum each channel's P partials (Σdy, Σdy·(x - hi)) in float64, write its grad_weight /
    grad_bias contributions ``pw``/``pb`` (per (n, c); ``ln_param_reduce_kernel`` sums them over
    n) and the coefficients of ``grad_x = p·dy - q·(x - hi) + r``. With g = dy·γ and M values per
    group: grad_x = rstd·(g - Σg/M - x̂·Σ(g·x̂)/M), as the CPU's ``group_grad_coefficients``."""
    ld_p, ld_s = loader(64, pio), loader(64, sio)
    A = np_float(acc)

    @cuda.jit
    def kernel(part_dy, part_dyx, P, C, G, mean, rstd, w, count, pw, pb, cp, chi, cq, cr):
        t = cuda.grid(1)
        if t >= mean.shape[0]:
            return
        n, c0, c1 = group_channels(t, C, G)
        m = ld_s(mean, t)
        hi = np.float64(A(m))
        lo = m - hi  # the partials are centred on hi: Σdy·(x - m) = Σdy·(x - hi) - lo·Σdy
        s = ld_s(rstd, t)
        a = 0.0  # Σ γ·dy over the group
        b = 0.0  # Σ γ·dy·(x - mean) over the group
        for c in range(c0, c1):
            k = n * C + c
            s_dy, s_dyx = _grad_sums(part_dy, part_dyx, k, P, lo)
            pw[k] = s_dyx * s
            pb[k] = s_dy
            wc = _weight_or_one(w, c, ld_p, has_w)
            a += wc * s_dy
            b += wc * s_dyx
        M = count * (c1 - c0)
        q = s * s * s * b / M
        r = -s * a / M + q * lo  # -q·(x - mean) = -q·(x - hi) + q·lo
        for c in range(c0, c1):
            k = n * C + c
            cp[k] = s * _weight_or_one(w, c, ld_p, has_w)
            chi[k] = hi
            cq[k] = q
            cr[k] = r

    return kernel
