"""The moments engine and the normalize kernels, on the CPU.

Every op works on a canonical C-contiguous view ``x3`` of shape ``(outer, C, inner)``
(see ``_layout.py``). Two access patterns cover all layouts:

* ``inner > 1``: each ``x3[o, c, :]`` is a contiguous run (NCHW rows, LN rows);
* ``inner == 1``: channels-last, so the vector lanes run across the ``C`` channels.

Statistics are one pass over ``x``: shifted sums (shift = the block's first value, accumulated in
float64) per block, and blocks merged with Chan's formula. This stays accurate when
|mean| >> std, unlike E[x^2] - E[x]^2, and vectorizes because the sums only need ``reassoc``.

Parallel entry points split the work into tasks of at least ``MIN_TASK_ELEMENTS``; a call with a
single task runs the serial helper directly and never wakes the thread pool. They take the
caller's ``numba.get_num_threads()`` as ``nthreads`` (reading it inside a kernel would stop numba
from caching the kernel on disk).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._config import FASTMATH, MIN_TASK_ELEMENTS, TASKS_PER_THREAD
from ._halfio import load, store

# error_model="numpy": x/0 gives inf/nan as in torch (and as NumPy does) instead of raising,
# and spares a zero test per division.
_serial = njit(fastmath=FASTMATH, error_model="numpy", cache=True, nogil=True)
_parallel = njit(fastmath=FASTMATH, error_model="numpy", cache=True, nogil=True, parallel=True)

#: Rows of a channels-last block that share one shift before they are merged by Chan's formula.
_CL_CHUNK_ROWS = 256


# --------------------------------------------------------------------------------------------
# Moments engine
# --------------------------------------------------------------------------------------------
@_serial
def chan_merge(na, ma, m2a, nb, mb, m2b):
    """Chan et al.'s pairwise combine of (count, mean, M2); exact for any split."""
    if nb == 0.0:
        return na, ma, m2a
    if na == 0.0:
        return nb, mb, m2b
    n = na + nb
    delta = mb - ma
    fb = nb / n
    return n, ma + delta * fb, m2a + m2b + delta * delta * na * fb


@_serial
def run_moments(run):
    """(mean, M2) of a contiguous 1-D run, shifted by its first value, in float64."""
    n = run.shape[0]
    if n == 0:
        return 0.0, 0.0
    shift = np.float64(load(run[0]))
    s1 = 0.0
    s2 = 0.0
    for i in range(n):
        d = load(run[i]) - shift
        s1 += d
        s2 += d * d
    return shift + s1 / n, max(s2 - s1 * s1 / n, 0.0)


@_serial
def block_moments(x3, o0, o1, i0, i1, mean, m2):
    """Per-channel moments of ``x3[o0:o1, :, i0:i1]`` into ``mean``/``m2``; returns the count."""
    C = x3.shape[1]
    width = i1 - i0
    if x3.shape[2] != 1:
        for c in range(C):
            n, cm, cm2 = 0.0, 0.0, 0.0
            for o in range(o0, o1):
                rm, rm2 = run_moments(x3[o, c, i0:i1])
                n, cm, cm2 = chan_merge(n, cm, cm2, float(width), rm, rm2)
            mean[c] = cm
            m2[c] = cm2
        return float((o1 - o0) * width)
    # Channels-last: accumulate all channels side by side so the lanes run over c.
    shift = np.empty(C)
    s1 = np.empty(C)
    s2 = np.empty(C)
    mean[:] = 0.0
    m2[:] = 0.0
    n = 0.0
    for r0 in range(o0, o1, _CL_CHUNK_ROWS):
        r1 = min(r0 + _CL_CHUNK_ROWS, o1)
        for c in range(C):
            shift[c] = load(x3[r0, c, 0])
            s1[c] = 0.0
            s2[c] = 0.0
        for r in range(r0, r1):
            for c in range(C):
                d = load(x3[r, c, 0]) - shift[c]
                s1[c] += d
                s2[c] += d * d
        nb = float(r1 - r0)
        for c in range(C):
            mb = shift[c] + s1[c] / nb
            m2b = max(s2[c] - s1[c] * s1[c] / nb, 0.0)
            _, mean[c], m2[c] = chan_merge(n, mean[c], m2[c], nb, mb, m2b)
        n += nb
    return n


@_serial
def plan_tasks(outer, C, inner, nthreads):
    """Split (outer, inner) into n_outer x n_inner blocks; 1 x 1 means run serially."""
    total = outer * C * inner
    tasks = min(nthreads * TASKS_PER_THREAD, total // MIN_TASK_ELEMENTS)
    if tasks <= 1:
        return 1, 1
    if inner == 1 or outer >= tasks:
        return min(tasks, outer), 1
    # Few outer slices (e.g. N=1..8 NCHW): also cut the contiguous runs, so C < threads still
    # keeps every core busy; the pieces merge by Chan's formula.
    return outer, min(inner, (tasks + outer - 1) // outer)


@_serial
def block_bounds(length, nblocks, b):
    return (length * b) // nblocks, (length * (b + 1)) // nblocks


@_parallel
def channel_moments(x3, nthreads):
    """Per-channel (count, mean, M2) over axes 0 and 2 of ``x3``; one pass, parallel."""
    outer, C, inner = x3.shape
    n_o, n_i = plan_tasks(outer, C, inner, nthreads)
    ntask = n_o * n_i
    part_n = np.empty(ntask)
    part_mean = np.empty((ntask, C))
    part_m2 = np.empty((ntask, C))
    if ntask == 1:
        part_n[0] = block_moments(x3, 0, outer, 0, inner, part_mean[0], part_m2[0])
    else:
        for t in prange(ntask):
            o0, o1 = block_bounds(outer, n_o, t // n_i)
            i0, i1 = block_bounds(inner, n_i, t % n_i)
            part_n[t] = block_moments(x3, o0, o1, i0, i1, part_mean[t], part_m2[t])
    mean = part_mean[0].copy()
    m2 = part_m2[0].copy()
    count = part_n[0]
    for c in range(C):
        n = part_n[0]
        for t in range(1, ntask):
            n, mean[c], m2[c] = chan_merge(n, mean[c], m2[c], part_n[t], part_mean[t, c], part_m2[t, c])
    for t in range(1, ntask):
        count += part_n[t]
    return count, mean, m2


# --------------------------------------------------------------------------------------------
# Normalize: y = (x - shift[c]) * scale[c] + offset[c], computed in float64
# --------------------------------------------------------------------------------------------
@_serial
def block_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3):
    C = x3.shape[1]
    if x3.shape[2] != 1:
        for o in range(o0, o1):
            for c in range(C):
                m, s, b = shift[c], scale[c], offset[c]
                for i in range(i0, i1):
                    out3[o, c, i] = store((load(x3[o, c, i]) - m) * s + b, out3)
    else:
        for o in range(o0, o1):
            for c in range(C):
                out3[o, c, 0] = store((load(x3[o, c, 0]) - shift[c]) * scale[c] + offset[c], out3)


@_parallel
def channel_affine(x3, shift, scale, offset, out3, nthreads):
    """``out3 = (x3 - shift[c]) * scale[c] + offset[c]``; safe in place (``out3 is x3``).

    The per-channel ``x - mean`` is kept (instead of folding it into the offset) so that the
    result stays exact for constant input and accurate when |mean| >> std.
    """
    outer, C, inner = x3.shape
    n_o, n_i = plan_tasks(outer, C, inner, nthreads)
    if n_o * n_i == 1:
        block_affine(x3, 0, outer, 0, inner, shift, scale, offset, out3)
        return
    for t in prange(n_o * n_i):
        o0, o1 = block_bounds(outer, n_o, t // n_i)
        i0, i1 = block_bounds(inner, n_i, t % n_i)
        block_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3)


@_serial
def channel_scale_offset(mean, var, weight, bias, eps):
    """Per-channel (invstd, scale, offset) in float64 from statistics and the optional affine."""
    C = mean.shape[0]
    invstd = np.empty(C)
    scale = np.empty(C)
    offset = np.zeros(C)
    for c in range(C):
        invstd[c] = 1.0 / math.sqrt(var[c] + eps)
        scale[c] = invstd[c]
        if weight is not None:
            scale[c] *= weight[c]
        if bias is not None:
            offset[c] = bias[c]
    return invstd, scale, offset


# --------------------------------------------------------------------------------------------
# LayerNorm: one row at a time, statistics then normalize while the row is still in cache
# --------------------------------------------------------------------------------------------
@_serial
def layer_norm_rows(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out):
    D = x2.shape[1]
    for r in range(r0, r1):
        row = x2[r]
        mean, m2 = run_moments(row)
        rstd = 1.0 / math.sqrt(m2 / D + eps)
        dst = out2[r]
        for j in range(D):
            v = (load(row[j]) - mean) * rstd
            if weight is not None:
                v *= weight[j]
            if bias is not None:
                v += bias[j]
            dst[j] = store(v, dst)
        mean_out[r] = mean
        rstd_out[r] = rstd


@_parallel
def layer_norm_forward(x2, weight, bias, eps, out2, mean_out, rstd_out, nthreads):
    """LayerNorm over the rows of ``x2`` (R, D); stats go to ``mean_out``/``rstd_out`` (R,)."""
    R, D = x2.shape
    nblocks, _ = plan_tasks(R, 1, D, nthreads)
    if nblocks == 1:
        layer_norm_rows(x2, 0, R, weight, bias, eps, out2, mean_out, rstd_out)
        return
    for b in prange(nblocks):
        r0, r1 = block_bounds(R, nblocks, b)
        layer_norm_rows(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out)
