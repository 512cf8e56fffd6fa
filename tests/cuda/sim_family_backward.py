"""CUDA rms_norm_backward / group_norm_backward under the simulator, against the CPU backward and
float64 references; and the RMSNorm / GroupNorm layers on the GPU, side by side with the CPU.

Run by ``tests/test_cuda.py`` in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (see sim_kernels.py).
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported", allow_module_level=True)

import numpy as np  # noqa: E402
from conftest import poisoned_like  # noqa: E402
from family_reference import group_norm_ref  # noqa: E402
from reference import TOL, rel_l2  # noqa: E402
from simtools import dev, few_ln_blocks, host, side_by_side, small_blocks  # noqa: E402, F401

import numbanorm as nb  # noqa: E402


def _opt(a):
    return None if a is None else dev(a)


def rms_grads_ref(g, x, k, w, eps):
    """float64 (grad_x, grad_w): x̂ = x·rstd, g' = dy·γ, grad_x = rstd·(g' - x̂·mean(g'·x̂))."""
    g64, x64 = np.asarray(g, np.float64), np.asarray(x, np.float64)
    axes = tuple(range(x64.ndim - k, x64.ndim))
    rstd = 1.0 / np.sqrt((x64 * x64).mean(axis=axes, keepdims=True) + eps)
    xh = x64 * rstd
    gg = g64 if w is None else g64 * np.asarray(w, np.float64)
    gx = rstd * (gg - xh * (gg * xh).mean(axis=axes, keepdims=True))
    return gx, (g64 * xh).sum(axis=tuple(range(x64.ndim - k)))


def gn_grads_ref(g, x, G, w, axis):
    """float64 (grad_x, grad_w, grad_b) of group_norm, from the two-pass group statistics."""
    x64 = np.moveaxis(np.asarray(x, np.float64), axis, 1)
    g64 = np.moveaxis(np.asarray(g, np.float64), axis, 1)
    N, C = x64.shape[:2]
    _, mean, rstd = group_norm_ref(x, G, channel_axis=axis)
    xs = x64.reshape(N, G, -1)
    xh = ((xs - mean[..., None]) * rstd[..., None]).reshape(x64.shape)
    bshape = (1, C) + (1,) * (x64.ndim - 2)
    gg = g64 if w is None else g64 * np.asarray(w, np.float64).reshape(bshape)
    ggs, xhs = gg.reshape(N, G, -1), xh.reshape(N, G, -1)
    gx = rstd[..., None] * (ggs - ggs.mean(axis=2, keepdims=True) - xhs * (ggs * xhs).mean(axis=2, keepdims=True))
    red = (0,) + tuple(range(2, x64.ndim))
    return np.moveaxis(gx.reshape(x64.shape), 1, axis), (g64 * xh).sum(axis=red), g64.sum(axis=red)


# ---------------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k", [((3, 37), 1), ((2, 3, 5), 2), ((5, 16), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_backward_matches_cpu_and_reference(rng, dtype, shape, k, affine):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    ns = shape[-k:]
    w = (rng.standard_normal(ns) + 1).astype(dtype) if affine else None
    _, rstd = nb.rms_norm(x, ns, w, return_stats=True)
    out = dev(poisoned_like(x))
    gx, gw = nb.rms_norm_backward(dev(g), dev(x), ns, dev(rstd), _opt(w), out=out)
    cgx, cgw = nb.rms_norm_backward(g, x, ns, rstd, w)
    rgx, rgw = rms_grads_ref(g, x, k, w, float(np.finfo(np.float64 if dtype == np.float64 else np.float32).eps))
    tol = TOL[np.dtype(dtype)] * (100 if dtype == np.float32 else 10)
    assert gx is out and host(gx).dtype == dtype and host(gx).shape == shape
    assert rel_l2(host(gx), cgx) < tol and rel_l2(host(gx), rgx) < tol
    if affine:
        assert host(gw).shape == ns and host(gw).dtype == dtype
        assert rel_l2(host(gw), cgw) < tol and rel_l2(host(gw), rgw) < tol
    else:
        assert gw is None


def test_rms_norm_backward_uses_device_stats_and_in_place(rng):
    x = rng.standard_normal((4, 3, 7)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal((3, 7)).astype(np.float32)
    _, rstd = nb.rms_norm(dev(x), (3, 7), dev(w), return_stats=True)
    assert host(rstd).shape == (4,) and rel_l2(host(rstd), nb.rms_norm(x, (3, 7), w, return_stats=True)[1]) < 1e-6
    dg = dev(g)
    gx, _ = nb.rms_norm_backward(dg, dev(x), (3, 7), rstd, dev(w), out=dg)
    assert gx is dg
    assert rel_l2(host(dg), rms_grads_ref(g, x, 2, w, float(np.finfo(np.float32).eps))[0]) < 1e-5


# ---------------------------------------------------------------------------------- GroupNorm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,G,axis", [((3, 6, 7), 2, 1), ((2, 4, 3, 5), 4, 1), ((3, 5, 6), 3, -1),
                                          ((2, 3, 2, 6), 1, -1), ((5, 6), 2, 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_backward_matches_cpu_and_reference(rng, dtype, shape, G, axis, affine):
    x = (rng.standard_normal(shape) * 3 + 1e3).astype(dtype)  # large offset
    g = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    w = (rng.standard_normal(C) + 1).astype(dtype) if affine else None
    _, mean, rstd = nb.group_norm(x, G, w, channel_axis=axis, return_stats=True)
    out = dev(poisoned_like(x))
    gx, gw, gb = nb.group_norm_backward(dev(g), dev(x), G, dev(mean), dev(rstd), _opt(w), channel_axis=axis, out=out)
    cgx, cgw, cgb = nb.group_norm_backward(g, x, G, mean, rstd, w, channel_axis=axis)
    rgx, rgw, rgb = gn_grads_ref(g, x, G, w, axis % len(shape))
    tol = TOL[np.dtype(dtype)] * (100 if dtype == np.float32 else 10)
    rtol = 2e-3 if dtype == np.float32 else 1e-9  # float32 stats of 1e3 + N(0, 9) vs float64 ones
    assert gx is out and host(gx).dtype == dtype and host(gx).shape == shape
    assert rel_l2(host(gx), cgx) < tol and rel_l2(host(gx), rgx) < rtol
    if affine:
        assert host(gw).shape == (C,) and host(gw).dtype == dtype
        assert rel_l2(host(gw), cgw) < tol and rel_l2(host(gw), rgw) < rtol
        assert rel_l2(host(gb), cgb) < tol and rel_l2(host(gb), rgb) < tol
    else:
        assert gw is None and gb is None


def test_group_norm_backward_device_stats_in_place_and_empty(rng):
    x = rng.standard_normal((3, 4, 9)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(4).astype(np.float32)
    _, mean, rstd = nb.group_norm(dev(x), 2, dev(w), return_stats=True)
    dg = dev(g)
    gx, gw, _ = nb.group_norm_backward(dg, dev(x), 2, mean, rstd, dev(w), out=dg)
    rgx, rgw, _ = gn_grads_ref(g, x, 2, w, 1)
    assert gx is dg and rel_l2(host(dg), rgx) < 1e-4 and rel_l2(host(gw), rgw) < 1e-4
    e = np.zeros((0, 4, 3), np.float32)
    gx, gw, gb = nb.group_norm_backward(dev(e), dev(e), 2, dev(np.zeros((0, 2), np.float32)),
                                        dev(np.zeros((0, 2), np.float32)), dev(w))
    assert host(gx).shape == e.shape and np.all(host(gw) == 0) and np.all(host(gb) == 0)


def test_family_backward_errors_on_device(rng):
    x = dev(rng.standard_normal((3, 4, 5)).astype(np.float32))
    with pytest.raises(ValueError, match="rstd must have shape"):
        nb.rms_norm_backward(x, x, 5, dev(np.ones(4, np.float32)))
    with pytest.raises(ValueError, match="positive divisor"):
        nb.group_norm_backward(x, x, 3, dev(np.ones((3, 3), np.float32)), dev(np.ones((3, 3), np.float32)))
    with pytest.raises(TypeError, match="host and device arrays cannot be mixed"):
        nb.group_norm_backward(np.ones((3, 4, 5), np.float32), x, 2, dev(np.ones((3, 2), np.float32)),
                               dev(np.ones((3, 2), np.float32)))


# ---------------------------------------------------------------------------------- layers
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_norm_layer_on_gpu(rng, dtype):
    side_by_side(rng, nb.RMSNorm(7, dtype=dtype), nb.RMSNorm(7, dtype=dtype).to("cuda"), (3, 2, 7), dtype)
    side_by_side(rng, nb.RMSNorm((2, 5), elementwise_affine=False, eps=1e-3, dtype=dtype),
                  nb.RMSNorm((2, 5), elementwise_affine=False, eps=1e-3, dtype=dtype).cuda(), (3, 2, 5), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
def test_group_norm_layer_on_gpu(rng, dtype, axis):
    side_by_side(rng, nb.GroupNorm(2, 4, channel_axis=axis, dtype=dtype),
                  nb.GroupNorm(2, 4, channel_axis=axis, dtype=dtype).to("cuda"), (3, 4, 5, 4), dtype, offset=50.0)
