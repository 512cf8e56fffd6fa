"""The CPU dispatch of every op as jitted code, for calls from users' ``@njit`` functions.

The Python-level entry points (``layer_norm_forward``, ``batch_norm_train_forward``,
``channel_grad_sums``, ...) choose in Python between a serial kernel and a parfor, and the size
class of a kernel. numbanorm's numba overloads (``numbanorm/_njit.py``) cannot call Python, and
must not start a parallel region (they may run inside the user's own ``prange`` loop), so each
entry here makes the same choice in jitted code and runs it on the calling thread:

* a plan of one task calls the very serial kernel the Python dispatch calls;
* a plan of several tasks runs the parfor's body for each task, one after another, in the
  parfor's task order, followed by the same merge: the partial results, hence the bits, are
  those of the Python-level call made with the same numba thread count
  (``numba.get_num_threads()``, which inside a ``prange`` body is the launching thread's).

Kernels are called through ``_numba.native_call``: their own compiled code, the code the Python
dispatch runs, not a copy linked into this module and optimized again (which can round
differently under fastmath). Arithmetic that the Python dispatch does with NumPy between
kernels (GroupNorm's two-pass rstd, InstanceNorm's running stats, BatchNorm backward's
coefficients) is done here by ``exact`` kernels, compiled without fastmath, so it rounds as NumPy
does.
"""

from __future__ import annotations

import math

import numpy as np

from .._numba import jit, native_call, native_num_threads
from .affine import block_affine, channel_scale_offset
from .backward import (
    _grad_input_task,
    _grad_sums_task,
    batch_norm_backward_serial,
    cl_grad_input_fast,
    cl_grad_sums_fast,
    group_grad_coefficients,
    rows_grad_input,
    rows_grad_sums,
)
from .batch_norm import (
    batch_norm_eval_cl,
    batch_norm_eval_rows,
    batch_norm_train_cl,
    batch_norm_train_rows,
    eval_scale_offset,
    train_scale_offset,
)
from .family import _affine_task, _merge_pieces, _moments_task, _sample_tasks, group_norm_units, group_scale_offset
from .jit import FASTMATH, serial
from .layer_norm import (
    LN_PIPELINE_ELEMENTS,
    add_layer_norm_rows,
    layer_norm_grad_rows,
    layer_norm_rows,
    layer_norm_serial_cached,
    layer_norm_serial_pipelined,
    rms_norm_rows,
)
from .moments import block_moments, merge_groups, merge_partials, sum_pieces
from .plan import SERIAL_SIZE, block_bounds, plan_tasks

#: Arithmetic that must round as NumPy's does (no fastmath), for the steps the Python dispatch
#: does with NumPy.
exact = jit(error_model="numpy", nogil=True)

__all__ = [
    "FASTMATH", "add_layer_norm", "batch_norm_backward", "batch_norm_backward_tiny", "batch_norm_eval",
    "batch_norm_train", "group_norm", "group_norm_backward", "instance_running_update", "layer_norm",
    "layer_norm_backward", "rms_norm",
]


@serial
def threads(total):
    """The thread count a plan of ``total`` elements is made for: numba's (the Python dispatch's
    ``num_threads()``), not asked for below ``SERIAL_SIZE``, where every plan is one task
    (``native_num_threads``: ``numba.get_num_threads()`` would make every caller uncacheable)."""
    return 1 if total < SERIAL_SIZE else native_num_threads()


@serial
def plan(outer, C, inner, nthreads):
    """``plan.plan`` in jitted code: one task below ``SERIAL_SIZE``, else ``plan_tasks``."""
    if outer * C * inner < SERIAL_SIZE:
        return 1, 1
    return plan_tasks(outer, C, inner, nthreads)


# --------------------------------------------------------------------------------------------
# Row norms
# --------------------------------------------------------------------------------------------
@serial
def layer_norm(x2, weight, bias, eps, out2, mean, rstd):
    """``layer_norm.layer_norm_forward`` on the calling thread. Cached rows are independent of the
    plan; pipelined rows are not (a block's first row is summed on its own), so those run the
    plan's blocks in order, as ``parallel_layer_norm_pipelined`` does."""
    R, D = x2.shape
    if x2.size < LN_PIPELINE_ELEMENTS:
        native_call(layer_norm_serial_cached, (x2, weight, bias, eps, out2, mean, rstd))
        return
    nblocks = plan(R, 1, D, threads(x2.size))[0]
    if nblocks == 1:
        native_call(layer_norm_serial_pipelined, (x2, weight, bias, eps, out2, mean, rstd))
        return
    for b in range(nblocks):
        r0, r1 = block_bounds(R, nblocks, np.int64(b))
        native_call(layer_norm_rows, (x2, r0, r1, weight, bias, eps, out2, mean, rstd))


@serial
def rms_norm(x2, weight, eps, out2, rstd):
    """``layer_norm.rms_norm_forward`` on the calling thread (rows are independent of the plan)."""
    native_call(rms_norm_rows, (x2, 0, x2.shape[0], weight, eps, out2, rstd))


@serial
def add_layer_norm(x2, res2, weight, bias, eps, out2, sum2, mean, rstd):
    """``layer_norm.add_layer_norm_forward`` on the calling thread (each row is normalized on its
    own whatever the plan)."""
    native_call(add_layer_norm_rows, (x2, res2, 0, x2.shape[0], weight, bias, eps, out2, sum2, mean, rstd))


@serial
def layer_norm_backward(g2, x2, mean, rstd, weight, out2, width):
    """``layer_norm.layer_norm_backward`` on the calling thread: (Σ dy·x̂, Σ dy) per column, of
    ``width`` (D with weight, else 0), with the parallel entry's per-block partial sums."""
    R, D = x2.shape
    nblocks = plan(R, 1, D, threads(x2.size))[0]
    if nblocks == 1:
        dw = np.empty(width)
        db = np.empty(width)
        native_call(layer_norm_grad_rows, (g2, x2, 0, R, mean, rstd, weight, out2, dw, db))
        return dw, db
    part_dw = np.empty((nblocks, width))
    part_db = np.empty((nblocks, width))
    for t in range(nblocks):
        r0, r1 = block_bounds(R, nblocks, t)
        native_call(layer_norm_grad_rows, (g2, x2, r0, r1, mean, rstd, weight, out2, part_dw[t], part_db[t]))
    return native_call(sum_pieces, (part_dw, nblocks))[0], native_call(sum_pieces, (part_db, nblocks))[0]


# --------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------
@serial
def _affine_tasks(x3, shift, scale, offset, out3, n_o, n_i):
    """The normalize parfors' tasks (``parallel_rows_affine`` / ``parallel_cl_affine``), in order."""
    outer, C, inner = x3.shape
    ntask = n_o * n_i
    for t in range(ntask):
        u = ntask - 1 - t
        o0, o1 = block_bounds(outer, n_o, u // n_i)
        i0, i1 = block_bounds(inner, n_i, u % n_i)
        native_call(block_affine, (x3, o0, o1, i0, i1, shift, scale, offset, out3))


@serial
def batch_norm_train(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out):
    """``batch_norm.batch_norm_train_forward`` on the calling thread; ``weight``/``bias``/running
    stats zero-length when absent, as there."""
    outer, C, inner = x3.shape
    n_o, n_i = plan(outer, C, inner, threads(x3.size))
    if n_o * n_i == 1:
        if inner != 1:
            native_call(batch_norm_train_rows,
                        (x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out))
        else:
            native_call(batch_norm_train_cl,
                        (x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out))
        return
    ntask = n_o * n_i
    part_n = np.empty((ntask, C))
    part_mean = np.empty((ntask, C))
    part_m2 = np.empty((ntask, C))
    for t in range(ntask):
        o0, o1 = block_bounds(outer, n_o, t // n_i)
        i0, i1 = block_bounds(inner, n_i, t % n_i)
        part_n[t, :] = native_call(block_moments, (x3, o0, o1, i0, i1, part_mean[t], part_m2[t]))
    count, mean, m2 = native_call(merge_partials, (part_n, part_mean, part_m2))
    invstd, scale, offset = native_call(train_scale_offset,
                                        (count, mean, m2, weight, bias, running_mean, running_var, momentum, eps))
    _affine_tasks(x3, mean, scale, offset, out3, n_o, n_i)
    if stats_out.size:
        stats_out[0] = mean
        stats_out[1] = invstd


@serial
def batch_norm_eval(x3, running_mean, running_var, weight, bias, eps, out3, stats_out):
    """``batch_norm.batch_norm_eval_forward`` on the calling thread."""
    outer, C, inner = x3.shape
    n_o, n_i = plan(outer, C, inner, threads(x3.size))
    if n_o * n_i == 1:
        if inner != 1:
            native_call(batch_norm_eval_rows, (x3, running_mean, running_var, weight, bias, eps, out3, stats_out))
        else:
            native_call(batch_norm_eval_cl, (x3, running_mean, running_var, weight, bias, eps, out3, stats_out))
        return
    mean, invstd, scale, offset = eval_scale_offset(running_mean, running_var, weight, bias, eps)
    _affine_tasks(x3, mean, scale, offset, out3, n_o, n_i)
    if stats_out.size:
        stats_out[0] = mean
        stats_out[1] = invstd


@serial
def empty_batch_stats(C, weight, bias, eps, stats_out):
    """An empty training batch's returned statistics: nan means and their invstd (as
    ``functional._batch_norm_kernels``)."""
    mean = np.full(C, np.nan)
    stats_out[0] = mean
    stats_out[1] = native_call(channel_scale_offset, (mean, mean, weight, bias, eps))[0]


@serial
def batch_norm_backward_tiny(g3, x3, mean, invstd, weight, out3, grads):
    """``_tiny.batch_norm_backward_tiny``'s one dispatch."""
    native_call(batch_norm_backward_serial, (g3, x3, mean, invstd, weight, out3, grads))


@serial
def _grad_sums(g3, x3, mean, scale, out3, nthreads):
    """``backward.channel_grad_sums`` on the calling thread: (Σdy, Σdy·(x - mean)) per channel."""
    outer, C, inner = x3.shape
    n_o, n_i = plan(outer, C, inner, nthreads)
    if n_o * n_i == 1:
        s_dy = np.empty(C)
        s_dyx = np.empty(C)
        if inner != 1:
            rows_grad_sums(g3, x3, 0, outer, 0, inner, mean, scale, out3, s_dy, s_dyx)
        else:
            cl_grad_sums_fast(g3, x3, 0, outer, 0, inner, mean, scale, out3, s_dy, s_dyx)
        return s_dy, s_dyx
    if inner != 1:
        ntask = n_o * n_i
        part_dy = np.empty((ntask, C))
        part_dyx = np.empty((ntask, C))
        for t in range(ntask):
            o0, o1 = block_bounds(outer, n_o, t // n_i)
            i0, i1 = block_bounds(inner, n_i, t % n_i)
            rows_grad_sums(g3, x3, o0, o1, i0, i1, mean, scale, out3, part_dy[t], part_dyx[t])
        return native_call(sum_pieces, (part_dy, ntask))[0], native_call(sum_pieces, (part_dyx, ntask))[0]
    part_dy = np.empty((n_o, C))
    part_dyx = np.empty((n_o, C))
    for t in range(n_o):
        o0, o1 = block_bounds(outer, n_o, t)
        cl_grad_sums_fast(g3, x3, o0, o1, 0, 1, mean, scale, out3, part_dy[t], part_dyx[t])
    return native_call(sum_pieces, (part_dy, n_o))[0], native_call(sum_pieces, (part_dyx, n_o))[0]


@serial
def _grad_input(g3, x3, mean, p, q, r, out3, nthreads):
    """``backward.channel_grad_input`` on the calling thread (the parfors' tasks in order)."""
    outer, C, inner = g3.shape
    n_o, n_i = plan(outer, C, inner, nthreads)
    if inner != 1:
        for t in range(n_o * n_i):
            o0, o1 = block_bounds(outer, n_o, t // n_i)
            i0, i1 = block_bounds(inner, n_i, t % n_i)
            rows_grad_input(g3, x3, o0, o1, i0, i1, mean, p, q, r, out3)
    else:
        for t in range(n_o):
            o0, o1 = block_bounds(outer, n_o, t)
            cl_grad_input_fast(g3, x3, o0, o1, 0, 1, mean, p, q, r, out3)


@exact
def _bn_scale(invstd, weight):
    """``invstd if weight is None else weight * invstd`` (float64), as NumPy computes it."""
    if weight is None:
        return invstd
    C = invstd.shape[0]
    scale = np.empty(C)
    for c in range(C):
        scale[c] = np.float64(weight[c]) * invstd[c]
    return scale


@exact
def _bn_grad_coefficients(scale, invstd, s_dy, s_dyx, count):
    """``backward._grad_coefficients``: NumPy's operations, in its order."""
    C = scale.shape[0]
    q = np.empty(C)
    r = np.empty(C)
    for c in range(C):
        if count:
            qc = scale[c] * invstd[c]
            qc *= invstd[c]
            qc *= s_dyx[c]
            qc /= count
            rc = scale[c] * s_dy[c]
            rc /= -count
        else:
            qc = scale[c] * invstd[c] * invstd[c] * s_dyx[c] / count
            rc = -scale[c] * s_dy[c] / count
        q[c] = qc
        r[c] = rc
    return q, r


@exact
def bn_grad_weight(s_dyx, invstd, out):
    """``(s_dyx * invstd).astype(x.dtype)`` into ``out``."""
    for c in range(out.shape[0]):
        out[c] = s_dyx[c] * invstd[c]


@serial
def batch_norm_backward(g3, x3, mean, invstd, weight, training, out3):
    """``backward._batch_norm_backward_kernels`` on the calling thread; (Σdy, Σdy·(x - mean)), or
    two empty arrays (eval without weight: nothing reduced)."""
    C = x3.shape[1]
    count = float(x3.size // C) if C else 0.0
    scale = _bn_scale(invstd, weight)
    nthreads = threads(x3.size)
    if training:
        s_dy, s_dyx = _grad_sums(g3, x3, mean, scale, None, nthreads)
        q, r = _bn_grad_coefficients(scale, invstd, s_dy, s_dyx, count)
        _grad_input(g3, x3, mean, scale, q, r, out3, nthreads)
        return s_dy, s_dyx
    if weight is not None:
        return _grad_sums(g3, x3, mean, scale, out3, nthreads)
    zeros = np.zeros(C)
    _grad_input(g3, None, mean, scale, zeros, zeros, out3, nthreads)
    return np.empty(0), np.empty(0)


# --------------------------------------------------------------------------------------------
# GroupNorm / InstanceNorm
# --------------------------------------------------------------------------------------------
@exact
def _group_rstd(gm2, count, cpg, eps):
    """``1.0 / np.sqrt(gm2 / (count * cpg) + eps)``, rounded as NumPy does."""
    n = count * cpg
    N, G = gm2.shape
    rstd = np.empty((N, G))
    for i in range(N):
        for g in range(G):
            rstd[i, g] = 1.0 / math.sqrt(gm2[i, g] / n + eps)
    return rstd


@serial
def group_norm(x4, G, weight, bias, eps, out4):
    """``family._grouped_norm`` on the calling thread: the fused per-group (or per-sample) pass
    when ``group_norm_fused`` takes the input, else the two passes (moments, normalize) over the
    per-sample tasks. Returns (count per channel, mean (N, C), M2 (N, C), group mean (N, G),
    group rstd (N, G))."""
    N, outer, C, inner = x4.shape
    nthreads = threads(x4.size)
    fused_groups = outer == 1 and inner > 1
    nunits = N * G if fused_groups else N
    ntask, split = plan(nunits, 1, x4.size // nunits, nthreads)
    if fused_groups or not (split > 1 or (ntask > 1 and N % nthreads != 0 and N < 4 * nthreads)):
        mean = np.empty((N, C))
        m2 = np.empty((N, C))
        gmean = np.empty((N, G))
        grstd = np.empty((N, G))
        for t in range(ntask):
            u0, u1 = block_bounds(nunits, ntask, t)
            native_call(group_norm_units,
                        (x4, u0, u1, G, fused_groups, weight, bias, eps, out4, mean, m2, gmean, grstd))
        return float(outer * inner), mean, m2, gmean, grstd
    # family.sample_channel_moments, its tasks in order
    tasks, pieces, per = _sample_tasks(N, outer, C, inner, nthreads)
    part_n = np.empty((pieces, C))
    part_mean = np.empty((pieces, C))
    part_m2 = np.empty((pieces, C))
    for t in range(tasks.shape[0]):
        native_call(_moments_task, (x4, tasks[t], part_n, part_mean, part_m2))
    mean, m2 = native_call(_merge_pieces, (part_n, part_mean, part_m2, per))
    count = float(outer * inner)
    if G == C:
        gmean, gm2 = mean, m2
    else:
        gmean, gm2 = native_call(merge_groups, (mean, m2, count, G))
    grstd = _group_rstd(gm2, count, C // G, eps)
    shift, scale, offset = native_call(group_scale_offset, (gmean, grstd, weight, bias, C))
    for t in range(tasks.shape[0]):  # family.sample_channel_affine
        native_call(_affine_task, (x4, tasks[t], shift, scale, offset, out4))
    return count, mean, m2, gmean, grstd


@exact
def _pairwise_sum(a, i0, n):
    """NumPy's pairwise sum of the contiguous ``a[i0:i0 + n]`` (``np.add.reduce`` of a 1-D run)."""
    if n < 8:
        res = -0.0
        for i in range(i0, i0 + n):
            res += a[i]
        return res
    if n <= 128:
        r = np.empty(8)
        for j in range(8):
            r[j] = a[i0 + j]
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] += a[i0 + i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += a[i0 + i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(a, i0, n2) + _pairwise_sum(a, i0 + n2, n - n2)


@exact
def _mean_axis0(a):
    """``a.mean(axis=0)`` of a C-contiguous (N, C) float64 array, summed in NumPy's order: down
    each column for C > 1, NumPy's pairwise sum of the one run for C == 1."""
    N, C = a.shape
    out = np.empty(C)
    if C == 1:
        out[0] = _pairwise_sum(a.reshape(N), 0, N) / N
        return out
    for c in range(C):
        s = a[0, c]
        for n in range(1, N):
            s += a[n, c]
        out[c] = s / N
    return out


@exact
def instance_running_update(running_mean, running_var, count, mean, m2, momentum):
    """``family._instance_norm``'s NumPy update, in its order: ``r = keep * r + momentum *
    batch.mean(axis=0)`` in float64, with the per-(n, c) unbiased variances for ``running_var``."""
    keep = 1.0 - momentum
    bm = _mean_axis0(mean)
    bv = _mean_axis0(m2 / (count - 1.0))
    for c in range(bm.shape[0]):
        running_mean[c] = keep * np.float64(running_mean[c]) + momentum * bm[c]
        running_var[c] = keep * np.float64(running_var[c]) + momentum * bv[c]


@serial
def group_norm_backward(g4, x4, mean, rstd, weight, out4):
    """``backward.group_norm_backward``'s kernels on the calling thread; ``mean``/``rstd`` (N, G)
    float64. Returns (grad_weight, grad_bias) in float64 per channel."""
    N, outer, C, inner = x4.shape
    G = mean.shape[1]
    cpg = C // G
    cmean = np.empty((N, C))
    for n in range(N):
        for c in range(C):
            cmean[n, c] = mean[n, c // cpg]
    count = float(x4.size // (N * C))
    nthreads = threads(x4.size)
    tasks, pieces, per = _sample_tasks(N, outer, C, inner, nthreads)
    part_dy = np.empty((pieces, C))
    part_dyx = np.empty((pieces, C))
    for t in range(tasks.shape[0]):
        native_call(_grad_sums_task, (g4, x4, tasks[t], cmean, part_dy, part_dyx))
    s_dy, s_dyx = native_call(sum_pieces, (part_dy, per)), native_call(sum_pieces, (part_dyx, per))
    p, q, r, gw, gb = native_call(group_grad_coefficients, (s_dy, s_dyx, rstd, weight, count))
    for t in range(tasks.shape[0]):
        native_call(_grad_input_task, (g4, x4, tasks[t], cmean, p, q, r, out4))
    return gw, gb
