"""The moments engine of the CUDA backend: block reductions, the one partial-merge (Chan)
routine, and the partial-moment kernels that BatchNorm, GroupNorm and InstanceNorm share (the
GPU's peer of ``cpu/moments.py``).

Statistics are one pass: shifted sums (shift = a sample of the row / channel, so the sums of
``d = x - shift`` stay O(std) and do not cancel) per thread, summed over the block, and the
per-block (count, mean, M2) merged with Chan's formula in float64 by ``merge_partials``, the one
merge loop every finalize kernel calls.

Reductions come in two flavours selected at import: warp shuffles on hardware, shared memory
under the simulator (NUMBA_ENABLE_CUDASIM=1), which has no ``shfl_*_sync``. The simulator keys
``cuda.shared.array`` by source line, so every shared array is declared on its own line in the
kernel and handed to the reduction helpers.

Every array argument is flat (1-D, in memory order) and the canonical ``(outer, C, inner)``
geometry is passed as integers, so one compiled kernel serves every layout and rank.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import arrays, plan
from .compat import SIM, cuda, jit_device
from .launch import launch
from .loads import loader, np_float, numba_float

#: Shared slots per reduction: one per thread for the simulator's shared-memory tree, one per
#: warp (+1 for the broadcast) for the shuffle path. A closure constant in each factory, since
#: ``cuda.shared.array`` needs a compile-time size.
SHARED_SLOTS = 1024 + 1 if SIM else 32 + 1


# --------------------------------------------------------------------------------------------
# Block reductions of a pair (s1, s2); the result reaches every thread
# --------------------------------------------------------------------------------------------
@jit_device
def reduce2_columns(a, b, sh_a, sh_b, tx, ty, TX, TY):
    """Sum over ``ty`` for each column ``tx`` of a (TX, TY) block; ``TY`` a power of two."""
    k = ty * TX + tx
    sh_a[k] = a
    sh_b[k] = b
    cuda.syncthreads()
    step = TY // 2
    while step > 0:
        if ty < step:
            sh_a[k] += sh_a[k + step * TX]
            sh_b[k] += sh_b[k + step * TX]
        cuda.syncthreads()
        step //= 2
    return sh_a[tx], sh_b[tx]


@jit_device
def _reduce2_shared(a, b, sh_a, sh_b, tid, nthreads):
    """Tree reduction through shared memory (a single column); ``nthreads`` is a power of two."""
    return reduce2_columns(a, b, sh_a, sh_b, 0, tid, 1, nthreads)


if SIM:
    reduce2 = _reduce2_shared
else:  # pragma: no cover - hardware only

    @jit_device
    def _warp_sum2(a, b):
        off = 16
        while off > 0:
            a += cuda.shfl_down_sync(0xFFFFFFFF, a, off)
            b += cuda.shfl_down_sync(0xFFFFFFFF, b, off)
            off //= 2
        return a, b

    @jit_device
    def reduce2(a, b, sh_a, sh_b, tid, nthreads):
        """Warp shuffles, then one shared slot per warp; ``nthreads`` a multiple of 32."""
        a, b = _warp_sum2(a, b)
        lane = tid & 31
        warp = tid >> 5
        if lane == 0:
            sh_a[warp] = a
            sh_b[warp] = b
        cuda.syncthreads()
        if warp == 0:
            nwarps = nthreads >> 5
            a = sh_a[lane] if lane < nwarps else a * 0
            b = sh_b[lane] if lane < nwarps else b * 0
            a, b = _warp_sum2(a, b)
            if lane == 0:
                sh_a[32] = a
                sh_b[32] = b
        cuda.syncthreads()
        return sh_a[32], sh_b[32]


# --------------------------------------------------------------------------------------------
# Per-channel work split (BatchNorm / GroupNorm partial kernels, forward and backward) and the
# float64 merges of one thread per channel
# --------------------------------------------------------------------------------------------
@jit_device
def channel_span(n, C, P):
    """This block's share of its channel, grid (channels, P, N): x (``n`` elements) holds
    ``N = gridDim.z`` samples of ``M`` values per channel. Returns the sample's first element
    and the values ``[M*p//P, M*(p+1)//P)`` of block ``p = blockIdx.y``."""
    M = n // (C * cuda.gridDim.z)
    p = cuda.blockIdx.y
    return cuda.blockIdx.z * M * C, (M * p) // P, (M * (p + 1)) // P


@jit_device
def partial_slot(c, C, P):
    """Where this block's partial for channel ``c`` goes: ``(n*C + c)*P + p``."""
    return (cuda.blockIdx.z * C + c) * P + cuda.blockIdx.y


@jit_device
def group_channels(t, C, G):
    """Sample ``n`` and channels ``[c0, c1)`` of the (n, g) slot ``t = n*G + g`` (GroupNorm's
    finalize kernels, forward and backward: one thread per group)."""
    n = t // G
    cpg = C // G
    c0 = (t - n * G) * cpg
    return n, c0, c0 + cpg


@jit_device
def run_start(j, inner):
    """Value ``j`` of a channel of (outer, C, inner) as (run o, offset i): one division per thread."""
    o = j // inner
    return o, j - o * inner


@jit_device
def run_step(o, i, T, inner):
    """(o, i) advanced by ``T`` values with additions only (``T`` may exceed ``inner``)."""
    i += T
    while i >= inner:
        i -= inner
        o += 1
    return o, i


@jit_device
def chan_add(n, m, m2, nb, mb, m2b):
    """Chan's merge of the moments (nb, mb, m2b) into (n, m, m2), in float64; empty parts skipped."""
    if nb > 0.0:
        nn = n + nb
        if math.isfinite(m) and math.isfinite(mb):
            delta = mb - m
            fb = nb / nn
            m2 = m2 + m2b + delta * delta * n * fb
            m = m + delta * fb
        else:  # a part holds ±inf or nan: ±inf or nan as the values' sum, M2 nan (the CPU's chan_merge)
            m = m + mb
            m2 = math.nan
        n = nn
    return n, m, m2


@jit_device
def finite_shift(v, zero):
    """A block's shift ``v``, or ``zero`` (0 in the accumulator type) when ``v`` is inf or nan (as
    the CPU's ``finite_shift``)."""
    return v if math.isfinite(v) else zero


@jit_device
def merge_partials(part_n, part_mean, part_m2, k, P):
    """(count, mean, M2) of the partials ``[k*P, (k+1)*P)``, merged in order."""
    n = 0.0
    m = 0.0
    m2 = 0.0
    for p in range(P):
        n, m, m2 = chan_add(n, m, m2, part_n[k * P + p], part_mean[k * P + p], part_m2[k * P + p])
    return n, m, m2


@jit_device
def sum2(a, b, start, step, count):
    """``(Σ a[start + q*step], Σ b[start + q*step])`` over ``q < count``, in float64, in order."""
    sa = 0.0
    sb = 0.0
    for q in range(count):
        sa += a[start + q * step]
        sb += b[start + q * step]
    return sa, sb


# --------------------------------------------------------------------------------------------
# Per-block partial moments of each (sample, channel): BatchNorm (one sample), GroupNorm and
# InstanceNorm (N samples on grid.z)
# --------------------------------------------------------------------------------------------
@functools.cache
def bn_partials_kernel(acc: int, xio: str):
    """(outer, C, inner > 1): grid (C, P, N), 1-D blocks. Block p of channel c reduces elements
    ``[M*p//P, M*(p+1)//P)`` of that channel's ``M = outer*inner`` and writes (n, mean, M2).

    ``N = gridDim.z`` splits x into N equal samples with their own moments (GroupNorm /
    InstanceNorm: per-(n, c) moments); partial ``k = (n*C + c)*P + p``. BatchNorm: N = 1."""
    ld_x = loader(acc, xio)
    A, nbt = np_float(acc), numba_float(acc)

    slots = SHARED_SLOTS

    @cuda.jit
    def kernel(x, C, inner, P, part_n, part_mean, part_m2):
        sh_a = cuda.shared.array(slots, nbt)
        sh_b = cuda.shared.array(slots, nbt)
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        c = cuda.blockIdx.x
        xb, j0, j1 = channel_span(x.shape[0], C, P)
        shift = finite_shift(ld_x(x, xb + c * inner), A(0.0))  # x[0, c, 0], shared by all blocks of the channel
        s1 = A(0.0)
        s2 = A(0.0)
        j = j0 + tid
        o, i = run_start(j, inner)
        while j < j1:
            d = ld_x(x, xb + (o * C + c) * inner + i) - shift
            s1 += d
            s2 += d * d
            j += T
            o, i = run_step(o, i, T, inner)
        s1, s2 = reduce2(s1, s2, sh_a, sh_b, tid, T)
        if tid == 0:
            write_partial(part_n, part_mean, part_m2, partial_slot(c, C, P), j1 - j0, shift, s1, s2)

    return kernel


@jit_device
def write_partial(part_n, part_mean, part_m2, k, count, shift, s1, s2):
    """The block's (count, mean, M2) in float64 from its shifted sums, at partial slot ``k``."""
    n = np.float64(count)
    part_n[k] = n
    if count > 0:
        dm = np.float64(s1) / n
        part_mean[k] = np.float64(shift) + dm
        part_m2[k] = max(np.float64(s2) - np.float64(s1) * dm, 0.0)
    else:
        part_mean[k] = 0.0
        part_m2[k] = 0.0


@functools.cache
def bn_partials_cl_kernel(acc: int, xio: str, TX: int, TY: int):
    """Channels-last (rows, C): grid (ceil(C/TX), P, N), blocks (TX, TY); lanes run over
    channels so loads coalesce, rows ``[R*p//P, R*(p+1)//P)`` are split over ``ty``. N samples
    as in ``bn_partials_kernel``."""
    ld_x = loader(acc, xio)
    A, nbt = np_float(acc), numba_float(acc)

    slots = TX * TY

    @cuda.jit
    def kernel(x, C, P, part_n, part_mean, part_m2):
        sh_a = cuda.shared.array(slots, nbt)
        sh_b = cuda.shared.array(slots, nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = cuda.blockIdx.x * TX + tx
        xb, r0, r1 = channel_span(x.shape[0], C, P)  # rows of the sample
        s1 = A(0.0)
        s2 = A(0.0)
        shift = A(0.0)
        if c < C:
            shift = finite_shift(ld_x(x, xb + c), A(0.0))  # x[0, c]
            r = r0 + ty
            while r < r1:
                d = ld_x(x, xb + r * C + c) - shift
                s1 += d
                s2 += d * d
                r += TY
        s1, s2 = reduce2_columns(s1, s2, sh_a, sh_b, tx, ty, TX, TY)
        if ty == 0 and c < C:
            write_partial(part_n, part_mean, part_m2, partial_slot(c, C, P), r1 - r0, shift, s1, s2)

    return kernel


def partial_moments(fx, shape3: tuple[int, int, int], acc: int, xio: str, stream, like, N: int = 1) -> tuple:
    """Launch the per-block moments of each (sample, channel) of ``N`` equal samples (BatchNorm:
    1) of the canonical view ``shape3`` of flat x ``fx``; returns the flat float64 (n, mean, M2)
    partials, (N*C, P) each, and P."""
    outer, C, inner = shape3
    grid, block, P = plan.partials_launch(outer, C, inner, N)
    parts = [arrays.flat(arrays.scratch(like, N * C * P, "float64", 3 + k)) for k in range(3)]
    if inner == 1:
        launch(bn_partials_cl_kernel(acc, xio, *block), grid, block, stream, fx, C, P, *parts)
    else:
        launch(bn_partials_kernel(acc, xio), grid, block, stream, fx, C, inner, P, *parts)
    return (*parts, P)
