"""Register-resident channel-group sums for channels-last data (one LLVM loop per group).

Channels-last per-channel sums (BatchNorm moments, the backward's Σdy and Σdy·(x - mean)) need
one pair of float64 accumulators per channel. Written as numba loops over accumulator arrays,
they round-trip through L1 on every element (LLVM cannot prove the accumulators do not alias the
input, so it will not keep them in registers), which held the NHWC moments at ~50% of a copy.
``group_dot_sums`` emits the loop over rows for ``width`` adjacent channels directly in LLVM IR
with the accumulators as vector values: for ``width`` 16 that is 4 + 4 ymm registers of float64
and no memory access but the input loads. See ``moments.cl_dot_sums`` for the tiling around it.

``affine_rows`` is the normalize pass ``(x - head) * scale + offset`` over contiguous runs or
channels-last rows of lanes, as one LLVM loop of 8-lane vectors (numba's loop paid an alias test
and a scalar epilogue per run; numba runs LLVM without its SLP vectorizer), optionally with
non-temporal stores for large outputs.

``store_fence`` orders non-temporal stores before another thread reads the output. LayerNorm's
pipelined row step in the same style is in ``simd_rows.py``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .._numba import SIMD, cgutils
from .halfio import HALF_LANES, emit_decode, emit_encode, half_kind, load, store

#: The element types with SIMD loops; none when numba's IR helpers are not available
#: (``numbanorm._numba.SIMD``): every kernel then takes its plain numba loop.
_NATIVE = (types.float32, types.float64) if SIMD else ()
#: ... and with the 16-bit views of float16 (uint16) and bfloat16 (int16) arrays, converted in
#: registers (``halfio.emit_decode`` / ``emit_encode``).
_SIMD_ELTS = _NATIVE + ((types.uint16, types.int16) if SIMD else ())
#: The compute type of each element type (``affine.to_compute``): float32 for half data.
_COMPUTE = {types.float32: types.float32, types.float64: types.float64, types.uint16: types.float32,
            types.int16: types.float32}
#: ``store_fence`` is ``sfence`` on x86; elsewhere an LLVM release fence.
_X86 = llvm.get_process_triple().startswith(("x86_64", "i386", "i586", "i686"))


@intrinsic(prefer_literal=True)
def _simd_dot_sums(typingctx, a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width):
    """SIMD body of ``group_dot_sums`` for float32/float64 arrays and the 16-bit views of half
    arrays (see there)."""
    no_b = isinstance(b, types.NoneType)
    if (not isinstance(width, types.IntegerLiteral) or a.dtype not in _SIMD_ELTS
            or not (no_b or b.dtype == a.dtype)):
        return None
    kind = half_kind(a.dtype)
    G = width.literal_value
    no_sha = isinstance(sha, types.NoneType)
    sig = types.none(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width)

    def codegen(context, builder, sig, args):
        f64v = ir.VectorType(ir.DoubleType(), G)
        elt = context.get_value_type(sig.args[0].dtype)
        inv = ir.VectorType(elt, G)
        align = context.get_abi_sizeof(elt)

        def data(k):
            return context.make_array(sig.args[k])(context, builder, args[k]).data

        def as_i64(k):
            return context.cast(builder, args[k], sig.args[k], types.int64)

        def vload(ptr, idx, vty, al):
            return builder.load(builder.bitcast(builder.gep(ptr, [idx]), vty.as_pointer()), align=al)

        def widen(v):
            if kind:  # 16-bit views: exact to float32 first
                v = emit_decode(builder, v, kind)
            return builder.fpext(v, f64v) if v.type.element != ir.DoubleType() else v

        base_v, nrows_v, stride_v, ahead_v, c0_v = as_i64(4), as_i64(5), as_i64(6), as_i64(7), as_i64(10)
        flags = ("reassoc", "contract", "nsz")
        pa = data(0)
        shift_a = None if no_sha else vload(data(1), c0_v, f64v, 8)
        pb = None if no_b else data(2)
        shift_b = None if no_b else vload(data(3), c0_v, f64v, 8)
        zero = ir.Constant(f64v, None)
        acc_a = cgutils.alloca_once_value(builder, zero)  # allocas: promoted to registers
        acc_b = cgutils.alloca_once_value(builder, zero)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
        with cgutils.for_range(builder, nrows_v) as loop:
            off = builder.add(base_v, builder.mul(loop.index, stride_v))
            for ptr in (pa,) if no_b else (pa, pb):  # read, high locality, data cache
                addr = builder.bitcast(builder.gep(ptr, [builder.add(off, ahead_v)]), i8p)
                builder.call(prefetch, [addr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            u = widen(vload(pa, off, inv, align))
            if not no_sha:
                u = builder.fsub(u, shift_a, flags=flags)
            v = u if no_b else builder.fsub(widen(vload(pb, off, inv, align)), shift_b, flags=flags)
            builder.store(builder.fadd(builder.load(acc_a), u, flags=flags), acc_a)
            builder.store(builder.fadd(builder.load(acc_b), builder.fmul(u, v, flags=flags), flags=flags), acc_b)
        for k, acc in ((8, acc_a), (9, acc_b)):
            p = builder.bitcast(builder.gep(data(k), [c0_v]), f64v.as_pointer())
            builder.store(builder.fadd(builder.load(p, align=8), builder.load(acc)), p, align=8)
        return context.get_dummy_value()

    return sig, codegen


def group_dot_sums(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width):
    """For j < width, over rows r < nrows, with k = base + r * stride + j (jit-only)::

        u = a[k] - sha[c0 + j]             (sha None: u = a[k])
        v = b[k] - shb[c0 + j]             (b None: v = u)
        sa[c0 + j] += Σ u,   sb[c0 + j] += Σ u * v

    Moments pass ``(x, shift, None, None)`` (shifted sums); the BatchNorm backward passes
    ``(dy, None, x, mean)`` (Σdy, Σdy·(x - mean)). ``width`` must be a literal. Each row also
    prefetches the inputs ``ahead`` elements further on (0: the line being read, a no-op).
    """


@overload(group_dot_sums, prefer_literal=True, inline="always")
def _group_dot_sums(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width):
    if a.dtype in _SIMD_ELTS and (isinstance(b, types.NoneType) or b.dtype == a.dtype):
        def simd(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width):
            _simd_dot_sums(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width)
        return simd
    # Without the SIMD loops (``_numba.SIMD`` False): plain loops through ``load``.
    if isinstance(b, types.NoneType):
        def scalar_moments(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width):
            for j in range(width):
                ta = 0.0
                tb = 0.0
                for r in range(nrows):
                    u = np.float64(load(a[base + r * stride + j])) - sha[c0 + j]
                    ta += u
                    tb += u * u
                sa[c0 + j] += ta
                sb[c0 + j] += tb
        return scalar_moments

    def scalar_grad(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width):
        for j in range(width):
            ta = 0.0
            tb = 0.0
            for r in range(nrows):
                k = base + r * stride + j
                u = np.float64(load(a[k]))
                ta += u
                tb += u * (np.float64(load(b[k])) - shb[c0 + j])
            sa[c0 + j] += ta
            sb[c0 + j] += tb
    return scalar_grad


def wide_groups(a):
    """Whether ``moments.cl_dot_sums`` sums ``a`` in groups of 32 channels (jit-only; a constant):
    the 16-bit views of half arrays on AVX-512. Each row of a group is one dependent add per
    accumulator, so a group costs about the add latency per row whatever its width; 16 half
    channels are half a cache line, and 32 (4 + 4 zmm accumulators) do twice the work per row.
    Measured (BatchNorm moments, (32, 56, 56, 64) float16 channels-last, one core): see
    ``_CL_WIDE``."""
    return False


#: ``wide_groups``: 32-channel groups for half data where float64 vectors of 32 lanes fit the
#: registers (AVX-512: 8 of the 32 zmm; on AVX2 they would take all 16 ymm).
_CL_WIDE = HALF_LANES == 16


@overload(wide_groups)
def _wide_groups(a):
    ok = _CL_WIDE and isinstance(a, types.Array) and half_kind(a.dtype) is not None and SIMD
    return lambda a: ok


def simd_ok(a):
    """Whether ``group_dot_sums`` runs its SIMD loop for array ``a`` (jit-only; a constant)."""
    return False


@overload(simd_ok)
def _simd_ok(a):
    ok = isinstance(a, types.Array) and a.dtype in _SIMD_ELTS
    return lambda a: ok


def _affine_types(src, dst, head, scale, offset):
    """Whether ``affine_rows`` has a SIMD loop for these numba types: float32/float64 arrays with
    parameters in their own type, or the 16-bit views of half arrays with float32 parameters
    (scalars, or lane arrays, all three alike)."""
    elt_t = src.dtype if isinstance(src, types.Array) else None
    if elt_t not in _SIMD_ELTS or not isinstance(dst, types.Array) or dst.dtype != elt_t:
        return False
    ct = _COMPUTE[elt_t]
    lanes = isinstance(head, types.Array)
    return all(isinstance(p, types.Array) == lanes and (p.dtype if lanes else p) == ct for p in (head, scale, offset))


@intrinsic
def _simd_affine_rows(typingctx, src, dst, base, nrows, width, head, scale, offset, stream):
    """SIMD body of ``affine_rows`` (see ``_affine_types`` for the types it takes)."""
    if not _affine_types(src, dst, head, scale, offset):
        return None
    elt_t = src.dtype
    kind = half_kind(elt_t)
    lanes = isinstance(head, types.Array)
    sig = types.none(src, dst, base, nrows, width, head, scale, offset, stream)
    can_stream = dst.aligned  # aligned stores need an element-aligned array
    V = HALF_LANES if kind else 8  # float32 lanes per vector (16-bit elements: one ymm load/store)

    def codegen(context, builder, sig, args):
        elt = context.get_value_type(elt_t)
        ct = context.get_value_type(_COMPUTE[elt_t])
        vty = ir.VectorType(ct, V)
        ety = ir.VectorType(elt, V)
        esize = context.get_abi_sizeof(elt)
        psize = context.get_abi_sizeof(ct)
        i64 = ir.IntType(64)
        flags = ("reassoc", "contract", "nsz")
        nt_md = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])

        def c64(v):
            return ir.Constant(i64, v)

        def data(k):
            return context.make_array(sig.args[k])(context, builder, args[k]).data

        def as_i64(k):
            return context.cast(builder, args[k], sig.args[k], types.int64)

        ps, pd = data(0), data(1)
        base_v, nrows_v, width_v = as_i64(2), as_i64(3), as_i64(4)
        stream_v = context.cast(builder, args[8], sig.args[8], types.boolean)
        if not can_stream:
            stream_v = ir.Constant(ir.IntType(1), 0)
        if lanes:
            pp = [data(k) for k in (5, 6, 7)]
        else:
            splat = []
            for k in (5, 6, 7):
                vec = ir.Constant(vty, None)
                for j in range(V):
                    vec = builder.insert_element(vec, args[k], ir.Constant(ir.IntType(32), j))
                splat.append(vec)

        def vec_at(ptr, idx, t):
            return builder.bitcast(builder.gep(ptr, [idx]), t.as_pointer())

        def one_vec(off, j, nt):
            """dst[off + j: +V] from src and the parameters of lanes j:j+V."""
            k = builder.add(off, j)
            v = builder.load(vec_at(ps, k, ety), align=esize)
            if kind:
                v = emit_decode(builder, v, kind)
            if lanes:
                h, s, o = (builder.load(vec_at(p, j, vty), align=psize) for p in pp)
            else:
                h, s, o = splat
            y = builder.fadd(builder.fmul(builder.fsub(v, h, flags=flags), s, flags=flags), o, flags=flags)
            if kind:
                y = emit_encode(builder, y, kind)
            st = builder.store(y, vec_at(pd, k, ety), align=32 if nt else esize)
            if nt:
                st.set_metadata("nontemporal", nt_md)

        def one_scalar(off, j):
            k = builder.add(off, j)
            v = builder.load(builder.gep(ps, [k]), align=esize)
            if kind:
                v = builder.extract_element(emit_decode(builder, builder.insert_element(
                    ir.Constant(ir.VectorType(elt, 1), None), v, ir.Constant(ir.IntType(32), 0)), kind),
                    ir.Constant(ir.IntType(32), 0))
            if lanes:
                h, s, o = (builder.load(builder.gep(p, [j]), align=psize) for p in pp)
            else:
                h, s, o = args[5], args[6], args[7]
            y = builder.fadd(builder.fmul(builder.fsub(v, h, flags=flags), s, flags=flags), o, flags=flags)
            if kind:
                y = builder.extract_element(emit_encode(builder, builder.insert_element(
                    ir.Constant(ir.VectorType(ct, 1), None), y, ir.Constant(ir.IntType(32), 0)), kind),
                    ir.Constant(ir.IntType(32), 0))
            builder.store(y, builder.gep(pd, [k]), align=esize)

        def row(off, j0, n, nt):
            """Elements j0:j0 + n of the row at ``off``: vectors of V (four per iteration), then
            scalars."""
            n4 = builder.udiv(n, c64(4 * V))
            nv = builder.udiv(builder.urem(n, c64(4 * V)), c64(V))
            at4 = builder.add(j0, builder.mul(n4, c64(4 * V)))
            tail0 = builder.add(j0, builder.mul(builder.udiv(n, c64(V)), c64(V)))
            with cgutils.for_range(builder, n4) as q:  # four independent vectors per iteration
                j = builder.add(j0, builder.mul(q.index, c64(4 * V)))
                for u in range(4):
                    one_vec(off, builder.add(j, c64(V * u)), nt)
            with cgutils.for_range(builder, nv) as q:  # normal stores: may end inside a line
                one_vec(off, builder.add(at4, builder.mul(q.index, c64(V))), False)
            with cgutils.for_range(builder, builder.sub(builder.add(j0, n), tail0)) as q:
                one_scalar(off, builder.add(tail0, q.index))

        with builder.if_else(stream_v) as (then, otherwise):
            with then:
                # Streaming stores: scalars up to a cache-line boundary of dst, then aligned
                # non-temporal stores of whole lines only (4 vectors at a time), the rest
                # normal stores: a line written partly non-temporally is flushed partly, which
                # made short runs (8x8 planes) 4x slower.
                dst_addr = builder.ptrtoint(pd, i64)
                with cgutils.for_range(builder, nrows_v) as r:
                    off = builder.add(base_v, builder.mul(r.index, width_v))
                    addr = builder.add(dst_addr, builder.mul(off, c64(esize)))
                    peel = builder.udiv(builder.and_(builder.sub(c64(0), addr), c64(63)), c64(esize))
                    peel = builder.select(builder.icmp_unsigned("<", peel, width_v), peel, width_v)
                    with cgutils.for_range(builder, peel) as q:
                        one_scalar(off, q.index)
                    row(off, peel, builder.sub(width_v, peel), True)
                _emit_store_fence(builder)
            with otherwise:
                with cgutils.for_range(builder, nrows_v) as r:
                    row(builder.add(base_v, builder.mul(r.index, width_v)), c64(0), width_v, False)
        return context.get_dummy_value()

    return sig, codegen


def affine_rows(src, dst, base, nrows, width, head, scale, offset, stream=False):
    """For ``nrows`` consecutive rows of ``width`` elements from flat index ``base`` (jit-only)::

        dst[k] = (src[k] - head[j]) * scale[j] + offset[j],   k = base + r * width + j

    The parameters are arrays of ``width`` lanes (channels-last) or scalars for all of them (a
    contiguous run), in the compute type (``affine.to_compute``). float32/float64 run one LLVM
    loop of 8-lane vectors with no alias test and no call per run: numba's loop paid a runtime
    alias check and a scalar epilogue per run, the main cost on short runs (8x8 planes) and
    256-lane channels-last rows. Safe in place (each element is read before it is written).
    ``stream``: write with non-temporal stores (float32/float64 only), for outputs far larger than
    the cache: no read-for-ownership of the output lines, as ``np.copyto`` does for large copies.
    """


@overload(affine_rows, inline="always")
def _affine_rows(src, dst, base, nrows, width, head, scale, offset, stream=False):
    lanes = isinstance(head, types.Array)
    if _affine_types(src, dst, head, scale, offset):
        def simd(src, dst, base, nrows, width, head, scale, offset, stream=False):
            _simd_affine_rows(src, dst, base, nrows, width, head, scale, offset, stream)
        return simd
    if lanes:
        def lane_rows(src, dst, base, nrows, width, head, scale, offset, stream=False):  # float16/bfloat16
            for r in range(nrows):
                b = np.uint64(base + r * width)
                for j in range(np.uint64(width)):
                    dst[b + j] = store((load(src[b + j]) - head[j]) * scale[j] + offset[j], dst)
        return lane_rows

    def run_rows(src, dst, base, nrows, width, head, scale, offset, stream=False):
        b = np.uint64(base)
        for j in range(np.uint64(nrows * width)):
            dst[b + j] = store((load(src[b + j]) - head) * scale + offset, dst)
    return run_rows


def _emit_store_fence(builder) -> None:
    """``sfence`` on x86 (the fence non-temporal stores need); an LLVM release fence elsewhere."""
    if not _X86:
        builder.fence("release")
        return
    name = "llvm.x86.sse.sfence"
    fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(ir.VoidType(), []), name)
    builder.call(fn, [])


@intrinsic
def store_fence(typingctx):
    """``sfence`` (jit-only): orders this thread's non-temporal stores before its later stores.
    A thread that wrote with ``stream=True`` must run it before other threads read the output
    (before the parallel region it runs in ends)."""
    def codegen(context, builder, sig, args):
        _emit_store_fence(builder)
        return context.get_dummy_value()

    return types.none(), codegen
