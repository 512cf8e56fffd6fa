"""LayerNorm's pipelined row step as one LLVM loop (the style of ``simd.py``).

``normalize_row_sums`` normalizes row r with weight/bias while it sums row r + 1 in float64, 8
lanes wide, with optional non-temporal stores for outputs far larger than the cache (the caller
then runs ``simd.store_fence`` before another thread reads the output).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .._numba import cgutils
from .halfio import HALF_LANES, emit_decode, emit_encode, half_kind, load, store
from .simd import _COMPUTE, _SIMD_ELTS

#: ``normalize_row_sums`` prefetches the next row this many bytes ahead (one line per 64 bytes,
#: into all cache levels). Measured, LN (16384, 4096) float32, one core, streaming, ms (copy
#: 20-22): no prefetch 33, 512 B 32-34, 1 KB 27, 2 KB 25-28, 3 KB 28, 4 KB 30-32.
_PF_DIST = 2048
_PF_LOC = 3


def _row_simd_types(row, dst, nxt, mh, weight, bias):
    """Whether ``normalize_row_sums`` has a SIMD loop for these numba types: float32/float64
    C-contiguous rows with parameters and optional weight/bias/next row in the same type, or the
    16-bit views of half rows with float32 parameters and weight/bias."""
    elt_t = row.dtype if isinstance(row, types.Array) else None
    ct = _COMPUTE.get(elt_t)

    def same(a, opt, t):
        if opt and isinstance(a, types.NoneType):
            return True
        return isinstance(a, types.Array) and a.dtype == t and a.layout == "C" and a.ndim == 1

    return (elt_t in _SIMD_ELTS and same(row, False, elt_t) and same(dst, False, elt_t) and mh == ct
            and same(nxt, True, elt_t) and same(weight, True, ct) and same(bias, True, ct))


@intrinsic
def _simd_row_sums(typingctx, row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):
    """SIMD body of ``normalize_row_sums`` (see there)."""
    if not _row_simd_types(row, dst, nxt, mh, weight, bias) or rs != mh or tail != mh:
        return None
    elt_t = row.dtype
    kind = half_kind(elt_t)
    no_nxt, no_w, no_b = (isinstance(a, types.NoneType) for a in (nxt, weight, bias))
    ret = types.UniTuple(types.float64, 2)
    sig = ret(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream)
    can_stream = dst.aligned  # aligned stores need an element-aligned array
    U = 4  # vectors per iteration
    P = 2  # pairs of float64 accumulators (8 ymm registers on AVX2; 4 pairs spilled to the stack)
    V = HALF_LANES if kind else 8  # lanes per vector

    def codegen(context, builder, sig, args):
        elt = context.get_value_type(elt_t)
        ct = context.get_value_type(_COMPUTE[elt_t])
        vty = ir.VectorType(ct, V)  # compute vectors
        ety = ir.VectorType(elt, V)  # element vectors (of the 16-bit views for half rows)
        dty = ir.DoubleType()
        f64v = ir.VectorType(dty, V)
        esize = context.get_abi_sizeof(elt)
        psize = context.get_abi_sizeof(ct)
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
            for j in range(V):
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

        def vec_at(ptr, idx, t):
            return builder.bitcast(builder.gep(ptr, [idx]), t.as_pointer())

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

        def vload(p, j):  # a vector of parameters (weight, bias)
            return builder.load(vec_at(p, j, vty), align=psize)

        def vdata(p, j):  # a vector of elements, as compute values
            v = builder.load(vec_at(p, j, ety), align=esize)
            return emit_decode(builder, v, kind) if kind else v

        def sload(p, j):
            return builder.load(builder.gep(p, [j]), align=psize)

        def sdata(p, j):  # one element, as a compute value
            v = builder.load(builder.gep(p, [j]), align=esize)
            if not kind:
                return v
            one = builder.insert_element(ir.Constant(ir.VectorType(elt, 1), None), v, ir.Constant(i32, 0))
            return builder.extract_element(emit_decode(builder, one, kind), ir.Constant(i32, 0))

        def sstore(y, j):
            if kind:
                one = builder.insert_element(ir.Constant(ir.VectorType(ct, 1), None), y, ir.Constant(i32, 0))
                y = builder.extract_element(emit_encode(builder, one, kind), ir.Constant(i32, 0))
            builder.store(y, builder.gep(pd, [j]), align=esize)

        def one_vec(j, nt, u):
            if not no_nxt and nt and (u * V * esize) % 64 == 0:  # one prefetch per 64-byte line
                addr = builder.bitcast(builder.gep(pn, [builder.add(j, c64(_PF_DIST // esize))]), i8p)
                builder.call(prefetch, [addr, ir.Constant(i32, 0), ir.Constant(i32, _PF_LOC), ir.Constant(i32, 1)])
            if not no_nxt:
                d = vdata(pn, j)
                if d.type != f64v:
                    d = builder.fpext(d, f64v)
                d = builder.fsub(d, shift_vv, flags=flags)
                a1, a2 = accs[u % P]
                builder.store(builder.fadd(builder.load(a1), d, flags=flags), a1)
                builder.store(builder.fadd(builder.load(a2), builder.fmul(d, d, flags=flags), flags=flags), a2)
            y = affine(vdata(pr, j), j, vload, (mh_v, rs_v, tail_v))
            if kind:
                y = emit_encode(builder, y, kind)
            st = builder.store(y, vec_at(pd, j, ety), align=32 if nt else esize)
            if nt:
                st.set_metadata("nontemporal", nt_md)

        def one_scalar(j):
            if not no_nxt:
                d = sdata(pn, j)
                if d.type != dty:
                    d = builder.fpext(d, dty)
                d = builder.fsub(d, shift_v, flags=flags)
                builder.store(builder.fadd(builder.load(acc_s1), d, flags=flags), acc_s1)
                builder.store(builder.fadd(builder.load(acc_s2), builder.fmul(d, d, flags=flags), flags=flags),
                              acc_s2)
            sstore(affine(sdata(pr, j), j, sload, (mh_s, rs_s, tail_s)), j)

        def span(j0, n, nt):
            """Elements j0:j0 + n: vectors of V (U per iteration, ``nt`` stores), then single
            vectors (normal stores: they may end inside a line), then scalars."""
            nU = builder.udiv(n, c64(V * U))
            atU = builder.add(j0, builder.mul(nU, c64(V * U)))
            nv = builder.udiv(builder.sub(builder.add(j0, n), atU), c64(V))
            tail0 = builder.add(atU, builder.mul(nv, c64(V)))
            with cgutils.for_range(builder, nU) as q:
                j = builder.add(j0, builder.mul(q.index, c64(V * U)))
                for u in range(U):
                    one_vec(builder.add(j, c64(V * u)), nt, u)
            with cgutils.for_range(builder, nv) as q:
                one_vec(builder.add(atU, builder.mul(q.index, c64(V))), False, 0)
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
        for j in range(V):
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


# Inlined at numba-IR level: called once per row, the call to its wrapper cost ~20 ns of a
# (16, 768) bfloat16 LayerNorm row (4.2 -> 3.8 us).
@overload(normalize_row_sums, inline="always")
def _normalize_row_sums(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):
    if _row_simd_types(row, dst, nxt, mh, weight, bias) and rs == mh and tail == mh:
        def simd(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):
            return _simd_row_sums(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream)
        return simd

    def plain(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):  # strided rows, no SIMD
        s1 = 0.0
        s2 = 0.0
        for j in range(np.uint64(row.shape[0])):
            d = _next_value(nxt, j, shift)
            s1 += d
            s2 += d * d
            dst[j] = store(_plus(_times((load(row[j]) - mh) * rs + tail, weight, j), bias, j), dst)
        return s1, s2
    return plain


# Element helpers of the plain loop with None as "absent", resolved by type: it is inlined into
# its callers (``inline="always"``), where a branch on ``is None`` would not be pruned.
def _next_value(nxt, j, shift):
    return 0.0


def _times(y, w, j):
    return y


def _plus(y, b, j):
    return y


@overload(_next_value, inline="always")
def _next_value_impl(nxt, j, shift):
    if isinstance(nxt, types.NoneType):
        return lambda nxt, j, shift: 0.0
    return lambda nxt, j, shift: np.float64(load(nxt[j])) - shift


@overload(_times, inline="always")
def _times_impl(y, w, j):
    if isinstance(w, types.NoneType):
        return lambda y, w, j: y
    return lambda y, w, j: y * w[j]


@overload(_plus, inline="always")
def _plus_impl(y, b, j):
    if isinstance(b, types.NoneType):
        return lambda y, b, j: y
    return lambda y, b, j: y + b[j]


def row_stream_ok(dst):
    """Whether ``normalize_row_sums`` can stream into rows of array ``dst`` (jit-only; a
    constant): float32/float64 only."""
    return False


@overload(row_stream_ok)
def _row_stream_ok(dst):
    ok = isinstance(dst, types.Array) and dst.dtype in _SIMD_ELTS
    return lambda dst: ok
