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
from numbanorm.cpu import layer_norm as _layer_norm
from numbanorm.cpu import moments as _moments


@pytest.mark.parametrize("C", [1, 3, 5, 7, 64, 255, 257])
def test_lanes_are_whole_channels(C):
    W = _moments.cl_lanes(C)
    assert W % C == 0 and W >= min(C, 1)
    assert W >= _moments._MIN_LANES or W % 8 == 0


@pytest.mark.parametrize("C", [1, 3, 5, 64, 257])
@pytest.mark.parametrize("dtype,offset,bound", [(np.float32, 0.0, 1e-6), (np.float32, 1e4, 1e-5),
                                                (np.float64, 1e4, 1e-10)])
def test_channels_last_lanes_and_tails(rng, C, dtype, offset, bound):
    # rows: several shift chunks plus a tail shorter than one lane group
    k = _moments.cl_lanes(C) // C
    rows = 2 * k * max(1, _moments._SHIFT_CHUNK // _moments.cl_lanes(C)) + k // 2 + 1
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


@pytest.mark.parametrize("C", [16, 29, 64, 269])
@pytest.mark.parametrize("dtype,offset,bound", [(np.float32, 0.0, 1e-6), (np.float32, 1e6, 1e-3),
                                                (np.float64, 1e4, 1e-10)])
def test_channels_last_channel_groups(rng, C, dtype, offset, bound):
    """C >= 16 channels-last moments sum in channel groups of 16/8/4/1 over row tiles; rows here
    span several tiles and shift chunks and end in a partial tile."""
    rows = 2 * max(1, _moments._SHIFT_CHUNK // C) + 37
    x = (offset + rng.standard_normal((rows, C)) * 3).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    y, mean, invstd = nb.batch_norm(x, rm, rv, training=True, channel_axis=-1, out=poisoned_like(x),
                                    return_stats=True)
    ry, rmean, rinv, rrm, rrv = batch_norm_ref(x, np.zeros(C), np.ones(C), training=True, channel_axis=-1)
    assert rel_l2(y, ry) <= bound and rel_l2(invstd, rinv) <= bound
    assert rel_l2(mean - offset, rmean - offset) <= bound * max(1.0, offset)
    assert rel_l2(rv, rrv) <= bound


@pytest.mark.parametrize("view", [np.float16, np.float32])
def test_channel_group_sums_all_input_types(rng, view):
    """``cl_dot_sums`` (moments and backward forms) against float64 sums, also through the plain
    fallback loops that half views compile to."""
    from numbanorm.cpu.halfio import kernel_array

    rows, C = 45, 29
    x = (rng.standard_normal((rows, C)) + 2).astype(view)
    g = rng.standard_normal((rows, C)).astype(view)
    shift = rng.standard_normal(C)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    fx, fg = kernel_array(x).reshape(-1), kernel_array(g).reshape(-1)
    s1, s2 = np.zeros(C), np.zeros(C)
    _moments.cl_dot_sums(fx, shift, None, None, 3, rows, C, s1, s2)
    d = x64[3:] - shift
    assert np.allclose(s1, d.sum(0), rtol=1e-12, atol=1e-9) and np.allclose(s2, (d * d).sum(0), rtol=1e-12)
    s1, s2 = np.zeros(C), np.zeros(C)
    _moments.cl_dot_sums(fg, None, fx, shift, 0, rows, C, s1, s2)
    assert np.allclose(s1, g64.sum(0), rtol=1e-12, atol=1e-9)
    assert np.allclose(s2, (g64 * (x64 - shift)).sum(0), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("inner", [8, 15, 17, 41, 49, 72])
@pytest.mark.parametrize("dtype,bound", [(np.float32, 1e-6), (np.float64, 1e-12), (np.float16, 2e-3)])
def test_nchw_run_tails(rng, inner, dtype, bound):
    """NCHW runs are normalized 32 at a time, then 8 at a time, then one at a time
    (``affine_rows``): every split of a run, out of place and in place."""
    x = (1e2 + rng.standard_normal((3, 5, inner))).astype(dtype)
    ref = batch_norm_ref(x, training=True)[0]
    y = nb.batch_norm(x, training=True, out=poisoned_like(x))
    assert rel_l2(y, ref) <= bound
    xi = x.copy()
    assert nb.batch_norm(xi, training=True, out=xi) is xi and rel_l2(xi, ref) <= bound


@pytest.mark.parametrize("inner", [1 * 7, 7 * 7, 14 * 14])
def test_nchw_short_runs_across_shift_chunks(rng, inner):
    outer = _moments._SHIFT_CHUNK // inner * 2 + 3
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
    R = _layer_norm.LN_PIPELINE_ELEMENTS // D + 5
    x = (1e4 + rng.standard_normal((R, D))).astype(np.float32)
    w = rng.standard_normal(D).astype(np.float32)
    ry, rmean, rrstd = layer_norm_ref(x, (D,), w, None)
    y, mean, rstd = nb.layer_norm(x, D, w, None, out=x if in_place else None, return_stats=True)
    assert (y is x) == in_place
    assert rel_l2(y, ry) <= 1e-5
    assert rel_l2(rstd, rrstd) <= 1e-5
