"""float16 / bfloat16 I/O on the CPU: the bit conversions exhaustively, and every op within the
half-precision contract (``half_contract``: 1 ulp of y64 + 2**-21 (|x̂·γ| + |β|)) of its float64
reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import poisoned_like
from family_reference import group_norm_ref, instance_norm_running_ref, rms_norm_ref, ulp_distance
from half_contract import assert_contract
from reference import batch_norm_ref, layer_norm_ref

import numbanorm as nb
from numbanorm._numba import jit  # numba's disk cache, stamped with the package: compiled once
from numbanorm.cpu.halfio import (
    f16_bits_to_f32_int,
    f64_to_f16_bits_int,
    flush_row,
    load,
    row_scratch,
    row_target,
    store,
)

ml_dtypes = pytest.importorskip("ml_dtypes")
HALVES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
# The load/store hooks are checked exhaustively for both formats below and layer_norm runs both;
# every other op runs one format (float16 for some, bfloat16 for others): an op's half path is
# the same generic code for either, and each extra format only compiles its kernels again
# (about 10 s per op on a cold cache).
F16, BF16 = HALVES


@jit()
def _decode(bits, out):
    for i in range(bits.shape[0]):
        out[i] = load(bits[i])


@jit()
def _encode(values, out):
    for i in range(values.shape[0]):
        out[i] = store(values[i], out)


@jit()
def _decode_f16_int(bits, out):
    for i in range(bits.shape[0]):
        out[i] = f16_bits_to_f32_int(bits[i])


@jit()
def _encode_f16_int(values, out):
    for i in range(values.shape[0]):
        out[i] = f64_to_f16_bits_int(values[i])


def _same_floats(got, want):
    """Bit-equal, except that any NaN matches any NaN (F16C quiets signalling NaNs)."""
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("decode", [_decode, _decode_f16_int], ids=["hook", "portable"])
def test_decode_all_float16_bit_patterns(decode):
    bits = np.arange(1 << 16, dtype=np.uint16)  # uint16 carries float16
    got = np.empty(bits.shape, np.float32)
    decode(bits, got)
    _same_floats(got, bits.view(np.float16).astype(np.float32))


def test_decode_all_bfloat16_bit_patterns():
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = np.empty(bits.shape, np.float32)
    _decode(bits.view(np.int16), got)  # int16 carries bfloat16
    _same_floats(got, bits.view(ml_dtypes.bfloat16).astype(np.float32))


def _encode_cases(rng, dtype):
    """Exact half values, the midpoints between neighbours (ties) and their float32 neighbours,
    overflow and subnormal edges, and random magnitudes over the whole range."""
    with np.errstate(invalid="ignore", over="ignore"):
        halves = np.arange(1 << 16, dtype=np.uint16).view(dtype).astype(np.float64)
    finite = np.unique(halves[np.isfinite(halves)])
    mids = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)
    mids = mids[np.isfinite(mids)]
    return np.concatenate([
        finite, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf)),
        rng.standard_normal(100_000) * 10.0 ** rng.integers(-40, 40, 100_000),
        [65519.99, 65520.0, 1e6, 3.4e38, 3.5e38, -1e300, 2.0**-25, 1e-300, np.inf, -np.inf, -0.0],
    ])


@pytest.mark.parametrize("encode", [_encode, _encode_f16_int], ids=["hook", "portable"])
def test_float16_encode_rounds_to_nearest_even(rng, encode):
    """The store rounds to float32 then to float16, each to nearest even; NumPy's float32 ->
    float16 cast is the oracle."""
    values = _encode_cases(rng, np.float16)
    got = np.empty(values.shape, np.uint16 if encode is _encode else np.int64)
    encode(values, got)
    with np.errstate(over="ignore"):
        want = values.astype(np.float32).astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got.astype(np.uint16), want)
    encode(np.array([np.nan, -np.nan]), got[:2])
    assert np.isnan(got[:2].astype(np.uint16).view(np.float16)).all()


def test_bfloat16_encode_rounds_to_nearest_even(rng):
    values = _encode_cases(rng, ml_dtypes.bfloat16)
    got = np.empty(values.shape, np.int16)
    _encode(values, got)
    with np.errstate(over="ignore"):
        want = values.astype(np.float32).astype(ml_dtypes.bfloat16).view(np.int16)
    np.testing.assert_array_equal(got, want)
    _encode(np.array([np.nan, -np.nan, 3.4e39]), got[:3])
    assert np.isnan(got[:2].view(ml_dtypes.bfloat16).astype(np.float32)).all()
    assert got[2].view(np.uint16) == 0x7F80  # beyond bfloat16's max: inf


@jit()
def _encode_rows(values, out):
    """``out = values`` through the row hooks: float32 scratch then one conversion per row for
    bfloat16, direct stores otherwise."""
    scratch = row_scratch(out, out.shape[1])
    for r in range(out.shape[0]):
        t = row_target(scratch, out[r])
        for j in range(out.shape[1]):
            t[j] = store(values[r, j], t)
        flush_row(t, out[r])


@pytest.mark.parametrize("dtype", HALVES + [np.dtype(np.float32)], ids=str)
def test_row_hooks_store_the_same_bits_as_store(rng, dtype):
    values = _encode_cases(rng, F16 if dtype == np.float32 else dtype)
    values = np.concatenate([[np.nan, -np.nan], values])[: values.size // 97 * 97].reshape(-1, 97)
    view = np.dtype({F16: np.uint16, BF16: np.int16}.get(dtype, dtype))
    want = np.empty(values.shape, view)
    _encode(values.reshape(-1), want.reshape(-1))
    got = np.full(values.shape, 7, view)
    _encode_rows(values, got)
    nan = np.isnan(want.view(dtype).astype(np.float32))
    np.testing.assert_array_equal(np.isnan(got.view(dtype).astype(np.float32)), nan)
    np.testing.assert_array_equal(got[~nan], want[~nan])


def _within_contract(y, ref64, beta=0.0):
    assert_contract(y, ref64, beta)


def _within_one_ulp(y, ref64):
    want = ref64.astype(y.dtype)
    dist = ulp_distance(y, want)
    assert dist.max() <= 1, f"{dist.max()} ulp at {np.unravel_index(dist.argmax(), dist.shape)}"


def _half(rng, shape, dtype, scale=1.0, offset=0.0):
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("param_dtype", ["half", "float32"])
def test_layer_norm_half(rng, dtype, param_dtype):
    pdt = dtype if param_dtype == "half" else np.float32
    x = _half(rng, (5, 37, 300), dtype, 2.0, 3.0)
    w, b = _half(rng, 300, pdt), _half(rng, 300, pdt)
    y, mean, rstd = nb.layer_norm(x, 300, w, b, out=poisoned_like(x), return_stats=True)
    assert y.dtype == dtype and mean.dtype == rstd.dtype == np.float32
    ry, rmean, rrstd = layer_norm_ref(x, (300,), w, b)
    _within_contract(y, ry, b.astype(np.float64))
    np.testing.assert_allclose(mean, rmean, rtol=1e-6)
    np.testing.assert_allclose(rstd, rrstd, rtol=1e-6)


@pytest.mark.parametrize("dtype", [F16], ids=str)
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_batch_norm_half(rng, dtype, channel_axis):
    x = _half(rng, (6, 5, 7, 9), dtype, 1.0, 2.0)
    C = x.shape[channel_axis]
    w, b = _half(rng, C, np.float32), _half(rng, C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, mean, invstd = nb.batch_norm(x, rm, rv, w, b, training=True, channel_axis=channel_axis, return_stats=True)
    ry, rmean, rinv, rrm, rrv = batch_norm_ref(x, np.zeros(C), np.ones(C), w, b, True, channel_axis=channel_axis)
    assert y.dtype == dtype and mean.dtype == np.float32
    bshape = [1] * x.ndim
    bshape[channel_axis] = C
    _within_contract(y, ry, b.reshape(bshape))
    np.testing.assert_allclose(mean, rmean, rtol=1e-6)
    np.testing.assert_allclose(rm, rrm, rtol=1e-6)
    np.testing.assert_allclose(rv, rrv, rtol=1e-6)
    y_eval = nb.batch_norm(x, rm, rv, w, b, channel_axis=channel_axis)  # eval with float32 running stats
    _within_contract(y_eval, batch_norm_ref(x, rm, rv, w, b, False, channel_axis=channel_axis)[0], b.reshape(bshape))


@pytest.mark.parametrize("dtype", [BF16], ids=str)
def test_rms_norm_half(rng, dtype):
    x = _half(rng, (7, 129), dtype, 3.0)
    w = _half(rng, 129, dtype)
    y = nb.rms_norm(x, 129, w)
    assert y.dtype == dtype
    _within_contract(y, rms_norm_ref(x, 1, w))  # eps=None: float32's epsilon, as torch for half input
    torch = pytest.importorskip("torch")
    tdt = torch.float16 if dtype == np.float16 else torch.bfloat16
    ty = torch.nn.functional.rms_norm(torch.from_numpy(x.astype(np.float32)).to(tdt), (129,),
                                      torch.from_numpy(w.astype(np.float32)).to(tdt))
    assert ulp_distance(y, ty.float().numpy().astype(dtype)).max() <= 2  # torch rounds twice (x·rstd, ·w)


@pytest.mark.parametrize("dtype", [BF16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_and_instance_norm_half(rng, dtype, channels_last):
    x = _half(rng, (3, 6, 10, 11), dtype, 2.0, -1.0)
    w, b = _half(rng, 6, np.float32), _half(rng, 6, dtype)
    axis = -1 if channels_last else 1
    xi = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x
    y, mean, rstd = nb.group_norm(xi, 3, w, b, channel_axis=axis, return_stats=True)
    ry, rmean, rrstd = group_norm_ref(xi, 3, w, b, channel_axis=axis)
    assert y.dtype == dtype and mean.dtype == np.float32
    bshape = (1, 1, 1, 6) if channels_last else (1, 6, 1, 1)
    beta = b.astype(np.float64).reshape(bshape)
    _within_contract(y, ry, beta)
    np.testing.assert_allclose(rstd, rrstd, rtol=1e-6)
    rm, rv = np.zeros(6, dtype), np.ones(6, dtype)  # half running stats, updated in place
    y = nb.instance_norm(xi, rm, rv, w, b, channel_axis=axis)
    _within_contract(y, group_norm_ref(xi, 6, w, b, channel_axis=axis)[0], beta)
    ref_rm, ref_rv = instance_norm_running_ref(xi, np.zeros(6), np.ones(6), 0.1, channel_axis=axis)
    assert rm.dtype == rv.dtype == dtype
    _within_one_ulp(rm, ref_rm)
    _within_one_ulp(rv, ref_rv)


@pytest.mark.parametrize("dtype", [F16], ids=str)
def test_add_layer_norm_half(rng, dtype):
    x, r = _half(rng, (9, 75), dtype), _half(rng, (9, 75), dtype, 4.0)
    w, b = _half(rng, 75, np.float32), _half(rng, 75, np.float32)
    y, s = nb.add_layer_norm(x, r, 75, w, b)
    exact_sum = x.astype(np.float64) + r.astype(np.float64)  # exact in float64 for half operands
    _within_one_ulp(s, exact_sum)
    if dtype == np.float16:  # NumPy's float64 -> float16 cast is correctly rounded: bit-exact
        np.testing.assert_array_equal(s.view(np.uint16), exact_sum.astype(np.float16).view(np.uint16))
    _within_contract(y, layer_norm_ref(s, (75,), w, b)[0], b)
    np.testing.assert_array_equal(y.view(np.uint16), nb.layer_norm(s, 75, w, b).view(np.uint16))


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_half_param_dtype_checked(dtype):
    x = np.ones((2, 4), dtype)
    with pytest.raises(TypeError, match="weight must have dtype .* or float32"):
        nb.layer_norm(x, 4, np.ones(4, np.float64))


def test_layer_norm_bfloat16_pipelined_rows(rng):
    """Above _LN_PIPELINE_ELEMENTS rows are normalized while the next one is summed, in place."""
    from numbanorm.cpu.layer_norm import LN_PIPELINE_ELEMENTS

    D = 4099
    x = _half(rng, (LN_PIPELINE_ELEMENTS // D + 3, D), BF16, 1.0, 50.0)
    w, b = _half(rng, D, np.float32), _half(rng, D, np.float32)
    ry = layer_norm_ref(x, (D,), w, b)[0]
    y = nb.layer_norm(x, D, w, b, out=x)
    assert y is x
    _within_contract(y, ry, b)


@pytest.mark.parametrize("shape", [(2, 3, 48, 50), (1, 2, 190, 190)], ids=["serial", "split-runs"])
def test_bfloat16_batch_and_group_norm_long_runs(rng, shape):
    """bfloat16 BatchNorm training and GroupNorm on NCHW runs of thousands of elements; the larger
    shape also cuts each run between two tasks (partial moments merged, normalize from mid-run)."""
    x = _half(rng, shape, BF16, 3.0, 1e2)
    C = shape[1]
    w, b = _half(rng, C, BF16), _half(rng, C, BF16)
    y = nb.batch_norm(x, None, None, w, b, training=True)
    _within_contract(y, batch_norm_ref(x, None, None, w, b, True)[0], b.astype(np.float64).reshape(1, C, 1, 1))
    wg, bg = _half(rng, C, np.float32), _half(rng, C, BF16)  # the family test's dtypes
    y = nb.group_norm(x, 1, wg, bg)
    _within_contract(y, group_norm_ref(x, 1, wg, bg)[0], bg.astype(np.float64).reshape(1, C, 1, 1))
