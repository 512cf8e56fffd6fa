"""The engine's internal code paths (perf issue #5), each checked against the float64 reference.

Channels-last blocks are read as flat runs of ``cl_lanes(C)`` lanes; NCHW blocks share one
shift per channel for ``_SHIFT_CHUNK`` elements; float32 normalizes in float32 with the mean
split into head and folded tail. Shapes here cross those boundaries on purpose.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import poisoned_like
from reference import batch_norm_ref, layer_norm_ref, rel_l2

import numbanorm as nb
from numbanorm import _engine


@pytest.mark.parametrize("C", [1, 3, 5, 7, 64, 255, 257])
def test_lanes_are_whole_channels(C):
    W = _engine.cl_lanes(C)
    assert W % C == 0 and W >= min(C, 1)
    assert W >= _engine._MIN_LANES or W % 8 == 0


@pytest.mark.parametrize("C", [1, 3, 5, 64, 257])
@pytest.mark.parametrize("dtype,offset,bound", [(np.float32, 0.0, 1e-6), (np.float32, 1e4, 1e-5),
                                                (np.float64, 1e4, 1e-10)])
def test_channels_last_lanes_and_tails(rng, C, dtype, offset, bound):
    # rows: several shift chunks plus a tail shorter than one lane group
    k = _engine.cl_lanes(C) // C
    rows = 2 * k * max(1, _engine._SHIFT_CHUNK // _engine.cl_lanes(C)) + k // 2 + 1
    x = (offset + rng.standard_normal((rows, C)) * 3).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    out = poisoned_like(x)
    y, mean, invstd = nb.batch_norm(x, rm, rv, w, b, training=True, channel_axis=-1, out=out,
                                    return_stats=True)
    ry, rmean, rinv, rrm, rrv = batch_norm_ref(x, np.zeros(C), np.ones(C), w, b, training=True, channel_axis=-1)
    assert y is out
    assert rel_l2(y, ry) <= bound
    assert rel_l2(invstd, rinv) <= bound
    assert rel_l2(rm, rrm) <= bound and rel_l2(rv, rrv) <= bound
    ye = nb.batch_norm(x, rm.copy(), rv.copy(), w, b, training=False, channel_axis=-1)
    assert rel_l2(ye, batch_norm_ref(x, rm, rv, w, b, training=False, channel_axis=-1)[0]) <= bound


@pytest.mark.parametrize("inner", [1 * 7, 7 * 7, 14 * 14])
def test_nchw_short_runs_across_shift_chunks(rng, inner):
    outer = _engine._SHIFT_CHUNK // inner * 2 + 3
    x = (1e4 + rng.standard_normal((outer, 3, inner))).astype(np.float32)
    y = nb.batch_norm(x, training=True)
    assert rel_l2(y, batch_norm_ref(x, training=True)[0]) <= 1e-5


@pytest.mark.parametrize("axis", [1, -1])
def test_in_place_both_layouts(rng, axis):
    x = (5 + rng.standard_normal((64, 3, 40, 40))).astype(np.float32)
    x = x if axis == 1 else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    ref = batch_norm_ref(x, training=True, channel_axis=axis)[0]
    y = nb.batch_norm(x, training=True, channel_axis=axis, out=x)
    assert y is x
    assert rel_l2(x, ref) <= 1e-6


@pytest.mark.parametrize("D", [1, 7, 33, 4096])
@pytest.mark.parametrize("affine", [(False, False), (True, False), (False, True), (True, True)])
def test_layer_norm_float32_split_mean(rng, D, affine):
    x = (1e4 + rng.standard_normal((5, D))).astype(np.float32)
    w = rng.standard_normal(D).astype(np.float32) if affine[0] else None
    b = rng.standard_normal(D).astype(np.float32) if affine[1] else None
    y = nb.layer_norm(x, D, w, b)
    ry = layer_norm_ref(x, (D,), w, b)[0]
    assert rel_l2(y, ry) <= 1e-5 or D == 1 and np.array_equal(y, ry.astype(np.float32))


def test_nan_and_inf_propagate_through_fast_paths():
    x = np.ones((2, 16, 8), np.float32)
    x[0, 3, 2] = np.nan
    x[1, 5, 1] = np.inf
    y = nb.layer_norm(x, 8)
    assert np.isnan(y[0, 3]).all() and np.isnan(y[1, 5]).all() and np.isfinite(y[0, 4]).all()
    yb = nb.batch_norm(x, training=True)
    assert np.isnan(yb[:, 3]).all() and np.isnan(yb[:, 5]).all() and np.isfinite(yb[:, 4]).all()
    yc = nb.batch_norm(x.reshape(-1, 8), training=True, channel_axis=-1)
    assert np.isnan(yc[:, 1]).all() and np.isnan(yc[:, 2]).all() and np.isfinite(yc[:, 0]).all()


@pytest.mark.parametrize("in_place", [False, True])
def test_layer_norm_pipelined_rows(rng, in_place):
    """Inputs above _LN_PIPELINE_ELEMENTS normalize row r while summing row r + 1."""
    D = 4099
    R = _engine._LN_PIPELINE_ELEMENTS // D + 5
    x = (1e4 + rng.standard_normal((R, D))).astype(np.float32)
    w = rng.standard_normal(D).astype(np.float32)
    ry, rmean, rrstd = layer_norm_ref(x, (D,), w, None)
    y, mean, rstd = nb.layer_norm(x, D, w, None, out=x if in_place else None, return_stats=True)
    assert (y is x) == in_place
    assert rel_l2(y, ry) <= 1e-5
    assert rel_l2(rstd, rrstd) <= 1e-5
