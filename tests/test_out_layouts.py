"""``out=`` in every memory layout, for every op that takes it and every dtype it accepts.

Each result is compared with the independent float64 reference; ``out`` is NaN-poisoned, so an
element that is missed, or written as the 16-bit kernel view's integer value (the old float16 /
bfloat16 bug: ``[48480, 46880, ...]`` for ``[-1.34, -0.45, ...]``), fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from family_reference import group_norm_ref, rms_norm_ref
from reference import batch_norm_ref, layer_norm_ref

import numbanorm as nb

ml_dtypes = pytest.importorskip("ml_dtypes")
FORWARD_DTYPES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64)]
BACKWARD_DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]  # the backward has no half I/O yet
#: Elementwise bound, relative to 1 + |reference|: a few ulps of the dtype at N(0, 1) scale.
TOL = {"float16": 4e-3, "bfloat16": 3e-2, "float32": 1e-5, "float64": 1e-12}
LAYOUTS = ["C", "F", "strided", "negative", "in_place", "in_place_F"]


def _poisoned(shape, dtype, layout):
    """A NaN-filled writeable array of ``shape`` in ``layout`` (not for the in-place layouts)."""
    if layout == "C":
        return np.full(shape, np.nan, dtype)
    if layout == "F":
        return np.asfortranarray(np.full(shape, np.nan, dtype))
    if layout == "strided":
        return np.full((*shape[:-1], 2 * shape[-1]), np.nan, dtype)[..., ::2]
    if layout == "negative":
        return np.full(shape, np.nan, dtype)[::-1, ..., ::-1]
    raise AssertionError(layout)


def _operand(rng, shape, dtype, layout, offset=0.0):
    """Fresh random data; in the F layouts stored Fortran-ordered (x is then not C-contiguous)."""
    a = (rng.standard_normal(shape) * 2.0 + offset).astype(dtype)
    return np.asfortranarray(a) if layout == "in_place_F" else a


def _out_for(x, layout):
    return x if layout.startswith("in_place") else _poisoned(x.shape, x.dtype, layout)


def _assert_close(got, want, dtype):
    got64 = np.asarray(got, np.float64)
    assert not np.isnan(got64).any(), "an output element was not written"
    err = np.abs(got64 - want) / (1.0 + np.abs(want))
    assert err.max() <= TOL[np.dtype(dtype).name], f"max relative error {err.max():.3g}"


def _params(rng, n, dtype):
    return (rng.standard_normal(n) + 1.0).astype(dtype), rng.standard_normal(n).astype(dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FORWARD_DTYPES, ids=str)
def test_layer_norm_out(rng, dtype, layout):
    x = _operand(rng, (5, 7, 12), dtype, layout, offset=3.0)
    w, b = _params(rng, 12, dtype)
    want = layer_norm_ref(x, (12,), w, b)[0]
    out = _out_for(x, layout)
    got = nb.layer_norm(x, 12, w, b, out=out)
    assert got is out
    _assert_close(got, want, dtype)


def test_layer_norm_half_out_fortran_is_values_not_bits():
    """The example of the report: float16 results through a Fortran-ordered ``out``."""
    x = np.linspace(-2, 2, 12).reshape(3, 4).astype(np.float16)
    got = nb.layer_norm(x, 4, out=np.empty((3, 4), np.float16, order="F"))
    np.testing.assert_allclose(got[0].astype(np.float64), [-1.342, -0.447, 0.447, 1.342], atol=2e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FORWARD_DTYPES, ids=str)
def test_rms_norm_out(rng, dtype, layout):
    x = _operand(rng, (6, 10), dtype, layout)
    w, _ = _params(rng, 10, dtype)
    want = rms_norm_ref(x, 1, w)
    out = _out_for(x, layout)
    got = nb.rms_norm(x, 10, w, out=out)
    assert got is out
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FORWARD_DTYPES, ids=str)
def test_add_layer_norm_out_and_residual_out(rng, dtype, layout):
    x = _operand(rng, (4, 9, 8), dtype, layout)
    res = _operand(rng, (4, 9, 8), dtype, layout)
    w, b = _params(rng, 8, dtype)
    total = (x.astype(np.float64) + res.astype(np.float64)).astype(dtype)  # the sum is rounded first
    want = layer_norm_ref(total, (8,), w, b)[0]
    want_sum = total.astype(np.float64)
    out = _out_for(x, layout)
    res_out = res if layout.startswith("in_place") else _poisoned(x.shape, dtype, layout)
    got, got_sum = nb.add_layer_norm(x, res, 8, w, b, out=out, residual_out=res_out)
    assert got is out and got_sum is res_out
    _assert_close(got, want, dtype)
    _assert_close(got_sum, want_sum, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("dtype", FORWARD_DTYPES, ids=str)
def test_batch_norm_out(rng, dtype, channel_axis, training, layout):
    shape = (4, 3, 5, 6) if channel_axis == 1 else (4, 5, 6, 3)
    x = _operand(rng, shape, dtype, layout, offset=-5.0)
    w, b = _params(rng, 3, dtype)
    rm = rng.standard_normal(3).astype(dtype)
    rv = (rng.random(3) + 0.5).astype(dtype)
    want, *_ = batch_norm_ref(x, rm, rv, w, b, training=training, channel_axis=channel_axis)
    out = _out_for(x, layout)
    got = nb.batch_norm(x, rm, rv, w, b, training=training, channel_axis=channel_axis, out=out)
    assert got is out
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("dtype", FORWARD_DTYPES, ids=str)
def test_instance_norm_out(rng, dtype, use_input_stats, layout):
    x = _operand(rng, (3, 4, 7), dtype, layout, offset=2.0)
    w, b = _params(rng, 4, dtype)
    rm = rng.standard_normal(4).astype(dtype)
    rv = (rng.random(4) + 0.5).astype(dtype)
    if use_input_stats:
        want = group_norm_ref(x, 4, w, b)[0]  # InstanceNorm is GroupNorm with one channel per group
    else:
        want = batch_norm_ref(x, rm, rv, w, b, training=False)[0]
    out = _out_for(x, layout)
    got = nb.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats, out=out)
    assert got is out
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("dtype", FORWARD_DTYPES, ids=str)
def test_group_norm_out(rng, dtype, channel_axis, layout):
    shape = (3, 6, 5) if channel_axis == 1 else (3, 5, 6)
    x = _operand(rng, shape, dtype, layout, offset=1e2 if dtype.itemsize > 2 else 8.0)
    w, b = _params(rng, 6, dtype)
    want = group_norm_ref(x, 2, w, b, channel_axis=channel_axis)[0]
    out = _out_for(x, layout)
    got = nb.group_norm(x, 2, w, b, channel_axis=channel_axis, out=out)
    assert got is out
    _assert_close(got, want, dtype)


# --------------------------------------------------------------------------------------------
# Backward: grad_x through out=, each layout, out=grad_out and out=x included. The references
# are the float64 gradients of the forward references, in closed form.
# --------------------------------------------------------------------------------------------
BACKWARD_LAYOUTS = [*LAYOUTS, "grad_out"]


def _grad_out_for(x, g, layout):
    if layout == "grad_out":
        return g
    return _out_for(x, layout)


def _rows_grad_ref(x, g, w, centered):
    """float64 grad_x of LayerNorm (centered) / RMSNorm over the last dim, eps = 1e-5 (LN) or
    float32's epsilon (RMS, the default for float32/float64 tested as float64 here: see callers)."""
    x64, g64 = x.astype(np.float64), g.astype(np.float64) * w.astype(np.float64)
    D = x64.shape[-1]
    if centered:
        xc = x64 - x64.mean(-1, keepdims=True)
        rstd = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)
        xh = xc * rstd
        return rstd * (g64 - g64.mean(-1, keepdims=True) - xh * (g64 * xh).sum(-1, keepdims=True) / D)
    eps = np.finfo(np.float64 if x.dtype == np.float64 else np.float32).eps
    rstd = 1.0 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps)
    xh = x64 * rstd
    return rstd * (g64 - xh * (g64 * xh).sum(-1, keepdims=True) / D)


@pytest.mark.parametrize("layout", BACKWARD_LAYOUTS)
@pytest.mark.parametrize("dtype", BACKWARD_DTYPES, ids=str)
def test_layer_norm_backward_out(rng, dtype, layout):
    x = _operand(rng, (6, 11), dtype, layout if layout != "grad_out" else "C", offset=2.0)
    g = _operand(rng, x.shape, dtype, layout if layout != "grad_out" else "C")
    w, b = _params(rng, 11, dtype)
    _, mean, rstd = nb.layer_norm(x, 11, w, b, return_stats=True)
    want = _rows_grad_ref(x, g, w, centered=True)
    out = _grad_out_for(x, g, layout)
    got, _, _ = nb.layer_norm_backward(g, x, 11, mean, rstd, w, out=out)
    assert got is out
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("layout", BACKWARD_LAYOUTS)
@pytest.mark.parametrize("dtype", BACKWARD_DTYPES, ids=str)
def test_rms_norm_backward_out(rng, dtype, layout):
    x = _operand(rng, (6, 11), dtype, layout if layout != "grad_out" else "C")
    g = _operand(rng, x.shape, dtype, layout if layout != "grad_out" else "C")
    w, _ = _params(rng, 11, dtype)
    _, rstd = nb.rms_norm(x, 11, w, return_stats=True)
    want = _rows_grad_ref(x, g, w, centered=False)
    out = _grad_out_for(x, g, layout)
    got, _ = nb.rms_norm_backward(g, x, 11, rstd, w, out=out)
    assert got is out
    _assert_close(got, want, dtype)


def _channel_grad_ref(x, g, w, axes, count):
    """float64 grad_x of training normalization over ``axes`` (BatchNorm: all but the channel;
    per-sample ops: their group) with the channel's weight broadcast in ``w``."""
    x64, g64 = x.astype(np.float64), g.astype(np.float64) * w
    xc = x64 - x64.mean(axes, keepdims=True)
    rstd = 1.0 / np.sqrt((xc * xc).mean(axes, keepdims=True) + 1e-5)
    xh = xc * rstd
    return rstd * (g64 - g64.sum(axes, keepdims=True) / count - xh * (g64 * xh).sum(axes, keepdims=True) / count)


@pytest.mark.parametrize("layout", BACKWARD_LAYOUTS)
@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("dtype", BACKWARD_DTYPES, ids=str)
def test_batch_norm_backward_out(rng, dtype, channel_axis, layout):
    shape = (4, 3, 5, 6) if channel_axis == 1 else (4, 5, 6, 3)
    x = _operand(rng, shape, dtype, layout if layout != "grad_out" else "C", offset=3.0)
    g = _operand(rng, shape, dtype, layout if layout != "grad_out" else "C")
    w, b = _params(rng, 3, dtype)
    _, mean, invstd = nb.batch_norm(x, None, None, w, b, training=True, channel_axis=channel_axis,
                                    return_stats=True)
    axis = channel_axis % x.ndim
    bshape = [1] * x.ndim
    bshape[axis] = 3
    axes = tuple(i for i in range(x.ndim) if i != axis)
    want = _channel_grad_ref(x, g, w.astype(np.float64).reshape(bshape), axes, x.size // 3)
    out = _grad_out_for(x, g, layout)
    got, _, _ = nb.batch_norm_backward(g, x, mean, invstd, w, channel_axis=channel_axis, out=out)
    assert got is out
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("layout", BACKWARD_LAYOUTS)
@pytest.mark.parametrize("dtype", BACKWARD_DTYPES, ids=str)
def test_group_norm_backward_out(rng, dtype, layout):
    x = _operand(rng, (3, 6, 5), dtype, layout if layout != "grad_out" else "C", offset=1.0)
    g = _operand(rng, x.shape, dtype, layout if layout != "grad_out" else "C")
    w, b = _params(rng, 6, dtype)
    _, mean, rstd = nb.group_norm(x, 2, w, b, return_stats=True)
    x4, g4 = x.reshape(3, 2, 3, 5), g.reshape(3, 2, 3, 5)
    want = _channel_grad_ref(x4, g4, w.astype(np.float64).reshape(1, 2, 3, 1), (2, 3), 15).reshape(x.shape)
    out = _grad_out_for(x, g, layout)
    got, _, _ = nb.group_norm_backward(g, x, 2, mean, rstd, w, out=out)
    assert got is out
    _assert_close(got, want, dtype)
