"""numba.cuda kernels: LayerNorm forward, BatchNorm partial moments / finalize / normalize.

Kernels are built by small factories keyed on what changes the generated code:

* ``acc``: the accumulation type, float64 for float64 input, float32 for everything else
  (float16 and bfloat16 are read and written in their own format, computed in float32);
* ``xio`` / ``pio``: how x (and y) / the parameters are stored, ``"f"`` for a native float
  array, ``"b"`` for bfloat16 held as int16 bits (torch bf16 tensors viewed as int16: neither
  NumPy nor ``__cuda_array_interface__`` knows bfloat16);
* compile-time sizes (registers per thread), which tests patch small.

Every array argument is flat (1-D, in memory order) and the canonical ``(outer, C, inner)``
geometry is passed as integers, so one compiled kernel serves every layout and rank.

Statistics are one pass: shifted sums (shift = a sample of the row / channel, so the sums of
``d = x - shift`` stay O(std) and do not cancel) per thread, summed over the block, and the
per-block (count, mean, M2) of BatchNorm merged with Chan's formula in float64.

Reductions come in two flavours selected at import: warp shuffles on hardware, shared memory
under the simulator (NUMBA_ENABLE_CUDASIM=1), which has no ``shfl_*_sync``. The simulator keys
``cuda.shared.array`` by source line, so every shared array is declared on its own line in the
kernel and handed to the reduction helpers.

Backward kernels (a later phase) will sit beside these as ``layer_norm_backward_kernel`` /
``batch_norm_backward_*`` factories reusing the same reductions and load/store helpers.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda

SIM = bool(numba.config.ENABLE_CUDASIM)

#: Largest block the kernels launch; shared arrays are sized for it.
MAX_THREADS = 1024
#: Smallest LN block (one warp on hardware); tests lower it so tiny rows still span threads.
MIN_THREADS = 32
#: Row elements a LN thread keeps in registers; longer rows re-read their tail (from L2).
LN_REGS = 8
#: float32 elements per wide (16-byte) load / store in the LN row kernel, used where the row
#: allows it (length a multiple of it, x and y 16-byte aligned; see ``_functional.row_norm``).
LN_VEC = 4
#: BatchNorm block sizes: 1-D blocks for (outer, C, inner>1), (TX, TY) tiles for channels-last.
BN_THREADS = 256
BN_TX = 32
BN_TY = 8
#: Enough blocks to fill the largest GPUs (132 SMs x 4) before a partial gets too small.
BN_TARGET_BLOCKS = 528
#: Fewest elements one BN partial-moments block handles (so tiny inputs use one block).
BN_MIN_PER_BLOCK = 4096

#: Shared slots per reduction: one per thread for the simulator's shared-memory tree, one per
#: warp (+1 for the broadcast) for the shuffle path. A closure constant in each factory, since
#: ``cuda.shared.array`` needs a compile-time size.
SHARED_SLOTS = 1024 + 1 if SIM else 32 + 1

_jit_device = cuda.jit(device=True, inline=True) if not SIM else cuda.jit(device=True)


# --------------------------------------------------------------------------------------------
# Loads and stores: native floats, and bfloat16 as int16 bits (round-to-nearest-even)
# --------------------------------------------------------------------------------------------
if SIM:

    def _int_as_float(i):
        return np.int32(i).view(np.float32)

    def _float_as_int(f):
        return int(np.float32(f).view(np.int32))

else:  # pragma: no cover - hardware only
    from numba.cuda import libdevice

    @_jit_device
    def _int_as_float(i):
        return libdevice.int_as_float(np.int32(i))

    @_jit_device
    def _float_as_int(f):
        return libdevice.float_as_int(np.float32(f))


@_jit_device
def ld_f32(a, i):
    return np.float32(a[i])


@_jit_device
def ld_f64(a, i):
    return np.float64(a[i])


@_jit_device
def ld_bf16(a, i):
    return _int_as_float(np.int32(a[i]) << 16)


@_jit_device
def st_plain(a, i, v):
    a[i] = v


@_jit_device
def st_bf16(a, i, v):
    u = np.int64(_float_as_int(v)) & 0xFFFFFFFF
    if v != v:
        r = 0x7FC0
    else:
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    if r >= 0x8000:
        r -= 0x10000
    a[i] = np.int16(r)


# Wide loads / stores: 4 float32 in one 16-byte access (``ld.global.v4.f32``). numba has no
# vector loads, so these are intrinsics emitting an aligned ``<4 x float>`` load/store; the
# caller guarantees 16-byte alignment. The simulator gets plain Python.
if SIM:

    def ld4_f32(a, u):
        k = 4 * u
        return np.float32(a[k]), np.float32(a[k + 1]), np.float32(a[k + 2]), np.float32(a[k + 3])

    def st4_f32(a, u, v0, v1, v2, v3):
        k = 4 * u
        a[k], a[k + 1], a[k + 2], a[k + 3] = v0, v1, v2, v3

else:  # pragma: no cover - hardware only
    from llvmlite import ir as _ir
    from numba import types as _types
    from numba.cuda import cgutils as _cgutils
    from numba.cuda.extending import intrinsic as _intrinsic

    def _vec4_pointer(context, builder, aryty, ary_value, u):
        ary = context.make_array(aryty)(context, builder, ary_value)
        k = builder.mul(u, _ir.Constant(u.type, 4))
        ptr = _cgutils.get_item_pointer(context, builder, aryty, ary, [k])
        return builder.bitcast(ptr, _ir.PointerType(_ir.VectorType(_ir.FloatType(), 4)))

    @_intrinsic
    def ld4_f32(typingctx, a, u):
        """Elements 4u .. 4u+3 of a float32 array as a 4-tuple, in one 16-byte load."""
        sig = _types.UniTuple(_types.float32, 4)(a, u)

        def codegen(context, builder, sig, args):
            vec = builder.load(_vec4_pointer(context, builder, sig.args[0], args[0], args[1]), align=16)
            items = [builder.extract_element(vec, _ir.Constant(_ir.IntType(32), q)) for q in range(4)]
            return context.make_tuple(builder, sig.return_type, items)

        return sig, codegen

    @_intrinsic
    def st4_f32(typingctx, a, u, v0, v1, v2, v3):
        """Store four float32 values at 4u .. 4u+3 in one 16-byte store."""
        sig = _types.void(a, u, _types.float32, _types.float32, _types.float32, _types.float32)

        def codegen(context, builder, sig, args):
            vec = _ir.Constant(_ir.VectorType(_ir.FloatType(), 4), _ir.Undefined)
            for q in range(4):
                v = context.cast(builder, args[2 + q], sig.args[2 + q], _types.float32)
                vec = builder.insert_element(vec, v, _ir.Constant(_ir.IntType(32), q))
            builder.store(vec, _vec4_pointer(context, builder, sig.args[0], args[0], args[1]), align=16)
            return context.get_dummy_value()

        return sig, codegen


@_jit_device
def ld1(a, u):
    """``(a[u],)``: the one-element unit of the scalar row kernel (float32 or float64 storage)."""
    return (a[u],)


def _loader(acc, io):
    if io == "b":
        return ld_bf16
    return ld_f64 if acc == 64 else ld_f32


def _storer(io):
    return st_bf16 if io == "b" else st_plain


# --------------------------------------------------------------------------------------------
# Block reductions of a pair (s1, s2); the result reaches every thread
# --------------------------------------------------------------------------------------------
@_jit_device
def _reduce2_columns(a, b, sh_a, sh_b, tx, ty, TX, TY):
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


@_jit_device
def _reduce2_shared(a, b, sh_a, sh_b, tid, nthreads):
    """Tree reduction through shared memory (a single column); ``nthreads`` is a power of two."""
    return _reduce2_columns(a, b, sh_a, sh_b, 0, tid, 1, nthreads)


if SIM:
    reduce2 = _reduce2_shared
else:  # pragma: no cover - hardware only

    @_jit_device
    def _warp_sum2(a, b):
        off = 16
        while off > 0:
            a += cuda.shfl_down_sync(0xFFFFFFFF, a, off)
            b += cuda.shfl_down_sync(0xFFFFFFFF, b, off)
            off //= 2
        return a, b

    @_jit_device
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
@_jit_device
def _channel_span(n, C, P):
    """This block's share of its channel, grid (channels, P, N): x (``n`` elements) holds
    ``N = gridDim.z`` samples of ``M`` values per channel. Returns the sample's first element
    and the values ``[M*p//P, M*(p+1)//P)`` of block ``p = blockIdx.y``."""
    M = n // (C * cuda.gridDim.z)
    p = cuda.blockIdx.y
    return cuda.blockIdx.z * M * C, (M * p) // P, (M * (p + 1)) // P


@_jit_device
def _partial_slot(c, C, P):
    """Where this block's partial for channel ``c`` goes: ``(n*C + c)*P + p``."""
    return (cuda.blockIdx.z * C + c) * P + cuda.blockIdx.y


@_jit_device
def _run_start(j, inner):
    """Value ``j`` of a channel of (outer, C, inner) as (run o, offset i): one division per thread."""
    o = j // inner
    return o, j - o * inner


@_jit_device
def _run_step(o, i, T, inner):
    """(o, i) advanced by ``T`` values with additions only (``T`` may exceed ``inner``)."""
    i += T
    while i >= inner:
        i -= inner
        o += 1
    return o, i


@_jit_device
def _chan_add(n, m, m2, nb, mb, m2b):
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


@_jit_device
def _finite_shift(v, zero):
    """A block's shift ``v``, or ``zero`` (0 in the accumulator type) when ``v`` is inf or nan (as
    the CPU's ``finite_shift``)."""
    return v if math.isfinite(v) else zero


@_jit_device
def _merge_partials(part_n, part_mean, part_m2, k, P):
    """(count, mean, M2) of the partials ``[k*P, (k+1)*P)``, merged in order."""
    n = 0.0
    m = 0.0
    m2 = 0.0
    for p in range(P):
        n, m, m2 = _chan_add(n, m, m2, part_n[k * P + p], part_mean[k * P + p], part_m2[k * P + p])
    return n, m, m2


@_jit_device
def _sum2(a, b, start, step, count):
    """``(Σ a[start + q*step], Σ b[start + q*step])`` over ``q < count``, in float64, in order."""
    sa = 0.0
    sb = 0.0
    for q in range(count):
        sa += a[start + q * step]
        sb += b[start + q * step]
    return sa, sb


def _numba_float(acc):
    return numba.float64 if acc == 64 else numba.float32


def _np_float(acc):
    return np.float64 if acc == 64 else np.float32


# --------------------------------------------------------------------------------------------
# LayerNorm forward: one row per block, the row held in registers between the two phases
# --------------------------------------------------------------------------------------------
@functools.cache
def layer_norm_kernel(acc: int, xio: str, pio: str, regs: int, has_w: bool, has_b: bool, mode: str = "ln",
                      vec: int = 1):
    """``kernel(x, res, s, w, b, y, mean, rstd, D, eps)`` over rows of length ``D``; grid = rows.
    An absent weight/bias is compiled out (``has_w``/``has_b``); pass any array in its place.

    ``mode`` (compile time): ``"ln"`` LayerNorm; ``"rms"`` RMSNorm (no mean: shift 0, mean not
    written); ``"add"`` residual-add LayerNorm: ``s = x + res`` rounded to x's dtype (summed in
    float64, stored, and read back, so the normalized values are exactly the stored sum, as the
    unfused ops give), then LayerNorm of ``s``. ``res``/``s`` are placeholders outside "add".

    ``vec``: row elements per access. 1: scalar loads and stores (any dtype, any mode); ``LN_VEC``
    (float32 "ln"/"rms" only, ``D % vec == 0``, x and y 16-byte aligned): each thread reads and
    writes ``vec`` consecutive elements with one 16-byte access, so a warp moves 512 contiguous
    bytes per instruction. ``regs`` counts such units per thread."""
    ld_x, st_y, ld_p = _loader(acc, xio), _storer(xio), _loader(acc, pio)
    A, nbt = _np_float(acc), _numba_float(acc)
    add, rms = mode == "add", mode == "rms"
    V = vec
    if V == 1:
        ld_v = ld1 if xio == "f" else _unit_loader(ld_x)
    else:
        assert V == LN_VEC and xio == "f" and acc == 32 and not add, "wide loads: float32 ln/rms only"
        ld_v = ld4_f32

    @_jit_device
    def affine(v, w, b, j):
        if has_w:
            v *= ld_p(w, j)
        if has_b:
            v += ld_p(b, j)
        return v

    @_jit_device
    def store_unit(y, u, vals, k):
        """Store the unit ``vals[k : k + V]`` at unit ``u``."""
        if V == 1:
            st_y(y, u, vals[k])
        else:
            st4_f32(y, u, vals[k], vals[k + 1], vals[k + 2], vals[k + 3])

    slots = SHARED_SLOTS
    nvals = regs * V  # a compile-time size for the local array

    @cuda.jit
    def kernel(x, res, s, w, b, y, mean_out, rstd_out, D, eps):
        sh_a = cuda.shared.array(slots, nbt)
        sh_b = cuda.shared.array(slots, nbt)
        vals = cuda.local.array(nvals, nbt)
        out = cuda.local.array(V, nbt)
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        base = cuda.blockIdx.x * D
        U = D // V  # units per row
        ubase = cuda.blockIdx.x * U
        src = s if add else x  # what the statistics and the tail read
        if add:
            for k in range(regs):
                j = tid + k * T
                if j < D:
                    st_y(s, base + j, A(np.float64(ld_x(x, base + j)) + np.float64(ld_x(res, base + j))))
                    vals[k] = ld_x(s, base + j)  # the rounded sum (this thread's own store)
            j = tid + regs * T
            while j < D:
                st_y(s, base + j, A(np.float64(ld_x(x, base + j)) + np.float64(ld_x(res, base + j))))
                j += T
            cuda.syncthreads()  # the row's first sum (the shift) and the tail become visible
        shift = A(0.0)
        if not rms:
            shift = _finite_shift(ld_x(src, base), A(0.0))  # every thread reads the same sample: one broadcast load
        s1 = A(0.0)
        s2 = A(0.0)
        for k in range(regs):
            u = tid + k * T
            if u < U:
                if add:
                    d = vals[k] - shift
                    vals[k] = d
                    s1 += d
                    s2 += d * d
                else:
                    t = ld_v(x, ubase + u)
                    for q in range(V):
                        d = A(t[q]) - shift
                        vals[k * V + q] = d
                        s1 += d
                        s2 += d * d
        u = tid + regs * T
        while u < U:  # rows longer than regs * T units: the tail is read again below
            t = ld_v(src, ubase + u)
            for q in range(V):
                d = A(t[q]) - shift
                s1 += d
                s2 += d * d
            u += T
        s1, s2 = reduce2(s1, s2, sh_a, sh_b, tid, T)
        n = A(D)
        dm = A(0.0)
        if not rms:
            dm = s1 / n
        var = max(s2 / n - dm * dm, A(0.0))
        rstd = A(1.0) / math.sqrt(var + A(eps))
        if tid == 0:
            if not rms:
                mean_out[cuda.blockIdx.x] = shift + dm
            rstd_out[cuda.blockIdx.x] = rstd
        for k in range(regs):
            u = tid + k * T
            if u < U:
                for q in range(V):  # x - mean = (x - shift) - dm: exact for constant rows
                    vals[k * V + q] = affine((vals[k * V + q] - dm) * rstd, w, b, u * V + q)
                store_unit(y, ubase + u, vals, k * V)
        u = tid + regs * T
        while u < U:
            t = ld_v(src, ubase + u)
            for q in range(V):
                out[q] = affine((A(t[q]) - shift - dm) * rstd, w, b, u * V + q)
            store_unit(y, ubase + u, out, 0)
            u += T

    return kernel


@functools.cache
def _unit_loader(ld):
    """``(ld(a, u),)``: a one-element unit through a converting loader (bfloat16 bits)."""

    @_jit_device
    def ld_unit(a, u):
        return (ld(a, u),)

    return ld_unit


# --------------------------------------------------------------------------------------------
# BatchNorm: per-block partial moments -> Chan merge per channel -> fused normalize
# --------------------------------------------------------------------------------------------
@functools.cache
def bn_partials_kernel(acc: int, xio: str):
    """(outer, C, inner > 1): grid (C, P, N), 1-D blocks. Block p of channel c reduces elements
    ``[M*p//P, M*(p+1)//P)`` of that channel's ``M = outer*inner`` and writes (n, mean, M2).

    ``N = gridDim.z`` splits x into N equal samples with their own moments (GroupNorm /
    InstanceNorm: per-(n, c) moments); partial ``k = (n*C + c)*P + p``. BatchNorm: N = 1."""
    ld_x = _loader(acc, xio)
    A, nbt = _np_float(acc), _numba_float(acc)

    slots = SHARED_SLOTS

    @cuda.jit
    def kernel(x, C, inner, P, part_n, part_mean, part_m2):
        sh_a = cuda.shared.array(slots, nbt)
        sh_b = cuda.shared.array(slots, nbt)
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        c = cuda.blockIdx.x
        xb, j0, j1 = _channel_span(x.shape[0], C, P)
        shift = _finite_shift(ld_x(x, xb + c * inner), A(0.0))  # x[0, c, 0], shared by all blocks of the channel
        s1 = A(0.0)
        s2 = A(0.0)
        j = j0 + tid
        o, i = _run_start(j, inner)
        while j < j1:
            d = ld_x(x, xb + (o * C + c) * inner + i) - shift
            s1 += d
            s2 += d * d
            j += T
            o, i = _run_step(o, i, T, inner)
        s1, s2 = reduce2(s1, s2, sh_a, sh_b, tid, T)
        if tid == 0:
            _write_partial(part_n, part_mean, part_m2, _partial_slot(c, C, P), j1 - j0, shift, s1, s2)

    return kernel


@_jit_device
def _write_partial(part_n, part_mean, part_m2, k, count, shift, s1, s2):
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
    ld_x = _loader(acc, xio)
    A, nbt = _np_float(acc), _numba_float(acc)

    slots = TX * TY

    @cuda.jit
    def kernel(x, C, P, part_n, part_mean, part_m2):
        sh_a = cuda.shared.array(slots, nbt)
        sh_b = cuda.shared.array(slots, nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = cuda.blockIdx.x * TX + tx
        xb, r0, r1 = _channel_span(x.shape[0], C, P)  # rows of the sample
        s1 = A(0.0)
        s2 = A(0.0)
        shift = A(0.0)
        if c < C:
            shift = _finite_shift(ld_x(x, xb + c), A(0.0))  # x[0, c]
            r = r0 + ty
            while r < r1:
                d = ld_x(x, xb + r * C + c) - shift
                s1 += d
                s2 += d * d
                r += TY
        s1, s2 = _reduce2_columns(s1, s2, sh_a, sh_b, tx, ty, TX, TY)
        if ty == 0 and c < C:
            _write_partial(part_n, part_mean, part_m2, _partial_slot(c, C, P), r1 - r0, shift, s1, s2)

    return kernel


@_jit_device
def _coefficients(m, invstd, w, b, c, k, ld_p, hi, shift, scale, offset, has_w, has_b):
    """Normalize coefficients ``y = (x - shift) * scale + offset`` of channel ``c`` (its weight and
    bias), written at ``k`` (BatchNorm: c; GroupNorm: n*C + c), from float64 stats.

    The mean is split into ``hi`` (its value in the accumulation type) and ``lo = m - hi``;
    ``x - hi`` is exact near the mean (Sterbenz), and ``-lo * scale`` folds into the offset, so
    float32 kernels centre x as accurately as a float64 subtraction would (matters when
    |mean| >> std: at 1e4 + N(0, 2) a float32 mean alone costs ~1e-4 relative error)."""
    sc = invstd
    if has_w:
        sc *= ld_p(w, c)
    of = 0.0
    if has_b:
        of = ld_p(b, c)
    lo = m - np.float64(hi)
    shift[k] = hi
    scale[k] = sc
    offset[k] = of - lo * sc


@functools.cache
def bn_finalize_kernel(acc: int, pio: str, rio: str, has_w: bool, has_b: bool, has_running: bool):
    """One thread per channel: Chan-merge the P partials in float64, write the returned stats,
    the normalize coefficients, and update the running stats in place (training). Absent
    arguments are compiled out (``has_*``); pass any array in their place."""
    ld_p, ld_r, st_r = _loader(64, pio), _loader(64, rio), _storer(rio)
    A = _np_float(acc)

    @cuda.jit
    def kernel(part_n, part_mean, part_m2, P, w, b, rmean, rvar, momentum, eps,
               mean_out, invstd_out, shift, scale, offset):
        c = cuda.grid(1)
        if c >= mean_out.shape[0]:
            return
        n, m, m2 = _merge_partials(part_n, part_mean, part_m2, c, P)
        invstd = 1.0 / math.sqrt(m2 / n + eps)
        mean_out[c] = m
        invstd_out[c] = invstd
        _coefficients(m, invstd, w, b, c, c, ld_p, A(m), shift, scale, offset, has_w, has_b)
        if has_running:
            st_r(rmean, c, (1.0 - momentum) * ld_r(rmean, c) + momentum * m)
            st_r(rvar, c, (1.0 - momentum) * ld_r(rvar, c) + momentum * (m2 / (n - 1.0)))

    return kernel


@functools.cache
def bn_eval_coeffs_kernel(acc: int, pio: str, rio: str, has_w: bool, has_b: bool):
    """Inference: coefficients from the running stats, one thread per channel."""
    ld_p, ld_r = _loader(64, pio), _loader(64, rio)
    A = _np_float(acc)

    @cuda.jit
    def kernel(w, b, rmean, rvar, eps, mean_out, invstd_out, shift, scale, offset):
        c = cuda.grid(1)
        if c >= mean_out.shape[0]:
            return
        m = np.float64(ld_r(rmean, c))
        invstd = 1.0 / math.sqrt(np.float64(ld_r(rvar, c)) + eps)
        mean_out[c] = m
        invstd_out[c] = invstd
        _coefficients(m, invstd, w, b, c, c, ld_p, A(m), shift, scale, offset, has_w, has_b)

    return kernel


@functools.cache
def bn_normalize_kernel(acc: int, xio: str):
    """(outer, C, inner > 1): ``y = (x - shift[k]) * scale[k] + offset[k]``, ``k = n*C + c`` for
    run ``oc`` of sample ``n = oc // OC`` (BatchNorm: OC = outer*C, one sample). grid.x walks
    the (o, c) runs, grid.y the chunks of one run, so no per-element division is needed."""
    ld_x, st_y = _loader(acc, xio), _storer(xio)
    A = _np_float(acc)

    @cuda.jit
    def kernel(x, C, inner, OC, shift, scale, offset, y):
        oc = cuda.blockIdx.x
        k = (oc // OC) * C + oc % C
        m = A(shift[k])
        s = A(scale[k])
        f = A(offset[k])
        base = oc * inner
        i = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        step = cuda.gridDim.y * cuda.blockDim.x
        while i < inner:
            st_y(y, base + i, (ld_x(x, base + i) - m) * s + f)
            i += step

    return kernel


@functools.cache
def bn_normalize_cl_kernel(acc: int, xio: str, TX: int, TY: int):
    """Channels-last (rows, C): grid (ceil(C/TX), row blocks), blocks (TX, TY) over
    (channels, rows), grid-stride over rows. Row r belongs to sample ``r // S`` whose
    coefficients are ``[n*C + c]`` (BatchNorm: S = rows, one sample)."""
    ld_x, st_y = _loader(acc, xio), _storer(xio)
    A = _np_float(acc)

    @cuda.jit
    def kernel(x, C, S, shift, scale, offset, y):
        c = cuda.blockIdx.x * TX + cuda.threadIdx.x
        if c >= C:
            return
        R = x.shape[0] // C
        r = cuda.blockIdx.y * TY + cuda.threadIdx.y
        step = cuda.gridDim.y * TY
        n = -1
        m = A(0.0)
        s = A(0.0)
        f = A(0.0)
        while r < R:
            if r // S != n:  # a new sample: its coefficients (BatchNorm: once)
                n = r // S
                m = A(shift[n * C + c])
                s = A(scale[n * C + c])
                f = A(offset[n * C + c])
            st_y(y, r * C + c, (ld_x(x, r * C + c) - m) * s + f)
            r += step

    return kernel
