"""Half-precision backward: float16/bfloat16 ``grad_out``/``x`` against an independent float64
NumPy reference (the closed forms below, from the same saved statistics) and, where torch is
installed, against torch's float64 backward kernels given those statistics
(``native_layer_norm_backward``, ``native_batch_norm_backward``, ``native_group_norm_backward``;
RMSNorm: autograd of ``F.rms_norm``), under the contract's kind of bound:

    |g - g64| <= ulp(g64) + 2**-21 * (sum of the magnitudes of the terms g64 is made of)

grad_x = rstd·(γ·dy - mean(γ·dy) - x̂·mean(γ·dy·x̂)) (means over the normalized group; RMSNorm
has no mean term, eval BatchNorm only γ·dy·invstd): terms rstd·(|γ·dy| + |mean(γ·dy)| +
|x̂·mean(γ·dy·x̂)|). grad_weight = Σ dy·x̂ and grad_bias = Σ dy: terms Σ|dy·x̂| and Σ|dy|.
grad_x has x's dtype, grad_weight/grad_bias the weight's (float32 or x's), as torch. Every
layout, NaN-poisoned ``out=`` and in place (``out=grad_out``); the layers train in half.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import poisoned_like
from half_contract import assert_within

import numbanorm as nb

try:
    import torch
except ImportError:  # the NumPy reference alone
    torch = None
ml_dtypes = pytest.importorskip("ml_dtypes")
F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
HALVES = [F16, BF16]


def _t64(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).astype(np.float64)))


def _data(rng, shape, dtype, scale=2.0, offset=1.0):
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


def _grad_x_terms(x64, dy64, mean, rstd, gamma, axes, centered=True):
    """rstd·(|g| + |mean(g)| + |x̂·mean(g·x̂)|), g = γ·dy, means over ``axes`` (float64)."""
    return _grad_x_ref(x64, dy64, mean, rstd, gamma, axes, centered)[1:]


def _grad_x_ref(x64, dy64, mean, rstd, gamma, axes, centered=True):
    """The float64 NumPy reference grad_x = rstd·(g - mean(g) - x̂·mean(g·x̂)) (no mean term when
    not ``centered``), its terms' magnitudes (``_grad_x_terms``) and x̂."""
    xh = (x64 - mean) * rstd
    g = dy64 * gamma
    a = g.mean(axes, keepdims=True) if centered else 0.0
    b = (g * xh).mean(axes, keepdims=True)
    return rstd * (g - a - xh * b), rstd * (np.abs(g) + np.abs(a) + np.abs(xh * b)), xh


def _check_grads_numpy(gx, gw, gb, x64, dy64, mean, rstd, gamma, axes, param_axes=None, centered=True, what=""):
    """grad_x (normalized over ``axes``), grad_weight and grad_bias (if not None; summed over
    ``param_axes``, by default ``axes``) against the NumPy reference."""
    rx, mag, xh = _grad_x_ref(x64, dy64, mean, rstd, gamma, axes, centered)
    assert_within(gx, rx, mag, f"{what} grad_x (NumPy reference)")
    param_axes = axes if param_axes is None else param_axes
    if gw is not None:
        dyx = dy64 * xh
        assert_within(gw, dyx.sum(param_axes), np.abs(dyx).sum(param_axes), f"{what} grad_weight (NumPy)")
    if gb is not None:
        assert_within(gb, dy64.sum(param_axes), np.abs(dy64).sum(param_axes), f"{what} grad_bias (NumPy)")


def _check_param_grads(gw, gb, rw, rb, dy64, xh, axes, wdt):
    assert gw.dtype == wdt and (gb is None or gb.dtype == wdt)
    assert_within(gw, rw.numpy(), np.abs(dy64 * xh).sum(axes), "grad_weight")
    if gb is not None:
        assert_within(gb, rb.numpy(), np.abs(dy64).sum(axes), "grad_bias")


# ------------------------------------------------------------------------------- LayerNorm / RMS
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("wdt", ["float32", "half", None])
@pytest.mark.parametrize("shape", [(3, 7, 45), (96, 1031)], ids=["small", "parallel"])
@pytest.mark.parametrize("layout", ["C", "F", "in_place"])
def test_layer_norm_backward(rng, dtype, wdt, shape, layout):
    x = _data(rng, shape, dtype)
    dy = _data(rng, shape, dtype, 1.0, 0.0)
    D = shape[-1]
    w = None if wdt is None else rng.uniform(-2, 2, D).astype(np.float32 if wdt == "float32" else dtype)
    _, mean, rstd = nb.layer_norm(x, D, w, None, return_stats=True)
    if layout == "F":
        x, dy = np.asfortranarray(x), np.asfortranarray(dy)
    out = dy.copy() if layout == "in_place" else np.asfortranarray(poisoned_like(x))
    g_in = out if layout == "in_place" else dy
    gx, gw, gb = nb.layer_norm_backward(g_in, x, D, mean, rstd, w, out=out)
    assert gx is out and gx.dtype == dtype
    m64, r64 = mean.astype(np.float64)[..., None], rstd.astype(np.float64)[..., None]
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    gamma = 1.0 if w is None else w.astype(np.float64)
    param_axes = tuple(range(x.ndim - 1))
    assert (gw is None and gb is None) if w is None else (gw.dtype == gb.dtype == w.dtype)
    _check_grads_numpy(gx, gw, gb, x64, dy64, m64, r64, gamma, (-1,), param_axes, what="layer_norm")
    if torch is None:
        return
    tw = None if w is None else _t64(w)
    rx, rw, rb = torch.ops.aten.native_layer_norm_backward(  # (a bias tensor: grad_bias needs one)
        _t64(dy), _t64(x), [D], _t64(m64), _t64(r64), tw, None if w is None else torch.zeros_like(tw),
        [True, w is not None, w is not None])
    mag, xh = _grad_x_terms(x64, dy64, m64, r64, gamma, (-1,))
    assert_within(gx, rx.numpy(), mag, "layer_norm grad_x")
    if w is not None:
        _check_param_grads(gw, gb, rw, rb, dy64, xh, param_axes, w.dtype)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("wdt", ["float32", "half", None])
@pytest.mark.parametrize("shape", [(5, 129), (40, 2049)], ids=["small", "parallel"])
def test_rms_norm_backward(rng, dtype, wdt, shape):
    x = _data(rng, shape, dtype, 3.0, 0.0)
    dy = _data(rng, shape, dtype, 1.0, 0.0)
    D = shape[-1]
    w = None if wdt is None else rng.uniform(-2, 2, D).astype(np.float32 if wdt == "float32" else dtype)
    _, rstd = nb.rms_norm(x, D, w, return_stats=True)
    out = poisoned_like(x)
    gx, gw = nb.rms_norm_backward(dy, x, D, rstd, w, out=out)
    assert gx is out and gx.dtype == dtype and (w is None or gw.dtype == w.dtype)
    r64 = rstd.astype(np.float64)[..., None]
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    gamma = 1.0 if w is None else w.astype(np.float64)
    assert (gw is None) == (w is None)
    _check_grads_numpy(gx, gw, None, x64, dy64, 0.0, r64, gamma, (-1,), (0,), centered=False, what="rms_norm")
    if torch is None:
        return
    # torch has no CPU kernel of _fused_rms_norm_backward: autograd of F.rms_norm in float64, whose
    # rstd differs from the saved float32 one by its rounding (2**-24, inside the bound)
    tx = _t64(x).requires_grad_()
    tw = None if w is None else _t64(w).requires_grad_()
    ty = torch.nn.functional.rms_norm(tx, [D], tw, float(np.finfo(np.float32).eps))
    rx, rw = torch.autograd.grad(ty, (tx, tw) if w is not None else (tx,), _t64(dy)) + ((None,) if w is None else ())
    mag, xh = _grad_x_terms(x64, dy64, 0.0, r64, gamma, (-1,), centered=False)
    assert_within(gx, rx.numpy(), mag, "rms_norm grad_x")
    if w is not None:
        _check_param_grads(gw, None, rw, None, dy64, xh, (0,), w.dtype)


# ------------------------------------------------------------------------------- BatchNorm
BN_CASES = [((6, 5, 7, 9), 1), ((6, 7, 9, 5), -1), ((4, 48, 11, 3), 1), ((4, 9, 11, 48), -1), ((300, 17), 1),
            ((2, 3, 120, 130), 1), ((8, 40, 40, 3), -1)]


def _nchw(a, axis):
    return np.moveaxis(a, axis, 1)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("shape,axis", BN_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else str(v))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_backward(rng, dtype, shape, axis, training):
    x = _data(rng, shape, dtype, 3.0, 2.0)
    dy = _data(rng, shape, dtype, 1.0, 0.0)
    C = shape[axis]
    w = rng.uniform(-2, 2, C).astype(np.float32 if axis == 1 else dtype)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    _, mean, invstd = nb.batch_norm(x, rm, rv, w, None, training, channel_axis=axis, return_stats=True)
    out = poisoned_like(x)
    gx, gw, gb = nb.batch_norm_backward(dy, x, mean, invstd, w, training, channel_axis=axis, out=out)
    assert gx is out and gx.dtype == dtype and gw.dtype == w.dtype == gb.dtype
    m64, i64 = mean.astype(np.float64), invstd.astype(np.float64)
    bshape = [1] * x.ndim
    bshape[1] = C
    x64, dy64 = _nchw(x, axis).astype(np.float64), _nchw(dy, axis).astype(np.float64)
    axes = tuple(i for i in range(x.ndim) if i != 1)
    m, r, gamma = m64.reshape(bshape), i64.reshape(bshape), w.astype(np.float64).reshape(bshape)
    if training:
        _check_grads_numpy(_nchw(gx, axis), gw, gb, x64, dy64, m, r, gamma, axes, what="batch_norm")
    else:  # eval: grad_x = γ·dy·invstd
        xh = (x64 - m) * r
        assert_within(_nchw(gx, axis), dy64 * gamma * r, np.abs(dy64 * gamma * r), "batch_norm eval grad_x (NumPy)")
        assert_within(gw, (dy64 * xh).sum(axes), np.abs(dy64 * xh).sum(axes), "grad_weight (NumPy)")
        assert_within(gb, dy64.sum(axes), np.abs(dy64).sum(axes), "grad_bias (NumPy)")
    if torch is None:
        return
    xc, dyc = _t64(_nchw(x, axis)), _t64(_nchw(dy, axis))
    if training:
        rx, rw, rb = torch.ops.aten.native_batch_norm_backward(dyc, xc, _t64(w), None, None, _t64(m64), _t64(i64),
                                                               True, 1e-5, [True, True, True])
    else:  # eval: torch takes the running stats (var = 1/invstd² - eps)
        var = 1.0 / (i64 * i64) - 1e-5
        rx, rw, rb = torch.ops.aten.native_batch_norm_backward(dyc, xc, _t64(w), _t64(m64), _t64(var), None, None,
                                                               False, 1e-5, [True, True, True])
    if training:
        mag, xh = _grad_x_terms(x64, dy64, m, r, gamma, axes)
    else:
        xh = (x64 - m) * r
        mag = np.abs(dy64 * gamma * r)
    assert_within(_nchw(gx, axis), rx.numpy(), mag, "batch_norm grad_x")
    _check_param_grads(gw, gb, rw, rb, dy64, xh, axes, w.dtype)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("layout", ["F", "negative", "channels_last", "in_place"])
def test_batch_norm_backward_layouts(rng, dtype, layout):
    x0 = _data(rng, (4, 6, 10, 13), dtype)
    dy0 = _data(rng, x0.shape, dtype, 1.0, 0.0)
    w = rng.uniform(-2, 2, 6).astype(dtype)
    _, mean, invstd = nb.batch_norm(x0, None, None, w, None, True, return_stats=True)
    want = nb.batch_norm_backward(dy0, x0, mean, invstd, w)
    if layout == "F":
        x, dy = np.asfortranarray(x0), np.asfortranarray(dy0)
    elif layout == "negative":
        x, dy = np.ascontiguousarray(x0[::-1])[::-1], np.ascontiguousarray(dy0[::-1])[::-1]
    elif layout == "channels_last":
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x0, 1, -1)), -1, 1)
        dy = np.moveaxis(np.ascontiguousarray(np.moveaxis(dy0, 1, -1)), -1, 1)
    else:
        x, dy = x0, dy0.copy()
    out = dy if layout == "in_place" else poisoned_like(x)
    gx, gw, gb = nb.batch_norm_backward(dy, x, mean, invstd, w, out=out)
    assert gx is out
    # The same sums in another order at most: within the contract of each other
    for got, ref in ((gx, want[0]), (gw, want[1]), (gb, want[2])):
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "no_weight"])
def test_common_backward_paths_match_general(rng, dtype, weighted):
    """The fast paths (common arguments, ``out=None``: the tiny serial BatchNorm backward and the
    row ops' unchecked views) give what the general path gives for Fortran-ordered copies."""
    for shape in [(4, 6, 5, 5), (2, 64, 7, 7)]:
        x, dy = _data(rng, shape, dtype), _data(rng, shape, dtype, 1.0, 0.0)
        w = rng.uniform(-2, 2, shape[1]).astype(np.float32) if weighted else None
        _, mean, invstd = nb.batch_norm(x, None, None, w, None, True, return_stats=True)
        fast = nb.batch_norm_backward(dy, x, mean, invstd, w)
        general = nb.batch_norm_backward(np.asfortranarray(dy), np.asfortranarray(x), mean, invstd, w)
        _assert_same_grads(fast, general, dtype, w)
    for shape in [(3, 7, 45), (96, 1031)]:
        x, dy = _data(rng, shape, dtype), _data(rng, shape, dtype, 1.0, 0.0)
        D = shape[-1]
        w = rng.uniform(-2, 2, D).astype(np.float32) if weighted else None
        _, mean, rstd = nb.layer_norm(x, D, w, None, return_stats=True)
        fast = nb.layer_norm_backward(dy, x, D, mean, rstd, w)
        general = nb.layer_norm_backward(np.asfortranarray(dy), np.asfortranarray(x), D, mean, rstd, w)
        _assert_same_grads(fast, general, dtype, w)
        _, rstd = nb.rms_norm(x, D, w, return_stats=True)
        fast = nb.rms_norm_backward(dy, x, D, rstd, w)
        general = nb.rms_norm_backward(np.asfortranarray(dy), np.asfortranarray(x), D, rstd, w)
        _assert_same_grads(fast, general, dtype, w)


def _assert_same_grads(fast, general, dtype, w):
    assert type(fast[0]) is np.ndarray and fast[0].dtype == dtype and fast[0].flags.c_contiguous
    np.testing.assert_array_equal(fast[0].astype(np.float64), general[0].astype(np.float64))
    for got, ref in zip(fast[1:], general[1:], strict=True):
        if w is None:
            assert got is None and ref is None
        else:
            assert got.dtype == w.dtype
            np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype,offset,scale", [(F16, 1e4, 30.0), (BF16, 1e4, 30.0), (BF16, 1e6, 3e4)],
                         ids=["f16-1e4", "bf16-1e4", "bf16-1e6"])
def test_backward_at_offsets(rng, dtype, offset, scale):
    """Inputs far from zero (the forward's statistics bound holds there): LayerNorm and training
    BatchNorm (both layouts) backward within the bound of the NumPy reference."""
    x = _data(rng, (6, 517), dtype, scale, offset)
    dy = _data(rng, x.shape, dtype, 1.0, 0.0)
    w = rng.uniform(-2, 2, 517).astype(np.float32)
    _, mean, rstd = nb.layer_norm(x, 517, w, None, return_stats=True)
    gx, gw, gb = nb.layer_norm_backward(dy, x, 517, mean, rstd, w, out=poisoned_like(x))
    m64, r64 = mean.astype(np.float64)[:, None], rstd.astype(np.float64)[:, None]
    _check_grads_numpy(gx, gw, gb, x.astype(np.float64), dy.astype(np.float64), m64, r64, w.astype(np.float64),
                       (-1,), (0,), what=f"layer_norm at {offset}")
    for axis in (1, -1):
        x = _data(rng, (8, 17, 13, 11), dtype, scale, offset)
        dy = _data(rng, x.shape, dtype, 1.0, 0.0)
        C = x.shape[axis]
        w = rng.uniform(-2, 2, C).astype(np.float32)
        _, mean, invstd = nb.batch_norm(x, None, None, w, None, True, channel_axis=axis, return_stats=True)
        gx, gw, gb = nb.batch_norm_backward(dy, x, mean, invstd, w, channel_axis=axis, out=poisoned_like(x))
        bshape = [1, C, 1, 1]
        m, r = mean.astype(np.float64).reshape(bshape), invstd.astype(np.float64).reshape(bshape)
        _check_grads_numpy(_nchw(gx, axis), gw, gb, _nchw(x, axis).astype(np.float64),
                           _nchw(dy, axis).astype(np.float64), m, r, w.astype(np.float64).reshape(bshape),
                           (0, 2, 3), what=f"batch_norm axis {axis} at {offset}")


# ------------------------------------------------------------------------------- GroupNorm
GN_CASES = [((3, 6, 10, 11), 3, 1), ((3, 10, 11, 6), 2, -1), ((2, 64, 9, 7), 32, 1), ((2, 9, 7, 64), 32, -1),
            ((5, 12, 33), 4, 1), ((2, 8, 60, 70), 2, 1)]


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("shape,groups,axis", GN_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else str(v))
def test_group_norm_backward(rng, dtype, shape, groups, axis):
    x = _data(rng, shape, dtype)
    dy = _data(rng, shape, dtype, 1.0, 0.0)
    C = shape[axis]
    w = rng.uniform(-2, 2, C).astype(np.float32)
    _, mean, rstd = nb.group_norm(x, groups, w, None, channel_axis=axis, return_stats=True)
    out = poisoned_like(x)
    gx, gw, gb = nb.group_norm_backward(dy, x, groups, mean, rstd, w, channel_axis=axis, out=out)
    assert gx is out and gx.dtype == dtype and gw.dtype == np.float32
    N = shape[0]
    HxW = x.size // (N * C)
    xc, dyc = _nchw(x, axis), _nchw(dy, axis)
    m64, r64 = mean.astype(np.float64), rstd.astype(np.float64)
    gshape = (N, groups, C // groups * HxW)
    x64, dy64 = xc.astype(np.float64).reshape(gshape), dyc.astype(np.float64).reshape(gshape)
    gamma = np.repeat(w.astype(np.float64).reshape(groups, C // groups), HxW, axis=1).reshape(1, groups, -1)
    want, mag, xh = _grad_x_ref(x64, dy64, m64[..., None], r64[..., None], gamma, (2,))
    assert_within(_nchw(gx, axis).reshape(gshape), want, mag, "group_norm grad_x (NumPy reference)")
    dyx = (dy64 * xh).reshape(N, C, HxW)
    assert_within(gw, dyx.sum((0, 2)), np.abs(dyx).sum((0, 2)), "grad_weight (NumPy)")
    assert_within(gb, dy64.reshape(N, C, HxW).sum((0, 2)), np.abs(dy64.reshape(N, C, HxW)).sum((0, 2)),
                  "grad_bias (NumPy)")
    if torch is None:
        return
    rx, rw, rb = torch.ops.aten.native_group_norm_backward(_t64(dyc), _t64(xc), _t64(m64), _t64(r64), _t64(w),
                                                           N, C, HxW, groups, [True, True, True])
    assert_within(_nchw(gx, axis).reshape(gshape), rx.numpy().reshape(gshape), mag, "group_norm grad_x")
    assert_within(gw, rw.numpy(), np.abs(dyx).sum((0, 2)), "grad_weight")
    assert_within(gb, rb.numpy(), np.abs(dy64.reshape(N, C, HxW)).sum((0, 2)), "grad_bias")


# ------------------------------------------------------------------------------- layers
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_layers_train_in_half(rng, dtype):
    """Each layer in a half dtype: forward, backward, grads in the layer's dtype, and a few SGD
    steps that lower a quadratic loss, as a float32 layer does."""
    shapes = {"LayerNorm": (8, 16, 32), "RMSNorm": (8, 16, 32), "BatchNorm": (8, 6, 5, 5), "GroupNorm": (8, 6, 5, 5)}
    layers = {"LayerNorm": nb.LayerNorm(32, dtype=dtype), "RMSNorm": nb.RMSNorm(32, dtype=dtype),
              "BatchNorm": nb.BatchNorm(6, dtype=dtype), "GroupNorm": nb.GroupNorm(3, 6, dtype=dtype)}
    for name, layer in layers.items():
        x = _data(rng, shapes[name], dtype)
        target = _data(rng, shapes[name], dtype, 0.5, 0.2).astype(np.float64)
        losses = []
        for _ in range(5):
            y = layer(x)
            assert y.dtype == dtype
            diff = y.astype(np.float64) - target
            losses.append(float((diff * diff).mean()))
            gx = layer.backward((2 * diff / diff.size).astype(dtype))
            assert gx.dtype == dtype and layer.grad_weight.dtype == dtype
            step = 5.0 * layer.grad_weight.astype(np.float32)
            layer.weight[...] = (layer.weight.astype(np.float32) - step).astype(dtype)
            if layer.bias is not None:
                step = 5.0 * layer.grad_bias.astype(np.float32)
                layer.bias[...] = (layer.bias.astype(np.float32) - step).astype(dtype)
        assert losses[-1] < losses[0], (name, losses)
