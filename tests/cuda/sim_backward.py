"""CUDA backward kernels under the simulator, against the CPU backward and float64 references.

Run by ``tests/test_cuda.py`` in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (see sim_kernels.py).
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported", allow_module_level=True)

import numpy as np  # noqa: E402
from conftest import poisoned_like  # noqa: E402
from reference import TOL, rel_l2, two_pass  # noqa: E402
from simtools import assert_same_error_as_cpu, bf16_dev, dev, few_ln_blocks, from_bf16, host, round_bf16, small_blocks  # noqa: E402, F401

import numbanorm as nb  # noqa: E402


def ln_grads_ref(g, x, k, w):
    """float64 (grad_x, grad_w, grad_b) from the two-pass stats (no numbanorm code)."""
    g64, x64 = np.asarray(g, np.float64), np.asarray(x, np.float64)
    axes = tuple(range(x64.ndim - k, x64.ndim))
    mean, var = two_pass(x64, axes)
    rstd = 1.0 / np.sqrt(var + 1e-5)
    xh = (x64 - mean) * rstd
    gg = g64 if w is None else g64 * np.asarray(w, np.float64)
    gx = rstd * (gg - gg.mean(axis=axes, keepdims=True) - xh * (gg * xh).mean(axis=axes, keepdims=True))
    rows = tuple(range(x64.ndim - k))
    return gx, (g64 * xh).sum(axis=rows), g64.sum(axis=rows)


def bn_grads_ref(g, x, axis, w, training, rm=None, rv=None):
    g64, x64 = np.asarray(g, np.float64), np.asarray(x, np.float64)
    axis %= x64.ndim
    axes = tuple(i for i in range(x64.ndim) if i != axis)
    if training:
        mean, var = two_pass(x64, axes)
    else:
        bshape = [1] * x64.ndim
        bshape[axis] = -1
        mean, var = np.asarray(rm, np.float64).reshape(bshape), np.asarray(rv, np.float64).reshape(bshape)
    invstd = 1.0 / np.sqrt(var + 1e-5)
    scale = invstd if w is None else invstd * np.asarray(w, np.float64).reshape(invstd.shape)
    xh = (x64 - mean) * invstd
    if training:
        gx = scale * (g64 - g64.mean(axis=axes, keepdims=True) - xh * (g64 * xh).mean(axis=axes, keepdims=True))
    else:
        gx = g64 * scale
    return gx, (g64 * xh).sum(axis=axes), g64.sum(axis=axes)


# ---------------------------------------------------------------------------------- LayerNorm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k", [((3, 37), 1), ((2, 3, 5), 2), ((5, 16), 1), ((4, 1), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_backward_matches_cpu_and_reference(rng, dtype, shape, k, affine):
    x = (rng.standard_normal(shape) * 3 + 1e4).astype(dtype)  # large offset
    g = rng.standard_normal(shape).astype(dtype)
    ns = shape[-k:]
    w = (rng.standard_normal(ns) + 1).astype(dtype) if affine else None
    _, mean, rstd = nb.layer_norm(x, ns, w, return_stats=True)
    gx, gw, gb = nb.layer_norm_backward(dev(g), dev(x), ns, dev(mean), dev(rstd), None if w is None else dev(w))
    cgx, cgw, cgb = nb.layer_norm_backward(g, x, ns, mean, rstd, w)
    rgx, rgw, rgb = ln_grads_ref(g, x, k, w)
    tol = TOL[np.dtype(dtype)] * (100 if dtype == np.float32 else 10)  # vs the CPU, on the same stats
    rtol = 1e-3 if dtype == np.float32 else 1e-10  # vs float64 stats: float32 stats of 1e4 + N(0, 9) are off ~1e-4
    assert host(gx).dtype == dtype and host(gx).shape == shape
    if np.prod(ns) > 1:
        assert rel_l2(host(gx), rgx) < rtol and rel_l2(host(gx), cgx) < tol
    else:  # x - mean is exactly 0: grad_x is 0 up to rounding of the cancelling terms
        assert np.abs(host(gx)).max() <= tol * np.abs(g).max() * rstd.max() * (1 if w is None else np.abs(w).max())
    if affine:
        assert host(gw).shape == ns and host(gw).dtype == dtype
        assert rel_l2(host(gb), rgb) < tol and rel_l2(host(gb), cgb) < tol
        if np.prod(ns) > 1:
            assert rel_l2(host(gw), rgw) < rtol and rel_l2(host(gw), cgw) < tol
    else:
        assert gw is None and gb is None


def test_layer_norm_backward_out_and_in_place(rng):
    x = rng.standard_normal((5, 19)).astype(np.float32)
    g = rng.standard_normal((5, 19)).astype(np.float32)
    w = rng.standard_normal(19).astype(np.float32)
    _, mean, rstd = nb.layer_norm(x, 19, w, return_stats=True)
    ref = ln_grads_ref(g, x, 1, w)[0]
    out = dev(poisoned_like(x))
    gx, _, _ = nb.layer_norm_backward(dev(g), dev(x), 19, dev(mean), dev(rstd), dev(w), out=out)
    assert gx is out and rel_l2(host(out), ref) < 1e-4
    dg = dev(g)
    gx, _, _ = nb.layer_norm_backward(dg, dev(x), 19, dev(mean), dev(rstd), dev(w), out=dg)
    assert gx is dg and rel_l2(host(dg), ref) < 1e-4


def test_layer_norm_backward_uses_device_stats_from_the_forward(rng):
    x = (rng.standard_normal((4, 3, 7)) + 2).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    _, mean, rstd = nb.layer_norm(dev(x), (3, 7), return_stats=True)
    gx, _, _ = nb.layer_norm_backward(dev(g), dev(x), (3, 7), mean, rstd)
    assert rel_l2(host(gx), ln_grads_ref(g, x, 2, None)[0]) < 1e-4


@pytest.mark.parametrize("param_dtype", ["same", "float32"])
def test_layer_norm_backward_half(rng, param_dtype):
    for half in ("float16", "bfloat16"):
        x = rng.standard_normal((3, 21)) + 2
        g = rng.standard_normal((3, 21))
        w = rng.standard_normal(21) + 1
        if half == "float16":
            x, g, w = x.astype(np.float16), g.astype(np.float16), w.astype(np.float16)
            dx_, dg_ = dev(x), dev(g)
            dw_ = dev(w) if param_dtype == "same" else dev(w.astype(np.float32))
        else:
            x, g, w = round_bf16(x), round_bf16(g), round_bf16(w)
            dx_, dg_ = bf16_dev(x), bf16_dev(g)
            dw_ = bf16_dev(w) if param_dtype == "same" else dev(w.astype(np.float32))
        _, mean, rstd = nb.layer_norm(np.asarray(x, np.float32), 21, return_stats=True)
        gx, gw, gb = nb.cuda.layer_norm_backward(dg_, dx_, 21, dev(mean), dev(rstd), dw_)
        rgx, rgw, rgb = ln_grads_ref(g, x, 1, w)
        tol = 3e-3 if half == "float16" else 2e-2
        read = from_bf16 if half == "bfloat16" else host
        assert rel_l2(read(gx), rgx) < tol
        pread = host if param_dtype == "float32" else read
        assert rel_l2(pread(gw), rgw) < tol and rel_l2(pread(gb), rgb) < tol
        if param_dtype == "float32":
            assert host(gw).dtype == np.float32


# ---------------------------------------------------------------------------------- BatchNorm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((3, 5, 4, 3), 1), ((4, 3, 2, 5), -1), ((33, 5), -1)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_matches_cpu_and_reference(rng, dtype, shape, axis, training, affine):
    x = (rng.standard_normal(shape) * 2 + 1e4).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    w = (rng.standard_normal(C) + 1).astype(dtype) if affine else None
    rm = (rng.standard_normal(C) + 1e4).astype(dtype)
    rv = (rng.random(C) + 3.5).astype(dtype)
    _, mean, invstd = nb.batch_norm(x, rm.copy(), rv.copy(), w, None, training=training, channel_axis=axis,
                                    return_stats=True)
    gx, gw, gb = nb.batch_norm_backward(dev(g), dev(x), dev(mean), dev(invstd), None if w is None else dev(w),
                                        training, channel_axis=axis)
    cgx, cgw, cgb = nb.batch_norm_backward(g, x, mean, invstd, w, training, channel_axis=axis)
    rgx, rgw, rgb = bn_grads_ref(g, x, axis, w, training, rm, rv)
    tol = TOL[np.dtype(dtype)] * (100 if dtype == np.float32 else 10)  # vs the CPU, on the same stats
    rtol = 1e-3 if dtype == np.float32 else 1e-10  # vs float64 stats (see the LN test)
    assert host(gx).dtype == dtype and host(gx).shape == shape
    assert rel_l2(host(gx), rgx) < rtol and rel_l2(host(gx), cgx) < tol
    if affine:
        assert rel_l2(host(gw), rgw) < rtol and rel_l2(host(gw), cgw) < tol
        assert rel_l2(host(gb), rgb) < tol and rel_l2(host(gb), cgb) < tol
    else:
        assert gw is None and gb is None


def test_batch_norm_backward_channels_last_storage_and_mixed_grad_layout(rng):
    nhwc = rng.standard_normal((3, 4, 3, 5)).astype(np.float64)
    x = dev(nhwc).transpose((0, 3, 1, 2))  # NCHW stored channels-last
    xh = nhwc.transpose(0, 3, 1, 2)
    g = rng.standard_normal(xh.shape)
    w = rng.standard_normal(5)
    _, mean, invstd = nb.batch_norm(xh, training=True, return_stats=True)
    rgx, rgw, rgb = bn_grads_ref(g, xh, 1, w, True)
    gx_cl = dev(np.ascontiguousarray(g.transpose(0, 2, 3, 1))).transpose((0, 3, 1, 2))
    gx, gw, gb = nb.batch_norm_backward(gx_cl, x, dev(mean), dev(invstd), dev(w))
    assert gx.strides == x.strides and rel_l2(host(gx), rgx) < 1e-12
    gx, gw, gb = nb.batch_norm_backward(dev(g), x, dev(mean), dev(invstd), dev(w))  # grad_out NCHW: copies
    assert rel_l2(host(gx), rgx) < 1e-12 and rel_l2(host(gw), rgw) < 1e-12 and rel_l2(host(gb), rgb) < 1e-12


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_out_and_in_place(rng, training):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(3).astype(np.float32)
    _, mean, invstd = nb.batch_norm(x, training=True, return_stats=True)
    ref = bn_grads_ref(g, x, 1, w, True)[0] if training else g * (w * invstd)[None, :, None]
    out = dev(poisoned_like(x))
    gx, _, _ = nb.batch_norm_backward(dev(g), dev(x), dev(mean), dev(invstd), dev(w), training, out=out)
    assert gx is out and rel_l2(host(out), ref) < 1e-4
    dg = dev(g)
    nb.batch_norm_backward(dg, dev(x), dev(mean), dev(invstd), dev(w), training, out=dg)
    assert rel_l2(host(dg), ref) < 1e-4


@pytest.mark.parametrize("axis", [1, -1])
def test_batch_norm_backward_half(rng, axis):
    for half in ("float16", "bfloat16"):
        x = rng.standard_normal((4, 3, 5)) + 2
        g = rng.standard_normal((4, 3, 5))
        C = x.shape[axis]
        w = (rng.standard_normal(C) + 1).astype(np.float32)  # mixed precision: float32 weight
        if half == "float16":
            x, g = x.astype(np.float16), g.astype(np.float16)
            dx_, dg_, read = dev(x), dev(g), host
        else:
            x, g = round_bf16(x), round_bf16(g)
            dx_, dg_, read = bf16_dev(x), bf16_dev(g), from_bf16
        _, mean, invstd = nb.batch_norm(np.asarray(x, np.float32), training=True, channel_axis=axis,
                                        return_stats=True)
        gx, gw, gb = nb.cuda.batch_norm_backward(dg_, dx_, dev(mean), dev(invstd), dev(w), True, channel_axis=axis)
        rgx, rgw, rgb = bn_grads_ref(g, x, axis, w, True)
        tol = 3e-3 if half == "float16" else 2e-2
        assert rel_l2(read(gx), rgx) < tol
        assert host(gw).dtype == np.float32 and rel_l2(host(gw), rgw) < 1e-4 and rel_l2(host(gb), rgb) < 1e-4


def test_backward_empty_inputs():
    x = np.zeros((0, 3, 4), np.float32)
    gx, gw, gb = nb.batch_norm_backward(dev(x), dev(x), dev(np.zeros(3, np.float32)), dev(np.ones(3, np.float32)),
                                        dev(np.ones(3, np.float32)))
    assert host(gx).shape == x.shape and np.array_equal(host(gw), np.zeros(3)) and np.array_equal(host(gb), np.zeros(3))
    gx, gw, gb = nb.layer_norm_backward(dev(x), dev(x), 4, dev(np.zeros((0, 3), np.float32)),
                                        dev(np.zeros((0, 3), np.float32)), dev(np.ones(4, np.float32)))
    assert host(gx).shape == x.shape and np.array_equal(host(gw), np.zeros(4))
    gx, gw, gb = nb.cuda.batch_norm_backward(bf16_dev(x), bf16_dev(x), dev(np.zeros(3, np.float32)),
                                             dev(np.ones(3, np.float32)), bf16_dev(np.ones(3)))
    assert np.array_equal(from_bf16(gw), np.zeros(3)) and np.array_equal(from_bf16(gb), np.zeros(3))


# ---------------------------------------------------------------------------------- errors
BAD_CALLS = [
    ("ln", dict(normalized_shape=5)),
    ("ln", dict(grad_out=np.zeros((3, 5), np.float32))),
    ("ln", dict(grad_out=np.zeros((3, 4), np.float64))),
    ("ln", dict(mean=np.zeros(4, np.float32))),
    ("ln", dict(rstd=np.zeros((3, 1), np.float32))),
    ("ln", dict(weight=np.ones(3, np.float32))),
    ("ln", dict(weight=np.ones(4, np.float64))),
    ("ln", dict(out=np.zeros((3, 4), np.float64))),
    ("bn", dict(channel_axis=2)),
    ("bn", dict(grad_out=np.zeros((4, 3), np.float32))),
    ("bn", dict(mean=np.zeros(3, np.float32))),
    ("bn", dict(invstd=np.zeros((4, 1), np.float32))),
    ("bn", dict(weight=np.ones(3, np.float32))),
    ("bn", dict(out=np.zeros((3, 5), np.float32))),
]


@pytest.mark.parametrize("op,kwargs", BAD_CALLS)
def test_same_errors_as_cpu_and_nothing_mutated(op, kwargs):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = dict(grad_out=np.ones((3, 4), np.float32))
    if op == "ln":
        base.update(normalized_shape=4, mean=np.zeros(3, np.float32), rstd=np.ones(3, np.float32))
        fn = nb.layer_norm_backward
    else:
        base.update(mean=np.zeros(4, np.float32), invstd=np.ones(4, np.float32))
        fn = nb.batch_norm_backward
    assert_same_error_as_cpu(fn, dict(x=x, **{**base, **kwargs}))


def test_device_specific_backward_errors():
    dx = dev(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="host and device arrays cannot be mixed"):
        nb.layer_norm_backward(np.ones((3, 4), np.float32), dx, 4, dev(np.zeros(3, np.float32)),
                               dev(np.ones(3, np.float32)))
    with pytest.raises(TypeError, match="host and device arrays cannot be mixed"):
        nb.batch_norm_backward(dx, dx, np.zeros(4, np.float32), dev(np.ones(4, np.float32)))
    dg = dev(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="out overlaps grad_out"):
        nb.layer_norm_backward(dg[:3], dx, 4, dev(np.zeros(3, np.float32)), dev(np.ones(3, np.float32)),
                               out=dg[1:])
