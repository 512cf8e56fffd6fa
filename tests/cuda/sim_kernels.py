"""Every CUDA kernel under the simulator, against the CPU path and the float64 reference.

The simulator must be on before numba is imported, so this file does not match pytest's
``test_*.py`` pattern: ``tests/test_cuda.py`` runs it in a subprocess with
``NUMBA_ENABLE_CUDASIM=1`` (alone: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda/sim_kernels.py``).
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported", allow_module_level=True)

import importlib  # noqa: E402

import numpy as np  # noqa: E402
from conftest import poisoned_like  # noqa: E402
from numba import cuda  # noqa: E402
from reference import TOL, batch_norm_ref, layer_norm_ref, rel_l2  # noqa: E402
from simtools import (  # noqa: E402, F401
    assert_same_error_as_cpu,
    bf16_dev,
    bits_to_f64,
    dev,
    from_bf16,
    host,
    round_bf16,
    small_blocks,
    to_bf16_bits,
)

import numbanorm as nb  # noqa: E402
from numbanorm.cuda import loads, plan  # noqa: E402

# the module (``numbanorm.cuda.layer_norm`` as an attribute is the backend's entry point)
ln_module = importlib.import_module("numbanorm.cuda.layer_norm")

DT = [np.float32, np.float64]


# ---------------------------------------------------------------------------------- LayerNorm
@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shape,k", [((3, 37), 1), ((2, 3, 5), 2), ((4, 1), 1), ((5, 16), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_cpu_and_reference(rng, dtype, shape, k, affine):
    x = (rng.standard_normal(shape) * 3 + 1e4).astype(dtype)  # large offset
    ns = shape[-k:]
    w = rng.standard_normal(ns).astype(dtype) if affine else None
    b = rng.standard_normal(ns).astype(dtype) if affine else None
    y, mean, rstd = nb.layer_norm(dev(x), ns, None if w is None else dev(w), None if b is None else dev(b),
                                  return_stats=True)
    ref_y, ref_m, ref_r = layer_norm_ref(x, ns, w, b)
    cy, cm, cr = nb.layer_norm(x, ns, w, b, return_stats=True)
    tol = TOL[np.dtype(dtype)] * (50 if dtype == np.float32 else 10)  # float32 accumulation on the GPU
    assert host(y).dtype == dtype and host(y).shape == shape
    assert rel_l2(host(y), ref_y) < tol and rel_l2(host(y), cy) < tol
    assert host(mean).shape == shape[:-k] and rel_l2(host(mean), ref_m) < TOL[np.dtype(dtype)] * 10
    assert rel_l2(host(rstd), ref_r) < tol and rel_l2(host(rstd), cr) < tol


def test_layer_norm_out_and_in_place(rng):
    x = rng.standard_normal((3, 21)).astype(np.float32)
    ref = layer_norm_ref(x, (21,))[0]
    out = dev(poisoned_like(x))
    assert nb.layer_norm(dev(x), 21, out=out) is out
    assert rel_l2(host(out), ref) < 1e-5
    dx = dev(x)
    nb.layer_norm(dx, 21, out=dx)
    assert rel_l2(host(dx), ref) < 1e-5


def test_layer_norm_constant_rows_and_nan(rng):
    x = np.full((2, 19), 7.25, np.float32)
    x[1, 3] = np.nan
    y = host(nb.layer_norm(dev(x), 19))
    assert np.all(y[0] == 0.0) and np.all(np.isnan(y[1]))


@pytest.mark.parametrize("D", [8, 20, 44, 64])
@pytest.mark.parametrize("mode", ["ln", "rms"])
def test_wide_loads_where_the_row_allows(rng, monkeypatch, D, mode):
    """float32 rows whose length is a multiple of LN_VEC run the 16-byte-access kernel (several
    units per thread, and a re-read tail beyond the registers); a misaligned x falls back to
    scalar accesses. Both against the float64 reference."""
    from family_reference import rms_norm_ref

    used = []
    real = ln_module.layer_norm_kernel
    monkeypatch.setattr(ln_module, "layer_norm_kernel", lambda *a: used.append(a[-1]) or real(*a))
    x = (rng.standard_normal((3, D)) * 3 + 1e3).astype(np.float32)
    w, b = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    buf = np.empty(3 * D + 1, np.float32)
    shifted = buf[1:].reshape(3, D)  # 4 bytes past a 16-byte boundary (numpy aligns buffers to 16+)
    shifted[...] = x
    for dx, vec in ((dev(x), plan.LN_VEC), (cuda.to_device(buf)[1:].reshape(3, D), 1)):
        out = dev(poisoned_like(x))
        if mode == "ln":
            y = nb.layer_norm(dx, D, dev(w), dev(b), out=out)
            ref = layer_norm_ref(x, (D,), w, b)[0]
        else:
            y = nb.rms_norm(dx, D, dev(w), out=out)
            ref = rms_norm_ref(x, 1, w)
        assert used[-1] == vec and y is out
        assert rel_l2(host(y), ref) < 2e-6


def test_layer_norm_float16(rng):
    x = (rng.standard_normal((3, 29)) * 2 + 5).astype(np.float16)
    w = rng.standard_normal(29).astype(np.float16)
    y, mean, rstd = nb.layer_norm(dev(x), 29, dev(w), return_stats=True)
    ref_y, ref_m, _ = layer_norm_ref(x, (29,), w)
    assert host(y).dtype == np.float16 and host(mean).dtype == np.float32
    assert rel_l2(host(y), ref_y) < 2e-3 and rel_l2(host(mean), ref_m) < 1e-6


@pytest.mark.parametrize("param_dtype", ["bfloat16", "float32"])
def test_layer_norm_bfloat16(rng, param_dtype):
    x = round_bf16(rng.standard_normal((3, 29)) * 2 + 5)
    w = round_bf16(rng.standard_normal(29))
    dw = bf16_dev(w) if param_dtype == "bfloat16" else dev(w.astype(np.float32))
    y, mean, rstd = nb.cuda.layer_norm(bf16_dev(x), 29, dw, return_stats=True)
    ref_y, ref_m, ref_r = layer_norm_ref(x, (29,), w)
    assert rel_l2(from_bf16(y), ref_y) < 8e-3 and rel_l2(host(mean), ref_m) < 1e-6
    assert rel_l2(host(rstd), ref_r) < 1e-5


def test_bfloat16_rounding_matches_torch(rng):
    """The kernels' float32 -> bfloat16 is round-to-nearest-even, NaN kept, as torch's."""
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.4e38, -3.4e38,
                        1e-40, 65504.0], np.float32)
    v = np.concatenate([special, rng.standard_normal(50).astype(np.float32) * 10])
    bits = dev(np.zeros(v.size, np.int16))
    back = dev(np.zeros(v.size, np.float32))

    @cuda.jit
    def roundtrip(src, dst_bits, dst):
        i = cuda.grid(1)
        if i < src.shape[0]:
            loads.st_bf16(dst_bits, i, src[i])
            dst[i] = loads.ld_bf16(dst_bits, i)

    roundtrip[4, 32](dev(v), bits, back)
    expect = to_bf16_bits(v)
    got = host(bits)
    assert np.array_equal(np.isnan(bits_to_f64(got)), np.isnan(v))
    ok = ~np.isnan(v)
    assert np.array_equal(got[ok], expect[ok])
    assert np.array_equal(host(back)[ok], bits_to_f64(expect)[ok].astype(np.float32))


# ---------------------------------------------------------------------------------- BatchNorm
def _bn_compare(x, axis, dtype, training, affine, rng, offset=0.0):
    C = x.shape[axis]
    rm = rng.standard_normal(C).astype(dtype)
    rv = (rng.random(C) + 0.5).astype(dtype)
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    drm, drv = dev(rm), dev(rv)
    dw, db = (dev(w), dev(b)) if affine else (None, None)
    y, mean, invstd = nb.batch_norm(dev(x) if not hasattr(x, "copy_to_host") else x, drm, drv, dw, db,
                                    training=training, channel_axis=axis, return_stats=True)
    xh = host(x) if hasattr(x, "copy_to_host") else x
    ref_y, ref_m, ref_s, ref_rm, ref_rv = batch_norm_ref(xh, rm, rv, w, b, training, 0.1, 1e-5, axis)
    crm, crv = rm.copy(), rv.copy()
    cy = nb.batch_norm(xh, crm, crv, w, b, training=training, channel_axis=axis)
    tol = TOL[np.dtype(dtype)] * (50 if dtype == np.float32 else 10)
    yh = host(y)
    assert yh.shape == xh.shape and yh.dtype == dtype
    assert rel_l2(yh, ref_y) < tol and rel_l2(yh, cy) < tol
    assert rel_l2(host(mean), ref_m) < TOL[np.dtype(dtype)] * 10
    assert rel_l2(host(invstd), ref_s) < tol
    if training:
        assert rel_l2(host(drm), ref_rm) < tol and rel_l2(host(drv), ref_rv) < tol
        assert rel_l2(host(drv), crv) < tol
    else:
        assert np.array_equal(host(drm), rm) and np.array_equal(host(drv), rv)
    return y


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shape,axis", [((3, 5, 4, 3), 1), ((4, 3, 2, 5), -1), ((7, 3), 1), ((2, 3, 11), 1),
                                        ((33, 5), -1)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_cpu_and_reference(rng, dtype, shape, axis, training):
    x = (rng.standard_normal(shape) * 2 + 1e4).astype(dtype)
    _bn_compare(x, axis, dtype, training, affine=True, rng=rng)


def test_batch_norm_no_affine_and_channels_last_storage(rng):
    nhwc = rng.standard_normal((3, 4, 3, 5)).astype(np.float32)
    x = dev(nhwc).transpose((0, 3, 1, 2))  # logical NCHW, stored channels-last (torch's channels_last)
    assert not x.is_c_contiguous()
    y = _bn_compare(x, 1, np.float32, True, affine=False, rng=rng)
    assert y.strides == x.strides  # the output keeps the input's memory layout


def test_batch_norm_strided_input_is_copied(rng):
    x = rng.standard_normal((4, 3, 6)).astype(np.float64)
    y = nb.batch_norm(dev(x)[:, :, ::2], training=True)
    assert rel_l2(host(y), batch_norm_ref(x[:, :, ::2], training=True)[0]) < 1e-12


def test_batch_norm_out_in_place_and_stats_without_running(rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    ref_y, ref_m, ref_s, _, _ = batch_norm_ref(x, training=True)
    out = dev(poisoned_like(x))
    y, m, s = nb.batch_norm(dev(x), training=True, out=out, return_stats=True)
    assert y is out and rel_l2(host(out), ref_y) < 1e-5
    # The channel means of N(0, 1) data are near 0, so their float32 error is judged on the data's
    # scale (1), not relative to themselves (NUMBANORM_TEST_SEED=649581584 gave 1.2e-6 relative).
    assert np.max(np.abs(host(m) - ref_m)) < 1e-6
    dx = dev(x)
    nb.batch_norm(dx, training=True, out=dx)
    assert rel_l2(host(dx), ref_y) < 1e-5
    cl = np.ascontiguousarray(x.transpose(0, 2, 1))
    out = dev(poisoned_like(cl))
    nb.batch_norm(dev(cl), training=True, channel_axis=-1, out=out)
    assert rel_l2(host(out), batch_norm_ref(cl, training=True, channel_axis=-1)[0]) < 1e-5


def test_batch_norm_float16_with_float32_running_stats(rng):
    x = (rng.standard_normal((4, 3, 5)) + 3).astype(np.float16)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    drm, drv = dev(rm), dev(rv)
    y = nb.batch_norm(dev(x), drm, drv, training=True)
    ref_y, _, _, ref_rm, ref_rv = batch_norm_ref(x, rm, rv, training=True)
    assert host(y).dtype == np.float16 and rel_l2(host(y), ref_y) < 2e-3
    assert rel_l2(host(drm), ref_rm) < 1e-6 and rel_l2(host(drv), ref_rv) < 1e-6


@pytest.mark.parametrize("axis", [1, -1])
def test_batch_norm_bfloat16(rng, axis):
    x = round_bf16(rng.standard_normal((4, 3, 5)) + 3)
    rm, rv = np.zeros(x.shape[axis], np.float32), np.ones(x.shape[axis], np.float32)
    drm, drv = dev(rm), dev(rv)
    y, m, s = nb.cuda.batch_norm(bf16_dev(x), drm, drv, training=True, channel_axis=axis, return_stats=True)
    ref_y, ref_m, ref_s, ref_rm, ref_rv = batch_norm_ref(x, rm, rv, training=True, channel_axis=axis)
    assert rel_l2(from_bf16(y), ref_y) < 8e-3 and rel_l2(host(m), ref_m) < 1e-6
    assert rel_l2(host(drv), ref_rv) < 1e-6
    y = nb.cuda.batch_norm(bf16_dev(x), bf16_dev(rm), bf16_dev(rv), channel_axis=axis)  # eval, bf16 stats
    ref = batch_norm_ref(x, rm, rv, channel_axis=axis)[0]
    assert rel_l2(from_bf16(y), ref) < 8e-3


def test_empty_batch(rng):
    x = np.zeros((0, 3, 4), np.float32)
    drm, drv = dev(np.zeros(3, np.float32)), dev(np.ones(3, np.float32))
    y, m, s = nb.batch_norm(dev(x), drm, drv, training=True, return_stats=True)
    assert host(y).shape == x.shape and np.all(np.isnan(host(m)))
    assert np.array_equal(host(drm), np.zeros(3)) and np.array_equal(host(drv), np.ones(3))
    assert host(nb.layer_norm(dev(x), 4)).shape == x.shape


# ---------------------------------------------------------------------------------- errors
BAD_CALLS = [
    ("ln", dict(normalized_shape=5)),
    ("ln", dict(normalized_shape=4, weight=np.ones(3, np.float32))),
    ("ln", dict(normalized_shape=4, weight=np.ones(4, np.float64))),
    ("ln", dict(normalized_shape=4, eps=0.0)),
    ("ln", dict(normalized_shape=4, out=np.zeros((3, 4), np.float64))),
    ("bn", dict(channel_axis=3)),
    ("bn", dict(running_mean=np.zeros(3, np.float32))),
    ("bn", dict(training=False)),
    ("bn", dict(training=True, momentum=2.0, running_mean=np.zeros(3, np.float32),
                running_var=np.ones(3, np.float32))),
    ("bn", dict(training=True, weight=np.ones(3, np.float32))),
    ("bn", dict(training=True, bias=np.ones(4, np.float64))),
    ("bn", dict(training=True, eps=-1.0)),
]


@pytest.mark.parametrize("op,kwargs", BAD_CALLS)
def test_same_errors_as_cpu_and_nothing_mutated(op, kwargs):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert_same_error_as_cpu(nb.layer_norm if op == "ln" else nb.batch_norm, dict(x=x, **kwargs))


def test_device_specific_errors():
    dx = dev(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64, got int64"):
        nb.layer_norm(dev(np.zeros((3, 4), np.int64)), 4)
    with pytest.raises(TypeError, match="host and device arrays cannot be mixed"):
        nb.layer_norm(dx, 4, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="host and device arrays cannot be mixed"):
        nb.batch_norm(dx, np.zeros(4, np.float32), np.ones(4, np.float32), training=True)
    with pytest.raises(TypeError, match="host and device arrays cannot be mixed"):
        nb.layer_norm(dx, 4, out=np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="CUDA array but x is a host array"):
        nb.layer_norm(np.zeros((3, 4), np.float32), 4, dev(np.ones(4, np.float32)))
    with pytest.raises(ValueError, match="overlaps x"):
        big = dev(np.zeros((4, 4), np.float32))
        nb.layer_norm(big[:3], 4, out=big[1:])


def test_zero_channels():
    x = np.zeros((4, 0, 3), np.float32)
    y, m, s = nb.batch_norm(dev(x), training=True, return_stats=True)
    assert host(y).shape == x.shape and host(m).shape == (0,)
    y = nb.batch_norm(dev(x), dev(np.zeros(0, np.float32)), dev(np.ones(0, np.float32)))
    assert host(y).shape == x.shape


def test_every_kernel_factory_is_cached():
    """A kernel factory builds a new ``cuda.jit`` kernel per call, which compiles again: each must
    be ``functools.cache``d so a shape's second call reuses the compiled kernel."""
    import inspect
    import pkgutil

    import numbanorm.cuda as package

    factories = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"numbanorm.cuda.{info.name}")
        for name, fn in vars(module).items():
            if name.endswith("_kernel") and callable(fn) and inspect.unwrap(fn).__module__ == module.__name__:
                factories.append(name)
                assert hasattr(fn, "cache_info"), f"{module.__name__}.{name} is not functools.cache'd"
    assert len(factories) >= 17, factories
