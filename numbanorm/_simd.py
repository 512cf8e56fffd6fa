"""Register-resident channel-group sums for channels-last data (one LLVM loop per group).

Channels-last per-channel sums (BatchNorm moments, the backward's Σdy and Σdy·(x - mean)) need
one pair of float64 accumulators per channel. Written as numba loops over accumulator arrays,
they round-trip through L1 on every element (LLVM cannot prove the accumulators do not alias the
input, so it will not keep them in registers), which held the NHWC moments at ~50% of a copy.
``group_dot_sums`` emits the loop over rows for ``width`` adjacent channels directly in LLVM IR
with the accumulators as vector values: for ``width`` 16 that is 4 + 4 ymm registers of float64
and no memory access but the input loads. See ``_engine.cl_dot_sums`` for the tiling around it.

``affine_rows`` is the normalize pass ``(x - head) * scale + offset`` over contiguous runs or
channels-last rows of lanes, as one LLVM loop of 8-lane vectors (numba's loop paid an alias test
and a scalar epilogue per run; numba runs LLVM without its SLP vectorizer), optionally with
non-temporal stores for large outputs.

``normalize_row_sums`` is LayerNorm's pipelined row step (normalize row r with weight/bias while
summing row r + 1 in float64) in the same style, with optional non-temporal stores for outputs
far larger than the cache; ``store_fence`` orders them before another thread reads the output.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._halfio import load, store

_NATIVE = (types.float32, types.float64)


@intrinsic(prefer_literal=True)
def _simd_dot_sums(typingctx, a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width):
    """SIMD body of ``group_dot_sums`` for float32/float64 arrays (see there)."""
    no_b = isinstance(b, types.NoneType)
    if (not isinstance(width, types.IntegerLiteral) or a.dtype not in _NATIVE
            or not (no_b or b.dtype == a.dtype)):
        return None
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
            return builder.fpext(v, f64v) if elt != ir.DoubleType() else v

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


@overload(group_dot_sums, prefer_literal=True)
def _group_dot_sums(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width):
    if a.dtype in _NATIVE and (isinstance(b, types.NoneType) or b.dtype == a.dtype):
        def simd(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width):
            _simd_dot_sums(a, sha, b, shb, base, nrows, stride, ahead, sa, sb, c0, width)
        return simd
    # float16/bfloat16 views: plain loops through ``load`` (these layouts keep the lane path).
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


def simd_ok(a):
    """Whether ``group_dot_sums`` runs its SIMD loop for array ``a`` (jit-only; a constant)."""
    return False


@overload(simd_ok)
def _simd_ok(a):
    ok = isinstance(a, types.Array) and a.dtype in _NATIVE
    return lambda a: ok


@intrinsic
def _simd_affine_rows(typingctx, src, dst, base, nrows, width, head, scale, offset, stream):
    """SIMD body of ``affine_rows`` for float32/float64 arrays whose compute type is their own."""
    elt_t = src.dtype if isinstance(src, types.Array) else None
    lanes = isinstance(head, types.Array)
    pt = head.dtype if lanes else head
    if (elt_t not in _NATIVE or dst.dtype != elt_t or pt != elt_t
            or any((p.dtype if lanes else p) != elt_t for p in (scale, offset))
            or any(isinstance(p, types.Array) != lanes for p in (scale, offset))):
        return None
    sig = types.none(src, dst, base, nrows, width, head, scale, offset, stream)
    can_stream = dst.aligned  # aligned stores need an element-aligned array

    def codegen(context, builder, sig, args):
        elt = context.get_value_type(elt_t)
        vty = ir.VectorType(elt, 8)
        esize = context.get_abi_sizeof(elt)
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
                for j in range(8):
                    vec = builder.insert_element(vec, args[k], ir.Constant(ir.IntType(32), j))
                splat.append(vec)

        def vec_at(ptr, idx):
            return builder.bitcast(builder.gep(ptr, [idx]), vty.as_pointer())

        def one_vec(off, j, nt):
            """dst[off + j: +8] from src and the parameters of lanes j:j+8."""
            k = builder.add(off, j)
            v = builder.load(vec_at(ps, k), align=esize)
            if lanes:
                h, s, o = (builder.load(vec_at(p, j), align=esize) for p in pp)
            else:
                h, s, o = splat
            y = builder.fadd(builder.fmul(builder.fsub(v, h, flags=flags), s, flags=flags), o, flags=flags)
            st = builder.store(y, vec_at(pd, k), align=32 if nt else esize)
            if nt:
                st.set_metadata("nontemporal", nt_md)

        def one_scalar(off, j):
            k = builder.add(off, j)
            v = builder.load(builder.gep(ps, [k]), align=esize)
            if lanes:
                h, s, o = (builder.load(builder.gep(p, [j]), align=esize) for p in pp)
            else:
                h, s, o = args[5], args[6], args[7]
            y = builder.fadd(builder.fmul(builder.fsub(v, h, flags=flags), s, flags=flags), o, flags=flags)
            builder.store(y, builder.gep(pd, [k]), align=esize)

        def row(off, j0, n, nt):
            """Elements j0:j0 + n of the row at ``off``: vectors of 8 (four per iteration), then
            scalars."""
            n32 = builder.udiv(n, c64(32))
            n8 = builder.udiv(builder.urem(n, c64(32)), c64(8))
            at32 = builder.add(j0, builder.mul(n32, c64(32)))
            tail0 = builder.add(j0, builder.mul(builder.udiv(n, c64(8)), c64(8)))
            with cgutils.for_range(builder, n32) as q:  # four independent vectors per iteration
                j = builder.add(j0, builder.mul(q.index, c64(32)))
                for u in range(4):
                    one_vec(off, builder.add(j, c64(8 * u)), nt)
            with cgutils.for_range(builder, n8) as q:  # normal stores: may end inside a line
                one_vec(off, builder.add(at32, builder.mul(q.index, c64(8))), False)
            with cgutils.for_range(builder, builder.sub(builder.add(j0, n), tail0)) as q:
                one_scalar(off, builder.add(tail0, q.index))

        with builder.if_else(stream_v) as (then, otherwise):
            with then:
                # Streaming stores: scalars up to a cache-line boundary of dst, then aligned
                # non-temporal stores of whole lines only (32 elements at a time), the rest
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
                sfence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                        "llvm.x86.sse.sfence")
                builder.call(sfence, [])
            with otherwise:
                with cgutils.for_range(builder, nrows_v) as r:
                    row(builder.add(base_v, builder.mul(r.index, width_v)), c64(0), width_v, False)
        return context.get_dummy_value()

    return sig, codegen


def affine_rows(src, dst, base, nrows, width, head, scale, offset, stream=False):
    """For ``nrows`` consecutive rows of ``width`` elements from flat index ``base`` (jit-only)::

        dst[k] = (src[k] - head[j]) * scale[j] + offset[j],   k = base + r * width + j

    The parameters are arrays of ``width`` lanes (channels-last) or scalars for all of them (a
    contiguous run), in the compute type (``_engine.to_compute``). float32/float64 run one LLVM
    loop of 8-lane vectors with no alias test and no call per run: numba's loop paid a runtime
    alias check and a scalar epilogue per run, the main cost on short runs (8x8 planes) and
    256-lane channels-last rows. Safe in place (each element is read before it is written).
    ``stream``: write with non-temporal stores (float32/float64 only), for outputs far larger than
    the cache: no read-for-ownership of the output lines, as ``np.copyto`` does for large copies.
    """


@overload(affine_rows)
def _affine_rows(src, dst, base, nrows, width, head, scale, offset, stream=False):
    lanes = isinstance(head, types.Array)
    pt = head.dtype if lanes else head
    if src.dtype in _NATIVE and dst.dtype == src.dtype and pt == src.dtype:
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


@intrinsic
def store_fence(typingctx):
    """``sfence`` (jit-only): orders this thread's non-temporal stores before its later stores.
    A thread that wrote with ``stream=True`` must run it before other threads read the output
    (before the parallel region it runs in ends)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse.sfence")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


#: ``normalize_row_sums`` prefetches the next row this many bytes ahead (one line per 64 bytes,
#: into all cache levels). Measured, LN (16384, 4096) float32, one core, streaming, ms (copy
#: 20-22): no prefetch 33, 512 B 32-34, 1 KB 27, 2 KB 25-28, 3 KB 28, 4 KB 30-32.
_PF_DIST = 2048
_PF_LOC = 3


def _row_simd_types(row, dst, nxt, mh, weight, bias):
    """Whether ``normalize_row_sums`` has a SIMD loop for these numba types: float32/float64
    C-contiguous rows, parameters and optional weight/bias/next row in the same type."""
    elt_t = row.dtype if isinstance(row, types.Array) else None

    def same(a, opt):
        if opt and isinstance(a, types.NoneType):
            return True
        return isinstance(a, types.Array) and a.dtype == elt_t and a.layout == "C" and a.ndim == 1

    return (elt_t in _NATIVE and same(row, False) and same(dst, False) and mh == elt_t
            and same(nxt, True) and same(weight, True) and same(bias, True))


@intrinsic
def _simd_row_sums(typingctx, row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):
    """SIMD body of ``normalize_row_sums`` (see there)."""
    if not _row_simd_types(row, dst, nxt, mh, weight, bias) or rs != mh or tail != mh:
        return None
    elt_t = row.dtype
    no_nxt, no_w, no_b = (isinstance(a, types.NoneType) for a in (nxt, weight, bias))
    ret = types.UniTuple(types.float64, 2)
    sig = ret(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream)
    can_stream = dst.aligned  # aligned stores need an element-aligned array
    U = 4  # vectors per iteration
    P = 2  # pairs of float64 accumulators (8 ymm registers on AVX2; 4 pairs spilled to the stack)

    def codegen(context, builder, sig, args):
        elt = context.get_value_type(elt_t)
        vty = ir.VectorType(elt, 8)
        dty = ir.DoubleType()
        f64v = ir.VectorType(dty, 8)
        esize = context.get_abi_sizeof(elt)
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        flags = ("reassoc", "contract", "nsz")
        nt_md = builder.module.add_metadata([ir.Constant(i32, 1)])

        def c64(v):
            return ir.Constant(i64, v)

        def arr(k):
            return context.make_array(sig.args[k])(context, builder, args[k])

        def splat(v, t):
            vec = ir.Constant(t, None)
            for j in range(8):
                vec = builder.insert_element(vec, v, ir.Constant(i32, j))
            return vec

        a_row = arr(0)
        D = builder.extract_value(a_row.shape, 0)
        pr, pd = a_row.data, arr(1).data
        pn = None if no_nxt else arr(2).data
        pw = None if no_w else arr(7).data
        pb = None if no_b else arr(8).data
        shift_v = context.cast(builder, args[3], sig.args[3], types.float64)
        mh_s, rs_s, tail_s = args[4], args[5], args[6]
        mh_v, rs_v, tail_v, shift_vv = (splat(mh_s, vty), splat(rs_s, vty), splat(tail_s, vty),
                                        splat(shift_v, f64v))
        stream_v = context.cast(builder, args[9], sig.args[9], types.boolean)
        if not can_stream:
            stream_v = ir.Constant(ir.IntType(1), 0)
        zero_v = ir.Constant(f64v, None)
        accs = [(cgutils.alloca_once_value(builder, zero_v), cgutils.alloca_once_value(builder, zero_v))
                for _ in range(P)]  # allocas: promoted to registers
        acc_s1 = cgutils.alloca_once_value(builder, ir.Constant(dty, 0.0))
        acc_s2 = cgutils.alloca_once_value(builder, ir.Constant(dty, 0.0))

        def vec_at(ptr, idx):
            return builder.bitcast(builder.gep(ptr, [idx]), vty.as_pointer())

        i8p = ir.IntType(8).as_pointer()
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")

        def affine(v, j, load, params):
            # ((x - mh) * rs + tail) * w + b, in the order of engine.normalize_row
            mh, rs, tail = params
            y = builder.fadd(builder.fmul(builder.fsub(v, mh, flags=flags), rs, flags=flags), tail, flags=flags)
            if not no_w:
                y = builder.fmul(y, load(pw, j), flags=flags)
            if not no_b:
                y = builder.fadd(y, load(pb, j), flags=flags)
            return y

        def vload(p, j):
            return builder.load(vec_at(p, j), align=esize)

        def sload(p, j):
            return builder.load(builder.gep(p, [j]), align=esize)

        def one_vec(j, nt, u):
            if not no_nxt and nt and (u * 8 * esize) % 64 == 0:  # one prefetch per 64-byte line
                addr = builder.bitcast(builder.gep(pn, [builder.add(j, c64(_PF_DIST // esize))]), i8p)
                builder.call(prefetch, [addr, ir.Constant(i32, 0), ir.Constant(i32, _PF_LOC), ir.Constant(i32, 1)])
            if not no_nxt:
                d = vload(pn, j)
                if elt != dty:
                    d = builder.fpext(d, f64v)
                d = builder.fsub(d, shift_vv, flags=flags)
                a1, a2 = accs[u % P]
                builder.store(builder.fadd(builder.load(a1), d, flags=flags), a1)
                builder.store(builder.fadd(builder.load(a2), builder.fmul(d, d, flags=flags), flags=flags), a2)
            y = affine(vload(pr, j), j, vload, (mh_v, rs_v, tail_v))
            st = builder.store(y, vec_at(pd, j), align=32 if nt else esize)
            if nt:
                st.set_metadata("nontemporal", nt_md)

        def one_scalar(j):
            if not no_nxt:
                d = sload(pn, j)
                if elt != dty:
                    d = builder.fpext(d, dty)
                d = builder.fsub(d, shift_v, flags=flags)
                builder.store(builder.fadd(builder.load(acc_s1), d, flags=flags), acc_s1)
                builder.store(builder.fadd(builder.load(acc_s2), builder.fmul(d, d, flags=flags), flags=flags),
                              acc_s2)
            builder.store(affine(sload(pr, j), j, sload, (mh_s, rs_s, tail_s)), builder.gep(pd, [j]), align=esize)

        def span(j0, n, nt):
            """Elements j0:j0 + n: vectors of 8 (U per iteration, ``nt`` stores), then single
            vectors (normal stores: they may end inside a line), then scalars."""
            nU = builder.udiv(n, c64(8 * U))
            atU = builder.add(j0, builder.mul(nU, c64(8 * U)))
            n8 = builder.udiv(builder.sub(builder.add(j0, n), atU), c64(8))
            tail0 = builder.add(atU, builder.mul(n8, c64(8)))
            with cgutils.for_range(builder, nU) as q:
                j = builder.add(j0, builder.mul(q.index, c64(8 * U)))
                for u in range(U):
                    one_vec(builder.add(j, c64(8 * u)), nt, u)
            with cgutils.for_range(builder, n8) as q:
                one_vec(builder.add(atU, builder.mul(q.index, c64(8))), False, 0)
            with cgutils.for_range(builder, builder.sub(builder.add(j0, n), tail0)) as q:
                one_scalar(builder.add(tail0, q.index))

        with builder.if_else(stream_v) as (then, otherwise):
            with then:
                # Scalars up to a cache-line boundary of dst, then whole lines with aligned
                # non-temporal stores (see affine_rows: a line written partly non-temporally is
                # flushed partly), the rest normal stores. No sfence here: the caller fences
                # once after its rows (``store_fence``).
                addr = builder.ptrtoint(pd, i64)
                peel = builder.udiv(builder.and_(builder.sub(c64(0), addr), c64(63)), c64(esize))
                peel = builder.select(builder.icmp_unsigned("<", peel, D), peel, D)
                with cgutils.for_range(builder, peel) as q:
                    one_scalar(q.index)
                span(peel, builder.sub(D, peel), True)
            with otherwise:
                span(c64(0), D, False)

        s1 = builder.load(acc_s1)
        s2 = builder.load(acc_s2)
        v1, v2 = builder.load(accs[0][0]), builder.load(accs[0][1])
        for a1, a2 in accs[1:]:
            v1 = builder.fadd(v1, builder.load(a1), flags=flags)
            v2 = builder.fadd(v2, builder.load(a2), flags=flags)
        for j in range(8):
            s1 = builder.fadd(s1, builder.extract_element(v1, ir.Constant(i32, j)), flags=flags)
            s2 = builder.fadd(s2, builder.extract_element(v2, ir.Constant(i32, j)), flags=flags)
        return context.make_tuple(builder, sig.return_type, [s1, s2])

    return sig, codegen


def normalize_row_sums(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):
    """LayerNorm's row step (jit-only)::

        dst[j] = ((row[j] - mh) * rs + tail) * weight[j] + bias[j]     (weight/bias may be None)
        returns (Σ d, Σ d²), d = float64(nxt[j]) - shift                (nxt None: (0.0, 0.0))

    float32/float64 C-contiguous rows run one LLVM loop of 8-lane vectors; with ``stream`` the
    whole cache lines of ``dst`` are written with non-temporal stores (no read-for-ownership of
    the output, as ``np.copyto`` does for large copies), and the caller must run
    ``store_fence`` before another thread reads ``dst``. Other types: a plain loop, no streaming.
    The sums add in a different order than a numba loop (rounding of float64 sums only).
    """


@overload(normalize_row_sums)
def _normalize_row_sums(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):
    if _row_simd_types(row, dst, nxt, mh, weight, bias) and rs == mh and tail == mh:
        def simd(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):
            return _simd_row_sums(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream)
        return simd

    def plain(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):  # float16/bfloat16, strided
        s1 = 0.0
        s2 = 0.0
        for j in range(np.uint64(row.shape[0])):
            if nxt is not None:
                d = np.float64(load(nxt[j])) - shift
                s1 += d
                s2 += d * d
            y = (load(row[j]) - mh) * rs + tail
            if weight is not None:
                y = y * weight[j]
            if bias is not None:
                y = y + bias[j]
            dst[j] = store(y, dst)
        return s1, s2
    return plain


def row_stream_ok(dst):
    """Whether ``normalize_row_sums`` can stream into rows of array ``dst`` (jit-only; a
    constant): float32/float64 only."""
    return False


@overload(row_stream_ok)
def _row_stream_ok(dst):
    ok = isinstance(dst, types.Array) and dst.dtype in _NATIVE
    return lambda dst: ok
