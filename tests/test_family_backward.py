"""rms_norm_backward / group_norm_backward against torch autograd and central finite differences."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conftest import poisoned_like
from family_reference import rms_norm_ref
from reference import TOL, rel_l2
from test_backward import GRAD_TOL, _FakeDeviceArray, _noncontig, _numeric_grad, _t

import numbanorm as nb
from numbanorm.cpu.plan import SERIAL_SIZE

torch = pytest.importorskip("torch")
F = torch.nn.functional


# --------------------------------------------------------------------------------------------
# rms_norm
# --------------------------------------------------------------------------------------------
def _torch_rms_grads(x, norm_shape, w, g, eps=None):
    tx, tw = _t(x, True), _t(w, True)
    F.rms_norm(tx, norm_shape, tw, eps).backward(_t(np.ascontiguousarray(g)))
    return tx.grad.numpy(), None if w is None else tw.grad.numpy()


RMS_CASES = [
    ((13, 37), (37,)),
    ((2, 3, 4, 5), (4, 5)),
    ((7,), (7,)),
    ((67, 1031), (1031,)),  # split into parallel tasks
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,norm_shape", RMS_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_backward_matches_torch(rng, dtype, shape, norm_shape, affine):
    x = (rng.standard_normal(shape) * 3 + 0.5).astype(dtype)
    w = (rng.standard_normal(norm_shape) + 1).astype(dtype) if affine else None
    g = _noncontig(rng.standard_normal(shape).astype(dtype), rng)
    y, rstd = nb.rms_norm(x, norm_shape, w, return_stats=True)
    assert rstd.shape == shape[: len(shape) - len(norm_shape)]
    assert rstd.dtype == (np.float64 if dtype == np.float64 else np.float32)
    np.testing.assert_array_equal(y, nb.rms_norm(x, norm_shape, w))  # stats change nothing
    assert rel_l2(y, rms_norm_ref(x, len(norm_shape), w)) <= 5 * TOL[np.dtype(dtype)]
    # torch's rstd (its fused op) of the same float64 values, with the dtype's default eps
    eps = float(np.finfo(dtype).eps)
    _, trstd = torch.ops.aten._fused_rms_norm(_t(x), list(norm_shape), _t(w), eps)
    assert rel_l2(rstd, trstd.numpy().reshape(rstd.shape)) <= GRAD_TOL[np.dtype(dtype)]
    gx, gw = nb.rms_norm_backward(g, x, norm_shape, rstd, w)
    tgx, tgw = _torch_rms_grads(x, norm_shape, w, g, eps)
    tol = GRAD_TOL[np.dtype(dtype)]
    assert gx.dtype == dtype and gx.shape == shape
    assert rel_l2(gx, tgx) <= tol
    if affine:
        assert gw.dtype == dtype and gw.shape == norm_shape
        assert rel_l2(gw, tgw) <= tol
    else:
        assert gw is None


def test_rms_norm_backward_finite_differences(rng):
    x = rng.standard_normal((3, 2, 5))
    w = rng.standard_normal((2, 5))
    g = rng.standard_normal(x.shape)
    loss = lambda: float(np.sum(g * nb.rms_norm(x, (2, 5), w, 1e-3)))  # noqa: E731
    _, rstd = nb.rms_norm(x, (2, 5), w, 1e-3, return_stats=True)
    gx, gw = nb.rms_norm_backward(g, x, (2, 5), rstd, w)
    assert rel_l2(gx, _numeric_grad(loss, x)) <= 1e-7
    assert rel_l2(gw, _numeric_grad(loss, w)) <= 1e-7


def test_rms_norm_backward_out_noncontiguous_x_and_in_place(rng):
    x = rng.standard_normal((40, 24)).T  # (24, 40), F-ordered: copied to rows
    w = rng.standard_normal(40)
    g = rng.standard_normal((24, 40))
    _, rstd = nb.rms_norm(x, 40, w, return_stats=True)
    tgx, tgw = _torch_rms_grads(np.ascontiguousarray(x), (40,), w, g, float(np.finfo(np.float64).eps))
    out = poisoned_like(g)
    gx, gw = nb.rms_norm_backward(g, x, 40, rstd, w, out=out)
    assert gx is out
    assert rel_l2(out, tgx) <= 1e-10 and rel_l2(gw, tgw) <= 1e-10
    strided = np.full((24, 80), np.nan)[:, ::2]
    assert nb.rms_norm_backward(g, x, 40, rstd, w, out=strided)[0] is strided
    assert rel_l2(strided, tgx) <= 1e-10
    assert nb.rms_norm_backward(g, x, 40, rstd, w, out=g)[0] is g  # in place over grad_out
    assert rel_l2(g, tgx) <= 1e-10


# --------------------------------------------------------------------------------------------
# group_norm
# --------------------------------------------------------------------------------------------
def _torch_gn_grads(x, groups, w, b, g, axis):
    tx, tw, tb = _t(np.moveaxis(x, axis, 1), True), _t(w, True), _t(b, True)
    F.group_norm(tx, groups, tw, tb, 1e-5).backward(_t(np.moveaxis(g, axis, 1)))
    gx = np.moveaxis(tx.grad.numpy(), 1, axis)
    return gx, None if w is None else tw.grad.numpy(), None if w is None else tb.grad.numpy()


GN_CASES = [
    ((2, 6, 5, 7), 3, 1),
    ((5, 6), 2, 1),  # no spatial dims (3 values per group: with 2, grad_x is all cancellation)
    ((2, 12, 3, 4, 5), 6, 1),
    ((3, 5, 7, 4), 2, -1),  # channels-last
    ((1, 8, 67, 129), 4, 1),  # one large sample: cut into parallel tasks
    ((2, 61, 67, 6), 3, -1),  # parallel channels-last
    ((40, 4, 23, 21), 1, 1),  # many samples: whole samples per task
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,groups,axis", GN_CASES)
def test_group_norm_backward_matches_torch(rng, dtype, shape, groups, axis):
    C = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    w, b = (rng.standard_normal(C) + 1).astype(dtype), rng.standard_normal(C).astype(dtype)
    g = _noncontig(rng.standard_normal(shape).astype(dtype), rng)
    _, mean, rstd = nb.group_norm(x, groups, w, b, channel_axis=axis, return_stats=True)
    gx, gw, gb = nb.group_norm_backward(g, x, groups, mean, rstd, w, channel_axis=axis)
    tgx, tgw, tgb = _torch_gn_grads(x, groups, w, b, g, axis)
    tol = gx_tol = GRAD_TOL[np.dtype(dtype)]
    if shape == (5, 6) and dtype == np.float32:
        # 3 values per group: grad_x is one cancelling direction, and the float32 rounding of the
        # saved mean/rstd alone moves it by up to ~4e-5 (a float64 backward from the same float32
        # stats: median 1.6e-7, max 3.9e-5 over 3000 seeds; torch saves float32 stats too).
        gx_tol = 2e-4
    assert gx.dtype == dtype and gx.shape == shape
    assert gw.dtype == gb.dtype == dtype and gw.shape == gb.shape == (C,)
    assert rel_l2(gx, tgx) <= gx_tol and rel_l2(gw, tgw) <= tol and rel_l2(gb, tgb) <= tol


def test_group_norm_backward_without_affine_and_large_offset(rng):
    x = rng.standard_normal((3, 6, 11)) * 0.5 + 1e4
    g = rng.standard_normal(x.shape)
    _, mean, rstd = nb.group_norm(x, 2, return_stats=True)
    gx, gw, gb = nb.group_norm_backward(g, x, 2, mean, rstd)
    assert gw is None and gb is None
    assert rel_l2(gx, _torch_gn_grads(x, 2, None, None, g, 1)[0]) <= 1e-10


@pytest.mark.parametrize("axis", [1, -1])
def test_group_norm_backward_finite_differences(rng, axis):
    shape = (2, 3, 4, 2) if axis == -1 else (2, 4, 3)
    C = shape[axis]
    x = rng.standard_normal(shape)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    g = rng.standard_normal(shape)
    loss = lambda: float(np.sum(g * nb.group_norm(x, 2, w, b, channel_axis=axis)))  # noqa: E731
    _, mean, rstd = nb.group_norm(x, 2, w, b, channel_axis=axis, return_stats=True)
    gx, gw, gb = nb.group_norm_backward(g, x, 2, mean, rstd, w, channel_axis=axis)
    assert rel_l2(gx, _numeric_grad(loss, x)) <= 1e-7
    assert rel_l2(gw, _numeric_grad(loss, w)) <= 1e-7
    assert rel_l2(gb, _numeric_grad(loss, b)) <= 1e-7


def test_group_norm_backward_memory_layouts_out_and_in_place(rng):
    """x stored NHWC behind an NCHW shape (torch's channels_last), grad_out in the other layout,
    poisoned out in either layout, and grad_x written over grad_out."""
    shape = (3, 8, 9, 10)
    x = np.ascontiguousarray(rng.standard_normal((3, 9, 10, 8)) * 3 + 1).transpose(0, 3, 1, 2)
    g = rng.standard_normal(shape)
    w = rng.standard_normal(8)
    _, mean, rstd = nb.group_norm(x, 4, w, return_stats=True)
    tgx, tgw, tgb = _torch_gn_grads(np.ascontiguousarray(x), 4, w, np.zeros(8), g, 1)
    gx, gw, gb = nb.group_norm_backward(g, x, 4, mean, rstd, w)
    assert np.moveaxis(gx, 1, -1).flags.c_contiguous  # the output keeps x's memory layout
    assert rel_l2(gx, tgx) <= 1e-10 and rel_l2(gw, tgw) <= 1e-10 and rel_l2(gb, tgb) <= 1e-10
    for out in (poisoned_like(g), np.full((3, 9, 10, 8), np.nan).transpose(0, 3, 1, 2)):
        assert nb.group_norm_backward(g, x, 4, mean, rstd, w, out=out)[0] is out
        assert rel_l2(out, tgx) <= 1e-10
    g_cl = np.ascontiguousarray(np.moveaxis(g, 1, -1)).transpose(0, 3, 1, 2)
    assert nb.group_norm_backward(g_cl, x, 4, mean, rstd, w, out=g_cl)[0] is g_cl
    assert rel_l2(g_cl, tgx) <= 1e-10


def test_group_norm_backward_empty_batch():
    x = np.empty((0, 4, 3))
    gx, gw, gb = nb.group_norm_backward(x.copy(), x, 2, np.empty((0, 2)), np.empty((0, 2)), np.ones(4))
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, 0.0)
    np.testing.assert_array_equal(gb, 0.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_family_backward_serial_and_parallel(rng, threads):
    """Inputs past the parallel threshold with one numba thread (one task: the serial kernels) and
    two (several tasks), each against torch's float64 autograd."""
    x = rng.standard_normal((1, 8, 67, 129)) * 2 + 1e3
    assert x.size >= SERIAL_SIZE
    g = rng.standard_normal(x.shape)
    w = rng.standard_normal(8)
    _, mean, rstd = nb.group_norm(x, 4, w, return_stats=True)
    xr = x.reshape(-1, 129)
    _, r_rstd = nb.rms_norm(xr, 129, return_stats=True)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        gn = nb.group_norm_backward(g, x, 4, mean, rstd, w)
        rms = nb.rms_norm_backward(g.reshape(xr.shape), xr, 129, r_rstd)
    finally:
        numba.set_num_threads(before)
    for a, b in zip(gn, _torch_gn_grads(x, 4, w, np.zeros(8), g, 1), strict=True):
        assert rel_l2(a, b) <= 1e-10
    assert rms[1] is None
    tgx, _ = _torch_rms_grads(xr, (129,), None, g.reshape(xr.shape), float(np.finfo(np.float64).eps))
    assert rel_l2(rms[0], tgx) <= 1e-10


# --------------------------------------------------------------------------------------------
# Errors and dispatch
# --------------------------------------------------------------------------------------------
def test_rms_norm_backward_errors(rng):
    x = rng.standard_normal((4, 6))
    g = rng.standard_normal((4, 6))
    _, rstd = nb.rms_norm(x, 6, return_stats=True)
    with pytest.raises(ValueError, match="grad_out must have the shape"):
        nb.rms_norm_backward(g[:, :5], x, 6, rstd)
    with pytest.raises(TypeError, match="grad_out must have the dtype"):
        nb.rms_norm_backward(g.astype(np.float32), x, 6, rstd)
    with pytest.raises(ValueError, match=r"rstd must have shape \(4,\)"):
        nb.rms_norm_backward(g, x, 6, rstd[:3])
    with pytest.raises(ValueError, match="weight must have shape"):
        nb.rms_norm_backward(g, x, 6, rstd, np.ones(5))
    with pytest.raises(ValueError, match="normalized_shape"):
        nb.rms_norm_backward(g, x, 5, rstd)
    with pytest.raises(ValueError, match="out overlaps x"):
        nb.rms_norm_backward(g, x, 6, rstd, out=x[::-1])
    with pytest.raises(TypeError, match="x must have dtype float16, bfloat16, float32 or float64"):
        nb.rms_norm_backward(g.astype(np.int64), x.astype(np.int64), 6, rstd)
    gx, _ = nb.rms_norm_backward(g.astype(np.float16), x.astype(np.float16), 6, rstd)  # half: accepted
    assert gx.dtype == np.float16


def test_group_norm_backward_errors(rng):
    x = rng.standard_normal((4, 6, 5))
    g = rng.standard_normal(x.shape)
    _, mean, rstd = nb.group_norm(x, 3, return_stats=True)
    with pytest.raises(ValueError, match="positive divisor"):
        nb.group_norm_backward(g, x, 4, mean, rstd)
    with pytest.raises(TypeError, match="num_groups must be an int"):
        nb.group_norm_backward(g, x, 3.0, mean, rstd)
    with pytest.raises(ValueError, match=r"mean must have shape \(4, 3\)"):
        nb.group_norm_backward(g, x, 3, mean[:, :2], rstd)
    with pytest.raises(ValueError, match=r"rstd must have shape \(4, 3\)"):
        nb.group_norm_backward(g, x, 3, mean, rstd.reshape(-1))
    with pytest.raises(ValueError, match="channel_axis must not be 0"):
        nb.group_norm_backward(g, x, 3, mean, rstd, channel_axis=0)
    with pytest.raises(TypeError, match="weight must have dtype"):
        nb.group_norm_backward(g, x, 3, mean, rstd, np.ones(6, np.float32))
    with pytest.raises(ValueError, match="weight must have shape"):
        nb.group_norm_backward(g, x, 3, mean, rstd, np.ones(5))
    with pytest.raises(ValueError, match="grad_out must have the shape"):
        nb.group_norm_backward(g[:3], x, 3, mean, rstd)
    with pytest.raises(ValueError, match="at least 2 dims"):
        nb.group_norm_backward(g[0, 0], x[0, 0], 1, mean, rstd)
    with pytest.raises(ValueError, match="out overlaps grad_out"):
        big = np.zeros((4, 6, 6))
        nb.group_norm_backward(big[..., :5], x, 3, mean, rstd, out=big[..., 1:])


def test_family_backward_device_arrays_go_to_the_cuda_hook(monkeypatch):
    from numbanorm import _backend

    monkeypatch.setattr(_backend, "_DEVICE", [object()])  # a CUDA backend without these ops
    dev = _FakeDeviceArray()
    with pytest.raises(TypeError, match="rms_norm_backward has no CUDA implementation"):
        nb.rms_norm_backward(dev, dev, 3, None)
    with pytest.raises(TypeError, match="group_norm_backward has no CUDA implementation"):
        nb.group_norm_backward(dev, dev, 1, None, None)
