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

Every element read goes through ``load`` and every element write through ``store``
(``_halfio.py``): identity for float32/float64, and the float16/bfloat16 bit conversions for the
16-bit views that half arrays reach the kernels as (numba has no CPU float16 array type).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from ._config import FASTMATH, MIN_TASK_ELEMENTS, TASKS_PER_THREAD, jit
from ._halfio import flush_row, load, row_scratch, row_target, store
from ._simd import affine_rows, group_dot_sums, normalize_row_sums, row_stream_ok, simd_ok, store_fence

# error_model="numpy": x/0 gives inf/nan as in torch (and as NumPy does) instead of raising,
# and spares a zero test per division.
_serial = jit(fastmath=FASTMATH, error_model="numpy", nogil=True)
_parallel = jit(fastmath=FASTMATH, error_model="numpy", nogil=True, parallel=True)
#: Glue shared by a serial and a parallel entry point, inlined at numba-IR level (typed in its
#: caller instead of compiled, optimized and cached as one more jitted function).
_glue = jit(fastmath=FASTMATH, error_model="numpy", nogil=True, inline="always")

#: Channels-last blocks are read as a flat run of ``lanes`` values (``lanes // C`` whole rows at a
#: time), so that the SIMD lanes run over ``lanes`` accumulators even for small C (C = 3 RGB).
_MIN_LANES = 256

#: Elements that share one shift before a partial result is merged by Chan's formula.
_SHIFT_CHUNK = 1 << 14

#: Channels-last inputs with at least this many channels sum in register-resident channel groups
#: (``cl_dot_sums``); fewer channels use the lane layout (``cl_lanes``), which fills the SIMD
#: lanes for C = 3 too.
_CL_GROUP_MIN_C = 16

#: Bytes per input of one row tile in ``cl_dot_sums``, at least ``_CL_MIN_TILE_ROWS`` rows. Each
#: channel group reads its own cache lines of the tile; the tile is kept small so that the
#: neighbouring lines the hardware prefetcher brings in are still in L1 when the next group's
#: sweep reads them (measured: 16 KB tiles made the backward sums 1.5x slower than 4 KB ones).
_CL_TILE_BYTES = 1 << 12
_CL_MIN_TILE_ROWS = 16

#: The moments, and the backward's sums over rows of at least ``_CL_PREFETCH_ROW_BYTES``, prefetch
#: in software ``_CL_PREFETCH_ROWS`` rows ahead. Measured (ms, one core): moments of
#: (32,56,56,64) 1.70 -> 1.26 (the read floor is 1.31), C = 256 0.64 -> 0.48; backward sums with
#: C = 256 1.79 -> 1.24, but with C = 64 2.72 -> 3.17, so not there.
_CL_PREFETCH_ROW_BYTES = 1024
_CL_PREFETCH_ROWS = 16
_F64 = np.dtype(np.float64)

#: Outputs of at least this many bytes are written with non-temporal stores by the normalize
#: pass (``affine_rows``), NCHW runs only when at least ``_STREAM_RUN_BYTES`` long (channels-last:
#: never, see ``block_affine``). Measured
#: (BN eval, one core, ms, normal -> streaming stores): (32,64,56,56) 3.1 -> 2.2-2.5, NHWC
#: 3.4 -> 2.3-2.8 (np.copyto 2.8-3.1, torch 2.9-3.5); but 4-13 MB outputs that a reused ``out=``
#: keeps in cache got up to 1.7x slower, and 8x8 or 14x14 planes 3-4x slower.
_STREAM_BYTES = 16 << 20
_STREAM_RUN_BYTES = 4096


# --------------------------------------------------------------------------------------------
# Compute type of the normalize step
# --------------------------------------------------------------------------------------------
# Statistics are always accumulated in float64. The normalize step ``(x - mean) * scale + offset``
# runs in float32 for float32 data (8 SIMD lanes instead of 4 on AVX2), with the mean split into
# a float32 head (subtracted from x: exact when x is near the mean) and the rest, which is folded
# into the offset in float64: ``(x - head) * scale + (offset - (mean - head) * scale)``. This
# stays accurate when |mean| >> std and gives exactly ``offset`` for constant input. (Written as
# ``(x - head) - tail`` instead, ``reassoc`` would fold head + tail back into one float32.)
# Any other dtype computes in float64, where head == mean.
def to_compute(v, like):
    """``v`` in the compute type of array ``like`` (jit-only helper)."""
    return np.float64(v)


@overload(to_compute)
def _to_compute(v, like):
    if isinstance(like, types.Array) and like.dtype == types.float32:
        return lambda v, like: np.float32(v)
    return lambda v, like: np.float64(v)


def compute_empty(n, like):
    """``np.empty(n)`` in the compute type of array ``like`` (jit-only helper)."""
    return np.empty(n)


@overload(compute_empty)
def _compute_empty(n, like):
    if isinstance(like, types.Array) and like.dtype == types.float32:
        return lambda n, like: np.empty(n, np.float32)
    return lambda n, like: np.empty(n, np.float64)


@_serial
def fold_affine(m, s, b, like):
    """(head, scale, offset) in the compute type of ``like`` such that
    ``(x - head) * scale + offset ~= (x - m) * s + b`` (see above)."""
    head = to_compute(m, like)
    return head, to_compute(s, like), to_compute(b - (m - np.float64(head)) * s, like)


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
    if not (math.isfinite(ma) and math.isfinite(mb)):
        # A part holds ±inf or nan: the mean is then what the sum of all values gives, ±inf (or
        # nan for inf - inf), and ``ma + mb`` is exactly that (``ma + (mb - ma) * fb`` would give
        # inf - inf = nan for a finite part merged into an infinite one); M2 is nan, as torch's
        # variance of such data. (Written on ma, mb: under ``reassoc`` LLVM rewrote a weighted
        # mean of them back into ``ma + delta * fb``.)
        return n, ma + mb, math.nan
    delta = mb - ma
    fb = nb / n
    return n, ma + delta * fb, m2a + m2b + delta * delta * na * fb


@_serial
def finite_shift(v):
    """The shift of a block's shifted sums: its first value ``v``, or 0 when that is inf or nan
    (an infinite shift makes every ``x - shift`` nan, where the values sum to ±inf)."""
    v = np.float64(v)
    return v if math.isfinite(v) else 0.0


@_serial
def run_sums(run, i0, i1, shift):
    """Shifted sums (sum d, sum d^2), d = run[i] - shift over i0 <= i < i1, in float64.

    A plain reduction over a contiguous 1-D array: with ``reassoc`` LLVM vectorizes it. Hot
    loops here index with unsigned integers: with a signed start numba adds a negative-index
    wraparound test per element, which made these loops about 5x slower.
    """
    s1 = 0.0
    s2 = 0.0
    for i in range(np.uint64(i0), np.uint64(i1)):  # unsigned: no negative-index wraparound test
        d = np.float64(load(run[i])) - shift
        s1 += d
        s2 += d * d
    return s1, s2


@_serial
def sums_to_moments(n, shift, s1, s2):
    """(mean, M2) from shifted sums of ``n`` values."""
    return shift + s1 / n, max(s2 - s1 * s1 / n, 0.0)


@_serial
def run_moments(run):
    """(mean, M2) of a contiguous 1-D run, shifted by its first value, in float64."""
    n = run.shape[0]
    if n == 0:
        return 0.0, 0.0
    shift = finite_shift(load(run[0]))
    s1, s2 = run_sums(run, 0, n, shift)
    return sums_to_moments(n, shift, s1, s2)


@_serial
def cl_lanes(C):
    """Lanes of the channels-last layout: a multiple of C (lane j is channel j % C) and of 8."""
    if C >= _MIN_LANES or C < 1:
        return max(C, 1)
    w = C
    while w % 8 != 0:
        w += C
    step = w
    while w < _MIN_LANES:
        w += step
    return w


@_serial
def block_moments(x3, o0, o1, i0, i1, mean, m2):
    """Per-channel moments of ``x3[o0:o1, :, i0:i1]`` into ``mean``/``m2``; returns the count."""
    if x3.shape[2] != 1:
        return rows_moments(x3, o0, o1, i0, i1, mean, m2)
    return cl_moments(x3, o0, o1, i0, i1, mean, m2)


# The two layouts' bodies of ``block_moments``, inlined at numba-IR level: the parallel entries
# choose one in Python, so a cold NCHW call does not compile the channels-last register kernels
# (``cl_dot_sums``) and a channels-last call not the row loops.
@_glue
def rows_moments(x3, o0, o1, i0, i1, mean, m2):
    """``block_moments`` of a layout with contiguous runs (``inner > 1``)."""
    C = x3.shape[1]
    width = i1 - i0
    # The runs x3[o, c, i0:i1] are contiguous; walk them in memory order (o outer) with
    # per-channel sums, one shift per channel for a chunk of rows, chunks merged by Chan.
    rows = max(1, _SHIFT_CHUNK // max(width, 1))
    shift = np.empty(C)
    s1 = np.empty(C)
    s2 = np.empty(C)
    mean[:] = 0.0
    m2[:] = 0.0
    n = 0.0
    for r0 in range(o0, o1, rows):
        r1 = min(r0 + rows, o1)
        for c in range(C):
            shift[c] = finite_shift(load(x3[r0, c, i0]))
            s1[c] = 0.0
            s2[c] = 0.0
        for o in range(r0, r1):
            for c in range(C):
                a, b = run_sums(x3[o, c], i0, i1, shift[c])
                s1[c] += a
                s2[c] += b
        nb = float((r1 - r0) * width)
        for c in range(C):
            mb, m2b = sums_to_moments(nb, shift[c], s1[c], s2[c])
            _, mean[c], m2[c] = chan_merge(n, mean[c], m2[c], nb, mb, m2b)
        n += nb
    return n


@_glue
def cl_moments(x3, o0, o1, i0, i1, mean, m2):
    """``block_moments`` of the channels-last layout (``inner == 1``)."""
    C = x3.shape[1]
    flat = x3.reshape(x3.size)
    if C >= _CL_GROUP_MIN_C and simd_ok(flat):
        # Channels-last, many channels: per-channel shifted sums in register-resident groups,
        # one shift per channel for a chunk of rows, chunks merged by Chan's formula.
        rows = max(1, _SHIFT_CHUNK // C)
        shift = np.empty(C)
        s1 = np.empty(C)
        s2 = np.empty(C)
        mean[:] = 0.0
        m2[:] = 0.0
        n = 0.0
        for r0 in range(o0, o1, rows):
            r1 = min(r0 + rows, o1)
            for c in range(C):
                shift[c] = finite_shift(load(flat[r0 * C + c]))
                s1[c] = 0.0
                s2[c] = 0.0
            cl_dot_sums(flat, shift, None, None, r0, r1, C, s1, s2)
            nb = float(r1 - r0)
            for c in range(C):
                mb, m2b = sums_to_moments(nb, shift[c], s1[c], s2[c])
                _, mean[c], m2[c] = chan_merge(n, mean[c], m2[c], nb, mb, m2b)
            n += nb
        return n
    # Channels-last, few channels: the block is one flat run; lane j accumulates channel j % C,
    # so the SIMD lanes are full even for C = 3, and lanes of one channel share its shift and
    # fold at the end.
    W = cl_lanes(C)
    k = W // C
    chunk = k * max(1, _SHIFT_CHUNK // W)
    shift = np.empty(W)
    s1 = np.empty(W)
    s2 = np.empty(W)
    mean[:] = 0.0
    m2[:] = 0.0
    n = 0.0
    for r0 in range(o0, o1, chunk):
        r1 = min(r0 + chunk, o1)
        for j in range(W):
            shift[j] = finite_shift(load(flat[r0 * C + j % C]))
            s1[j] = 0.0
            s2[j] = 0.0
        full = r0 + (r1 - r0) // k * k
        for r in range(r0, full, k):
            lane_sums(flat, r * C, W, shift, s1, s2)
        lane_sums(flat, full * C, (r1 - full) * C, shift, s1, s2)
        nb = float(r1 - r0)
        for c in range(C):
            t1, t2 = 0.0, 0.0
            for q in range(c, W, C):
                t1 += s1[q]
                t2 += s2[q]
            mb, m2b = sums_to_moments(nb, shift[c], t1, t2)
            _, mean[c], m2[c] = chan_merge(n, mean[c], m2[c], nb, mb, m2b)
        n += nb
    return n


@_serial
def cl_dot_sums(a, sha, b, shb, r0, r1, C, sa, sb):
    """``group_dot_sums`` over rows ``r0:r1`` of channels-last flat arrays (rows of ``C``) for
    every channel: 16 channels at a time (then 8, 4, 1), over row tiles that stay in L1."""
    row_bytes = C * a.itemsize
    tile = max(_CL_MIN_TILE_ROWS, _CL_TILE_BYTES // row_bytes)
    ahead = _CL_PREFETCH_ROWS * C if b is None or row_bytes >= _CL_PREFETCH_ROW_BYTES else 0
    for t0 in range(r0, r1, tile):
        n = min(tile, r1 - t0)
        base = t0 * C
        c = 0
        while c + 16 <= C:
            group_dot_sums(a, sha, b, shb, base + c, n, C, ahead, sa, sb, c, 16)
            c += 16
        if c + 8 <= C:
            group_dot_sums(a, sha, b, shb, base + c, n, C, ahead, sa, sb, c, 8)
            c += 8
        if c + 4 <= C:
            group_dot_sums(a, sha, b, shb, base + c, n, C, ahead, sa, sb, c, 4)
            c += 4
        while c < C:
            group_dot_sums(a, sha, b, shb, base + c, n, C, ahead, sa, sb, c, 1)
            c += 1


@_serial
def lane_sums(flat, base, width, shift, s1, s2):
    """s1[j] += d, s2[j] += d^2 with d = flat[base + j] - shift[j], for j < width."""
    b = np.uint64(base)
    for j in range(np.uint64(width)):
        d = np.float64(load(flat[b + j])) - shift[j]
        s1[j] += d
        s2[j] += d * d


@_serial
def plan_tasks(outer, C, inner, nthreads):
    """Split (outer, inner) into n_outer x n_inner blocks; 1 x 1 means run serially."""
    total = outer * C * inner
    tasks = min(nthreads * TASKS_PER_THREAD, total // MIN_TASK_ELEMENTS)
    if tasks <= 1 or nthreads <= 1:  # one thread: the serial kernels (a forked child needs them)
        return 1, 1
    if inner == 1 or outer >= tasks:
        return min(tasks, outer), 1
    # Few outer slices (e.g. N=1..8 NCHW): also cut the contiguous runs, so C < threads still
    # keeps every core busy; the pieces merge by Chan's formula.
    return outer, min(inner, (tasks + outer - 1) // outer)


#: plan_tasks as plain Python, for the dispatch in Python (see ``_plan``).
_plan_tasks_py = getattr(plan_tasks, "py_func", plan_tasks)


@_serial
def block_bounds(length, nblocks, b):
    return (length * b) // nblocks, (length * (b + 1)) // nblocks


@_serial
def merge_partials(part_n, part_mean, part_m2):
    """Chan-merge per-task partial moments (ntask, C) into (count, mean, M2)."""
    ntask, C = part_mean.shape
    mean = part_mean[0].copy()
    m2 = part_m2[0].copy()
    for c in range(C):
        n = part_n[0]
        for t in range(1, ntask):
            n, mean[c], m2[c] = chan_merge(n, mean[c], m2[c], part_n[t], part_mean[t, c], part_m2[t, c])
    count = 0.0
    for t in range(ntask):
        count += part_n[t]
    return count, mean, m2


def serial_moments(x3):
    """channel_moments on one thread (the fast path for small inputs), the kernel of x3's layout."""
    return (serial_rows_moments if x3.shape[2] != 1 else serial_cl_moments)(x3)


@_serial
def serial_rows_moments(x3):
    C = x3.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    count = rows_moments(x3, 0, x3.shape[0], 0, x3.shape[2], mean, m2)
    return count, mean, m2


@_serial
def serial_cl_moments(x3):
    C = x3.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    count = cl_moments(x3, 0, x3.shape[0], 0, 1, mean, m2)
    return count, mean, m2


def parallel_moments(x3, n_o, n_i):
    """channel_moments over the (n_o, n_i) split: the parfor of x3's layout (see rows_moments)."""
    if x3.shape[2] != 1:
        return parallel_rows_moments(x3, n_o, n_i)
    return parallel_cl_moments(x3, n_o, n_i)


@_parallel
def parallel_rows_moments(x3, n_o, n_i):
    outer, C, inner = x3.shape
    ntask = n_o * n_i
    part_n = np.empty(ntask)
    part_mean = np.empty((ntask, C))
    part_m2 = np.empty((ntask, C))
    for t in prange(ntask):
        o0, o1 = block_bounds(outer, n_o, t // n_i)
        i0, i1 = block_bounds(inner, n_i, t % n_i)
        part_n[t] = rows_moments(x3, o0, o1, i0, i1, part_mean[t], part_m2[t])
    return merge_partials(part_n, part_mean, part_m2)


@_parallel
def parallel_cl_moments(x3, n_o, n_i):
    outer, C, inner = x3.shape
    ntask = n_o * n_i
    part_n = np.empty(ntask)
    part_mean = np.empty((ntask, C))
    part_m2 = np.empty((ntask, C))
    for t in prange(ntask):
        o0, o1 = block_bounds(outer, n_o, t // n_i)
        part_n[t] = cl_moments(x3, o0, o1, 0, 1, part_mean[t], part_m2[t])
    return merge_partials(part_n, part_mean, part_m2)


def _plan(x3, nthreads):
    """``plan_tasks`` for the Python-level dispatch of the entry points below.

    The entry points choose their serial or parallel jitted kernel here, in Python, so that a
    call compiles only the path it takes (a small input never compiles a parfor; each jitted
    layer between the entry and the loops costs a re-optimization of everything under it when
    compiled cold). ``plan_tasks`` runs as plain Python: no compile, no cache load at start-up.
    """
    if x3.size < 2 * MIN_TASK_ELEMENTS:  # plan_tasks' answer for any thread count
        return 1, 1
    return _plan_tasks_py(x3.shape[0], x3.shape[1], x3.shape[2], nthreads)


def channel_moments(x3, nthreads):
    """Per-channel (count, mean, M2) over axes 0 and 2 of ``x3``; one pass, parallel.

    Small inputs (one task) run the serial kernel and never touch the thread pool.
    """
    n_o, n_i = _plan(x3, nthreads)
    if n_o * n_i == 1:
        return serial_moments(x3)
    return parallel_moments(x3, n_o, n_i)


# --------------------------------------------------------------------------------------------
# Normalize: y = (x - shift[c]) * scale[c] + offset[c], computed in float64
# --------------------------------------------------------------------------------------------
@_serial
def run_affine(src, dst, i0, i1, m, s, b):
    """``dst[i0:i1] = (src[i0:i1] - m) * s + b`` over a contiguous run (parameters in float64)."""
    mh, sc, of = fold_affine(m, s, b, src)
    affine_rows(src, dst, i0, 1, i1 - i0, mh, sc, of)


@_serial
def lane_affine(src, dst, base, width, shift, scale, offset):
    """``dst[base + j] = (src[base + j] - shift[j]) * scale[j] + offset[j]`` for j < width
    (parameters already folded, in the compute type)."""
    affine_rows(src, dst, base, 1, width, shift, scale, offset)


@_serial
def tile_lanes(shift, scale, offset, W, like):
    """Per-channel (shift, scale, offset) folded (``fold_affine``) and repeated to W lanes."""
    C = shift.shape[0]
    head = compute_empty(W, like)
    sc = compute_empty(W, like)
    of = compute_empty(W, like)
    for j in range(min(C, W)):  # fold each channel once (a tiny call spent ~1 us folding lanes)
        head[j], sc[j], of[j] = fold_affine(shift[j], scale[j], offset[j], like)
    for j in range(C, W):
        head[j] = head[j - C]
        sc[j] = sc[j - C]
        of[j] = of[j - C]
    return head, sc, of


@_serial
def block_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3):
    """``out3 = (x3 - shift[c]) * scale[c] + offset[c]`` over ``x3[o0:o1, :, i0:i1]``."""
    if x3.shape[2] != 1:
        rows_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3)
    else:
        cl_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3)


# The two layouts' bodies of ``block_affine``, inlined at numba-IR level like ``rows_moments`` /
# ``cl_moments``: the entries choose one in Python, so a cold NCHW call does not compile the
# channels-last lane kernels and a channels-last call not the row loops.
@_glue
def rows_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3):
    """``block_affine`` of a layout with contiguous runs (``inner > 1``)."""
    C = x3.shape[1]
    inner = x3.shape[2]
    src = x3.reshape(x3.size)
    dst = out3.reshape(out3.size)
    # Short runs stream badly: a line shared by two runs is written partly non-temporally.
    stream = dst.size * dst.itemsize >= _STREAM_BYTES and (i1 - i0) * dst.itemsize >= _STREAM_RUN_BYTES
    # Contiguous runs x3[o, c, i0:i1]: each channel folded once per block, not once per run
    # (8x8 planes spent about as long folding and setting up a loop as normalizing).
    head, sc, of = tile_lanes(shift, scale, offset, C, src)
    n = i1 - i0
    for o in range(o0, o1):
        for c in range(C):
            affine_rows(src, dst, (o * C + c) * inner + i0, 1, n, head[c], sc[c], of[c], stream)


@_glue
def cl_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3):
    """``block_affine`` of the channels-last layout (``inner == 1``)."""
    C = x3.shape[1]
    src = x3.reshape(x3.size)
    dst = out3.reshape(out3.size)
    # Channels-last: rows of W lanes (k rows of C each), parameters tiled to the lanes (see
    # block_moments), all full rows in one loop, then the rest of the block as one short row.
    # Normal stores: streaming made BN eval (32,56,56,64) 1.3-1.5x faster but BN training,
    # whose normalize follows the moments pass, 1.2-1.3x slower (one core, not understood yet).
    stream = False
    W = cl_lanes(C)
    k = W // C
    head, sc, of = tile_lanes(shift, scale, offset, W, src)
    nfull = (o1 - o0) // k
    affine_rows(src, dst, o0 * C, nfull, W, head, sc, of, stream)
    full = o0 + nfull * k
    affine_rows(src, dst, full * C, 1, (o1 - full) * C, head, sc, of, stream)


def parallel_affine(x3, shift, scale, offset, out3, n_o, n_i):
    """channel_affine over the (n_o, n_i) split: the parfor of x3's layout (see rows_affine)."""
    if x3.shape[2] != 1:
        parallel_rows_affine(x3, shift, scale, offset, out3, n_o, n_i)
    else:
        parallel_cl_affine(x3, shift, scale, offset, out3, n_o, n_i)


@_parallel
def parallel_rows_affine(x3, shift, scale, offset, out3, n_o, n_i):
    outer, C, inner = x3.shape
    ntask = n_o * n_i
    for t in prange(ntask):
        # Last task first: right after channel_moments, the end of x is what is still in cache.
        u = ntask - 1 - t
        o0, o1 = block_bounds(outer, n_o, u // n_i)
        i0, i1 = block_bounds(inner, n_i, u % n_i)
        rows_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3)


@_parallel
def parallel_cl_affine(x3, shift, scale, offset, out3, n_o, n_i):
    outer = x3.shape[0]
    for t in prange(n_o):  # channels-last plans never cut inner (n_i == 1)
        u = n_o - 1 - t  # last task first (see parallel_rows_affine)
        o0, o1 = block_bounds(outer, n_o, u)
        cl_affine(x3, o0, o1, 0, 1, shift, scale, offset, out3)


def channel_affine(x3, shift, scale, offset, out3, nthreads):
    """``out3 = (x3 - shift[c]) * scale[c] + offset[c]``; safe in place (``out3 is x3``).

    The per-channel ``x - mean`` is kept (instead of folding it into the offset) so that the
    result stays exact for constant input and accurate when |mean| >> std.
    """
    n_o, n_i = _plan(x3, nthreads)
    if n_o * n_i == 1:
        serial_affine(x3, shift, scale, offset, out3)
    else:
        parallel_affine(x3, shift, scale, offset, out3, n_o, n_i)


def serial_affine(x3, shift, scale, offset, out3):
    """channel_affine on one thread (the fast path for small inputs), the kernel of x3's layout."""
    if x3.size:
        (serial_rows_affine if x3.shape[2] != 1 else serial_cl_affine)(x3, shift, scale, offset, out3)


@_serial
def serial_rows_affine(x3, shift, scale, offset, out3):
    rows_affine(x3, 0, x3.shape[0], 0, x3.shape[2], shift, scale, offset, out3)


@_serial
def serial_cl_affine(x3, shift, scale, offset, out3):
    cl_affine(x3, 0, x3.shape[0], 0, 1, shift, scale, offset, out3)


@_serial
def channel_scale_offset(mean, var, weight, bias, eps):
    """Per-channel (invstd, scale, offset) in float64 from statistics and the optional affine."""
    C = mean.shape[0]
    invstd = np.empty(C)
    scale = np.empty(C)
    offset = np.zeros(C)
    # A zero-length weight/bias means "none" too (see ``_absent``), a run-time test per channel.
    has_weight = weight is not None and weight.size > 0
    has_bias = bias is not None and bias.size > 0
    for c in range(C):
        invstd[c] = 1.0 / math.sqrt(var[c] + eps)
        scale[c] = invstd[c]
        if has_weight:
            scale[c] *= weight[c]
        if has_bias:
            offset[c] = bias[c]
    return invstd, scale, offset


# --------------------------------------------------------------------------------------------
# BatchNorm entry points: one jitted dispatch per call, serial or parallel kernel chosen in Python
# --------------------------------------------------------------------------------------------
def batch_norm_train_forward(x3, weight, bias, running_mean, running_var, momentum, eps, out3, nthreads,
                             stats_out):
    """BatchNorm training forward in one dispatch; ``stats_out`` (2, C) receives (mean, invstd)
    unless it is empty (``no_stats``): returning the arrays from the jitted entry cost ~1.2 us of
    boxing per tiny call, paid even when the caller dropped them.

    Also updates the running stats in place (when given) with torch's rule in float64:
    ``r = (1 - momentum) * r + momentum * batch``, unbiased variance. Needs ``x3.size > 0``.
    """
    weight, bias = _absent(weight, x3), _absent(bias, x3)
    if running_mean is None:
        running_mean = running_var = _none_of(x3.dtype)
    n_o, n_i = _plan(x3, nthreads)
    if n_o * n_i == 1:
        train_serial_entry(x3)(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out)
        return
    mean, invstd = batch_norm_train_parallel(x3, weight, bias, running_mean, running_var, momentum, eps, out3,
                                             n_o, n_i)
    if stats_out.size:
        stats_out[0], stats_out[1] = mean, invstd


def compiled_entry(dispatcher, argtypes):
    """``dispatcher``'s compiled entry point for exactly the numba types ``argtypes``, or None
    until that specialization is compiled or loaded from the on-disk cache (either registers it
    in ``overloads``). Calling it skips numba's typing of every argument (~0.25 us of a ~6 us
    tiny call), so the caller must pass arguments of exactly those types (a read-only array for
    a mutable one it only reads is fine: unboxing takes the same data pointer and strides)."""
    overloads = getattr(dispatcher, "overloads", None)  # None under NUMBA_DISABLE_JIT
    cres = overloads.get(tuple(argtypes)) if overloads is not None else None
    return None if cres is None else cres.entry_point


#: Zero-length arrays that stand for an absent weight, bias or running stats in the BN entry
#: points: None is a compile-time type in numba, so each None/array combination compiled (and
#: cached) its own copy of the whole entry (6 copies of BN training per dtype in the tests).
_NONE: dict = {}


def _none_of(dtype):
    a = _NONE.get(dtype)
    if a is None:
        a = _NONE[dtype] = np.empty(0, dtype)
    return a


def no_stats(dtype):
    """The empty ``stats_out`` of the BN entries (statistics not wanted), of a ``stats_dtype``."""
    a = _NO_STATS.get(dtype)
    if a is None:
        a = _NO_STATS[dtype] = np.empty((0, 0), dtype)
    return a


_NO_STATS: dict = {}


def _absent(p, x3):
    """``p``, or the zero-length stand-in of the dtype ``check_param`` gives a parameter for x3:
    x's float dtype, float64 for the 16-bit views of half arrays."""
    if p is not None:
        return p
    return _none_of(x3.dtype if x3.dtype.kind == "f" else _F64)


@_serial
def update_running_stats(running_mean, running_var, count, mean, m2, momentum):
    """torch's running-stats rule in float64, in place; a no-op when they are None or empty."""
    if running_mean is not None and running_var is not None and running_mean.size > 0:
        keep = 1.0 - momentum
        for c in range(mean.shape[0]):
            running_mean[c] = store(keep * np.float64(load(running_mean[c])) + momentum * mean[c], running_mean)
            running_var[c] = store(keep * np.float64(load(running_var[c])) + momentum * (m2[c] / (count - 1.0)),
                                   running_var)


@_glue
def write_stats(stats_out, mean, invstd):
    """(mean, invstd) into the caller's (2, C) ``stats_out``, unless it is empty."""
    if stats_out.size:
        for c in range(mean.shape[0]):
            stats_out[0, c] = mean[c]
            stats_out[1, c] = invstd[c]


def batch_norm_train_serial(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out):
    """BN training on one thread: the jitted entry of x3's layout (``train_serial_entry``)."""
    train_serial_entry(x3)(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out)


def train_serial_entry(x3):
    """The serial BN training entry for x3's layout: one per layout, so that a cold call compiles
    only its layout's moments and normalize loops (the channels-last register kernels cost ~40%
    of a cold NCHW call when both were compiled)."""
    return batch_norm_train_rows if x3.shape[2] != 1 else batch_norm_train_cl


@_serial
def batch_norm_train_rows(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out):
    C = x3.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    count = rows_moments(x3, 0, x3.shape[0], 0, x3.shape[2], mean, m2)
    invstd, scale, offset = channel_scale_offset(mean, m2 / count, weight, bias, eps)
    rows_affine(x3, 0, x3.shape[0], 0, x3.shape[2], mean, scale, offset, out3)
    update_running_stats(running_mean, running_var, count, mean, m2, momentum)
    write_stats(stats_out, mean, invstd)


@_serial
def batch_norm_train_cl(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out):
    C = x3.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    count = cl_moments(x3, 0, x3.shape[0], 0, 1, mean, m2)
    invstd, scale, offset = channel_scale_offset(mean, m2 / count, weight, bias, eps)
    cl_affine(x3, 0, x3.shape[0], 0, 1, mean, scale, offset, out3)
    update_running_stats(running_mean, running_var, count, mean, m2, momentum)
    write_stats(stats_out, mean, invstd)


def batch_norm_train_parallel(x3, weight, bias, running_mean, running_var, momentum, eps, out3, n_o, n_i):
    """The serial entry's steps with the two parfors, driven from Python: a jitted entry over the
    parfors compiled, optimized and emitted all of their code once more (5 s of a 16-19 s cold
    first call)."""
    rows = x3.shape[2] != 1  # the parfors of x3's layout (parallel_moments, parallel_affine), chosen once
    count, mean, m2 = (parallel_rows_moments if rows else parallel_cl_moments)(x3, n_o, n_i)
    invstd, scale, offset = train_scale_offset(count, mean, m2, weight, bias, running_mean, running_var, momentum,
                                               eps)
    (parallel_rows_affine if rows else parallel_cl_affine)(x3, mean, scale, offset, out3, n_o, n_i)
    return mean, invstd


@_serial
def train_scale_offset(count, mean, m2, weight, bias, running_mean, running_var, momentum, eps):
    """BN training's steps between the two parfors in one dispatch (each call from Python costs
    1-2 us): (invstd, scale, offset), and the running stats updated."""
    invstd, scale, offset = channel_scale_offset(mean, m2 / count, weight, bias, eps)
    update_running_stats(running_mean, running_var, count, mean, m2, momentum)
    return invstd, scale, offset


def batch_norm_eval_forward(x3, running_mean, running_var, weight, bias, eps, out3, nthreads, stats_out):
    """BatchNorm inference forward in one dispatch; (mean, invstd) into ``stats_out`` unless it
    is empty (as ``batch_norm_train_forward``)."""
    weight, bias = _absent(weight, x3), _absent(bias, x3)
    n_o, n_i = _plan(x3, nthreads)
    if n_o * n_i == 1:
        eval_serial_entry(x3)(x3, running_mean, running_var, weight, bias, eps, out3, stats_out)
        return
    mean, invstd = batch_norm_eval_parallel(x3, running_mean, running_var, weight, bias, eps, out3, n_o, n_i)
    if stats_out.size:
        stats_out[0], stats_out[1] = mean, invstd


@_glue
def eval_scale_offset(running_mean, running_var, weight, bias, eps):
    """(mean, invstd, scale, offset) in float64 from the running stats and the optional affine."""
    C = running_mean.shape[0]
    mean = np.empty(C)
    var = np.empty(C)
    for c in range(C):
        mean[c] = load(running_mean[c])
        var[c] = load(running_var[c])
    invstd, scale, offset = channel_scale_offset(mean, var, weight, bias, eps)
    return mean, invstd, scale, offset


def batch_norm_eval_serial(x3, running_mean, running_var, weight, bias, eps, out3, stats_out):
    """BN inference on one thread: the jitted entry of x3's layout (``eval_serial_entry``)."""
    eval_serial_entry(x3)(x3, running_mean, running_var, weight, bias, eps, out3, stats_out)


def eval_serial_entry(x3):
    """The serial BN inference entry for x3's layout (see ``train_serial_entry``)."""
    return batch_norm_eval_rows if x3.shape[2] != 1 else batch_norm_eval_cl


@_serial
def batch_norm_eval_rows(x3, running_mean, running_var, weight, bias, eps, out3, stats_out):
    mean, invstd, scale, offset = eval_scale_offset(running_mean, running_var, weight, bias, eps)
    if x3.size:
        rows_affine(x3, 0, x3.shape[0], 0, x3.shape[2], mean, scale, offset, out3)
    write_stats(stats_out, mean, invstd)


@_serial
def batch_norm_eval_cl(x3, running_mean, running_var, weight, bias, eps, out3, stats_out):
    mean, invstd, scale, offset = eval_scale_offset(running_mean, running_var, weight, bias, eps)
    if x3.size:
        cl_affine(x3, 0, x3.shape[0], 0, 1, mean, scale, offset, out3)
    write_stats(stats_out, mean, invstd)


def batch_norm_eval_parallel(x3, running_mean, running_var, weight, bias, eps, out3, n_o, n_i):
    """BN inference with the normalize parfor, driven from Python (see the training entry)."""
    mean, invstd, scale, offset = eval_scale_offset(running_mean, running_var, weight, bias, eps)
    (parallel_rows_affine if x3.shape[2] != 1 else parallel_cl_affine)(x3, mean, scale, offset, out3, n_o, n_i)
    return mean, invstd


# --------------------------------------------------------------------------------------------
# LayerNorm: one row at a time, statistics then normalize while the row is still in cache
# --------------------------------------------------------------------------------------------
@_serial
def normalize_row_and_sum_next(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream=False):
    """``dst = normalized row`` and, in the same loop, the shifted sums of the next row ``nxt``.

    One loop keeps a DRAM read stream (the next row) and a write stream (this row's output) busy
    at the same time; separate passes alternate between them and leave bandwidth unused.
    ``dst`` is a ``row_target``: the caller flushes it (bfloat16) afterwards. ``stream``: write
    ``dst`` with non-temporal stores (``_simd.normalize_row_sums``; float32/float64 rows) and
    run ``store_fence`` once the rows are done.
    """
    if stream:
        return normalize_row_sums(row, dst, nxt, shift, mh, rs, tail, weight, bias, True)
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


@_serial
def normalize_row(row, dst, mh, rs, tail, weight, bias):
    """``dst[j] = ((row[j] - mh) * rs + tail) * weight[j] + bias[j]`` (weight/bias optional);
    ``dst`` is a ``row_target``."""
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


@_serial
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
_LN_PIPELINE_ELEMENTS = 1 << 19

#: Pipelined LayerNorm writes float32/float64 outputs of at least this many bytes with
#: non-temporal stores (``_simd.normalize_row_sums``): the output lines are not read for
#: ownership first, so a row costs a read and a write stream instead of read, read, write.
#: Measured (float32, ``out=`` reused, one core, ms, normal -> streaming stores; copy):
#: (16384, 4096) 268 MB 44-49 -> 25-28 (20-22); (8192, 4096) 19 -> 12-13 (16);
#: (16384, 1024) 67 MB 11-12 -> 9.4-10.5 (9.4-9.7); but (32768, 768) 100 MB 14.5-15 -> 14-16.5,
#: (16384, 768) 50 MB 5.6-5.8 -> 6.1-7.0 and (12544, 384) 19 MB 2.2 -> 4.0-4.9: below ~64 MB part
#: of x and out stay in the 32 MB L3 between calls, and streaming sends all of out to DRAM.
_LN_STREAM_BYTES = 64 << 20


@_serial
def layer_norm_rows_into(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch,
                         stream_bytes=_LN_STREAM_BYTES):
    """``layer_norm_rows`` with the caller's ``row_scratch(out2, D)`` (for callers that run it
    on one row at a time). Outputs of at least ``stream_bytes`` stream (tests pass 0)."""
    # Streaming implies the pipelined loop (the threshold is far above the pipeline's).
    stream = ln_streams(out2, stream_bytes)
    if x2.size < _LN_PIPELINE_ELEMENTS and not stream:
        layer_norm_rows_cached(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch)
    else:
        layer_norm_rows_pipelined(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch, stream)


@_serial
def ln_streams(out2, stream_bytes):
    """Whether LayerNorm writes ``out2`` with non-temporal stores."""
    return row_stream_ok(out2) and out2.size * out2.itemsize >= stream_bytes


@_serial
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


@_serial
def layer_norm_rows(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out):
    """Rows ``r0:r1`` of a large input (the pipelined size class), software-pipelined: row r is
    normalized while row r + 1 is summed (48 -> 36 ms for 256 MB on one core, np.copyto 21 ms)."""
    scratch = row_scratch(out2, x2.shape[1])
    layer_norm_rows_pipelined(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, scratch,
                              ln_streams(out2, _LN_STREAM_BYTES))


# The LayerNorm entries come in two variants, chosen in Python from the size (the test that
# ``layer_norm_rows_into`` makes): a call below ``_LN_PIPELINE_ELEMENTS`` compiles only
# ``layer_norm_rows_cached`` (and not the pipelined loop, ``normalize_row_and_sum_next`` and two
# more jitted layers: about half of a cold small LayerNorm call), and that one inlined at
# numba-IR level (``rows_cached``: the same Python function, so it stays ``layer_norm_rows_cached``
# whatever that becomes), since each jitted layer re-optimizes all the code under it again.
rows_cached = _glue(getattr(layer_norm_rows_cached, "py_func", layer_norm_rows_cached))


def parallel_layer_norm(x2, weight, bias, eps, out2, mean_out, rstd_out, nblocks):
    """LayerNorm over ``nblocks`` row blocks in parallel: the parfor of x2's size class."""
    kernel = parallel_layer_norm_cached if x2.size < _LN_PIPELINE_ELEMENTS else parallel_layer_norm_pipelined
    kernel(x2, weight, bias, eps, out2, mean_out, rstd_out, nblocks)


@_parallel
def parallel_layer_norm_cached(x2, weight, bias, eps, out2, mean_out, rstd_out, nblocks):
    R = x2.shape[0]
    for b in prange(nblocks):
        # int64: the gufunc's loop index is uint64, which compiled a second block_bounds.
        r0, r1 = block_bounds(R, nblocks, np.int64(b))
        rows_cached(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out, row_scratch(out2, x2.shape[1]))


@_parallel
def parallel_layer_norm_pipelined(x2, weight, bias, eps, out2, mean_out, rstd_out, nblocks):
    R = x2.shape[0]
    for b in prange(nblocks):
        # int64: the gufunc's loop index is uint64, which compiled a second block_bounds.
        r0, r1 = block_bounds(R, nblocks, np.int64(b))
        layer_norm_rows(x2, r0, r1, weight, bias, eps, out2, mean_out, rstd_out)


def layer_norm_forward(x2, weight, bias, eps, out2, mean_out, rstd_out, nthreads):
    """LayerNorm over the rows of ``x2`` (R, D); stats go to ``mean_out``/``rstd_out`` (R,)."""
    cached = x2.size < _LN_PIPELINE_ELEMENTS  # the entries of x2's size class (layer_norm_serial, ...)
    if x2.size < 2 * MIN_TASK_ELEMENTS:  # one task (see _plan)
        (layer_norm_serial_cached if cached else layer_norm_serial_pipelined)(x2, weight, bias, eps, out2,
                                                                              mean_out, rstd_out)
        return
    nblocks = _plan_tasks_py(x2.shape[0], 1, x2.shape[1], nthreads)[0]
    if nblocks == 1:
        (layer_norm_serial_cached if cached else layer_norm_serial_pipelined)(x2, weight, bias, eps, out2,
                                                                              mean_out, rstd_out)
    else:
        (parallel_layer_norm_cached if cached else parallel_layer_norm_pipelined)(x2, weight, bias, eps, out2,
                                                                                  mean_out, rstd_out, nblocks)


def layer_norm_serial(x2, weight, bias, eps, out2, mean_out, rstd_out):
    """layer_norm_forward on one thread: the jitted entry of x2's size class."""
    kernel = layer_norm_serial_cached if x2.size < _LN_PIPELINE_ELEMENTS else layer_norm_serial_pipelined
    kernel(x2, weight, bias, eps, out2, mean_out, rstd_out)


# Jitted entries with 7 arguments, because every argument of a call from Python costs (two more
# for ``layer_norm_rows`` measured +0.5 us per tiny call).
@_serial
def layer_norm_serial_cached(x2, weight, bias, eps, out2, mean_out, rstd_out):
    rows_cached(x2, 0, x2.shape[0], weight, bias, eps, out2, mean_out, rstd_out, row_scratch(out2, x2.shape[1]))


@_serial
def layer_norm_serial_pipelined(x2, weight, bias, eps, out2, mean_out, rstd_out):
    layer_norm_rows(x2, 0, x2.shape[0], weight, bias, eps, out2, mean_out, rstd_out)
