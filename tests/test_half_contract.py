"""The half-precision accuracy contract (``half_contract``), op by op, on fresh random data:
uneven shapes, offsets, every input/output layout (C, Fortran, strided, negative strides, in
place), NaN-poisoned ``out=``, float16 and bfloat16, float32 and half parameters.

    |y - y64| <= ulp(y64) + 2**-21 (|x̂·γ| + |β|)

y64 is the float64 result from float64 reference statistics (``reference``, long-double sums).
Statistics keep their bound (float32 results: rtol 1e-6, offsets 1e4 and, for bfloat16, 1e6), and
constant input gives exactly β rounded to the output dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import poisoned_like
from family_reference import group_norm_ref, rms_norm_ref
from half_contract import assert_contract
from reference import batch_norm_ref, layer_norm_ref

import numbanorm as nb

ml_dtypes = pytest.importorskip("ml_dtypes")
F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
HALVES = [F16, BF16]
LAYOUTS = ["C", "F", "strided", "negative"]
STAT_RTOL = 1e-6


def _data(rng, shape, dtype, scale=2.0, offset=0.5):
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


def _layout(x: np.ndarray, kind: str) -> np.ndarray:
    """``x``'s values in memory layout ``kind``."""
    if kind == "C":
        return np.ascontiguousarray(x)
    if kind == "F":
        return np.asfortranarray(x)
    if kind == "strided":  # every other element of the last axis of a wider array
        buf = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        buf[..., ::2] = x
        return buf[..., ::2]
    if kind == "negative":  # negative strides on the first axis
        return np.ascontiguousarray(x[::-1])[::-1]
    raise ValueError(kind)


def _params(rng, n, dtype, which):
    """(weight, bias) of n entries: float32, the half dtype, or absent."""
    if which == "none":
        return None, None
    pdt = np.float32 if which == "float32" else dtype
    return (rng.uniform(-2, 2, n).astype(pdt), rng.standard_normal(n).astype(pdt))


def _beta(bias, shape, axis):
    if bias is None:
        return 0.0
    bshape = [1] * len(shape)
    bshape[axis] = bias.size
    return bias.astype(np.float64).reshape(bshape)


# ------------------------------------------------------------------------------------ LayerNorm
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("params", ["float32", "half", "none"])
@pytest.mark.parametrize("shape", [(3, 5, 37), (70, 1029)], ids=["small", "parallel"])
def test_layer_norm(rng, dtype, layout, params, shape):
    x = _layout(_data(rng, shape, dtype), layout)
    w, b = _params(rng, shape[-1], dtype, params)
    out = poisoned_like(x) if layout == "C" else np.asfortranarray(poisoned_like(x))
    y, mean, rstd = nb.layer_norm(x, shape[-1], w, b, out=out, return_stats=True)
    assert y is out and y.dtype == dtype and mean.dtype == rstd.dtype == np.float32
    ry, rmean, rrstd = layer_norm_ref(x, (shape[-1],), w, b)
    assert_contract(y, ry, _beta(b, shape, -1), "layer_norm")
    np.testing.assert_allclose(mean, rmean, rtol=STAT_RTOL)
    np.testing.assert_allclose(rstd, rrstd, rtol=STAT_RTOL)
    assert_contract(nb.layer_norm(x, shape[-1], w, b), ry, _beta(b, shape, -1), "layer_norm allocating")


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_layer_norm_in_place(rng, dtype):
    x = _data(rng, (9, 130), dtype)
    w, b = _params(rng, 130, dtype, "float32")
    ry = layer_norm_ref(x, (130,), w, b)[0]
    y = nb.layer_norm(x, 130, w, b, out=x)
    assert y is x
    assert_contract(y, ry, b, "layer_norm in place")


@pytest.mark.parametrize("dtype,offset,scale", [(F16, 1e4, 30.0), (BF16, 1e4, 30.0), (BF16, 1e6, 3e4)],
                         ids=["f16-1e4", "bf16-1e4", "bf16-1e6"])
def test_layer_norm_offsets(rng, dtype, offset, scale):
    x = _data(rng, (6, 517), dtype, scale, offset)
    w, b = _params(rng, 517, dtype, "float32")
    y, mean, rstd = nb.layer_norm(x, 517, w, b, return_stats=True)
    ry, rmean, rrstd = layer_norm_ref(x, (517,), w, b)
    assert_contract(y, ry, b, f"layer_norm at {offset}")
    np.testing.assert_allclose(mean, rmean, rtol=STAT_RTOL)
    np.testing.assert_allclose(rstd, rrstd, rtol=STAT_RTOL)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("value", [0.0, 1.0, -3.25, 1e4])
def test_constant_input_gives_exactly_bias(rng, dtype, value):
    """x̂ = 0: every op gives β rounded to the output dtype, exactly (float32 or half β)."""
    for pdt in (np.float32, dtype):
        w = rng.standard_normal(16).astype(pdt)
        b = rng.standard_normal(16).astype(pdt)
        want = b.astype(np.float32).astype(dtype)
        x = np.full((5, 16), value, dtype)
        np.testing.assert_array_equal(nb.layer_norm(x, 16, w, b).view(np.uint16),
                                      np.broadcast_to(want, x.shape).view(np.uint16))
        xb = np.full((4, 16, 9), value, dtype)
        y = nb.batch_norm(xb, None, None, w, b, training=True)
        np.testing.assert_array_equal(y.view(np.uint16), np.broadcast_to(want[None, :, None], xb.shape).view(np.uint16))
        y = nb.batch_norm(x, None, None, w, b, training=True, channel_axis=-1)
        np.testing.assert_array_equal(y.view(np.uint16), np.broadcast_to(want, x.shape).view(np.uint16))
        y = nb.group_norm(xb, 4, w, b)
        np.testing.assert_array_equal(y.view(np.uint16), np.broadcast_to(want[None, :, None], xb.shape).view(np.uint16))


# ------------------------------------------------------------------------------------ RMSNorm
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(4, 3, 129), (40, 2049)], ids=["small", "parallel"])
def test_rms_norm(rng, dtype, layout, shape):
    x = _layout(_data(rng, shape, dtype, 3.0, 0.0), layout)
    w = rng.uniform(-2, 2, shape[-1]).astype(np.float32 if layout == "C" else dtype)
    out = poisoned_like(x)
    y, rstd = nb.rms_norm(x, shape[-1], w, out=out, return_stats=True)
    assert y is out and rstd.dtype == np.float32
    ry = rms_norm_ref(x, 1, w)
    assert_contract(y, ry, 0.0, "rms_norm")
    x64 = x.astype(np.float64)
    rrstd = 1.0 / np.sqrt((x64 * x64).mean(-1) + np.finfo(np.float32).eps)
    np.testing.assert_allclose(rstd, rrstd, rtol=STAT_RTOL)


# ------------------------------------------------------------------------------------ BatchNorm
BN_CASES = [((6, 5, 7, 9), 1), ((6, 7, 9, 5), -1), ((5, 64, 11, 3), 1), ((4, 9, 11, 48), -1), ((300, 17), 1),
            ((3, 3, 100, 90), 1), ((4, 30, 30, 3), -1)]


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("shape,axis", BN_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else str(v))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm(rng, dtype, shape, axis, training):
    x = _data(rng, shape, dtype, 3.0, 2.0)
    C = shape[axis]
    w, b = _params(rng, C, dtype, "float32")
    rm, rv = rng.standard_normal(C).astype(np.float32), rng.uniform(0.5, 2.0, C).astype(np.float32)
    out = poisoned_like(x)
    ry, rmean, rinv, rrm, rrv = batch_norm_ref(x, rm, rv, w, b, training, channel_axis=axis)
    y2 = nb.batch_norm(x, rm.copy(), rv.copy(), w, b, training, channel_axis=axis)  # allocating (tiny path)
    y, mean, invstd = nb.batch_norm(x, rm, rv, w, b, training, channel_axis=axis, out=out, return_stats=True)
    assert y is out and mean.dtype == np.float32
    assert_contract(y, ry, _beta(b, shape, axis), "batch_norm")
    np.testing.assert_array_equal(y2.view(np.uint16), y.view(np.uint16))
    np.testing.assert_allclose(invstd, rinv, rtol=STAT_RTOL)
    if training:
        np.testing.assert_allclose(rm, rrm, rtol=STAT_RTOL, atol=1e-7)
        np.testing.assert_allclose(rv, rrv, rtol=STAT_RTOL)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS + ["channels_last", "in_place"])
def test_batch_norm_layouts(rng, dtype, layout):
    """Inputs and outputs in every layout (copies where no canonical view exists), both modes."""
    x0 = _data(rng, (4, 6, 10, 13), dtype, 2.0, -1.0)
    w, b = _params(rng, 6, dtype, "half")
    beta = _beta(b, x0.shape, 1)
    for training in (True, False):
        rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
        ry = batch_norm_ref(x0, rm, rv, w, b, training)[0]
        if layout == "channels_last":  # an NCHW array stored NHWC (torch's channels_last)
            x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x0, 1, -1)), -1, 1)
        elif layout == "in_place":
            x = x0.copy()
        else:
            x = _layout(x0, layout)
        out = x if layout == "in_place" else np.asfortranarray(poisoned_like(x))
        y = nb.batch_norm(x, rm, rv, w, b, training, out=out)
        assert y is out
        assert_contract(y, ry, beta, f"batch_norm {layout} training={training}")


@pytest.mark.parametrize("dtype,offset,scale", [(F16, 1e4, 30.0), (BF16, 1e4, 30.0), (BF16, 1e6, 3e4)],
                         ids=["f16-1e4", "bf16-1e4", "bf16-1e6"])
@pytest.mark.parametrize("axis", [1, -1])
def test_batch_norm_offsets(rng, dtype, offset, scale, axis):
    x = _data(rng, (8, 17, 13, 11), dtype, scale, offset)
    C = x.shape[axis]
    w, b = _params(rng, C, dtype, "float32")
    y, mean, invstd = nb.batch_norm(x, None, None, w, b, True, channel_axis=axis, return_stats=True)
    ry, rmean, rinv, _, _ = batch_norm_ref(x, None, None, w, b, True, channel_axis=axis)
    assert_contract(y, ry, _beta(b, x.shape, axis), f"batch_norm at {offset}")
    np.testing.assert_allclose(mean, rmean, rtol=STAT_RTOL)
    np.testing.assert_allclose(invstd, rinv, rtol=STAT_RTOL)


def test_batch_norm_half_running_stats(rng):
    """Running statistics in the half dtype: read and updated in place (rounded to half)."""
    x = _data(rng, (5, 8, 6, 7), BF16)
    rm, rv = np.zeros(8, BF16), np.ones(8, BF16)
    nb.batch_norm(x, rm, rv, training=True)
    _, _, _, rrm, rrv = batch_norm_ref(x, np.zeros(8), np.ones(8), training=True)
    np.testing.assert_allclose(rm.astype(np.float64), rrm, rtol=2**-8, atol=1e-3)
    np.testing.assert_allclose(rv.astype(np.float64), rrv, rtol=2**-8)
    y = nb.batch_norm(x, rm, rv)
    assert_contract(y, batch_norm_ref(x, rm, rv)[0], 0.0, "batch_norm eval, half running stats")


# ------------------------------------------------------------------------------------ GroupNorm
GN_CASES = [((3, 6, 10, 11), 3, 1), ((3, 10, 11, 6), 2, -1), ((2, 64, 9, 7), 32, 1), ((2, 9, 7, 64), 32, -1),
            ((5, 12, 33), 4, 1), ((2, 8, 60, 70), 2, 1)]


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("shape,groups,axis", GN_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else str(v))
def test_group_norm(rng, dtype, shape, groups, axis):
    x = _data(rng, shape, dtype, 2.0, 1.0)
    C = shape[axis]
    w, b = _params(rng, C, dtype, "float32")
    out = poisoned_like(x)
    y, mean, rstd = nb.group_norm(x, groups, w, b, channel_axis=axis, out=out, return_stats=True)
    ry, rmean, rrstd = group_norm_ref(x, groups, w, b, channel_axis=axis)
    assert y is out and mean.dtype == np.float32
    assert_contract(y, ry, _beta(b, shape, axis), "group_norm")
    np.testing.assert_allclose(rstd, rrstd, rtol=STAT_RTOL)
    yi = nb.instance_norm(x, weight=w, bias=b, channel_axis=axis)
    assert_contract(yi, group_norm_ref(x, C, w, b, channel_axis=axis)[0], _beta(b, shape, axis), "instance_norm")


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("layout", ["F", "negative", "in_place"])
def test_group_norm_layouts(rng, dtype, layout):
    x0 = _data(rng, (3, 8, 9, 10), dtype)
    w, b = _params(rng, 8, dtype, "half")
    ry = group_norm_ref(x0, 4, w, b)[0]
    x = x0.copy() if layout == "in_place" else _layout(x0, layout)
    out = x if layout == "in_place" else poisoned_like(x)
    y = nb.group_norm(x, 4, w, b, out=out)
    assert y is out
    assert_contract(y, ry, _beta(b, x0.shape, 1), f"group_norm {layout}")


# ------------------------------------------------------------------------------------ add + LN
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_add_layer_norm(rng, dtype):
    x, r = _data(rng, (9, 75), dtype), _data(rng, (9, 75), dtype, 4.0)
    w, b = _params(rng, 75, dtype, "float32")
    y, s = nb.add_layer_norm(x, r, 75, w, b, out=poisoned_like(x), residual_out=poisoned_like(x))
    exact = x.astype(np.float64) + r.astype(np.float64)  # exact for half operands
    want = exact.astype(np.float32).astype(dtype)  # one rounding (float32 holds the sum exactly)
    np.testing.assert_array_equal(s.view(np.uint16), want.view(np.uint16))
    assert_contract(y, layer_norm_ref(s, (75,), w, b)[0], b, "add_layer_norm")


# ------------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("axis", [1, -1])
def test_contract_against_torch_float64(rng, dtype, axis):
    """The same contract with torch's float64 ops (on the half inputs' exact values, float64
    statistics) as y64, where torch is installed: LayerNorm, RMSNorm, BatchNorm (training and
    eval), GroupNorm."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def t64(a):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(a).astype(np.float64)))

    x = _data(rng, (4, 33, 257), dtype, 3.0, 1.5)
    w, b = _params(rng, 257, dtype, "float32")
    y = nb.layer_norm(x, 257, w, b, out=poisoned_like(x))
    assert_contract(y, F.layer_norm(t64(x), (257,), t64(w), t64(b), 1e-5).numpy(), b, "layer_norm vs torch")
    y = nb.rms_norm(x, 257, w, out=poisoned_like(x))
    eps = float(np.finfo(np.float32).eps)  # numbanorm's default for half input, as torch's for half
    assert_contract(y, F.rms_norm(t64(x), (257,), t64(w), eps).numpy(), 0.0, "rms_norm vs torch")

    x = _data(rng, (6, 12, 9, 11) if axis == 1 else (6, 9, 11, 12), dtype, 3.0, 2.0)
    C = 12
    w, b = _params(rng, C, dtype, "float32")
    xt = t64(np.moveaxis(x, axis, 1))
    beta = _beta(b, (6, 12, 9, 11), 1)

    def nchw(a):
        return np.moveaxis(a, axis, 1)
    for training in (True, False):
        rm, rv = rng.standard_normal(C).astype(np.float32), rng.uniform(0.5, 2.0, C).astype(np.float32)
        want = F.batch_norm(xt, t64(rm), t64(rv), t64(w), t64(b), training, 0.1, 1e-5).numpy()
        y = nb.batch_norm(x, rm, rv, w, b, training, channel_axis=axis, out=poisoned_like(x))
        assert_contract(nchw(y), want, beta, f"batch_norm training={training} vs torch")
    want = F.group_norm(xt, 4, t64(w), t64(b), 1e-5).numpy()
    y = nb.group_norm(x, 4, w, b, channel_axis=axis, out=poisoned_like(x))
    assert_contract(nchw(y), want, beta, "group_norm vs torch")


@pytest.mark.parametrize("dtype,offset,scale", [(F16, 1e4, 30.0), (BF16, 1e4, 30.0), (BF16, 1e6, 3e4)],
                         ids=["f16-1e4", "bf16-1e4", "bf16-1e6"])
@pytest.mark.parametrize("axis", [1, -1])
def test_group_and_rms_norm_offsets(rng, dtype, offset, scale, axis):
    """GroupNorm's statistics at large offsets keep their bound (as LayerNorm's and BatchNorm's);
    RMSNorm's rstd at an offset (no centering: its sum of squares is the whole story)."""
    x = _data(rng, (3, 16, 13, 11) if axis == 1 else (3, 13, 11, 16), dtype, scale, offset)
    w, b = _params(rng, 16, dtype, "float32")
    y, mean, rstd = nb.group_norm(x, 4, w, b, channel_axis=axis, return_stats=True)
    ry, rmean, rrstd = group_norm_ref(x, 4, w, b, channel_axis=axis)
    assert_contract(y, ry, _beta(b, x.shape, axis), f"group_norm at {offset}")
    np.testing.assert_allclose(mean, rmean, rtol=STAT_RTOL)
    np.testing.assert_allclose(rstd, rrstd, rtol=STAT_RTOL)
    x = _data(rng, (5, 300), dtype, scale, offset)
    y, rstd = nb.rms_norm(x, 300, None, return_stats=True)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(rstd, 1.0 / np.sqrt((x64 * x64).mean(-1) + np.finfo(np.float32).eps), rtol=STAT_RTOL)
    assert_contract(y, rms_norm_ref(x, 1, None), 0.0, f"rms_norm at {offset}")
