"""GroupNorm and InstanceNorm on the CPU: per-sample statistics over the moments engine.

They take a 4-D C-contiguous view ``x4`` of shape ``(N, outer, C, inner)``: ``x4[n]`` is sample n
in the canonical ``(outer, C, inner)`` view, so NCHW (``(N, 1, C, HW)``, contiguous runs) and
channels-last (``(N, HW, C, 1)``, lanes across C) need no transpose copy. ``block_moments`` gives
per-(n, c) moments, a group's channels are then merged with Chan's formula (``merge_parts``,
exact), and ``block_affine`` applies per-(n, c) shift/scale/offset. InstanceNorm is GroupNorm with
one channel per group. The per-sample task scaffolding here serves their backward too.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .affine import block_affine, fold_affine
from .halfio import load
from .jit import parallel, serial
from .layer_norm import normalize_row_and_sum_next
from .moments import block_moments, finite_shift, merge_parts, run_sums, sums_to_moments
from .plan import block_bounds, plan, plan_tasks
from .simd import affine_rows


# --------------------------------------------------------------------------------------------
# Per-sample, per-channel moments and affine over x4 = (N, outer, C, inner)
# --------------------------------------------------------------------------------------------
@serial
def _sample_plan(N, outer, C, inner, nthreads):
    """(sample blocks, pieces per sample, (n_o, n_i) of a piece). Many samples: whole samples per
    task; few large samples: each sample is cut like the engine cuts one BN input."""
    n_blocks, split = plan_tasks(N, 1, outer * C * inner, nthreads)
    if split == 1:
        return n_blocks, 1, 1, 1
    n_o, n_i = plan_tasks(outer, C, inner, (nthreads + N - 1) // N)
    return N, n_o * n_i, n_o, n_i


@serial
def _sample_tasks(N, outer, C, inner, nthreads):
    """The task list of a per-sample pass: rows ``(n0, n1, o0, o1, i0, i1, piece)``, task t covers
    samples n0:n1 over ``[o0:o1, :, i0:i1]``; ``piece`` (+ n - n0) indexes a partial-result row,
    ``pieces`` rows in all, ``per`` consecutive rows per sample. One task means run serially."""
    n_blocks, per, n_o, n_i = _sample_plan(N, outer, C, inner, nthreads)
    ntask = n_blocks if per == 1 else N * per
    tasks = np.empty((ntask, 7), np.int64)
    for t in range(ntask):
        if per == 1:
            n0, n1 = block_bounds(N, n_blocks, t)
            o0, o1, i0, i1, piece = 0, outer, 0, inner, n0
        else:
            n0, p = t // per, t % per
            n1, piece = n0 + 1, t
            o0, o1 = block_bounds(outer, n_o, p // n_i)
            i0, i1 = block_bounds(inner, n_i, p % n_i)
        row = tasks[t]
        row[0], row[1], row[2], row[3], row[4], row[5], row[6] = n0, n1, o0, o1, i0, i1, piece
    return tasks, N * per, per


@serial
def _moments_task(x4, task, part_n, part_mean, part_m2):
    n0, n1, o0, o1, i0, i1, piece = task[0], task[1], task[2], task[3], task[4], task[5], task[6]
    for n in range(n0, n1):
        k = piece + n - n0
        part_n[k, :] = block_moments(x4[n], o0, o1, i0, i1, part_mean[k], part_m2[k])


@serial
def _merge_pieces(part_n, part_mean, part_m2, per):
    """Chan-merge the ``per`` consecutive partial rows of each sample into (N, C) moments."""
    N = part_n.shape[0] // per
    C = part_mean.shape[1]
    counts, means, m2s = part_n.reshape(part_n.size), part_mean.reshape(part_mean.size), part_m2.reshape(part_m2.size)
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    for n in range(N):
        for c in range(C):
            _, mean[n, c], m2[n, c] = merge_parts(counts, means, m2s, n * per * C + c, (n + 1) * per * C, C)
    return mean, m2


@parallel
def sample_channel_moments(x4, nthreads):
    """Per-(n, c) (count, mean, M2) over the outer and inner axes of each sample; one pass."""
    N, outer, C, inner = x4.shape
    tasks, pieces, per = _sample_tasks(N, outer, C, inner, nthreads)
    part_n = np.empty((pieces, C))
    part_mean = np.empty((pieces, C))
    part_m2 = np.empty((pieces, C))
    if tasks.shape[0] == 1:
        _moments_task(x4, tasks[0], part_n, part_mean, part_m2)
    else:
        for t in prange(tasks.shape[0]):
            _moments_task(x4, tasks[t], part_n, part_mean, part_m2)
    mean, m2 = _merge_pieces(part_n, part_mean, part_m2, per)
    return float(outer * inner), mean, m2


@serial
def _affine_task(x4, task, shift, scale, offset, out4):
    n0, n1, o0, o1, i0, i1 = task[0], task[1], task[2], task[3], task[4], task[5]
    for n in range(n0, n1):
        block_affine(x4[n], o0, o1, i0, i1, shift[n], scale[n], offset[n], out4[n])


@parallel
def sample_channel_affine(x4, shift, scale, offset, out4, nthreads):
    """``out4[n] = (x4[n] - shift[n, c]) * scale[n, c] + offset[n, c]``; safe in place."""
    N, outer, C, inner = x4.shape
    tasks, _, _ = _sample_tasks(N, outer, C, inner, nthreads)
    if tasks.shape[0] == 1:
        _affine_task(x4, tasks[0], shift, scale, offset, out4)
        return
    for t in prange(tasks.shape[0]):
        _affine_task(x4, tasks[t], shift, scale, offset, out4)


# --------------------------------------------------------------------------------------------
# GroupNorm / InstanceNorm forward fused per group: statistics, then the normalize while the group
# is still in cache (the separate moments and affine passes read x from DRAM twice)
# --------------------------------------------------------------------------------------------
@serial
def _group_runs(x4, u0, u1, G, weight, bias, eps, out4, mean, m2, gmean, grstd):
    """Groups ``u0:u1`` (group (n, g) = divmod(u, G)) of a (N, 1, C, inner) view: a group's
    channels are one contiguous block, and so are consecutive groups. Software-pipelined like
    large LayerNorm rows: group u is normalized in the same loop that sums group u + 1, so a DRAM
    read stream and a write stream stay busy together."""
    C = x4.shape[2]
    inner = x4.shape[3]
    cpg = C // G
    src = x4.reshape(x4.size)
    dst = out4.reshape(out4.size)
    shift = np.empty(cpg)
    s1 = np.empty(cpg)
    s2 = np.empty(cpg)
    for k in range(cpg):
        start = (u0 * cpg + k) * inner
        shift[k] = finite_shift(load(src[start]))
        s1[k], s2[k] = run_sums(src, start, start + inner, shift[k])
    for u in range(u0, u1):
        n, g = u // G, u % G
        for k in range(cpg):
            c = g * cpg + k
            mean[n, c], m2[n, c] = sums_to_moments(inner, shift[k], s1[k], s2[k])
        cnt, gm, gm2 = merge_parts(float(inner), mean[n], m2[n], g * cpg, (g + 1) * cpg, 1)
        rstd = 1.0 / math.sqrt(gm2 / cnt + eps)
        gmean[n, g] = gm
        grstd[n, g] = rstd
        for k in range(cpg):
            c = g * cpg + k
            start = (u * cpg + k) * inner
            sc = rstd if weight is None else rstd * weight[c]
            of = 0.0 if bias is None else np.float64(bias[c])
            head, scale, offset = fold_affine(gm, sc, of, src)
            if u + 1 < u1:
                nxt = start + cpg * inner
                shift[k] = finite_shift(load(src[nxt]))
                s1[k], s2[k] = normalize_row_and_sum_next(src[start:start + inner], dst[start:start + inner],
                                                          src[nxt:nxt + inner], shift[k], head, scale, offset,
                                                          None, None)
            else:
                affine_rows(src, dst, start, 1, inner, head, scale, offset)


@serial
def _group_sample(x4, n, G, weight, bias, eps, out4, mean, m2, gmean, grstd, sh, sc, of):
    """Sample ``n`` of ``group_norm_fused`` (channels-last): its per-channel moments, merged into
    groups, then the normalize while the sample is still in cache."""
    outer, C, inner = x4.shape[1], x4.shape[2], x4.shape[3]
    cpg = C // G
    cnt = block_moments(x4[n], 0, outer, 0, inner, mean[n], m2[n])
    for g in range(G):
        gc, gm, gm2 = merge_parts(cnt, mean[n], m2[n], g * cpg, (g + 1) * cpg, 1)
        rstd = 1.0 / math.sqrt(gm2 / gc + eps)
        gmean[n, g] = gm
        grstd[n, g] = rstd
        for c in range(g * cpg, (g + 1) * cpg):
            sh[c] = gm
            sc[c] = rstd if weight is None else rstd * weight[c]
            of[c] = 0.0 if bias is None else np.float64(bias[c])
    block_affine(x4[n], 0, outer, 0, inner, sh, sc, of, out4[n])


@serial
def group_norm_units(x4, u0, u1, G, fused_groups, weight, bias, eps, out4, mean, m2, gmean, grstd):
    """Units ``u0:u1`` of ``group_norm_fused`` (one task): groups, or whole samples."""
    if fused_groups:
        _group_runs(x4, u0, u1, G, weight, bias, eps, out4, mean, m2, gmean, grstd)
        return
    C = x4.shape[2]
    sh = np.empty(C)
    sc = np.empty(C)
    of = np.empty(C)
    for n in range(u0, u1):
        _group_sample(x4, n, G, weight, bias, eps, out4, mean, m2, gmean, grstd, sh, sc, of)


@parallel
def group_norm_units_parallel(x4, G, fused_groups, weight, bias, eps, out4, mean, m2, gmean, grstd, ntask):
    nunits = x4.shape[0] * G if fused_groups else x4.shape[0]
    for t in prange(ntask):
        u0, u1 = block_bounds(nunits, ntask, t)
        group_norm_units(x4, u0, u1, G, fused_groups, weight, bias, eps, out4, mean, m2, gmean, grstd)


def group_norm_fused(x4, G, weight, bias, eps, out4, nthreads):
    """GroupNorm forward (InstanceNorm: G = C) of ``x4`` (N, outer, C, inner) into ``out4``, one
    group (NCHW: its channels are one contiguous block) or one sample (channels-last) at a time:
    statistics, then the normalize while the block is still in cache. Returns (count per
    channel, mean (N, C), M2 (N, C), group mean (N, G), group rstd (N, G)), or None when the
    samples are too few to share among the threads (the caller then runs the two passes)."""
    N, outer, C, inner = x4.shape
    fused_groups = outer == 1 and inner > 1
    nunits = N * G if fused_groups else N
    ntask, split = plan(nunits, 1, x4.size // nunits, nthreads)
    # Whole samples per task must still keep every core busy, else the two passes split better.
    if not fused_groups and (split > 1 or (ntask > 1 and N % nthreads != 0 and N < 4 * nthreads)):
        return None
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    gmean = np.empty((N, G))
    grstd = np.empty((N, G))
    if ntask == 1:
        group_norm_units(x4, 0, nunits, G, fused_groups, weight, bias, eps, out4, mean, m2, gmean, grstd)
    else:
        group_norm_units_parallel(x4, G, fused_groups, weight, bias, eps, out4, mean, m2, gmean, grstd, ntask)
    return float(outer * inner), mean, m2, gmean, grstd


@serial
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
