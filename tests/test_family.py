"""rms_norm, group_norm, instance_norm, add_layer_norm and fold_batch_norm against float64
references and torch: odd sizes, channels-last, non-contiguous input, poisoned out=, offsets."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import poisoned_like
from family_reference import group_norm_ref, instance_norm_running_ref, rms_norm_ref
from reference import TOL, layer_norm_ref, rel_l2

import numbanorm as nb

torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = [np.float32, np.float64]


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _tol(dtype, factor=5):
    return TOL[np.dtype(dtype)] * factor


# --------------------------------------------------------------------------------------------
# rms_norm
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((7, 3), 1), ((3, 13, 7), 1), ((2, 5, 6, 7), 2), ((3, 129, 257), 1)])
@pytest.mark.parametrize("affine,eps", [(True, None), (False, 1e-3)])
def test_rms_norm(rng, dtype, shape, k, affine, eps):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    w = rng.standard_normal(shape[-k:]).astype(dtype) if affine else None
    y = nb.rms_norm(x, shape[-k:], w, eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert rel_l2(y, rms_norm_ref(x, k, w, eps)) <= _tol(dtype)
    ty = F.rms_norm(_t(x), shape[-k:], _t(w), eps).numpy()
    assert rel_l2(y, ty) <= _tol(dtype, 10)


def test_rms_norm_default_eps_is_the_compute_types(rng):
    # Tiny inputs make eps dominate: float32's epsilon for float32 input, float64's for float64.
    for dtype in DTYPES:
        x = np.full((2, 4), 1e-5, dtype)
        y = nb.rms_norm(x, 4)
        assert rel_l2(y, rms_norm_ref(x, 1)) <= _tol(dtype)
        assert rel_l2(y, F.rms_norm(_t(x), (4,)).numpy()) <= _tol(dtype, 10)


def test_rms_norm_noncontiguous_and_poisoned_out(rng):
    base = rng.standard_normal((6, 40)).astype(np.float32)
    x = base[:, ::2]
    out = poisoned_like(np.empty((20, 6), np.float32)).T  # non-contiguous out: scratch + copy back
    y = nb.rms_norm(x, 20, out=out)
    assert y is out
    assert rel_l2(out, rms_norm_ref(x, 1)) <= _tol(np.float32)


# --------------------------------------------------------------------------------------------
# group_norm
# --------------------------------------------------------------------------------------------
GN_CASES = [
    ((2, 6, 5, 7), 3),
    ((3, 4, 9), 2),
    ((5, 6), 3),  # no spatial dims
    ((2, 12, 3, 4, 5), 6),
    ((1, 8, 67, 129), 4),  # one large sample: it is cut into several parallel tasks
    ((40, 4, 23, 21), 1),  # many samples: whole samples per task
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups", GN_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm(rng, dtype, shape, groups, channels_last):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    C = shape[1]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    ry, rmean, rrstd = group_norm_ref(x, groups, w, b)
    ty = F.group_norm(_t(x), groups, _t(w), _t(b)).numpy()
    if channels_last:  # the same data stored N...C, normalized with channel_axis=-1
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y, mean, rstd = nb.group_norm(x, groups, w, b, channel_axis=-1, return_stats=True)
        y = np.moveaxis(y, -1, 1)
    else:
        y, mean, rstd = nb.group_norm(x, groups, w, b, return_stats=True)
    assert y.dtype == x.dtype and mean.shape == rstd.shape == (shape[0], groups)
    assert mean.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert rel_l2(y, ry) <= _tol(dtype)
    assert rel_l2(mean, rmean) <= _tol(dtype) and rel_l2(rstd, rrstd) <= _tol(dtype)
    assert rel_l2(y, ty) <= _tol(dtype, 10)


def test_group_norm_torch_channels_last_memory_format(rng):
    """An NCHW array stored NHWC (torch.channels_last) with channel_axis=1: read copy-free and
    the output keeps that layout."""
    xt = torch.randn(3, 8, 9, 10).to(memory_format=torch.channels_last)
    x = xt.numpy()
    assert not x.flags.c_contiguous
    y = nb.group_norm(x, 2)
    assert np.moveaxis(y, 1, -1).flags.c_contiguous
    assert rel_l2(y, F.group_norm(xt, 2).numpy()) <= _tol(np.float32, 10)


def test_group_norm_noncontiguous_poisoned_out_offset(rng):
    base = (1e4 + rng.standard_normal((4, 6, 9, 22))).astype(np.float32)
    x = base[:, :, :, ::2]  # strided: copied to a contiguous view
    out = poisoned_like(x)
    y = nb.group_norm(x, 3, out=out)
    assert y is out
    ry, _, _ = group_norm_ref(x, 3)
    assert rel_l2(out, ry) <= _tol(np.float32)
    out2 = np.full((4, 9, 11, 6), np.nan, np.float32).transpose(0, 3, 1, 2)  # other layout than x's view
    assert rel_l2(nb.group_norm(x, 3, out=out2), ry) <= _tol(np.float32)
    xi = x.copy()
    nb.group_norm(xi, 3, out=xi)  # in place
    assert rel_l2(xi, ry) <= _tol(np.float32)


def test_group_norm_empty_batch():
    y, mean, rstd = nb.group_norm(np.empty((0, 4, 3), np.float32), 2, return_stats=True)
    assert y.shape == (0, 4, 3) and mean.shape == (0, 2)


# --------------------------------------------------------------------------------------------
# instance_norm
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 7), (3, 5, 6, 7), (1, 4, 150, 140), (2, 3, 2, 3, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_with_running_stats(rng, dtype, shape, channels_last):
    x = (rng.standard_normal(shape) * 2 - 3).astype(dtype)
    C = shape[1]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    trm, trv = _t(rm.copy()), _t(rv.copy())
    ty = F.instance_norm(_t(x), trm, trv, _t(w), _t(b), use_input_stats=True, momentum=0.3).numpy()
    ref_rm, ref_rv = instance_norm_running_ref(x, rm, rv, 0.3)
    ry, _, _ = group_norm_ref(x, C, w, b)
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y = np.moveaxis(nb.instance_norm(x, rm, rv, w, b, momentum=0.3, channel_axis=-1), -1, 1)
    else:
        y = nb.instance_norm(x, rm, rv, w, b, momentum=0.3)
    assert rel_l2(y, ry) <= _tol(dtype)
    assert rel_l2(y, ty) <= _tol(dtype, 10)
    assert rel_l2(rm, ref_rm) <= _tol(dtype) and rel_l2(rv, ref_rv) <= _tol(dtype)
    assert rel_l2(rm, trm.numpy()) <= _tol(dtype, 10) and rel_l2(rv, trv.numpy()) <= _tol(dtype, 10)


def test_instance_norm_eval_and_no_running_stats(rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    rm, rv = rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    rm0, rv0 = rm.copy(), rv.copy()
    y = nb.instance_norm(x, rm, rv, use_input_stats=False, out=poisoned_like(x))
    ty = F.instance_norm(_t(x), _t(rm), _t(rv), use_input_stats=False).numpy()
    assert rel_l2(y, ty) <= _tol(np.float32, 10)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert rel_l2(nb.instance_norm(x), F.instance_norm(_t(x)).numpy()) <= _tol(np.float32, 10)


# --------------------------------------------------------------------------------------------
# add_layer_norm
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((7, 3), 1), ((3, 13, 37), 1), ((2, 3, 4, 5), 2), ((4, 65, 769), 1)])
def test_add_layer_norm_equals_unfused(rng, dtype, shape, k):
    """add_layer_norm is documented to equal the unfused ops (the sum rounded to the dtype, then
    layer_norm): the same bits as ``x + r`` and as ``layer_norm(x + r)``; and the float64
    reference of LN of that rounded sum, and torch's."""
    x = rng.standard_normal(shape).astype(dtype)
    r = (rng.standard_normal(shape) * 5 + 1e3).astype(dtype)
    w, b = rng.standard_normal(shape[-k:]).astype(dtype), rng.standard_normal(shape[-k:]).astype(dtype)
    y, s = nb.add_layer_norm(x, r, shape[-k:], w, b)
    np.testing.assert_array_equal(s, x + r)  # exactly the dtype's rounded sum
    ry, _, _ = layer_norm_ref(x + r, shape[-k:], w, b)
    assert rel_l2(y, ry) <= _tol(dtype)
    np.testing.assert_array_equal(y, nb.layer_norm(x + r, shape[-k:], w, b))
    # torch's semantics (sum rounded in the dtype, then LN), evaluated in float64: at this offset
    # (|mean| / std ~ 200) torch's own float32 LN is off by ~1e-5, so it is no float32 oracle.
    ty = F.layer_norm((_t(x) + _t(r)).double(), shape[-k:], _t(w).double(), _t(b).double()).numpy()
    assert rel_l2(y, ty) <= _tol(dtype)


def test_add_layer_norm_in_place_and_noncontiguous(rng):
    """In place and strided: the unfused result, bit for bit (as documented, see above), which
    is the float64 reference of LN of the rounded sum."""
    x = rng.standard_normal((9, 31)).astype(np.float32)
    r = (rng.standard_normal((9, 31)) * 3 + 1e3).astype(np.float32)
    want_s = x + r
    want_y = nb.layer_norm(want_s, 31)
    assert rel_l2(want_y, layer_norm_ref(want_s, (31,))[0]) <= _tol(np.float32)
    out, res_out = poisoned_like(x), poisoned_like(x)
    y, s = nb.add_layer_norm(x, r, 31, out=out, residual_out=res_out)
    assert y is out and s is res_out
    np.testing.assert_array_equal(s, want_s)
    np.testing.assert_array_equal(y, want_y)
    xi, ri = x.copy(), r.copy()
    y, s = nb.add_layer_norm(xi, ri, 31, out=xi, residual_out=ri)  # both in place
    assert y is xi and s is ri
    np.testing.assert_array_equal(ri, want_s)
    np.testing.assert_array_equal(xi, want_y)
    xs = np.repeat(x, 2, axis=1)[:, ::2]  # strided input, strided outputs
    outs = np.full((31, 9), np.nan, np.float32).T
    y, s = nb.add_layer_norm(xs, r, 31, out=outs)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(s, want_s)


# --------------------------------------------------------------------------------------------
# fold_batch_norm
# --------------------------------------------------------------------------------------------
def _bn_eval(y, rm, rv, g, b, eps, axis):
    shape = [1] * y.ndim
    shape[axis] = -1
    return (y - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + eps) * g.reshape(shape) + b.reshape(shape)


def _conv2d(x, w, b):
    """Valid 2-D convolution (cross-correlation, as torch) in float64 NumPy."""
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))  # N, Ci, Ho, Wo, kh, kw
    return np.einsum("nchwij,ocij->nohw", win, w) + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batch_norm_conv(rng, with_bias):
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32) if with_bias else None
    rm, rv = rng.standard_normal(6).astype(np.float32), rng.uniform(0.5, 2, 6).astype(np.float32)
    g, beta = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    fw, fb = nb.fold_batch_norm(w, b, rm, rv, g, beta, 1e-3)
    tw, tb = torch.nn.utils.fusion.fuse_conv_bn_weights(_t(w), _t(b), _t(rm), _t(rv), 1e-3, _t(g), _t(beta))
    assert fw.dtype == fb.dtype == np.float32
    np.testing.assert_allclose(fw, tw.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fb, tb.detach().numpy(), rtol=1e-6, atol=1e-6)
    x = rng.standard_normal((2, 3, 8, 7))
    zero = np.zeros(6)
    bn_of_conv = _bn_eval(_conv2d(x, w.astype(np.float64), zero if b is None else b.astype(np.float64)),
                          rm.astype(np.float64), rv.astype(np.float64), g.astype(np.float64),
                          beta.astype(np.float64), 1e-3, 1)
    folded = _conv2d(x, fw.astype(np.float64), fb.astype(np.float64))
    np.testing.assert_allclose(folded, bn_of_conv, rtol=1e-5, atol=1e-5)


def test_fold_batch_norm_conv_transpose_and_linear(rng):
    w = rng.standard_normal((4, 5, 2, 2)).astype(np.float64)  # ConvTranspose: (C_in, C_out, kh, kw)
    rm, rv = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    g, beta, b = rng.standard_normal(5), rng.standard_normal(5), rng.standard_normal(5)
    fw, fb = nb.fold_batch_norm(w, b, rm, rv, g, beta, out_axis=1)
    tw, tb = torch.nn.utils.fusion.fuse_conv_bn_weights(_t(w), _t(b), _t(rm), _t(rv), 1e-5, _t(g), _t(beta),
                                                        transpose=True)
    np.testing.assert_allclose(fw, tw.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(fb, tb.detach().numpy(), rtol=1e-12)

    lw = rng.standard_normal((5, 7)).astype(np.float32)
    lb = rng.standard_normal(5).astype(np.float32)
    rm32, rv32, g32, be32 = (a.astype(np.float32) for a in (rm, rv, g, beta))
    fw, fb = nb.fold_batch_norm(lw, lb, rm32, rv32, g32, be32)
    tw, tb = torch.nn.utils.fusion.fuse_linear_bn_weights(_t(lw), _t(lb), _t(rm32), _t(rv32), 1e-5, _t(g32),
                                                          _t(be32))
    np.testing.assert_allclose(fw, tw.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fb, tb.detach().numpy(), rtol=1e-6, atol=1e-6)
    x = rng.standard_normal((11, 7))
    bn = _bn_eval(x @ lw.T.astype(np.float64) + lb, rm32, rv32, g32, be32, 1e-5, 1)
    np.testing.assert_allclose(x @ fw.T.astype(np.float64) + fb, bn, rtol=1e-5, atol=1e-5)
