"""CUDA norm family (rms_norm, add_layer_norm, group_norm, instance_norm) under the simulator,
against the CPU path and the float64 references.

Run by ``tests/test_cuda.py`` in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (see sim_kernels.py).
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported", allow_module_level=True)

import numpy as np  # noqa: E402
from conftest import poisoned_like  # noqa: E402
from family_reference import group_norm_ref, instance_norm_running_ref, rms_norm_ref  # noqa: E402
from reference import TOL, batch_norm_ref, layer_norm_ref, rel_l2  # noqa: E402
from simtools import assert_same_error_as_cpu, bf16_dev, dev, from_bf16, host, round_bf16, small_blocks  # noqa: E402, F401

import numbanorm as nb  # noqa: E402

DT = [np.float32, np.float64]


def _tol(dtype):
    return TOL[np.dtype(dtype)] * (50 if dtype == np.float32 else 10)  # float32 accumulation on the GPU


# ---------------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shape,k", [((3, 37), 1), ((2, 3, 5), 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm(rng, dtype, shape, k, affine):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    ns = shape[-k:]
    w = rng.standard_normal(ns).astype(dtype) if affine else None
    out = dev(poisoned_like(x))
    y = nb.rms_norm(dev(x), ns, None if w is None else dev(w), out=out)
    assert y is out and host(y).dtype == dtype
    assert rel_l2(host(y), rms_norm_ref(x, k, w)) < _tol(dtype)
    assert rel_l2(host(y), nb.rms_norm(x, ns, w)) < _tol(dtype)
    y = nb.rms_norm(dev(x), ns, None if w is None else dev(w), eps=1e-3)
    assert rel_l2(host(y), rms_norm_ref(x, k, w, eps=1e-3)) < _tol(dtype)


def test_rms_norm_half(rng):
    x = (rng.standard_normal((3, 29)) * 2).astype(np.float16)
    w = rng.standard_normal(29).astype(np.float32)  # mixed precision
    y = nb.rms_norm(dev(x), 29, dev(w))
    assert host(y).dtype == np.float16 and rel_l2(host(y), rms_norm_ref(x, 1, w)) < 2e-3
    xb = round_bf16(rng.standard_normal((3, 29)))
    y = nb.cuda.rms_norm(bf16_dev(xb), 29)
    assert rel_l2(from_bf16(y), rms_norm_ref(xb, 1)) < 8e-3


# ---------------------------------------------------------------------------------- add + LN
@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shape,k", [((3, 37), 1), ((2, 3, 5), 2), ((4, 1), 1)])
def test_add_layer_norm(rng, dtype, shape, k):
    x = (rng.standard_normal(shape) * 3 + 1e4).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    ns = shape[-k:]
    w, b = rng.standard_normal(ns).astype(dtype), rng.standard_normal(ns).astype(dtype)
    out, sout = dev(poisoned_like(x)), dev(poisoned_like(x))
    y, s = nb.add_layer_norm(dev(x), dev(r), ns, dev(w), dev(b), out=out, residual_out=sout)
    assert y is out and s is sout
    cy, cs = nb.add_layer_norm(x, r, ns, w, b)
    assert np.array_equal(host(s), cs) and np.array_equal(host(s), x + r)  # the rounded sum, exactly
    assert rel_l2(host(y), layer_norm_ref(x + r, ns, w, b)[0]) < _tol(dtype)
    assert rel_l2(host(y), cy) < _tol(dtype)


def test_add_layer_norm_in_place_and_constant_rows(rng):
    x = np.full((2, 19), 3.0, np.float32)
    x[1] = rng.standard_normal(19)
    r = np.full((2, 19), 0.1, np.float32)
    dx_, dr_ = dev(x), dev(r)
    y, s = nb.add_layer_norm(dx_, dr_, 19, out=dx_, residual_out=dr_)
    assert y is dx_ and s is dr_
    assert np.all(host(y)[0] == 0.0)  # a constant row normalizes to exactly 0
    assert np.array_equal(host(s), x + r)
    assert rel_l2(host(y)[1], layer_norm_ref((x + r)[1:], (19,))[0][0]) < 1e-5


def test_add_layer_norm_half(rng):
    x = (rng.standard_normal((3, 29)) * 2).astype(np.float16)
    r = rng.standard_normal((3, 29)).astype(np.float16)
    y, s = nb.add_layer_norm(dev(x), dev(r), 29)
    cy, cs = nb.add_layer_norm(x, r, 29)
    assert np.array_equal(host(s), cs)
    assert rel_l2(host(y), layer_norm_ref(cs, (29,))[0]) < 2e-3
    xb, rb = round_bf16(rng.standard_normal((3, 29))), round_bf16(rng.standard_normal((3, 29)))
    y, s = nb.cuda.add_layer_norm(bf16_dev(xb), bf16_dev(rb), 29)
    assert np.array_equal(from_bf16(s), round_bf16(xb + rb))
    assert rel_l2(from_bf16(y), layer_norm_ref(from_bf16(s), (29,))[0]) < 8e-3


# ---------------------------------------------------------------------------------- GroupNorm
GN_CASES = [((3, 6, 5), 1, 2), ((3, 6, 5), 1, 6), ((2, 3, 5, 4), -1, 2), ((4, 6), 1, 3), ((2, 3, 4, 5), 2, 2),
            ((5, 4, 9), 1, 1)]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shape,axis,G", GN_CASES)
def test_group_norm(rng, dtype, shape, axis, G):
    x = (rng.standard_normal(shape) * 2 + 1e4).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    out = dev(poisoned_like(x))
    y, m, s = nb.group_norm(dev(x), G, dev(w), dev(b), channel_axis=axis, out=out, return_stats=True)
    ry, rm, rs = group_norm_ref(x, G, w, b, channel_axis=axis)
    cy = nb.group_norm(x, G, w, b, channel_axis=axis)
    assert y is out and host(m).shape == (shape[0], G)
    assert rel_l2(host(y), ry) < _tol(dtype) and rel_l2(host(y), cy) < _tol(dtype)
    assert rel_l2(host(m), rm) < TOL[np.dtype(dtype)] * 10 and rel_l2(host(s), rs) < _tol(dtype)


def test_group_norm_channels_last_storage_no_affine_and_half(rng):
    nhwc = rng.standard_normal((3, 4, 3, 6)).astype(np.float32)
    x = dev(nhwc).transpose((0, 3, 1, 2))  # NCHW stored channels-last
    y = nb.group_norm(x, 3)
    assert y.strides == x.strides
    assert rel_l2(host(y), group_norm_ref(nhwc.transpose(0, 3, 1, 2), 3)[0]) < 5e-5
    xh = (rng.standard_normal((2, 4, 7)) + 3).astype(np.float16)
    y = nb.group_norm(dev(xh), 2, dev(np.ones(4, np.float16)))
    assert host(y).dtype == np.float16 and rel_l2(host(y), group_norm_ref(xh, 2)[0]) < 2e-3
    xb = round_bf16(rng.standard_normal((2, 4, 7)))
    y = nb.cuda.group_norm(bf16_dev(xb), 4, channel_axis=1)
    assert rel_l2(from_bf16(y), group_norm_ref(xb, 4)[0]) < 8e-3


def test_group_norm_empty():
    y, m, s = nb.group_norm(dev(np.zeros((0, 4, 3), np.float32)), 2, return_stats=True)
    assert host(y).shape == (0, 4, 3) and host(m).shape == (0, 2)
    y, m, s = nb.group_norm(dev(np.zeros((2, 4, 0), np.float32)), 2, return_stats=True)
    assert host(y).shape == (2, 4, 0) and np.all(np.isnan(host(m)))


# ---------------------------------------------------------------------------------- InstanceNorm
@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shape,axis", [((3, 4, 5), 1), ((2, 3, 2, 4), -1)])
def test_instance_norm_with_running_stats(rng, dtype, shape, axis):
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)
    drm, drv = dev(rm), dev(rv)
    y = nb.instance_norm(dev(x), drm, drv, dev(w), dev(b), momentum=0.2, channel_axis=axis)
    ry = group_norm_ref(x, C, w, b, channel_axis=axis)[0]
    crm, crv = rm.copy(), rv.copy()
    cy = nb.instance_norm(x, crm, crv, w, b, momentum=0.2, channel_axis=axis)
    assert rel_l2(host(y), ry) < _tol(dtype) and rel_l2(host(y), cy) < _tol(dtype)
    ref_rm, ref_rv = instance_norm_running_ref(x, rm, rv, 0.2, channel_axis=axis)
    assert rel_l2(host(drm), ref_rm) < _tol(dtype) and rel_l2(host(drv), ref_rv) < _tol(dtype)
    # use_input_stats=False: BatchNorm in eval mode with the running stats
    y = nb.instance_norm(dev(x), drm, drv, dev(w), dev(b), use_input_stats=False, channel_axis=axis)
    ref = batch_norm_ref(x, host(drm), host(drv), w, b, channel_axis=axis)[0]
    assert rel_l2(host(y), ref) < _tol(dtype)


def test_instance_norm_half_with_float32_running_stats(rng):
    x = (rng.standard_normal((3, 4, 6)) + 2).astype(np.float16)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    drm, drv = dev(rm), dev(rv)
    y = nb.instance_norm(dev(x), drm, drv)
    assert host(y).dtype == np.float16 and rel_l2(host(y), group_norm_ref(x, 4)[0]) < 2e-3
    ref_rm, ref_rv = instance_norm_running_ref(x, rm, rv, 0.1)
    assert rel_l2(host(drm), ref_rm) < 1e-6 and rel_l2(host(drv), ref_rv) < 1e-6


# ---------------------------------------------------------------------------------- errors
BAD_CALLS = [
    (nb.rms_norm, dict(normalized_shape=5)),
    (nb.rms_norm, dict(normalized_shape=4, weight=np.ones(4, np.float64))),
    (nb.rms_norm, dict(normalized_shape=4, eps=0.0)),
    (nb.add_layer_norm, dict(residual=np.zeros((3, 5), np.float32), normalized_shape=4)),
    (nb.add_layer_norm, dict(residual=np.zeros((3, 4), np.float32), normalized_shape=4,
                             residual_out=np.zeros((3, 4), np.float64))),
    (nb.group_norm, dict(num_groups=3)),
    (nb.group_norm, dict(num_groups=2.0)),
    (nb.group_norm, dict(num_groups=2, channel_axis=0)),
    (nb.group_norm, dict(num_groups=2, bias=np.ones(3, np.float32))),
    (nb.instance_norm, dict(running_mean=np.zeros(4, np.float32))),
    (nb.instance_norm, dict(use_input_stats=False)),
    (nb.instance_norm, dict(running_mean=np.zeros(4, np.float32), running_var=np.ones(4, np.float32),
                            momentum=1.5)),
]


@pytest.mark.parametrize("fn,kwargs", BAD_CALLS)
def test_same_errors_as_cpu_and_nothing_mutated(fn, kwargs):
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    if fn in (nb.rms_norm, nb.add_layer_norm):
        x = x.reshape(6, 4)[:3]
    assert_same_error_as_cpu(fn, dict(x=x, **kwargs))
