"""Accuracy thresholds: relative L2 error against the float64 two-pass reference."""

from __future__ import annotations

import numpy as np
import pytest
from reference import batch_norm_ref, layer_norm_ref, rel_l2

import numbanorm as nb
from numbanorm.cpu.layer_norm import LN_PIPELINE_ELEMENTS

# (dtype, offset, bound) from the core issue's table.
BOUNDS = [
    (np.float32, 0.0, 1e-6),
    (np.float64, 0.0, 1e-12),
    (np.float32, 1e4, 1e-5),
    (np.float32, 1e6, 1e-3),
    (np.float64, 1e4, 1e-10),
    (np.float64, 1e8, 1e-7),
]


def _data(rng, shape, dtype, offset):
    return (offset + rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype,offset,bound", BOUNDS)
@pytest.mark.parametrize("shape", [(64, 768), (3, 7, 4099)])
def test_layer_norm_offsets(rng, dtype, offset, bound, shape):
    x = _data(rng, shape, dtype, offset)
    y, mean, rstd = nb.layer_norm(x, shape[-1], return_stats=True)
    ry, rmean, rrstd = layer_norm_ref(x, (shape[-1],))
    assert rel_l2(y, ry) <= bound
    assert rel_l2(rstd, rrstd) <= bound


@pytest.mark.parametrize("dtype,offset,bound", BOUNDS)
@pytest.mark.parametrize("shape,axis", [((8, 3, 64, 63), 1), ((4, 31, 33, 16), -1), ((1000, 5), 1)])
def test_batch_norm_offsets(rng, dtype, offset, bound, shape, axis):
    x = _data(rng, shape, dtype, offset)
    y, mean, invstd = nb.batch_norm(x, training=True, channel_axis=axis, return_stats=True)
    ry, rmean, rinv, _, _ = batch_norm_ref(x, training=True, channel_axis=axis)
    assert rel_l2(y, ry) <= bound
    assert rel_l2(invstd, rinv) <= bound


def test_drifting_data_stays_accurate(rng):
    """A ramp plus noise: block shifts far from later values must not lose the variance."""
    x = (np.linspace(0, 1e5, 1 << 16)[None, :] + rng.standard_normal((2, 1 << 16))).astype(np.float64)
    assert rel_l2(nb.layer_norm(x, 1 << 16), layer_norm_ref(x, (1 << 16,))[0]) <= 1e-12
    xb = x.T.copy()
    assert rel_l2(nb.batch_norm(xb, training=True), batch_norm_ref(xb, training=True)[0]) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.0, 1.0, -3.25, 1e4, 1e6])
def test_constant_input_gives_exactly_bias(rng, dtype, value):
    bias = rng.standard_normal(16).astype(dtype)
    weight = rng.standard_normal(16).astype(dtype)
    x = np.full((5, 16), value, dtype)
    np.testing.assert_array_equal(nb.layer_norm(x, 16, weight, bias), np.broadcast_to(bias, x.shape))
    xb = np.full((4, 16, 9), value, dtype)
    y = nb.batch_norm(xb, weight=weight, bias=bias, training=True)
    np.testing.assert_array_equal(y, np.broadcast_to(bias[None, :, None], xb.shape))
    y = nb.batch_norm(x, weight=weight, bias=bias, training=True, channel_axis=-1)
    np.testing.assert_array_equal(y, np.broadcast_to(bias, x.shape))


@pytest.mark.parametrize("dtype,bound", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_one_row_past_the_pipeline_threshold(rng, dtype, bound):
    """One row just over ``LN_PIPELINE_ELEMENTS`` is one task: the serial pipelined entry (the
    default loop's share of the 4-million row below), at a 1e4 offset."""
    n = LN_PIPELINE_ELEMENTS + 7
    x = (1e4 + rng.standard_normal((1, n))).astype(dtype)
    y, mean, rstd = nb.layer_norm(x, n, return_stats=True)
    ry, rmean, rrstd = layer_norm_ref(x, (n,))
    assert rel_l2(y, ry) <= bound and rel_l2(mean, rmean) <= bound
    assert abs(float(rstd[0]) - rrstd[0]) / rrstd[0] <= bound


@pytest.mark.slow  # 3 s; its kernels (one pipelined row, BN with C = 1) run in the tests above too
@pytest.mark.parametrize("dtype,bound", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_row_of_4_million(rng, dtype, bound):
    n = 1 << 22
    x = rng.standard_normal((1, n)).astype(dtype)
    y, mean, rstd = nb.layer_norm(x, n, return_stats=True)
    ry, rmean, rrstd = layer_norm_ref(x, (n,))
    assert rel_l2(y, ry) <= bound
    assert abs(float(rstd[0]) - rrstd[0]) / rrstd[0] <= bound
    yb = nb.batch_norm(x.reshape(n, 1), training=True)
    assert rel_l2(yb, batch_norm_ref(x.reshape(n, 1), training=True)[0]) <= bound
