"""Backward kernels of BatchNorm and GroupNorm on the CPU (LayerNorm's and RMSNorm's are row
kernels, in ``layer_norm.py``).

Same conventions as the forward: the canonical ``(outer, C, inner)`` view, ``plan``/``block_bounds``
to cut the work, a serial fast path for one task, sums in float64, per-task partial buffers merged
after the parallel loop (``sum_pieces``; no atomics, no shared writes). Per-channel vectors arrive
as float64 from the caller. GroupNorm's backward is BatchNorm's training backward run per sample,
with per-(n, c) mean and coefficients.

BatchNorm training, with x̂ = (x - mean)·invstd, N elements per channel and s = γ·invstd::

    grad_x = s·(dy - Σdy/N - (x - mean)·invstd²·Σdy(x - mean)/N)
           = p·dy - q·(x - mean) + r          (p, q, r per channel)

so one pass gathers Σdy and Σdy·(x - mean) and one elementwise pass writes grad_x. In eval the
statistics are constants, grad_x = dy·γ·invstd, and that write is fused into the one pass that
gathers the sums for grad_weight/grad_bias.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .affine import compute_empty, to_compute
from .family import _sample_tasks
from .halfio import is_half_view, load, store
from .jit import glue, parallel, serial
from .moments import _CL_GROUP_MIN_C, cl_dot_sums, cl_lanes, sum_pieces
from .plan import block_bounds, plan

# The entry points (``channel_grad_sums``, ``channel_grad_input``, ``sample_channel_*``) are
# plain Python: one task calls the block kernel, more call a ``parallel_*`` parfor, so the serial
# path never compiles a parfor (each costs 1.5-3 s cold). The parfors allocate with ``np.empty``
# only and leave zeroing and merging to ``_serial`` helpers: under ``parallel=True`` numba turns
# ``np.zeros`` and array expressions into parallel loops of their own.


# --------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------
@serial
def run_grad_sums(grun, xrun, m):
    """(Σdy, Σdy·(x - m)) over contiguous 1-D runs, in float64."""
    a = 0.0
    b = 0.0
    for i in range(grun.shape[0]):
        d = np.float64(load(grun[i]))
        a += d
        b += d * (load(xrun[i]) - m)
    return a, b


@serial
def run_grad_sums_scaled(grun, xrun, m, scale, orun):
    """``run_grad_sums`` that also writes ``orun = dy·scale``."""
    a = 0.0
    b = 0.0
    for i in range(grun.shape[0]):
        d = np.float64(load(grun[i]))
        a += d
        b += d * (load(xrun[i]) - m)
        orun[i] = store(d * scale, orun)
    return a, b


#: Channels-last backward sums with at least this many channels sweep whole rows
#: (``cl_sweep_sums``); rows of at least ``_SWEEP_ONE_ROW_C`` channels one at a time, narrower
#: ones four at a time.
_SWEEP_MIN_C = 32
#: ``batch_norm_backward_serial``'s error for an invstd <= 0 (the text of ``numbanorm.backward.INVSTD_MESSAGE``).
_INVSTD_MESSAGE = ("invstd must be positive (1 / sqrt(var + eps), as batch_norm(..., return_stats=True) returns it), "
                   "got a value <= 0: running_mean / running_var are not the (mean, invstd) a backward takes")

_SWEEP_ONE_ROW_C = 128


@serial
def cl_sweep_sums(g2, x2, mean, r0, r1, s_dy, s_dyx):
    """s_dy[c] += Σdy, s_dyx[c] += Σdy·(x - mean[c]) over rows ``r0:r1`` of channels-last
    (rows, C) views, in float64.

    The rows are read in memory order, with the 2 x C accumulators in one (2, C) array that stays
    in L1: both inputs stream like a plain read, where the channel-group sweeps of ``cl_dot_sums``
    (a few lines of every row, row after row) ran at 0.7-0.8x of that for C = 64-256 (2x for
    C = 128). One accumulator array is one pointer for LLVM's runtime alias checks, and a block of
    rows (a 2-D slice) is one too, so the loop vectorizes. Below ``_SWEEP_ONE_ROW_C`` channels four
    rows share one load and store of the accumulators; with wider rows the four-row loop was slower
    (measured 1.6-2x for C = 128-512, the rows alias each other's cache sets)."""
    C = g2.shape[1]
    acc = np.zeros((2, C))
    r = r0
    if C < _SWEEP_ONE_ROW_C:
        while r + 4 <= r1:
            gb = g2[r:r + 4]
            xb = x2[r:r + 4]
            for c in range(np.uint64(C)):
                d0, d1 = np.float64(load(gb[0, c])), np.float64(load(gb[1, c]))
                d2, d3 = np.float64(load(gb[2, c])), np.float64(load(gb[3, c]))
                m = mean[c]
                acc[0, c] += (d0 + d1) + (d2 + d3)
                acc[1, c] += ((d0 * (np.float64(load(xb[0, c])) - m) + d1 * (np.float64(load(xb[1, c])) - m))
                              + (d2 * (np.float64(load(xb[2, c])) - m) + d3 * (np.float64(load(xb[3, c])) - m)))
            r += 4
    for o in range(r, r1):
        grow = g2[o]
        xrow = x2[o]
        for c in range(np.uint64(C)):
            d = np.float64(load(grow[c]))
            acc[0, c] += d
            acc[1, c] += d * (np.float64(load(xrow[c])) - mean[c])
    for c in range(C):
        s_dy[c] += acc[0, c]
        s_dyx[c] += acc[1, c]


# Σdy and Σdy·(x - mean[c]) per channel over ``[o0:o1, :, i0:i1]`` into ``s_dy``/``s_dyx``; when
# ``out3`` is not None (eval backward) also ``out3 = dy·scale[c]`` on the way. One kernel per
# layout family, chosen in Python (``channel_grad_sums``) and inlined at numba-IR level into the
# parfors: a cold NCHW call does not compile the channels-last register kernels and vice versa.
@glue
def rows_grad_sums(g3, x3, o0, o1, i0, i1, mean, scale, out3, s_dy, s_dyx):
    """The per-channel sums of a layout with contiguous runs (``inner > 1``)."""
    C = x3.shape[1]
    s_dy[:] = 0.0
    s_dyx[:] = 0.0
    for o in range(o0, o1):
        for c in range(C):
            if out3 is None:
                a, b = run_grad_sums(g3[o, c, i0:i1], x3[o, c, i0:i1], mean[c])
            else:
                a, b = run_grad_sums_scaled(g3[o, c, i0:i1], x3[o, c, i0:i1], mean[c], scale[c],
                                            out3[o, c, i0:i1])
            s_dy[c] += a
            s_dyx[c] += b


@glue
def cl_grad_sums(g3, x3, o0, o1, i0, i1, mean, scale, out3, s_dy, s_dyx):
    """The per-channel sums of the channels-last layout (``inner == 1``)."""
    C = x3.shape[1]
    s_dy[:] = 0.0
    s_dyx[:] = 0.0
    if out3 is None and C >= _CL_GROUP_MIN_C:
        # Channels-last, many channels: register-resident channel groups (the engine's helper
        # for the moments too), so the per-channel sums do not round-trip through memory.
        cl_dot_sums(g3.reshape(g3.size), None, x3.reshape(x3.size), mean, o0, o1, C, s_dy, s_dyx)
    else:
        if out3 is None and C > 0:
            # Channels-last, few channels (C = 3): the same groups over lanes, as the forward
            # does (``cl_lanes``): k rows at a time are one row of W lanes, lane j is channel
            # j % C; the lanes fold into the channels at the end, leftover rows go below.
            W = cl_lanes(C)
            k = W // C
            full = o0 + (o1 - o0) // k * k
            mw = np.empty(W)
            sa = np.zeros(W)
            sb = np.zeros(W)
            for j in range(W):
                mw[j] = mean[j % C]
            gl = g3.reshape(g3.size)[o0 * C:full * C]
            xl = x3.reshape(x3.size)[o0 * C:full * C]
            cl_dot_sums(gl, None, xl, mw, 0, (full - o0) // k, W, sa, sb)
            for j in range(W):
                s_dy[j % C] += sa[j]
                s_dyx[j % C] += sb[j]
            o0 = full
        # Channels-last: all channels side by side so the lanes run over c.
        for o in range(o0, o1):
            for c in range(C):
                d = np.float64(load(g3[o, c, 0]))
                s_dy[c] += d
                s_dyx[c] += d * (load(x3[o, c, 0]) - mean[c])
                if out3 is not None:
                    out3[o, c, 0] = store(d * scale[c], out3)


@glue
def cl_grad_sums_fast(g3, x3, o0, o1, i0, i1, mean, scale, out3, s_dy, s_dyx):
    """``cl_grad_sums`` of the BatchNorm entries (``channel_grad_sums``): 32 channels or more
    sweep whole rows in memory order (``cl_sweep_sums``), the rest is ``cl_grad_sums``. Kept out of
    ``block_grad_sums`` (the tiny one-dispatch entry and the group-norm kernels): compiling the
    sweeps there made the tiny BN backward's cold first call ~4 s slower, for inputs too small
    to gain from them."""
    C = x3.shape[1]
    if out3 is None and C >= _SWEEP_MIN_C:
        s_dy[:] = 0.0
        s_dyx[:] = 0.0
        cl_sweep_sums(g3.reshape(g3.shape[0], C), x3.reshape(x3.shape[0], C), mean, o0, o1, s_dy, s_dyx)
    else:
        cl_grad_sums(g3, x3, o0, o1, i0, i1, mean, scale, out3, s_dy, s_dyx)


@serial
def block_grad_sums(g3, x3, o0, o1, i0, i1, mean, scale, out3, s_dy, s_dyx):
    """Σdy and Σdy·(x - mean[c]) per channel over ``[o0:o1, :, i0:i1]`` into ``s_dy``/``s_dyx``
    (and ``out3 = dy·scale[c]`` when given), either layout (the group-norm backward's kernel)."""
    if x3.shape[2] != 1:
        rows_grad_sums(g3, x3, o0, o1, i0, i1, mean, scale, out3, s_dy, s_dyx)
    else:
        cl_grad_sums(g3, x3, o0, o1, i0, i1, mean, scale, out3, s_dy, s_dyx)


def channel_grad_sums(g3, x3, mean, scale, out3, nthreads):
    """Per-channel (Σdy, Σdy·(x - mean)) over axes 0 and 2; one pass over (g3, x3), parallel."""
    outer, C, inner = x3.shape
    n_o, n_i = plan(outer, C, inner, nthreads)
    if n_o * n_i == 1:  # the serial fast path: the block kernel, no parfor compiled
        s_dy = np.empty(C)
        s_dyx = np.empty(C)
        kernel = rows_grad_sums if inner != 1 else cl_grad_sums_fast
        kernel(g3, x3, 0, outer, 0, inner, mean, scale, out3, s_dy, s_dyx)
        return s_dy, s_dyx
    if inner != 1:
        return parallel_rows_grad_sums(g3, x3, mean, scale, out3, n_o, n_i)
    return parallel_cl_grad_sums(g3, x3, mean, scale, out3, n_o)


@parallel
def parallel_rows_grad_sums(g3, x3, mean, scale, out3, n_o, n_i):
    outer, C, inner = x3.shape
    ntask = n_o * n_i
    part_dy = np.empty((ntask, C))
    part_dyx = np.empty((ntask, C))
    for t in prange(ntask):
        o0, o1 = block_bounds(outer, n_o, t // n_i)
        i0, i1 = block_bounds(inner, n_i, t % n_i)
        rows_grad_sums(g3, x3, o0, o1, i0, i1, mean, scale, out3, part_dy[t], part_dyx[t])
    return sum_pieces(part_dy, ntask)[0], sum_pieces(part_dyx, ntask)[0]


@parallel
def parallel_cl_grad_sums(g3, x3, mean, scale, out3, ntask):
    outer, C, _ = x3.shape
    part_dy = np.empty((ntask, C))
    part_dyx = np.empty((ntask, C))
    for t in prange(ntask):
        o0, o1 = block_bounds(outer, ntask, t)
        cl_grad_sums_fast(g3, x3, o0, o1, 0, 1, mean, scale, out3, part_dy[t], part_dyx[t])
    return sum_pieces(part_dy, ntask)[0], sum_pieces(part_dyx, ntask)[0]


@serial
def block_grad_input(g3, x3, o0, o1, i0, i1, mean, p, q, r, out3):
    """``out3 = p[c]·dy - q[c]·(x - mean[c]) + r[c]``; with ``x3`` None just ``p[c]·dy``; either
    layout (the group-norm backward's kernel; the BN entries pick the layout's kernel)."""
    if g3.shape[2] != 1:
        rows_grad_input(g3, x3, o0, o1, i0, i1, mean, p, q, r, out3)
    else:
        cl_grad_input(g3, x3, o0, o1, i0, i1, mean, p, q, r, out3)


@serial
def lane_coefficients(mean, p, q, r, W, like):
    """(p, head, q, r') tiled to ``W`` lanes (lane j is channel j % C) in the compute type of
    ``like`` (float32 for float32 data, as the forward's normalize): ``p·dy - (x - mean)·q + r``
    = ``p·dy - (x - head)·q + r'`` with ``head`` the mean rounded to it and the rest of the mean
    folded into ``r'`` in float64 (``x - head`` is exact for x near the mean; see ``fold_affine``)."""
    C = p.shape[0]
    pw, hw, qw, rw = compute_empty(W, like), compute_empty(W, like), compute_empty(W, like), compute_empty(W, like)
    for j in range(W):
        c = j % C
        h = to_compute(mean[c], like)
        pw[j], hw[j], qw[j] = to_compute(p[c], like), h, to_compute(q[c], like)
        rw[j] = to_compute(r[c] + (mean[c] - np.float64(h)) * q[c], like)
    return pw, hw, qw, rw


@glue
def rows_grad_input(g3, x3, o0, o1, i0, i1, mean, p, q, r, out3):
    """``block_grad_input`` of a layout with contiguous runs (``inner > 1``). float64 math: the
    compute-type version (``lane_coefficients``) was no faster on these runs (measured in cache,
    (256,64,64) and (8,3,50176): equal; out of cache the pass is bound by memory)."""
    C = g3.shape[1]
    for o in range(o0, o1):
        for c in range(C):
            pc, qc, rc, m = p[c], q[c], r[c], mean[c]
            grun = g3[o, c, i0:i1]
            orun = out3[o, c, i0:i1]
            if is_half_view(orun):  # float32, with the mean folded as the forward does
                hc = np.float32(m)
                pc32, qc32, rc32 = np.float32(pc), np.float32(qc), np.float32(rc + (m - np.float64(hc)) * qc)
                if x3 is None:
                    for i in range(np.uint64(grun.shape[0])):
                        orun[i] = store(load(grun[i]) * pc32, orun)
                else:
                    xrun = x3[o, c, i0:i1]
                    for i in range(np.uint64(grun.shape[0])):
                        orun[i] = store(load(grun[i]) * pc32 - (load(xrun[i]) - hc) * qc32 + rc32, orun)
            elif x3 is None:
                for i in range(grun.shape[0]):
                    orun[i] = grun[i] * pc
            else:
                xrun = x3[o, c, i0:i1]
                for i in range(grun.shape[0]):
                    orun[i] = grun[i] * pc - (xrun[i] - m) * qc + rc


@glue
def cl_grad_input(g3, x3, o0, o1, i0, i1, mean, p, q, r, out3):
    """``block_grad_input`` of the channels-last layout (``inner == 1``)."""
    C = g3.shape[1]
    # Flat rows of C, unsigned indices (no wraparound test per element).
    gf = g3.reshape(g3.size)
    of = out3.reshape(out3.size)
    w = np.uint64(C)
    if x3 is None:
        for o in range(o0, o1):
            b = np.uint64(o) * w
            for c in range(w):
                of[b + c] = store(load(gf[b + c]) * p[c], of)
    elif C >= _CL_GROUP_MIN_C:
        xf = x3.reshape(x3.size)
        for o in range(o0, o1):
            b = np.uint64(o) * w
            for c in range(w):
                of[b + c] = store(load(gf[b + c]) * p[c] - (load(xf[b + c]) - mean[c]) * q[c] + r[c], of)
    else:
        # Few channels: runs of W lanes with the parameters tiled to the lanes (see above).
        xf = x3.reshape(x3.size)
        W = cl_lanes(C)
        pw, mw, qw, rw = np.empty(W), np.empty(W), np.empty(W), np.empty(W)
        for j in range(W):
            pw[j], mw[j], qw[j], rw[j] = p[j % C], mean[j % C], q[j % C], r[j % C]
        n = (o1 - o0) * C
        start = o0 * C
        for b0 in range(start, start + n, W):
            b = np.uint64(b0)
            for j in range(np.uint64(min(W, start + n - b0))):
                of[b + j] = store(load(gf[b + j]) * pw[j] - (load(xf[b + j]) - mw[j]) * qw[j] + rw[j], of)


@glue
def cl_grad_input_fast(g3, x3, o0, o1, i0, i1, mean, p, q, r, out3):
    """``cl_grad_input`` of the BatchNorm entries (``channel_grad_input``), in the compute type
    (``lane_coefficients``: float32 for float32 data, 8 lanes instead of 4 and no conversions;
    measured 0.13 vs 0.22 ms on (16384, 64), 0.71 vs 0.84 on (12544, 256), in cache). Kept out
    of ``block_grad_input`` for the reason given at ``cl_grad_sums_fast``."""
    C = g3.shape[1]
    gf = g3.reshape(g3.size)
    of = out3.reshape(out3.size)
    # As many loops as ``cl_grad_input`` (calling it for x3 None added its three to the parfor's
    # cold compile).
    if x3 is None or C >= _CL_GROUP_MIN_C:
        pw, hw, qw, rw = lane_coefficients(mean, p, q, r, C, g3)
        w = np.uint64(C)
        if x3 is None:
            for o in range(o0, o1):
                b = np.uint64(o) * w
                for c in range(w):
                    of[b + c] = store(load(gf[b + c]) * pw[c], of)
        else:
            xf = x3.reshape(x3.size)
            for o in range(o0, o1):
                b = np.uint64(o) * w
                for c in range(w):
                    of[b + c] = store(load(gf[b + c]) * pw[c] - (load(xf[b + c]) - hw[c]) * qw[c] + rw[c], of)
    else:
        # Few channels: runs of W lanes with the coefficients tiled to the lanes (see above).
        xf = x3.reshape(x3.size)
        W = cl_lanes(C)
        pw, hw, qw, rw = lane_coefficients(mean, p, q, r, W, g3)
        n = (o1 - o0) * C
        start = o0 * C
        for b0 in range(start, start + n, W):
            b = np.uint64(b0)
            for j in range(np.uint64(min(W, start + n - b0))):
                of[b + j] = store(load(gf[b + j]) * pw[j] - (load(xf[b + j]) - hw[j]) * qw[j] + rw[j], of)


def channel_grad_input(g3, x3, mean, p, q, r, out3, nthreads):
    """Elementwise grad_x pass; safe when ``out3`` is ``g3`` or ``x3`` (same element read first)."""
    outer, C, inner = g3.shape
    n_o, n_i = plan(outer, C, inner, nthreads)
    if n_o * n_i == 1:  # the serial fast path: the layout's kernel, no parfor compiled
        kernel = rows_grad_input if inner != 1 else cl_grad_input_fast
        kernel(g3, x3, 0, outer, 0, inner, mean, p, q, r, out3)
    elif inner != 1:
        parallel_rows_grad_input(g3, x3, mean, p, q, r, out3, n_o, n_i)
    else:
        parallel_cl_grad_input(g3, x3, mean, p, q, r, out3, n_o)


@parallel
def parallel_rows_grad_input(g3, x3, mean, p, q, r, out3, n_o, n_i):
    outer, C, inner = g3.shape
    for t in prange(n_o * n_i):
        o0, o1 = block_bounds(outer, n_o, t // n_i)
        i0, i1 = block_bounds(inner, n_i, t % n_i)
        rows_grad_input(g3, x3, o0, o1, i0, i1, mean, p, q, r, out3)


@parallel
def parallel_cl_grad_input(g3, x3, mean, p, q, r, out3, ntask):
    outer = g3.shape[0]
    for t in prange(ntask):
        o0, o1 = block_bounds(outer, ntask, t)
        cl_grad_input_fast(g3, x3, o0, o1, 0, 1, mean, p, q, r, out3)


@serial
def batch_norm_backward_serial(g3, x3, mean, invstd, weight, out3, grads):
    """BatchNorm training backward of a small input in one dispatch, on one thread: grad_x into
    ``out3`` and, unless ``grads`` (2, C) is empty, (grad_weight, grad_bias) into it. ``weight``
    zero-length: none; ``mean``/``invstd`` as the forward returned them (x's dtype). The same
    sums and coefficients as ``backward.batch_norm_backward`` computes with NumPy between
    ``channel_grad_sums`` and ``channel_grad_input``: on a tiny input those ~10 small array
    operations and three dispatches cost more than both passes."""
    outer, C, inner = x3.shape
    m = np.empty(C)
    inv = np.empty(C)
    scale = np.empty(C)
    has_weight = weight.size > 0
    bad = False  # invstd <= 0 somewhere (NaN passes): a flag, not a branch, keeps the loop vectorized
    for c in range(C):
        m[c] = mean[c]
        inv[c] = invstd[c]
        bad |= inv[c] <= 0.0
        scale[c] = np.float64(weight[c]) * inv[c] if has_weight else inv[c]
    if bad:
        raise ValueError(_INVSTD_MESSAGE)
    s_dy = np.empty(C)
    s_dyx = np.empty(C)
    block_grad_sums(g3, x3, 0, outer, 0, inner, m, scale, None, s_dy, s_dyx)
    count = np.float64(outer * inner)
    q = np.empty(C)
    r = np.empty(C)
    for c in range(C):
        q[c] = scale[c] * inv[c] * inv[c] * s_dyx[c] / count
        r[c] = -scale[c] * s_dy[c] / count
    block_grad_input(g3, x3, 0, outer, 0, inner, m, scale, q, r, out3)
    if grads.size:
        for c in range(C):
            grads[0, c] = s_dyx[c] * inv[c]
            grads[1, c] = s_dy[c]


# --------------------------------------------------------------------------------------------
# GroupNorm (and InstanceNorm): the BatchNorm training backward per sample
# --------------------------------------------------------------------------------------------
@serial
def _grad_sums_task(g4, x4, task, mean, part_dy, part_dyx):
    n0, n1, o0, o1, i0, i1, piece = task[0], task[1], task[2], task[3], task[4], task[5], task[6]
    for n in range(n0, n1):
        k = piece + n - n0
        block_grad_sums(g4[n], x4[n], o0, o1, i0, i1, mean[n], mean[n], None, part_dy[k], part_dyx[k])


@parallel
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
    return sum_pieces(part_dy, per), sum_pieces(part_dyx, per)


@serial
def _grad_input_task(g4, x4, task, mean, p, q, r, out4):
    n0, n1, o0, o1, i0, i1 = task[0], task[1], task[2], task[3], task[4], task[5]
    for n in range(n0, n1):
        block_grad_input(g4[n], x4[n], o0, o1, i0, i1, mean[n], p[n], q[n], r[n], out4[n])


@parallel
def sample_channel_grad_input(g4, x4, mean, p, q, r, out4, nthreads):
    """``out4[n] = p[n, c]·dy - q[n, c]·(x - mean[n, c]) + r[n, c]``; safe in place over g4 or x4."""
    N, outer, C, inner = x4.shape
    tasks, _, _ = _sample_tasks(N, outer, C, inner, nthreads)
    if tasks.shape[0] == 1:
        _grad_input_task(g4, x4, tasks[0], mean, p, q, r, out4)
        return
    for t in prange(tasks.shape[0]):
        _grad_input_task(g4, x4, tasks[t], mean, p, q, r, out4)


@serial
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
