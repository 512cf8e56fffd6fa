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

from ._config import MIN_TASK_ELEMENTS
from ._engine import (
    _parallel,
    _plan_tasks_py,
    _serial,
    block_affine,
    block_bounds,
    block_moments,
    chan_merge,
    finite_shift,
    fold_affine,
    layer_norm_rows_into,
    normalize_row_and_sum_next,
    plan_tasks,
    run_sums,
    sums_to_moments,
)
from ._engine_backward import block_grad_input, block_grad_sums
from ._halfio import compute, load, row_scratch, store
from ._simd import affine_rows


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


@_serial
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


@_serial
def _moments_task(x4, task, part_n, part_mean, part_m2):
    n0, n1, o0, o1, i0, i1, piece = task[0], task[1], task[2], task[3], task[4], task[5], task[6]
    for n in range(n0, n1):
        k = piece + n - n0
        part_n[k] = block_moments(x4[n], o0, o1, i0, i1, part_mean[k], part_m2[k])


@_serial
def _merge_pieces(part_n, part_mean, part_m2, per):
    """Chan-merge the ``per`` consecutive partial rows of each sample into (N, C) moments."""
    N = part_n.shape[0] // per
    C = part_mean.shape[1]
    mean = np.empty((N, C))
    m2 = np.empty((N, C))
    for n in range(N):
        for c in range(C):
            cnt, cm, cm2 = 0.0, 0.0, 0.0
            for k in range(n * per, (n + 1) * per):
                cnt, cm, cm2 = chan_merge(cnt, cm, cm2, part_n[k], part_mean[k, c], part_m2[k, c])
            mean[n, c] = cm
            m2[n, c] = cm2
    return mean, m2


@_parallel
def sample_channel_moments(x4, nthreads):
    """Per-(n, c) (count, mean, M2) over the outer and inner axes of each sample; one pass."""
    N, outer, C, inner = x4.shape
    tasks, pieces, per = _sample_tasks(N, outer, C, inner, nthreads)
    part_n = np.empty(pieces)
    part_mean = np.empty((pieces, C))
    part_m2 = np.empty((pieces, C))
    if tasks.shape[0] == 1:
        _moments_task(x4, tasks[0], part_n, part_mean, part_m2)
    else:
        for t in prange(tasks.shape[0]):
            _moments_task(x4, tasks[t], part_n, part_mean, part_m2)
    mean, m2 = _merge_pieces(part_n, part_mean, part_m2, per)
    return float(outer * inner), mean, m2


@_serial
def _affine_task(x4, task, shift, scale, offset, out4):
    n0, n1, o0, o1, i0, i1 = task[0], task[1], task[2], task[3], task[4], task[5]
    for n in range(n0, n1):
        block_affine(x4[n], o0, o1, i0, i1, shift[n], scale[n], offset[n], out4[n])


@_parallel
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
@_serial
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
        cnt, gm, gm2 = 0.0, 0.0, 0.0
        for k in range(cpg):
            c = g * cpg + k
            mean[n, c], m2[n, c] = sums_to_moments(inner, shift[k], s1[k], s2[k])
            cnt, gm, gm2 = chan_merge(cnt, gm, gm2, float(inner), mean[n, c], m2[n, c])
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


@_serial
def _group_sample(x4, n, G, weight, bias, eps, out4, mean, m2, gmean, grstd, sh, sc, of):
    """Sample ``n`` of ``group_norm_fused`` (channels-last): its per-channel moments, merged into
    groups, then the normalize while the sample is still in cache."""
    outer, C, inner = x4.shape[1], x4.shape[2], x4.shape[3]
    cpg = C // G
    cnt = block_moments(x4[n], 0, outer, 0, inner, mean[n], m2[n])
    for g in range(G):
        gc, gm, gm2 = 0.0, 0.0, 0.0
        for c in range(g * cpg, (g + 1) * cpg):
            gc, gm, gm2 = chan_merge(gc, gm, gm2, cnt, mean[n, c], m2[n, c])
        rstd = 1.0 / math.sqrt(gm2 / gc + eps)
        gmean[n, g] = gm
        grstd[n, g] = rstd
        for c in range(g * cpg, (g + 1) * cpg):
            sh[c] = gm
            sc[c] = rstd if weight is None else rstd * weight[c]
            of[c] = 0.0 if bias is None else np.float64(bias[c])
    block_affine(x4[n], 0, outer, 0, inner, sh, sc, of, out4[n])


@_serial
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


@_parallel
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
    ntask, split = 1, 1
    if x4.size >= 2 * MIN_TASK_ELEMENTS:  # below, one task for any thread count (see _engine._plan)
        ntask, split = _plan_tasks_py(nunits, 1, x4.size // nunits, nthreads)
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


# --------------------------------------------------------------------------------------------
# GroupNorm backward: BatchNorm's training backward (``_engine_backward``) run per sample, with
# per-(n, c) mean and coefficients
# --------------------------------------------------------------------------------------------
@_serial
def _grad_sums_task(g4, x4, task, mean, part_dy, part_dyx):
    n0, n1, o0, o1, i0, i1, piece = task[0], task[1], task[2], task[3], task[4], task[5], task[6]
    for n in range(n0, n1):
        k = piece + n - n0
        block_grad_sums(g4[n], x4[n], o0, o1, i0, i1, mean[n], mean[n], None, part_dy[k], part_dyx[k])


@_serial
def _sum_pieces(part, per):
    N = part.shape[0] // per
    total = np.zeros((N, part.shape[1]))
    for n in range(N):
        for k in range(n * per, (n + 1) * per):
            total[n] += part[k]
    return total


@_parallel
def sample_channel_grad_sums(g4, x4, mean, nthreads):
    """Per-(n, c) Σdy and Σdy·(x - mean[n, c]) over each sample's outer and inner axes; one pass."""
    N, outer, C, inner = x4.shape
    tasks, pieces, per = _sample_tasks(N, outer, C, inner, nthreads)
    part_dy = np.empty((pieces, C))
    part_dyx = np.empty((pieces, C))
    if tasks.shape[0] == 1:
        _grad_sums_task(g4, x4, tasks[0], mean, part_dy, part_dyx)
    else:
        for t in prange(tasks.shape[0]):
            _grad_sums_task(g4, x4, tasks[t], mean, part_dy, part_dyx)
    return _sum_pieces(part_dy, per), _sum_pieces(part_dyx, per)


@_serial
def _grad_input_task(g4, x4, task, mean, p, q, r, out4):
    n0, n1, o0, o1, i0, i1 = task[0], task[1], task[2], task[3], task[4], task[5]
    for n in range(n0, n1):
        block_grad_input(g4[n], x4[n], o0, o1, i0, i1, mean[n], p[n], q[n], r[n], out4[n])


@_parallel
def sample_channel_grad_input(g4, x4, mean, p, q, r, out4, nthreads):
    """``out4[n] = p[n, c]·dy - q[n, c]·(x - mean[n, c]) + r[n, c]``; safe in place over g4 or x4."""
    N, outer, C, inner = x4.shape
    tasks, _, _ = _sample_tasks(N, outer, C, inner, nthreads)
    if tasks.shape[0] == 1:
        _grad_input_task(g4, x4, tasks[0], mean, p, q, r, out4)
        return
    for t in prange(tasks.shape[0]):
        _grad_input_task(g4, x4, tasks[t], mean, p, q, r, out4)


@_serial
def group_grad_coefficients(s_dy, s_dyx, rstd, weight, count):
    """GroupNorm grad_x = p·dy - q·(x - mean) + r per (n, c), from the per-(n, c) sums (count
    values each) and per-(n, g) rstd; also returns grad_weight (Σ dy·x̂) and grad_bias (Σ dy).

    With g = dy·γ and M values per group: grad_x = rstd·(g - Σg/M - x̂·Σ(g·x̂)/M).
    """
    N, C = s_dy.shape
    G = rstd.shape[1]
    cpg = C // G
    M = count * cpg
    p = np.empty((N, C))
    q = np.empty((N, C))
    r = np.empty((N, C))
    gw = np.zeros(C)
    gb = np.zeros(C)
    for n in range(N):
        for g in range(G):
            s = rstd[n, g]
            a = 0.0  # Σ γ·dy over the group
            b = 0.0  # Σ γ·dy·(x - mean) over the group
            for c in range(g * cpg, (g + 1) * cpg):
                w = 1.0 if weight is None else weight[c]
                a += w * s_dy[n, c]
                b += w * s_dyx[n, c]
                gw[c] += s_dyx[n, c] * s
                gb[c] += s_dy[n, c]
            for c in range(g * cpg, (g + 1) * cpg):
                w = 1.0 if weight is None else weight[c]
                p[n, c] = s * w
                q[n, c] = s * s * s * b / M
                r[n, c] = -s * a / M
    return p, q, r, gw, gb


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


def rms_norm_forward(x2, weight, eps, out2, rstd_out, nthreads):
    """RMSNorm over the rows of ``x2`` (R, D); ``rstd_out`` (R,) gets 1/sqrt(mean(x^2) + eps).
    Serial or parallel chosen in Python, so a small input never compiles the parfor."""
    R, D = x2.shape
    nblocks, _ = _plan_tasks_py(R, 1, D, nthreads)
    if nblocks == 1:
        rms_norm_rows(x2, 0, R, weight, eps, out2, rstd_out)
    else:
        parallel_rms_norm(x2, weight, eps, out2, rstd_out, nblocks)


@_parallel
def parallel_rms_norm(x2, weight, eps, out2, rstd_out, nblocks):
    R = x2.shape[0]
    for b in prange(nblocks):
        r0, r1 = block_bounds(R, nblocks, b)
        rms_norm_rows(x2, r0, r1, weight, eps, out2, rstd_out)


# --------------------------------------------------------------------------------------------
# Residual add + LayerNorm: the sum row is written once, then normalized from cache
# --------------------------------------------------------------------------------------------
@_serial
def add_layer_norm_rows(x2, res2, r0, r1, weight, bias, eps, out2, sum2, mean_out, rstd_out):
    D = x2.shape[1]
    scratch = row_scratch(out2, D)  # once per task: layer_norm_rows_into runs once per row here
    for r in range(r0, r1):
        a, b, s = x2[r], res2[r], sum2[r]
        for j in range(D):
            # float64 holds the exact sum of two float32 (or half) values, so the store is the
            # correctly rounded x + residual of the input dtype, as an unfused add would give.
            s[j] = store(np.float64(load(a[j])) + load(b[j]), s)
        layer_norm_rows_into(sum2, r, r + 1, weight, bias, eps, out2, mean_out, rstd_out, scratch)


def add_layer_norm_forward(x2, res2, weight, bias, eps, out2, sum2, mean_out, rstd_out, nthreads):
    """``sum2 = x2 + res2`` and LayerNorm of ``sum2`` into ``out2``, one read of each input row.
    Serial or parallel chosen in Python, so a small input never compiles the parfor."""
    R, D = x2.shape
    nblocks, _ = _plan_tasks_py(R, 1, 2 * D, nthreads)
    if nblocks == 1:
        add_layer_norm_rows(x2, res2, 0, R, weight, bias, eps, out2, sum2, mean_out, rstd_out)
    else:
        parallel_add_layer_norm(x2, res2, weight, bias, eps, out2, sum2, mean_out, rstd_out, nblocks)


@_parallel
def parallel_add_layer_norm(x2, res2, weight, bias, eps, out2, sum2, mean_out, rstd_out, nblocks):
    R = x2.shape[0]
    for b in prange(nblocks):
        r0, r1 = block_bounds(R, nblocks, b)
        add_layer_norm_rows(x2, res2, r0, r1, weight, bias, eps, out2, sum2, mean_out, rstd_out)

