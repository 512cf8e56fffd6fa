"""The row norms on the CPU: LayerNorm, RMSNorm and residual-add LayerNorm over ``(rows, D)``.

One row at a time: its statistics, then the normalize while the row is still in cache. Large
inputs software-pipeline the rows (row r is normalized in the loop that sums row r + 1), and
outputs far beyond the cache are written with non-temporal stores (``simd.normalize_row_sums``).
Serial or parallel, and the size class, are chosen in Python, so a call compiles only its path.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .affine import fold_affine
from .halfio import compute, flush_row, hw_bf16_view, is_half_view, load, row_scratch, row_target, store
from .jit import glue, parallel, serial
from .moments import finite_shift, run_sums, sum_pieces, sums_to_moments
from .plan import block_bounds, plan
from .simd import store_fence
from .simd_rows import normalize_row_sums, row_stream_ok


@serial
def normalize_row_and_sum_next(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream=False):
    """``dst = normalized row`` and, in the same loop, the shifted sums of the next row ``nxt``.

    One loop keeps a DRAM read stream (the next row) and a write stream (this row's output) busy
    at the same time; separate passes alternate between them and leave bandwidth unused.
    ``dst`` is a ``row_target``: the caller flushes it (bfloat16) afterwards. ``stream``: write
    ``dst`` with non-temporal stores (``_simd.normalize_row_sums``; float32/float64 rows) and
    run ``store_fence`` once the rows are done.
    """
    if stream or hw_bf16_view(dst):  # (bfloat16 rows: the SIMD loop's vcvtneps2bf16, see hw_bf16_view)
        return normalize_row_sums(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream)
    D = row.shape[0]
    s1 = 0.0
    s2 = 0.0
    # Separate loops per case (None is a compile-time type) keep each one a plain SIMD loop.
    if weight is None:
        if bias is None:
            for j in range(D):
                d = np.float64(load(nxt[j])) - shift
                s1 += d
                s2 += d * d
                dst[j] = store((load(row[j]) - mh) * rs + tail, dst)
        else:
            for j in range(D):
                d = np.float64(load(nxt[j])) - shift
                s1 += d
                s2 += d * d
                dst[j] = store(((load(row[j]) - mh) * rs + tail) + bias[j], dst)
    else:
        if bias is None:
            for j in range(D):
                d = np.float64(load(nxt[j])) - shift
                s1 += d
                s2 += d * d
                dst[j] = store(((load(row[j]) - mh) * rs + tail) * weight[j], dst)
        else:
            for j in range(D):
                d = np.float64(load(nxt[j])) - shift
                s1 += d
                s2 += d * d
                dst[j] = store(((load(row[j]) - mh) * rs + tail) * weight[j] + bias[j], dst)
    return s1, s2


@serial
def normalize_row(row, dst, mh, rs, tail, weight, bias):
    """``dst[j] = ((row[j] - mh) * rs + tail) * weight[j] + bias[j]`` (weight/bias optional);
    ``dst`` is a ``row_target``."""
    if hw_bf16_view(dst):  # the SIMD loop's vcvtneps2bf16 (0.34 -> 0.30 ns per element, (1024, 768))
        normalize_row_sums(row, dst, None, 0.0, mh, rs, tail, weight, bias, False)
        return
    D = np.uint64(row.shape[0])
    # Separate loops per case (None is a compile-time type) keep each one a plain SIMD loop.
    if weight is None:
        if bias is None:
            for j in range(D):
                dst[j] = store((load(row[j]) - mh) * rs + tail, dst)
        else:
            for j in range(D):
                dst[j] = store(((load(row[j]) - mh) * rs + tail) + bias[j], dst)
    else:
        if bias is None:
            for j in range(D):
                dst[j] = store(((load(row[j]) - mh) * rs + tail) * weight[j], dst)
        else:
            for j in range(D):
                dst[j] = store(((load(row[j]) - mh) * rs + tail) * weight[j] + bias[j], dst)


@serial
def layer_norm_rows_cached(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch):
    """Rows ``r0:r1``, two loops per row: sums, then normalize while the row is in L1.
    ``scratch``: ``row_scratch(out2, D)`` (bfloat16 rows are written in float32, then converted
    8 lanes wide; see ``_halfio.row_target``)."""
    D = x2.shape[1]
    for r in range(r0, r1):
        row = x2[r]
        shift = finite_shift(load(row[0]))
        s1, s2 = run_sums(row, 0, D, shift)
        mean, m2 = sums_to_moments(D, shift, s1, s2)
        rstd = 1.0 / math.sqrt(m2 / D + eps)
        mh, rs, tail = fold_affine(mean, rstd, 0.0, row)  # (x - mean) * rstd == (x - mh) * rs + tail
        target = row_target(scratch, out2[r])
        normalize_row(row, target, mh, rs, tail, weight, bias)
        flush_row(target, out2[r])
        mean_out[r] = mean
        rstd_out[r] = rstd


#: Above this many elements LayerNorm uses the pipelined loop; below, the data is in cache and
#: the two simpler loops per row are faster. Measured (one core, ms, two loops -> pipelined):
#: (1024, 1024) 0.50 -> 0.42, (2048, 768) 0.91 -> 0.72, (4096, 256) 0.58 -> 0.53, but
#: (256, 768) 0.074 -> 0.079: above ~2 MB the rows come from DRAM (or a shared L3) here.
LN_PIPELINE_ELEMENTS = 1 << 19


#: Pipelined LayerNorm writes float32/float64 outputs of at least this many bytes with
#: non-temporal stores (``_simd.normalize_row_sums``): the output lines are not read for
#: ownership first, so a row costs a read and a write stream instead of read, read, write.
#: Measured (float32, ``out=`` reused, one core, ms, normal -> streaming stores; copy):
#: (16384, 4096) 268 MB 44-49 -> 25-28 (20-22); (8192, 4096) 19 -> 12-13 (16);
#: (16384, 1024) 67 MB 11-12 -> 9.4-10.5 (9.4-9.7); but (32768, 768) 100 MB 14.5-15 -> 14-16.5,
#: (16384, 768) 50 MB 5.6-5.8 -> 6.1-7.0 and (12544, 384) 19 MB 2.2 -> 4.0-4.9: below ~64 MB part
#: of x and out stay in the 32 MB L3 between calls, and streaming sends all of out to DRAM.
_LN_STREAM_BYTES = 64 << 20


@serial
def layer_norm_rows_into(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch,
                         stream_bytes=_LN_STREAM_BYTES):
    """``layer_norm_rows`` with the caller's ``row_scratch(out2, D)`` (for callers that run it
    on one row at a time). Outputs of at least ``stream_bytes`` stream (tests pass 0)."""
    # Streaming implies the pipelined loop (the threshold is far above the pipeline's).
    stream = ln_streams(out2, stream_bytes)
    if x2.size < LN_PIPELINE_ELEMENTS and not stream:
        layer_norm_rows_cached(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch)
    else:
        layer_norm_rows_pipelined(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch, stream)


@serial
def ln_streams(out2, stream_bytes):
    """Whether LayerNorm writes ``out2`` with non-temporal stores."""
    return row_stream_ok(out2) and out2.size * out2.itemsize >= stream_bytes


@serial
def layer_norm_rows_pipelined(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch, stream):
    """Rows ``r0:r1``, software-pipelined: row r is normalized in the loop that sums row r + 1.
    Its own kernel, so the pipelined entries do not compile the cached loop as well."""
    D = x2.shape[1]
    if r1 <= r0:
        return
    nshift = finite_shift(load(x2[r0, 0])) if D > 0 else 0.0
    n1, n2 = run_sums(x2[r0], 0, D, nshift)
    for r in range(r0, r1):
        row = x2[r]
        mean, m2 = sums_to_moments(D, nshift, n1, n2)
        rstd = 1.0 / math.sqrt(m2 / D + eps)
        mh, rs, tail = fold_affine(mean, rstd, 0.0, row)  # (x - mean) * rstd == (x - mh) * rs + tail
        nxt = x2[r + 1] if r + 1 < r1 else row  # the last row sums itself again (result unused)
        nshift = finite_shift(load(nxt[0])) if D > 0 else 0.0
        target = row_target(scratch, out2[r])
        n1, n2 = normalize_row_and_sum_next(row, target, nxt, nshift, mh, rs, tail, weight, bias, stream)
        flush_row(target, out2[r])
        mean_out[r] = mean
        rstd_out[r] = rstd
    if stream:
        store_fence()  # before the parallel region ends and other threads read out2


@serial
def layer_norm_rows(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out):
    """Rows ``r0:r1`` of a large input (the pipelined size class), software-pipelined: row r is
    normalized while row r + 1 is summed (48 -> 36 ms for 256 MB on one core, np.copyto 21 ms)."""
    scratch = row_scratch(out2, x2.shape[1])
    layer_norm_rows_pipelined(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch,
                              ln_streams(out2, _LN_STREAM_BYTES))


# The LayerNorm entries come in two variants, chosen in Python from the size (the test that
# ``layer_norm_rows_into`` makes): a call below ``LN_PIPELINE_ELEMENTS`` compiles only
# ``layer_norm_rows_cached`` (and not the pipelined loop, ``normalize_row_and_sum_next`` and two
# more jitted layers: about half of a cold small LayerNorm call), and that one inlined at
# numba-IR level (``rows_cached``: the same Python function, so it stays ``layer_norm_rows_cached``
# whatever that becomes), since each jitted layer re-optimizes all the code under it again.
rows_cached = glue(getattr(layer_norm_rows_cached, "py_func", layer_norm_rows_cached))


@parallel
def parallel_layer_norm_cached(x2, weight, bias, eps, out2, mean_out, rstd_out, nblocks):
    R = x2.shape[0]
    for b in prange(nblocks):
        # int64: the gufunc's loop index is uint64, which compiled a second block_bounds.
        r0, r1 = block_bounds(R, nblocks, np.int64(b))
        rows_cached(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, row_scratch(out2, x2.shape[1]))


@parallel
def parallel_layer_norm_pipelined(x2, weight, bias, eps, out2, mean_out, rstd_out, nblocks):
    R = x2.shape[0]
    for b in prange(nblocks):
        # int64: the gufunc's loop index is uint64, which compiled a second block_bounds.
        r0, r1 = block_bounds(R, nblocks, np.int64(b))
        layer_norm_rows(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out)


def layer_norm_forward(x2, weight, bias, eps, out2, mean_out, rstd_out, nthreads):
    """LayerNorm over the rows of ``x2`` (R, D); stats go to ``mean_out``/``rstd_out`` (R,).
    The entries of x2's size class (cached rows or pipelined) and plan."""
    cached = x2.size < LN_PIPELINE_ELEMENTS
    nblocks = plan(x2.shape[0], 1, x2.shape[1], nthreads)[0]
    if nblocks == 1:
        (layer_norm_serial_cached if cached else layer_norm_serial_pipelined)(x2, weight, bias, eps, out2,
                                                                              mean_out, rstd_out)
    else:
        (parallel_layer_norm_cached if cached else parallel_layer_norm_pipelined)(x2, weight, bias, eps, out2,
                                                                                  mean_out, rstd_out, nblocks)


# Jitted entries with 7 arguments, because every argument of a call from Python costs (two more
# for ``layer_norm_rows`` measured +0.5 us per tiny call).
@serial
def layer_norm_serial_cached(x2, weight, bias, eps, out2, mean_out, rstd_out):
    rows_cached(x2, 0, x2.shape[0], weight, bias, eps, out2, mean_out, rstd_out, row_scratch(out2, x2.shape[1]))


@serial
def layer_norm_serial_nd(x, weight, bias, eps, out, mean_out, rstd_out):
    """``layer_norm_serial_cached`` of an N-D C-contiguous ``x``/``out`` over the last dim, viewed
    as rows here: the tiny half path passes the arrays as they come (each reshape or view in
    Python costs ~0.25 us, and the 16-bit views already cost two)."""
    D = x.shape[-1]
    R = x.size // D
    x2 = x.reshape(R, D)
    rows_cached(x2, 0, R, weight, bias, eps, out.reshape(R, D), mean_out, rstd_out, row_scratch(out, D))


@serial
def layer_norm_serial_pipelined(x2, weight, bias, eps, out2, mean_out, rstd_out):
    layer_norm_rows(x2, 0, x2.shape[0], weight, bias, eps, out2, mean_out, rstd_out)


# --------------------------------------------------------------------------------------------
# RMSNorm: LayerNorm without the mean, one row at a time while it is in cache
# --------------------------------------------------------------------------------------------
@serial
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
        if hw_bf16_view(dst):  # (x - 0)·rstd·w: the SIMD loop's vcvtneps2bf16 (see hw_bf16_view)
            zero = compute(0.0, row)
            normalize_row_sums(row, dst, None, 0.0, zero, rstd_c, zero, weight, None, False)
            rstd_out[r] = rstd
            continue
        for j in range(D):
            v = load(row[j]) * rstd_c
            if weight is not None:
                v *= weight[j]
            dst[j] = store(v, dst)
        rstd_out[r] = rstd


def rms_norm_forward(x2, weight, eps, out2, rstd_out, nthreads):
    """RMSNorm over the rows of ``x2`` (R, D); ``rstd_out`` (R,) gets 1/sqrt(mean(x^2) + eps)."""
    R, D = x2.shape
    nblocks = plan(R, 1, D, nthreads)[0]
    if nblocks == 1:
        rms_norm_rows(x2, 0, R, weight, eps, out2, rstd_out)
    else:
        parallel_rms_norm(x2, weight, eps, out2, rstd_out, nblocks)


@parallel
def parallel_rms_norm(x2, weight, eps, out2, rstd_out, nblocks):
    R = x2.shape[0]
    for b in prange(nblocks):
        r0, r1 = block_bounds(R, nblocks, b)
        rms_norm_rows(x2, r0, r1, weight, eps, out2, rstd_out)


# --------------------------------------------------------------------------------------------
# Residual add + LayerNorm: the sum row is written once, then normalized from cache
# --------------------------------------------------------------------------------------------
@serial
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
    """``sum2 = x2 + res2`` and LayerNorm of ``sum2`` into ``out2``, one read of each input row."""
    R, D = x2.shape
    nblocks = plan(R, 1, 2 * D, nthreads)[0]
    if nblocks == 1:
        add_layer_norm_rows(x2, res2, 0, R, weight, bias, eps, out2, sum2, mean_out, rstd_out)
    else:
        parallel_add_layer_norm(x2, res2, weight, bias, eps, out2, sum2, mean_out, rstd_out, nblocks)


@parallel
def parallel_add_layer_norm(x2, res2, weight, bias, eps, out2, sum2, mean_out, rstd_out, nblocks):
    R = x2.shape[0]
    for b in prange(nblocks):
        r0, r1 = block_bounds(R, nblocks, b)
        add_layer_norm_rows(x2, res2, r0, r1, weight, bias, eps, out2, sum2, mean_out, rstd_out)


# --------------------------------------------------------------------------------------------
# LayerNorm / RMSNorm backward: per row, one pass for the two row sums (and the γ/β partials),
# one pass for grad_x while the row is still in cache
# --------------------------------------------------------------------------------------------
@serial
def row_shift(mean, r):
    """The row's mean, or 0 without one (RMSNorm)."""
    if mean is None:
        return 0.0
    return mean[r]



@serial
def layer_norm_grad_rows(g2, x2, r0, r1, mean, rstd, weight, out2, dw, db):
    """grad_x for rows ``r0:r1``; adds Σ dy·x̂ and Σ dy per column into ``dw``/``db`` (with weight).

    With g = dy·γ: grad_x = rstd·(g - mean(g) - x̂·mean(g·x̂)). ``mean`` None is RMSNorm
    (x̂ = x·rstd, nothing centered): grad_x = rstd·(g - x̂·mean(g·x̂)). The sums are float64;
    half rows (16-bit views) compute grad_x in float32 (``half_grad_row``), others in float64.
    """
    D = x2.shape[1]
    dw[:] = 0.0
    db[:] = 0.0
    for r in range(r0, r1):
        m = row_shift(mean, r)
        s = rstd[r]
        grow = g2[r]
        xrow = x2[r]
        a = 0.0
        b = 0.0
        for j in range(D):
            xh = (load(xrow[j]) - m) * s
            d = np.float64(load(grow[j]))
            if weight is not None:
                dw[j] += d * xh
                db[j] += d
                d *= weight[j]
            a += d
            b += d * xh
        a /= D
        b /= D
        if mean is None:  # RMSNorm: nothing was centered, so no mean(g) term
            a = 0.0
        dst = out2[r]
        if is_half_view(dst):
            half_grad_row(grow, xrow, m, s, a, b, weight, dst)
        else:
            for j in range(D):
                xh = (xrow[j] - m) * s
                d = np.float64(grow[j])
                if weight is not None:
                    d *= weight[j]
                dst[j] = (d - a - xh * b) * s


@serial
def half_grad_row(grow, xrow, m, s, a, b, weight, dst):
    """``dst = (dy·γ - a - x̂·b)·s`` of a half row in float32: x̂ = (x - mh)·rs + tail as the
    forward normalizes (``fold_affine``: mh the float32 head of the mean, the rest in tail)."""
    mh, rs, tail = fold_affine(m, s, 0.0, xrow)
    ac = np.float32(a)
    bc = np.float32(b)
    for j in range(np.uint64(xrow.shape[0])):
        xh = (load(xrow[j]) - mh) * rs + tail
        d = load(grow[j])
        if weight is not None:
            d = d * weight[j]
        dst[j] = store((d - ac - xh * bc) * rs, dst)


def layer_norm_backward(g2, x2, mean, rstd, weight, out2, nthreads):
    """LayerNorm backward over rows of ``x2`` (R, D); returns float64 (Σ dy·x̂, Σ dy) per column
    (empty when ``weight`` is None), reduced from one partial buffer per task. ``mean`` None:
    RMSNorm backward (see ``layer_norm_grad_rows``)."""
    R, D = x2.shape
    nblocks = plan(R, 1, D, nthreads)[0]
    width = D if weight is not None else 0
    if nblocks == 1:  # the serial fast path: the row kernel, no parfor compiled
        dw = np.empty(width)
        db = np.empty(width)
        layer_norm_grad_rows(g2, x2, 0, R, mean, rstd, weight, out2, dw, db)
        return dw, db
    return parallel_layer_norm_grad(g2, x2, mean, rstd, weight, out2, nblocks, width)



@parallel
def parallel_layer_norm_grad(g2, x2, mean, rstd, weight, out2, nblocks, width):
    R = x2.shape[0]
    part_dw = np.empty((nblocks, width))
    part_db = np.empty((nblocks, width))
    for t in prange(nblocks):
        r0, r1 = block_bounds(R, nblocks, t)
        layer_norm_grad_rows(g2, x2, r0, r1, mean, rstd, weight, out2, part_dw[t], part_db[t])
    return sum_pieces(part_dw, nblocks)[0], sum_pieces(part_db, nblocks)[0]

