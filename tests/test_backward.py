"""layer_norm_backward / batch_norm_backward against torch autograd and central finite differences."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
from backward_reference import bn_backward_ref, rows_backward_ref
from conftest import poisoned_like
from reference import rel_l2

import numbanorm as nb

torch = pytest.importorskip("torch")
F = torch.nn.functional

GRAD_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
DTYPES = [np.float64, np.float32]


def _t(a, grad=False):
    """A float64 torch tensor: float32 inputs are checked against torch's float64 autograd of the
    same values, since a float32 reference is itself off by more than 1e-5 where a sum cancels
    (e.g. grad_bias, a sum of a few dy)."""
    return None if a is None else torch.tensor(np.asarray(a, np.float64), requires_grad=grad)


def _noncontig(a: np.ndarray, rng) -> np.ndarray:
    """The same values in a non-contiguous array: every other element of a twice-as-wide buffer."""
    buf = rng.standard_normal(a.shape[:-1] + (2 * a.shape[-1],)).astype(a.dtype)
    view = buf[..., ::2]
    view[...] = a
    assert not view.flags.c_contiguous and not view.flags.f_contiguous
    return view


# --------------------------------------------------------------------------------------------
# LayerNorm
# --------------------------------------------------------------------------------------------
def _torch_ln_grads(x, norm_shape, w, b, g):
    tx, tw, tb = _t(x, True), _t(w, True), _t(b, True)
    F.layer_norm(tx, norm_shape, tw, tb, 1e-5).backward(_t(np.ascontiguousarray(g)))
    return tx.grad.numpy(), None if w is None else tw.grad.numpy(), None if w is None else tb.grad.numpy()


LN_CASES = [
    ((4, 9, 768), (768,)),
    ((3, 5, 7, 11), (5, 7, 11)),
    ((6, 1), (1,)),
    ((13, 37), (37,)),
    ((2, 3, 4, 5), (4, 5)),
    ((7,), (7,)),
    ((67, 1031), (1031,)),  # split into parallel tasks
    ((257, 129), (129,)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,norm_shape", LN_CASES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("grad_layout", ["contiguous", "strided"])
def test_layer_norm_backward_matches_torch(rng, dtype, shape, norm_shape, affine, grad_layout):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    w = (rng.standard_normal(norm_shape) + 1).astype(dtype) if affine else None
    b = rng.standard_normal(norm_shape).astype(dtype) if affine else None
    g = rng.standard_normal(shape).astype(dtype)
    if grad_layout == "strided":
        g = _noncontig(g, rng)
    _, mean, rstd = nb.layer_norm(x, norm_shape, w, b, return_stats=True)
    gx, gw, gb = nb.layer_norm_backward(g, x, norm_shape, mean, rstd, w)
    tgx, tgw, tgb = _torch_ln_grads(x, norm_shape, w, b, g)
    tol = GRAD_TOL[np.dtype(dtype)]
    assert gx.dtype == dtype and gx.shape == shape
    degenerate = np.prod(norm_shape) == 1
    if degenerate:
        # x - mean is exactly 0, so the true grad_x and grad_weight are 0 and both sides are
        # rounding noise: bound ours by the scale of the terms that cancel, dy * weight * rstd.
        natural = np.abs(g * (1 if w is None else w)).max() * rstd.max()
        assert np.abs(gx).max() <= tol * natural
    else:
        assert rel_l2(gx, tgx) <= tol
    if affine:
        assert gw.dtype == dtype and gw.shape == norm_shape and gb.shape == norm_shape
        assert np.abs(gw).max() <= tol * np.abs(g).sum() if degenerate else rel_l2(gw, tgw) <= tol
        assert rel_l2(gb, tgb) <= tol
    else:
        assert gw is None and gb is None


def test_layer_norm_backward_noncontiguous_x_and_large_offset(rng):
    base = rng.standard_normal((40, 24)) + 1e4
    x = base.T  # (24, 40) F-ordered
    w = rng.standard_normal(40)
    g = rng.standard_normal((24, 40))
    _, mean, rstd = nb.layer_norm(x, 40, w, return_stats=True)
    gx, gw, gb = nb.layer_norm_backward(g, x, 40, mean, rstd, w)
    tgx, tgw, tgb = _torch_ln_grads(np.ascontiguousarray(x), (40,), w, np.zeros(40), g)
    assert rel_l2(gx, tgx) <= 1e-10 and rel_l2(gw, tgw) <= 1e-10 and rel_l2(gb, tgb) <= 1e-10


# --------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------
BN_CASES = [
    ((5, 1), 1),
    ((9, 3), 1),
    ((4, 7, 13), 1),
    ((3, 3, 5, 7), 1),
    ((2, 3, 3, 4, 5), 1),
    ((13, 7), -1),
    ((4, 13, 7), -1),
    ((3, 5, 7, 3), -1),
    ((5, 6, 7), 0),
    ((8, 3, 61, 67), 1),  # parallel, C < threads: split over N*HW
    ((1, 3, 211, 157), 1),
    ((8, 61, 67, 3), -1),  # parallel channels-last
    ((33, 64, 17), 1),
    ((37, 29), -1),  # channel groups of 16 + 8 + 4 + 1 (cpu/moments.cl_dot_sums)
    ((3, 5, 11, 64), -1),
    ((70, 269), -1),  # rows over 1 KB: software-prefetched group sweeps, several row tiles
    ((3, 130, 5), -1),  # few channels: lane rows of cl_lanes(5) // 5 rows, plus leftover rows
]


def _to_torch_layout(a, axis):
    return np.ascontiguousarray(np.moveaxis(a, axis, 1))


def _torch_bn_grads(x, axis, rm, rv, w, b, g, training):
    tx, tw, tb = _t(_to_torch_layout(x, axis), True), _t(w, True), _t(b, True)
    F.batch_norm(tx, _t(rm), _t(rv), tw, tb, training, 0.1, 1e-5).backward(_t(_to_torch_layout(g, axis)))
    gx = np.moveaxis(tx.grad.numpy(), 1, axis)
    return gx, None if w is None else tw.grad.numpy(), None if w is None else tb.grad.numpy()


def _grad_weight_tol(tol, g, x, invstd, axis, ref):
    """``tol`` plus what rounding the saved mean to x's dtype alone can move grad_weight =
    Σdy·(x - mean)·invstd by: eps·Σ|dy·x|·invstd per channel. It matters only where the sum nearly
    cancels (a few values per channel: (5, 1) float32 gave up to 1.2e-4 relative, and a float64
    sum from the same float32 stats the same, in 6 of 2000 seeds; with this bound 0 of 2000)."""
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    bound = np.finfo(x.dtype).eps * np.abs(g.astype(np.float64) * x).sum(red) * invstd
    return tol + np.linalg.norm(bound) / np.linalg.norm(ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", BN_CASES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_matches_torch(rng, dtype, shape, axis, affine, training):
    C = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    w = (rng.standard_normal(C) + 1).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    rm, rv = rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)
    g = _noncontig(rng.standard_normal(shape).astype(dtype), rng)
    _, mean, invstd = nb.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, channel_axis=axis,
                                    return_stats=True)
    gx, gw, gb = nb.batch_norm_backward(g, x, mean, invstd, w, training, channel_axis=axis)
    tgx, tgw, tgb = _torch_bn_grads(x, axis, rm, rv, w, b, g, training)
    tol = GRAD_TOL[np.dtype(dtype)]
    assert gx.dtype == dtype and gx.shape == shape
    assert rel_l2(gx, tgx) <= tol
    if affine:
        assert gw.dtype == dtype and gw.shape == (C,) and gb.shape == (C,)
        assert rel_l2(gw, tgw) <= _grad_weight_tol(tol, g, x, invstd, axis, tgw)
        assert rel_l2(gb, tgb) <= tol
    else:
        assert gw is None and gb is None


@pytest.mark.parametrize("x_layout,g_layout", [("nchw", "nhwc"), ("nhwc", "nchw"), ("nhwc", "nhwc"),
                                               ("nhwc", "strided")])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_mixed_memory_layouts(rng, x_layout, g_layout, training):
    """NCHW-shaped arrays stored channels-last (torch's channels_last) for x and/or grad_out."""
    shape = (6, 5, 19, 23)

    def make(layout):
        a = rng.standard_normal(shape)
        if layout == "nhwc":
            return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        return _noncontig(a, rng) if layout == "strided" else a

    x, g = make(x_layout) * 3 + 1e4, make(g_layout)  # large offset too
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    rm, rv = rng.standard_normal(5) + 1e4, rng.random(5) + 0.5
    _, mean, invstd = nb.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, return_stats=True)
    out = poisoned_like(x)
    gx, gw, gb = nb.batch_norm_backward(g, x, mean, invstd, w, training, out=out)
    tgx, tgw, tgb = _torch_bn_grads(x, 1, rm, rv, w, b, g, training)
    assert gx is out
    assert rel_l2(gx, tgx) <= 1e-10 and rel_l2(gw, tgw) <= 1e-10 and rel_l2(gb, tgb) <= 1e-10


def test_batch_norm_backward_empty_batch_gives_zero_parameter_grads(rng):
    x = np.empty((0, 3, 4))
    gx, gw, gb = nb.batch_norm_backward(x.copy(), x, np.zeros(3), np.ones(3), np.ones(3), True)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, 0.0)
    np.testing.assert_array_equal(gb, 0.0)


# --------------------------------------------------------------------------------------------
# Central finite differences (float64, tiny): independent of torch
# --------------------------------------------------------------------------------------------
def _numeric_grad(f, arr, h=1e-6):
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        keep = arr[idx]
        arr[idx] = keep + h
        up = f()
        arr[idx] = keep - h
        down = f()
        arr[idx] = keep
        grad[idx] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("shape,norm_shape", [((3, 5), (5,)), ((2, 3, 4), (3, 4))])
def test_layer_norm_backward_finite_differences(rng, shape, norm_shape):
    x = rng.standard_normal(shape)
    w, b = rng.standard_normal(norm_shape), rng.standard_normal(norm_shape)
    g = rng.standard_normal(shape)
    loss = lambda: float(np.sum(g * nb.layer_norm(x, norm_shape, w, b)))  # noqa: E731
    _, mean, rstd = nb.layer_norm(x, norm_shape, w, b, return_stats=True)
    gx, gw, gb = nb.layer_norm_backward(g, x, norm_shape, mean, rstd, w)
    assert rel_l2(gx, _numeric_grad(loss, x)) <= 1e-7
    assert rel_l2(gw, _numeric_grad(loss, w)) <= 1e-7
    assert rel_l2(gb, _numeric_grad(loss, b)) <= 1e-7


@pytest.mark.parametrize("shape,axis", [((3, 2, 5), 1), ((4, 3), -1), ((2, 3, 2, 2), 1)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_finite_differences(rng, shape, axis, training):
    C = shape[axis]
    x = rng.standard_normal(shape)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    g = rng.standard_normal(shape)

    def loss():
        y = nb.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, channel_axis=axis)
        return float(np.sum(g * y))

    _, mean, invstd = nb.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, channel_axis=axis,
                                    return_stats=True)
    gx, gw, gb = nb.batch_norm_backward(g, x, mean, invstd, w, training, channel_axis=axis)
    assert rel_l2(gx, _numeric_grad(loss, x)) <= 1e-7
    assert rel_l2(gw, _numeric_grad(loss, w)) <= 1e-7
    assert rel_l2(gb, _numeric_grad(loss, b)) <= 1e-7


# --------------------------------------------------------------------------------------------
# out= buffers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_backward_out_poisoned_strided_and_in_place(rng, dtype):
    x = (rng.standard_normal((37, 300)) + 1e3).astype(dtype)
    w = rng.standard_normal(300).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    _, mean, rstd = nb.layer_norm(x, 300, w, return_stats=True)
    # closed form with the forward's statistics: torch recomputes them, and float32 ones at this
    # offset differ from those by more than the float32 bound
    tgx, tgw, tgb = rows_backward_ref(g, x, w, 1, mean, rstd)
    tol = GRAD_TOL[np.dtype(dtype)]
    out = poisoned_like(x)
    gx, gw, gb = nb.layer_norm_backward(g, x, 300, mean, rstd, w, out=out)
    assert gx is out
    assert rel_l2(out, tgx) <= tol and rel_l2(gw, tgw) <= tol and rel_l2(gb, tgb) <= tol
    strided = np.full((37, 600), np.nan, dtype)[:, 1::2]
    assert nb.layer_norm_backward(g, x, 300, mean, rstd, w, out=strided)[0] is strided
    assert rel_l2(strided, tgx) <= tol
    g2 = g.copy()
    assert nb.layer_norm_backward(g2, x, 300, mean, rstd, w, out=g2)[0] is g2  # in place over grad_out
    assert rel_l2(g2, tgx) <= tol


@pytest.mark.parametrize("shape,axis", [((8, 3, 61, 67), 1), ((8, 61, 67, 3), -1), ((4, 7, 13), 1)])
@pytest.mark.parametrize("training,affine", [(True, True), (False, True), (False, False), (True, False)])
def test_batch_norm_backward_out_poisoned_and_in_place(rng, shape, axis, training, affine):
    """grad_x into a poisoned out=, into the other memory layout (written via scratch) and over
    grad_out, each against the closed-form float64 gradient with the forward's statistics."""
    C = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 1e2).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32) if affine else None
    rm, rv = rng.standard_normal(C).astype(np.float32) + 1e2, (rng.random(C) + 0.5).astype(np.float32)
    _, mean, invstd = nb.batch_norm(x, rm.copy(), rv.copy(), w, training=training, channel_axis=axis,
                                    return_stats=True)
    tgx = bn_backward_ref(g, x, w, axis, mean, invstd, training)[0]
    tol = GRAD_TOL[np.dtype(np.float32)]
    out = poisoned_like(x)
    assert nb.batch_norm_backward(g, x, mean, invstd, w, training, channel_axis=axis, out=out)[0] is out
    assert rel_l2(out, tgx) <= tol
    moved = np.moveaxis(np.full(np.moveaxis(x, axis, -1 if axis == 1 else 1).shape, np.nan, np.float32),
                        -1 if axis == 1 else 1, axis)  # the other memory layout: written via scratch
    assert nb.batch_norm_backward(g, x, mean, invstd, w, training, channel_axis=axis, out=moved)[0] is moved
    assert rel_l2(moved, tgx) <= tol
    assert nb.batch_norm_backward(g, x, mean, invstd, w, training, channel_axis=axis, out=g)[0] is g
    assert rel_l2(g, tgx) <= tol


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_layer_norm_backward_errors(rng):
    x = rng.standard_normal((4, 6))
    g = rng.standard_normal((4, 6))
    _, mean, rstd = nb.layer_norm(x, 6, return_stats=True)
    with pytest.raises(ValueError, match="grad_out must have the shape"):
        nb.layer_norm_backward(g[:, :5], x, 6, mean, rstd)
    with pytest.raises(TypeError, match="grad_out must have the dtype"):
        nb.layer_norm_backward(g.astype(np.float32), x, 6, mean, rstd)
    with pytest.raises(ValueError, match=r"mean must have shape \(4,\)"):
        nb.layer_norm_backward(g, x, 6, mean[:3], rstd)
    with pytest.raises(ValueError, match="rstd must have shape"):
        nb.layer_norm_backward(g, x, 6, mean, rstd.reshape(4, 1))
    with pytest.raises(TypeError, match="rstd must have dtype"):
        nb.layer_norm_backward(g, x, 6, mean, rstd.astype(np.int64))
    with pytest.raises(ValueError, match="weight must have shape"):
        nb.layer_norm_backward(g, x, 6, mean, rstd, np.ones(5))
    with pytest.raises(ValueError, match="normalized_shape"):
        nb.layer_norm_backward(g, x, 5, mean, rstd)
    with pytest.raises(ValueError, match="out overlaps grad_out"):
        big = np.zeros((4, 7))
        nb.layer_norm_backward(big[:, :6], x, 6, mean, rstd, out=big[:, 1:])
    with pytest.raises(TypeError, match="x must have dtype"):
        nb.layer_norm_backward(g, x.astype(np.int32), 6, mean, rstd)


def test_batch_norm_backward_errors(rng):
    x = rng.standard_normal((4, 3, 5))
    g = rng.standard_normal(x.shape)
    _, mean, invstd = nb.batch_norm(x, training=True, return_stats=True)
    with pytest.raises(ValueError, match="at least 2 dims"):
        nb.batch_norm_backward(g[0, 0], x[0, 0], mean, invstd)
    with pytest.raises(ValueError, match="channel_axis"):
        nb.batch_norm_backward(g, x, mean, invstd, channel_axis=3)
    with pytest.raises(ValueError, match=r"invstd must have shape \(3,\)"):
        nb.batch_norm_backward(g, x, mean, invstd[:2])
    with pytest.raises(ValueError, match=r"mean must have shape \(5,\)"):
        nb.batch_norm_backward(g, x, mean, invstd, channel_axis=-1)
    with pytest.raises(TypeError, match="weight must have dtype"):
        nb.batch_norm_backward(g, x, mean, invstd, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="grad_out must have the shape"):
        nb.batch_norm_backward(g[:3], x, mean, invstd)
    with pytest.raises(ValueError, match="out must have the shape"):
        nb.batch_norm_backward(g, x, mean, invstd, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match="out overlaps x"):
        nb.batch_norm_backward(g, x, mean, invstd, out=x[::-1])


# --------------------------------------------------------------------------------------------
# Threads, serial vs parallel, device dispatch
# --------------------------------------------------------------------------------------------
def test_backward_from_four_threads_and_with_one_numba_thread(rng):
    x = rng.standard_normal((16, 37, 513))
    g = rng.standard_normal(x.shape)
    w = rng.standard_normal(513)
    _, lm, lr = nb.layer_norm(x, 513, w, return_stats=True)
    _, bm, bi = nb.batch_norm(x, training=True, return_stats=True)
    expected_ln = _torch_ln_grads(x, (513,), w, np.zeros(513), g)
    expected_bn = _torch_bn_grads(x, 1, None, None, np.ones(37), np.zeros(37), g, True)

    def work(_):
        ln = nb.layer_norm_backward(g, x, 513, lm, lr, w)
        bn = nb.batch_norm_backward(g, x, bm, bi, np.ones(37), True)
        return max(rel_l2(a, b) for a, b in zip(ln + bn, expected_ln + expected_bn, strict=True))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert max(pool.map(work, range(8))) <= 1e-10
    before = numba.get_num_threads()
    numba.set_num_threads(1)  # one task: the serial path
    try:
        assert work(0) <= 1e-10
    finally:
        numba.set_num_threads(before)


class _FakeDeviceArray:
    __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}


def test_device_arrays_go_to_the_cuda_hook(monkeypatch):
    from numbanorm import _backend

    class Stub:  # a CUDA backend with the LN op only
        def layer_norm_backward(self, *args, **kwargs):
            return "cuda", args, kwargs

    monkeypatch.setattr(_backend, "_DEVICE", [Stub()])
    dev = _FakeDeviceArray()
    result = nb.layer_norm_backward(dev, dev, 3, None, None, out=None)
    assert result[0] == "cuda" and result[1][:3] == (dev, dev, 3)
    with pytest.raises(TypeError, match="batch_norm_backward has no CUDA implementation"):
        nb.batch_norm_backward(dev, dev, None, None)


def test_host_x_with_a_device_gradient_is_a_clear_error(rng):
    x = rng.standard_normal((4, 3))
    with pytest.raises(TypeError, match="grad_out is a CUDA array"):
        nb.batch_norm_backward(_FakeDeviceArray(), x, np.zeros(3), np.ones(3))
    with pytest.raises(TypeError, match="mean is a CUDA array"):
        nb.layer_norm_backward(x, x, 3, _FakeDeviceArray(), np.ones(4))


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (64, 3, 64, 64)])  # the tiny entry, the general path
@pytest.mark.parametrize("axis", [1, -1])
def test_batch_norm_backward_non_finite_data_gives_ieee_values_without_warnings(rng, shape, axis):
    if axis == -1:  # the same sizes, channels last
        shape = (shape[0], *shape[2:], shape[1])
    C = shape[axis]
    x = rng.standard_normal(shape).astype(np.float32)
    np.moveaxis(x, axis, 0)[0].flat[3] = np.inf  # channel 0 holds an inf ...
    w = np.array([0.0, 1.5, -0.5], np.float32)  # ... and a zero weight: 0 * inf in the coefficients
    g = rng.standard_normal(shape).astype(np.float32)
    mean, invstd = rng.standard_normal(C).astype(np.float32), (rng.random(C) + 0.5).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gx, gw, gb = nb.batch_norm_backward(g, x, mean, invstd, w, channel_axis=axis)
    # float64 reference of the same formula; IEEE rules decide which values are nan/inf
    x64, g64 = np.moveaxis(x, axis, -1).astype(np.float64), np.moveaxis(g, axis, -1).astype(np.float64)
    n, xc = x.size // C, x64 - mean
    with np.errstate(all="ignore"):
        s_dy, s_dyx = g64.reshape(-1, C).sum(0), (g64 * xc).reshape(-1, C).sum(0)
        scale = w * invstd.astype(np.float64)
        ref = scale * (g64 - xc * invstd.astype(np.float64) ** 2 * s_dyx / n - s_dy / n)
        ref_gw = s_dyx * invstd
    np.testing.assert_allclose(np.moveaxis(gx, axis, -1), ref, rtol=1e-4, atol=1e-5)  # nan where ref is nan
    assert np.isnan(gx).sum() == np.isnan(ref).sum() > 0
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-4)
    np.testing.assert_allclose(gb, s_dy, rtol=1e-4, atol=1e-4)
