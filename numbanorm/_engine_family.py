"""CPU kernels of the norm family (GroupNorm, InstanceNorm, RMSNorm, residual-add LayerNorm).

All of them are views over the moments engine in ``_engine.py``; this module only adds the task
scaffolding for per-sample statistics and the RMSNorm / residual-add row loops.

GroupNorm and InstanceNorm take a 4-D C-contiguous view ``x4`` of shape ``(N, outer, C, inner)``:
``x4[n]`` is sample n in the engine's canonical ``(outer, C, inner)`` view, so NCHW
(``(N, 1, C, HW)``, contiguous runs) and channels-last (``(N, HW, C, 1)``, lanes across C) need no
transpose copy. ``block_moments`` gives per-(n, c) moments, a group's channels are then merged with
Chan's formula (exact), and ``block_affine`` applies per-(n, c) shift/scale/offset.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._engine import (
    _parallel,
    _serial,
    block_affine,
    block_bounds,
    block_moments,
    chan_merge,
    layer_norm_rows,
    plan_tasks,
)
from ._halfio import compute, load, store


# --------------------------------------------------------------------------------------------
# Per-sample, per-channel moments and affine over x4 = (N, outer, C, inner)
# --------------------------------------------------------------------------------------------
@_serial
def _sample_plan(N, outer, C, inner, nthreads):
    """(sample blocks, pieces per sample, (n_o, n_i) of a piece). Many samples: whole samples per
    task; few large samples: each sample is cut like the engine cuts one BN input."""
    n_blocks, split = plan_tasks(N, 1, outer * C * inner, nthreads)
    if split == 1:
        return n_blocks, 1, 1, 1
    n_o, n_i = plan_tasks(outer, C, inner, (nthreads + N - 1) // N)
    return N, n_o * n_i, n_o, n_i


@_parallel
def sample_channel_moments(x4, nthreads):
    """Per-(n, c) (count, mean, M2) over the outer and inner axes of each sample; one pass."""
    N, outer, C, inner = x4.shape
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    n_blocks, per, n_o, n_i = _sample_plan(N, outer, C, inner, nthreads)
    if per == 1:
        if n_blocks == 1:
            for n in range(N):
                block_moments(x4[n], 0, outer, 0, inner, mean[n], m2[n])
        else:
            for b in prange(n_blocks):
                n0, n1 = block_bounds(N, n_blocks, b)
                for n in range(n0, n1):
                    block_moments(x4[n], 0, outer, 0, inner, mean[n], m2[n])
        return float(outer * inner), mean, m2
    ntask = N * per
    part_n = np.empty(ntask)
    part_mean = np.empty((ntask, C))
    part_m2 = np.empty((ntask, C))
    for t in prange(ntask):
        n, p = t // per, t % per
        o0, o1 = block_bounds(outer, n_o, p // n_i)
        i0, i1 = block_bounds(inner, n_i, p % n_i)
        part_n[t] = block_moments(x4[n], o0, o1, i0, i1, part_mean[t], part_m2[t])
    for n in range(N):
        for c in range(C):
            cnt, cm, cm2 = 0.0, 0.0, 0.0
            for t in range(n * per, (n + 1) * per):
                cnt, cm, cm2 = chan_merge(cnt, cm, cm2, part_n[t], part_mean[t, c], part_m2[t, c])
            mean[n, c] = cm
            m2[n, c] = cm2
    return float(outer * inner), mean, m2


@_parallel
def sample_channel_affine(x4, shift, scale, offset, out4, nthreads):
    """``out4[n] = (x4[n] - shift[n, c]) * scale[n, c] + offset[n, c]``; safe in place."""
    N, outer, C, inner = x4.shape
    n_blocks, per, n_o, n_i = _sample_plan(N, outer, C, inner, nthreads)
    if per == 1:
        if n_blocks == 1:
            for n in range(N):
                block_affine(x4[n], 0, outer, 0, inner, shift[n], scale[n], offset[n], out4[n])
        else:
            for b in prange(n_blocks):
                n0, n1 = block_bounds(N, n_blocks, b)
                for n in range(n0, n1):
                    block_affine(x4[n], 0, outer, 0, inner, shift[n], scale[n], offset[n], out4[n])
        return
    for t in prange(N * per):
        n, p = t // per, t % per
        o0, o1 = block_bounds(outer, n_o, p // n_i)
        i0, i1 = block_bounds(inner, n_i, p % n_i)
        block_affine(x4[n], o0, o1, i0, i1, shift[n], scale[n], offset[n], out4[n])


@_serial
def merge_groups(mean, m2, count, groups):
    """Merge per-(n, c) moments of ``count`` values each into per-(n, g) moments of consecutive
    channel groups, by Chan's formula (exact for any split)."""
    N, C = mean.shape
    cpg = C // groups
    gmean = np.empty((N, groups))
    gm2 = np.empty((N, groups))
    for n in range(N):
        for g in range(groups):
            cnt, cm, cm2 = 0.0, 0.0, 0.0
            for c in range(g * cpg, (g + 1) * cpg):
                cnt, cm, cm2 = chan_merge(cnt, cm, cm2, count, mean[n, c], m2[n, c])
            gmean[n, g] = cm
            gm2[n, g] = cm2
    return gmean, gm2


@_serial
def group_scale_offset(gmean, rstd, weight, bias, C):
    """Per-(n, c) shift/scale/offset from per-(n, g) mean/rstd and the per-channel affine."""
    N, G = gmean.shape
    cpg = C // G
    shift = np.empty((N, C))
    scale = np.empty((N, C))
    offset = np.zeros((N, C))
    for n in range(N):
        for c in range(C):
            g = c // cpg
            shift[n, c] = gmean[n, g]
            scale[n, c] = rstd[n, g]
            if weight is not None:
                scale[n, c] *= weight[c]
            if bias is not None:
                offset[n, c] = bias[c]
    return shift, scale, offset


# --------------------------------------------------------------------------------------------
# RMSNorm: LayerNorm without the mean, one row at a time while it is in cache
# --------------------------------------------------------------------------------------------
@_serial
def rms_norm_rows(x2, r0, r1, weight, eps, out2, rstd_out):
    D = x2.shape[1]
    for r in range(r0, r1):
        row = x2[r]
        ss = 0.0
        for j in range(D):
            v = np.float64(load(row[j]))
            ss += v * v
        rstd = 1.0 / math.sqrt(ss / D + eps)
        dst = out2[r]
        rstd_c = compute(rstd, row)
        for j in range(D):
            v = load(row[j]) * rstd_c
            if weight is not None:
                v *= weight[j]
            dst[j] = store(v, dst)
        rstd_out[r] = rstd


@_parallel
def rms_norm_forward(x2, weight, eps, out2, rstd_out, nthreads):
    """RMSNorm over the rows of ``x2`` (R, D); ``rstd_out`` (R,) gets 1/sqrt(mean(x^2) + eps)."""
    R, D = x2.shape
    nblocks, _ = plan_tasks(R, 1, D, nthreads)
    if nblocks == 1:
        rms_norm_rows(x2, 0, R, weight, eps, out2, rstd_out)
        return
    for b in prange(nblocks):
        r0, r1 = block_bounds(R, nblocks, b)
        rms_norm_rows(x2, r0, r1, weight, eps, out2, rstd_out)


# --------------------------------------------------------------------------------------------
# Residual add + LayerNorm: the sum row is written once, then normalized from cache
# --------------------------------------------------------------------------------------------
@_serial
def add_layer_norm_rows(x2, res2, r0, r1, weight, bias, eps, out2, sum2, mean_out, rstd_out):
    D = x2.shape[1]
    for r in range(r0, r1):
        a, b, s = x2[r], res2[r], sum2[r]
        for j in range(D):
            # float64 holds the exact sum of two float32 (or half) values, so the store is the
            # correctly rounded x + residual of the input dtype, as an unfused add would give.
            s[j] = store(np.float64(load(a[j])) + load(b[j]), s)
        layer_norm_rows(sum2, r, r + 1, weight, bias, eps, out2, mean_out, rstd_out)


@_parallel
def add_layer_norm_forward(x2, res2, weight, bias, eps, out2, sum2, mean_out, rstd_out, nthreads):
    """``sum2 = x2 + res2`` and LayerNorm of ``sum2`` into ``out2``, one read of each input row."""
    R, D = x2.shape
    nblocks, _ = plan_tasks(R, 1, 2 * D, nthreads)
    if nblocks == 1:
        add_layer_norm_rows(x2, res2, 0, R, weight, bias, eps, out2, sum2, mean_out, rstd_out)
        return
    for b in prange(nblocks):
        r0, r1 = block_bounds(R, nblocks, b)
        add_layer_norm_rows(x2, res2, r0, r1, weight, bias, eps, out2, sum2, mean_out, rstd_out)

