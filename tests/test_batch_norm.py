"""batch_norm against the float64 two-pass reference, over every layout."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import poisoned_like
from reference import TOL, batch_norm_ref, rel_l2

import numbanorm as nb

DTYPES = [np.float32, np.float64]

# (shape, channel_axis): NC, NCL, NCHW, NCDHW, channels-last, odd sizes, C = 1, 3, 7, 1000,
# and shapes big enough to be split into parallel tasks (including C < threads).
CASES = [
    ((5, 1), 1),
    ((9, 3), 1),
    ((4, 7, 13), 1),
    ((3, 3, 5, 7), 1),
    ((2, 3, 3, 4, 5), 1),
    ((11, 1000), 1),
    ((2, 1000, 3), 1),
    ((13, 7), -1),
    ((4, 13, 7), -1),
    ((3, 5, 7, 3), -1),
    ((2, 3, 4, 5, 7), -1),
    ((5, 6, 7), 0),  # any axis is a valid channel axis
    ((8, 3, 61, 67), 1),  # C < threads, reduction over N*HW split and merged
    ((1, 3, 211, 157), 1),
    ((8, 61, 67, 3), -1),
    ((70001, 3), 1),
    ((33, 64, 17), 1),
]


def _params(rng, num_channels, dtype, affine):
    if not affine:
        return None, None
    return (rng.standard_normal(num_channels) + 1).astype(dtype), rng.standard_normal(num_channels).astype(dtype)


def _running(rng, num_channels, dtype):
    return rng.standard_normal(num_channels).astype(dtype), (rng.random(num_channels) + 0.5).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_training_matches_reference(rng, dtype, shape, axis, affine):
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    C = shape[axis]
    w, b = _params(rng, C, dtype, affine)
    rm, rv = _running(rng, C, dtype)
    ry, rmean, rinv, new_rm, new_rv = batch_norm_ref(x, rm, rv, w, b, True, 0.1, 1e-5, axis)
    out = poisoned_like(x)
    y, mean, invstd = nb.batch_norm(x, rm, rv, w, b, training=True, channel_axis=axis, out=out,
                                    return_stats=True)
    assert y is out and not np.isnan(out).any()
    tol = TOL[np.dtype(dtype)] * 5
    assert rel_l2(y, ry) <= tol
    assert rel_l2(mean, rmean) <= tol and rel_l2(invstd, rinv) <= tol
    assert mean.dtype == invstd.dtype == dtype and mean.shape == (C,)
    assert rel_l2(rm, new_rm) <= tol and rel_l2(rv, new_rv) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", CASES[::2])
def test_eval_uses_running_stats(rng, dtype, shape, axis):
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    C = shape[axis]
    w, b = _params(rng, C, dtype, True)
    rm, rv = _running(rng, C, dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = nb.batch_norm(x, rm, rv, w, b, training=False, channel_axis=axis, return_stats=True)
    ry, rmean, rinv, _, _ = batch_norm_ref(x, rm, rv, w, b, False, 0.1, 1e-5, axis)
    tol = TOL[np.dtype(dtype)] * 5
    assert rel_l2(y, ry) <= tol and rel_l2(mean, rmean) <= tol and rel_l2(invstd, rinv) <= tol
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.5, 1.0])
def test_training_without_running_stats_and_momentum(rng, momentum):
    x = rng.standard_normal((6, 4, 9))
    y = nb.batch_norm(x, training=True, momentum=momentum)
    assert rel_l2(y, batch_norm_ref(x, training=True)[0]) <= 1e-12
    rm, rv = _running(rng, 4, np.float64)
    nb.batch_norm(x, rm.copy(), rv.copy(), training=True, momentum=momentum)
    _, _, _, new_rm, new_rv = batch_norm_ref(x, rm, rv, training=True, momentum=momentum)
    got_rm, got_rv = rm.copy(), rv.copy()
    nb.batch_norm(x, got_rm, got_rv, training=True, momentum=momentum)
    assert rel_l2(got_rm, new_rm) <= 1e-14 and rel_l2(got_rv, new_rv) <= 1e-14


@pytest.mark.parametrize("make,axis", [
    (lambda a: np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1), 1),  # NCHW stored NHWC
    (lambda a: a[:, :, ::2, :], 1),
    (lambda a: a.transpose(2, 1, 0, 3), 1),
    (lambda a: np.asfortranarray(a), -1),
    (lambda a: a[::2], -1),
])
@pytest.mark.parametrize("training", [True, False])
def test_non_contiguous_input_and_outputs(rng, make, axis, training):
    x = make(rng.standard_normal((6, 5, 8, 7)).astype(np.float32) + 2)
    C = x.shape[axis]
    rm, rv = _running(rng, C, np.float32)
    ry = batch_norm_ref(x, rm, rv, training=training, channel_axis=axis)[0]
    y = nb.batch_norm(x, rm.copy(), rv.copy(), training=training, channel_axis=axis)
    assert rel_l2(y, ry) <= 5e-6
    for out in (poisoned_like(x), np.full(x.shape[::-1], np.nan, np.float32).T):
        res = nb.batch_norm(x, rm.copy(), rv.copy(), training=training, channel_axis=axis, out=out)
        assert res is out and rel_l2(out, ry) <= 5e-6


def test_channels_last_memory_keeps_its_layout(rng):
    x = np.moveaxis(np.ascontiguousarray(np.moveaxis(rng.standard_normal((4, 3, 5, 6)), 1, -1)), -1, 1)
    y = nb.batch_norm(x, training=True)
    assert np.moveaxis(y, 1, -1).flags.c_contiguous
    assert rel_l2(y, batch_norm_ref(x, training=True)[0]) <= 1e-12


@pytest.mark.parametrize("training", [True, False])
def test_in_place(rng, training):
    x = rng.standard_normal((7, 5, 300))
    rm, rv = _running(rng, 5, np.float64)
    expected = batch_norm_ref(x, rm, rv, training=training)[0]
    assert nb.batch_norm(x, rm, rv, training=training, out=x) is x
    assert rel_l2(x, expected) <= 1e-12


@pytest.mark.parametrize("eps", [1e-12, 1e-3, 1.0])
def test_eps(rng, eps):
    x = rng.standard_normal((10, 3, 4)) * 0.01
    assert rel_l2(nb.batch_norm(x, training=True, eps=eps), batch_norm_ref(x, training=True, eps=eps)[0]) <= 1e-12


def test_empty_batch_like_torch():
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y = nb.batch_norm(np.empty((0, 3), np.float32), rm, rv, training=True)
    assert y.shape == (0, 3)
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)
    assert nb.batch_norm(np.empty((2, 0, 4), np.float32), training=True).shape == (2, 0, 4)


def test_nan_propagates_to_its_channel_only():
    x = np.array([[1.0, np.nan, 2.0], [1.5, 2.0, 3.0]], np.float32)
    y = nb.batch_norm(x, training=True)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
