"""The vector half conversions of the SIMD loops (``cpu/halfio.emit_decode`` / ``emit_encode``),
exhaustively against NumPy / ml_dtypes, for the lane counts the loops use and for one lane (their
scalar tails): F16C / AVX512_BF16 where this CPU has them, integer code otherwise; the portable
run (``test_half_portable.py``) repeats this file without them. Then the SIMD loops themselves on
half rows: ``affine_rows`` (runs, lanes, streaming) and ``normalize_row_sums`` (with the next
row's sums, streaming), against the scalar hooks."""

from __future__ import annotations

import numpy as np
import pytest
from family_reference import ulp_distance
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from numbanorm.cpu import halfio
from numbanorm.cpu.halfio import HALF_LANES, emit_decode, emit_encode
from numbanorm.cpu.simd import affine_rows, store_fence
from numbanorm.cpu.simd_rows import normalize_row_sums

ml_dtypes = pytest.importorskip("ml_dtypes")
KINDS = {"f16": (np.uint16, np.float16), "bf16": (np.int16, ml_dtypes.bfloat16)}


def _converter(kind: str, lanes: int, decode: bool):
    """An njit function converting whole arrays ``lanes`` elements at a time."""
    @intrinsic
    def step(typingctx, src, dst, i):
        def codegen(context, builder, sig, args):
            ps = context.make_array(sig.args[0])(context, builder, args[0]).data
            pd = context.make_array(sig.args[1])(context, builder, args[1]).data
            k = args[2]
            sty = ir.VectorType(ir.IntType(16) if decode else ir.FloatType(), lanes)
            v = builder.load(builder.bitcast(builder.gep(ps, [k]), sty.as_pointer()), align=2)
            y = emit_decode(builder, v, kind) if decode else emit_encode(builder, v, kind)
            builder.store(y, builder.bitcast(builder.gep(pd, [k]), y.type.as_pointer()), align=2)
            return context.get_dummy_value()

        return types.none(src, dst, i), codegen

    @njit
    def run(src, dst):
        for i in range(0, src.shape[0], lanes):
            step(src, dst, i)

    return run


def _same_floats(got, want):
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lanes", sorted({HALF_LANES, 8, 1}))
def test_decode_every_bit_pattern(kind, lanes):
    view, dt = KINDS[kind]
    bits = np.arange(1 << 16, dtype=np.uint16).view(view)
    got = np.empty(bits.shape, np.float32)
    _converter(kind, lanes, True)(bits, got)
    _same_floats(got, bits.view(dt).astype(np.float32))


def _encode_cases(rng, dt):
    """Every half value, the midpoints between neighbours (ties), their float32 neighbours,
    subnormal and overflow edges, float32 subnormals, random magnitudes, NaN and inf."""
    with np.errstate(invalid="ignore", over="ignore"):
        halves = np.arange(1 << 16, dtype=np.uint16).view(dt).astype(np.float64)
    finite = np.unique(halves[np.isfinite(halves)])
    mids = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)
    mids = mids[np.isfinite(mids)]
    tiny = np.array([1e-39, -1e-39, 2e-45, 1.17e-38, -1.1754942e-38, 1.1754944e-38], np.float32)
    v = np.concatenate([
        finite.astype(np.float32), mids, np.nextafter(mids, np.float32(np.inf)),
        np.nextafter(mids, np.float32(-np.inf)), tiny,
        (rng.standard_normal(50_000) * 10.0 ** rng.integers(-38, 38, 50_000)).astype(np.float32),
        np.array([65519.99, 65520.0, 65536.0, 1e6, 3.4e38, np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0], np.float32),
    ])
    return v[: v.size // 16 * 16]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lanes", sorted({HALF_LANES, 8, 1}))
def test_encode_rounds_to_nearest_even(rng, kind, lanes):
    view, dt = KINDS[kind]
    values = _encode_cases(rng, dt)
    got = np.empty(values.shape, view)
    _converter(kind, lanes, False)(values, got)
    with np.errstate(over="ignore", invalid="ignore"):
        want = values.astype(dt)
    nan = np.isnan(values)
    assert np.isnan(got[nan].view(dt).astype(np.float32)).all()
    np.testing.assert_array_equal(got[~nan], want[~nan].view(view))


def test_hardware_flags_follow_the_target():
    """The instruction choices read the CPU numba compiles for (off for an overridden target)."""
    import numba

    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        assert not halfio.HW_F16 and not halfio.HW_BF16 and HALF_LANES == 8
    else:
        from llvmlite import binding as llvm

        features = llvm.get_host_cpu_features()
        assert halfio.HW_F16 == bool(features.get("f16c"))
        assert HALF_LANES == (16 if features.get("avx512f") else 8)


# ------------------------------------------------------------------------------ the SIMD loops
@njit
def _scalar_affine(src, dst, head, scale, offset):
    for k in range(src.shape[0]):
        j = k % head.shape[0]
        dst[k] = halfio.store((halfio.load(src[k]) - head[j]) * scale[j] + offset[j], dst)


@njit
def _simd_affine(src, dst, base, nrows, width, head, scale, offset, stream):
    affine_rows(src, dst, base, nrows, width, head, scale, offset, stream)


@njit
def _simd_affine_run(src, dst, base, n, h, s, o, stream):
    affine_rows(src, dst, base, 1, n, h, s, o, stream)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_affine_rows_half(rng, kind, stream):
    """Lanes (channels-last rows of W) and runs (one scalar set), odd widths, starts off a line."""
    view, dt = KINDS[kind]
    for width in (1, 7, 24, 264, 301):
        for off in (0, 1, 13):
            nrows = 5
            x = (rng.standard_normal(off + nrows * width) * 3).astype(dt).view(view)
            head = rng.standard_normal(width).astype(np.float32)
            scale = rng.standard_normal(width).astype(np.float32)
            offset = rng.standard_normal(width).astype(np.float32)
            want = np.empty(nrows * width, view)
            _scalar_affine(x[off:], want, head, scale, offset)
            got = np.full(off + nrows * width, 7, view)
            _simd_affine(x, got, off, nrows, width, head, scale, offset, stream)
            assert ulp_distance(got[off:].view(dt), want.view(dt)).max() <= 1  # FMA or not
            got = np.full(off + nrows * width, 7, view)
            h, s, o = head[:1], scale[:1], offset[:1]
            _simd_affine_run(x, got, off, nrows * width, h[0], s[0], o[0], stream)
            want1 = np.empty(nrows * width, view)
            _scalar_affine(x[off:], want1, h, s, o)
            assert ulp_distance(got[off:].view(dt), want1.view(dt)).max() <= 1


@njit
def _row_sums(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream):
    s = normalize_row_sums(row, dst, nxt, shift, mh, rs, tail, weight, bias, stream)
    store_fence()
    return s


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_normalize_row_sums_half(rng, kind, stream):
    view, dt = KINDS[kind]
    for D in (1, 15, 16, 100, 1027):
        buf = (rng.standard_normal(2 * D + 1) * 2 + 5).astype(dt).view(view)
        row, nxt = buf[1:D + 1], buf[D + 1:]
        w = rng.standard_normal(D).astype(np.float32)
        b = rng.standard_normal(D).astype(np.float32)
        mh, rs, tail = np.float32(5.0), np.float32(0.5), np.float32(0.01)
        dst = np.full(D + 1, 7, view)[1:]
        s1, s2 = _row_sums(row, dst, nxt, 5.0, mh, rs, tail, w, b, stream)
        x = row.view(dt).astype(np.float32)
        want = ((((x - mh) * rs + tail) * w + b).astype(np.float32)).astype(dt)
        # float32 evaluation, fused (FMA) or not: at most the one rounding of the half result apart
        assert ulp_distance(dst.view(dt), want).max() <= 1
        d = nxt.view(dt).astype(np.float64) - 5.0
        np.testing.assert_allclose((s1, s2), (d.sum(), (d * d).sum()), rtol=1e-12)
