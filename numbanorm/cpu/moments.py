"""The moments engine on the CPU: per-channel (count, mean, M2) of the canonical view, one pass.

Every op works on a canonical C-contiguous view ``x3`` of shape ``(outer, C, inner)`` (see
``numbanorm/_layout.py``). Two access patterns cover all layouts:

* ``inner > 1``: each ``x3[o, c, :]`` is a contiguous run (NCHW rows, LN rows);
* ``inner == 1``: channels-last, so the vector lanes run across the ``C`` channels.

Statistics are shifted sums (shift = the block's first value, accumulated in float64) per block,
and blocks merged with Chan's formula (``chan_merge``; ``merge_parts`` for a run of partial
results, the one routine every op's partial results go through). This stays accurate when
|mean| >> std, unlike E[x^2] - E[x]^2, and vectorizes because the sums only need ``reassoc``.

Every element read goes through ``load`` (``halfio.py``): identity for float32/float64, the
float16/bfloat16 bit conversions for the 16-bit views half arrays reach the kernels as.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from .halfio import load
from .jit import glue, parallel, serial
from .plan import block_bounds, plan
from .simd import group_dot_sums, simd_ok, wide_groups

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


@serial
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


@serial
def finite_shift(v):
    """The shift of a block's shifted sums: its first value ``v``, or 0 when that is inf or nan
    (an infinite shift makes every ``x - shift`` nan, where the values sum to ±inf)."""
    v = np.float64(v)
    return v if math.isfinite(v) else 0.0


def count_at(count, k):
    """Entry ``k`` of per-part counts, or ``count`` itself when all parts have one count
    (jit-only helper, resolved at compile time from the type)."""
    return count if np.ndim(count) == 0 else count[k]  # (the pure-Python meaning, DISABLE_JIT)


@overload(count_at)
def _count_at(count, k):
    if isinstance(count, (types.Float, types.Integer)):
        return lambda count, k: np.float64(count)
    return lambda count, k: count[k]


@serial
def merge_parts(count, mean, m2, k0, k1, step):
    """(count, mean, M2) of the partial results ``k0, k0 + step, ... < k1`` of the flat arrays
    ``mean``/``m2`` (``count``: an array like them, or one count for all), merged in order by
    Chan's formula: the one loop that every op's partial moments go through (tasks of a parallel
    pass, pieces of a sample, channels of a group)."""
    n, m, s = 0.0, 0.0, 0.0
    for k in range(k0, k1, step):
        n, m, s = chan_merge(n, m, s, count_at(count, k), mean[k], m2[k])
    return n, m, s


@serial
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


@serial
def sums_to_moments(n, shift, s1, s2):
    """(mean, M2) from shifted sums of ``n`` values."""
    return shift + s1 / n, max(s2 - s1 * s1 / n, 0.0)


@serial
def chunk_sums(C, mean, m2):
    """Per-channel (shift, s1, s2) buffers of a moments pass; its running moments ``mean``/``m2``
    start at 0 (count 0)."""
    mean[:] = 0.0
    m2[:] = 0.0
    return np.empty(C), np.empty(C), np.empty(C)


@serial
def start_chunk(flat, base, stride, shift, s1, s2):
    """A chunk's shifts (channel c's first value, ``flat[base + c * stride]``) and zeroed sums."""
    for c in range(shift.shape[0]):
        shift[c] = finite_shift(load(flat[base + c * stride]))
        s1[c] = 0.0
        s2[c] = 0.0


@serial
def merge_chunk_sums(n, nb, shift, s1, s2, mean, m2):
    """Fold a chunk's per-channel shifted sums (``nb`` values per channel, the first C entries of
    ``shift``/``s1``/``s2``) into the running per-channel moments of ``n`` values, by Chan's formula."""
    for c in range(mean.shape[0]):
        mb, m2b = sums_to_moments(nb, shift[c], s1[c], s2[c])
        _, mean[c], m2[c] = chan_merge(n, mean[c], m2[c], nb, mb, m2b)


@serial
def cl_lanes(C, multiple=8):
    """Lanes of the channels-last layout: a multiple of C (lane j is channel j % C) and of
    ``multiple`` (the vector width: 8, or ``affine_lanes``' 16 for half data on AVX-512)."""
    if C >= _MIN_LANES or C < 1:
        return max(C, 1)
    w = C
    while w % multiple != 0:
        w += C
    step = w
    while w < _MIN_LANES:
        w += step
    return w


@serial
def block_moments(x3, o0, o1, i0, i1, mean, m2):
    """Per-channel moments of ``x3[o0:o1, :, i0:i1]`` into ``mean``/``m2``; returns the count."""
    if x3.shape[2] != 1:
        return rows_moments(x3, o0, o1, i0, i1, mean, m2)
    return cl_moments(x3, o0, o1, i0, i1, mean, m2)


# The two layouts' bodies of ``block_moments``, inlined at numba-IR level: the parallel entries
# choose one in Python, so a cold NCHW call does not compile the channels-last register kernels
# (``cl_dot_sums``) and a channels-last call not the row loops.
@glue
def rows_moments(x3, o0, o1, i0, i1, mean, m2):
    """``block_moments`` of a layout with contiguous runs (``inner > 1``)."""
    C = x3.shape[1]
    width = i1 - i0
    # The runs x3[o, c, i0:i1] are contiguous; walk them in memory order (o outer) with
    # per-channel sums, one shift per channel for a chunk of rows, chunks merged by Chan.
    rows = max(1, _SHIFT_CHUNK // max(width, 1))
    inner = x3.shape[2]
    flat = x3.reshape(x3.size)
    shift, s1, s2 = chunk_sums(C, mean, m2)
    n = 0.0
    for r0 in range(o0, o1, rows):
        r1 = min(r0 + rows, o1)
        start_chunk(flat, r0 * C * inner + i0, inner, shift, s1, s2)
        for o in range(r0, r1):
            for c in range(C):
                a, b = run_sums(x3[o, c], i0, i1, shift[c])
                s1[c] += a
                s2[c] += b
        nb = float((r1 - r0) * width)
        merge_chunk_sums(n, nb, shift, s1, s2, mean, m2)
        n += nb
    return n


@glue
def cl_moments(x3, o0, o1, i0, i1, mean, m2):
    """``block_moments`` of the channels-last layout (``inner == 1``)."""
    C = x3.shape[1]
    flat = x3.reshape(x3.size)
    if C >= _CL_GROUP_MIN_C and simd_ok(flat):
        # Channels-last, many channels: per-channel shifted sums in register-resident groups,
        # one shift per channel for a chunk of rows, chunks merged by Chan's formula.
        rows = max(1, _SHIFT_CHUNK // C)
        shift, s1, s2 = chunk_sums(C, mean, m2)
        n = 0.0
        for r0 in range(o0, o1, rows):
            r1 = min(r0 + rows, o1)
            start_chunk(flat, r0 * C, 1, shift, s1, s2)
            cl_dot_sums(flat, shift, None, None, r0, r1, C, s1, s2)
            nb = float(r1 - r0)
            merge_chunk_sums(n, nb, shift, s1, s2, mean, m2)
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


@serial
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
        if wide_groups(a):  # half rows on AVX-512: 32 channels, one cache line per row
            while c + 32 <= C:
                group_dot_sums(a, sha, b, shb, base + c, n, C, ahead, sa, sb, c, 32)
                c += 32
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


@serial
def lane_sums(flat, base, width, shift, s1, s2):
    """s1[j] += d, s2[j] += d^2 with d = flat[base + j] - shift[j], for j < width."""
    b = np.uint64(base)
    for j in range(np.uint64(width)):
        d = np.float64(load(flat[b + j])) - shift[j]
        s1[j] += d
        s2[j] += d * d


@serial
def merge_partials(part_n, part_mean, part_m2):
    """Chan-merge per-task partial moments (ntask, C), counts included, into (count, mean, M2)."""
    ntask, C = part_mean.shape
    counts, means, m2s = part_n.reshape(part_n.size), part_mean.reshape(part_mean.size), part_m2.reshape(part_m2.size)
    mean = np.empty(C)
    m2 = np.empty(C)
    count = 0.0
    for c in range(C):
        count, mean[c], m2[c] = merge_parts(counts, means, m2s, c, ntask * C, C)
    return count, mean, m2


@serial
def serial_rows_moments(x3):
    C = x3.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    count = rows_moments(x3, 0, x3.shape[0], 0, x3.shape[2], mean, m2)
    return count, mean, m2


@serial
def serial_cl_moments(x3):
    C = x3.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    count = cl_moments(x3, 0, x3.shape[0], 0, 1, mean, m2)
    return count, mean, m2


@parallel
def parallel_rows_moments(x3, n_o, n_i):
    outer, C, inner = x3.shape
    ntask = n_o * n_i
    part_n = np.empty((ntask, C))
    part_mean = np.empty((ntask, C))
    part_m2 = np.empty((ntask, C))
    for t in prange(ntask):
        o0, o1 = block_bounds(outer, n_o, t // n_i)
        i0, i1 = block_bounds(inner, n_i, t % n_i)
        part_n[t, :] = rows_moments(x3, o0, o1, i0, i1, part_mean[t], part_m2[t])
    return merge_partials(part_n, part_mean, part_m2)


@parallel
def parallel_cl_moments(x3, n_o, n_i):
    outer, C, inner = x3.shape
    ntask = n_o * n_i
    part_n = np.empty((ntask, C))
    part_mean = np.empty((ntask, C))
    part_m2 = np.empty((ntask, C))
    for t in prange(ntask):
        o0, o1 = block_bounds(outer, n_o, t // n_i)
        part_n[t, :] = cl_moments(x3, o0, o1, 0, 1, part_mean[t], part_m2[t])
    return merge_partials(part_n, part_mean, part_m2)


def channel_moments(x3, nthreads):
    """Per-channel (count, mean, M2) over axes 0 and 2 of ``x3``; one pass, parallel. The kernel
    of x3's layout and plan is chosen here, in Python, so a call compiles only the path it takes
    (the parfors ``parallel_rows_moments``/``parallel_cl_moments`` are kept apart for the same
    reason: each compiles only its layout)."""
    rows = x3.shape[2] != 1
    n_o, n_i = plan(x3.shape[0], x3.shape[1], x3.shape[2], nthreads)
    if n_o * n_i == 1:
        return (serial_rows_moments if rows else serial_cl_moments)(x3)
    return (parallel_rows_moments if rows else parallel_cl_moments)(x3, n_o, n_i)


@serial
def merge_groups(mean, m2, count, groups):
    """Merge per-(n, c) moments of ``count`` values each into per-(n, g) moments of consecutive
    channel groups, by Chan's formula (exact for any split)."""
    N, C = mean.shape
    cpg = C // groups
    gmean = np.empty((N, groups))
    gm2 = np.empty((N, groups))
    for n in range(N):
        for g in range(groups):
            _, gmean[n, g], gm2[n, g] = merge_parts(count, mean[n], m2[n], g * cpg, (g + 1) * cpg, 1)
    return gmean, gm2


@serial
def sum_pieces(part, per):
    """Column sums of each ``per`` consecutive rows of the partial buffer ``part`` (pieces, n),
    in row order (deterministic): what ``merge_parts`` is for moments, for plain sums (the
    backward's Σdy and Σdy·(x - mean)). Returns (pieces // per, n)."""
    N = part.shape[0] // per
    width = part.shape[1]
    total = np.zeros((N, width))
    for n in range(N):
        for k in range(n * per, (n + 1) * per):
            for j in range(width):  # (a loop: ``total[n] += part[k]`` compiled numba's broadcast
                total[n, j] += part[k, j]  # checks and their message strings, ~3 s cold)
    return total
