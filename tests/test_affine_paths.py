"""The normalize pass (``cpu/simd.affine_rows``: contiguous runs, channels-last lanes, streaming
stores for large outputs) and the fused GroupNorm/InstanceNorm kernels, against float64
references: every tail length, misaligned and poisoned ``out=``, in place, 1 and 2 threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conftest import poisoned_like
from family_reference import group_norm_ref
from reference import batch_norm_ref, rel_l2

import numbanorm as nb
from numbanorm._numba import jit
from numbanorm.cpu import affine
from numbanorm.cpu.simd import affine_rows


def _misaligned_out(x):
    """A NaN-poisoned C-contiguous out= that starts one element past an allocation (so neither
    32- nor 64-byte aligned)."""
    buf = np.full(x.size + 1, np.nan, x.dtype)
    return buf[1:].reshape(x.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lanes", [False, True])
@pytest.mark.parametrize("stream", [False, True])
def test_affine_rows_every_split(rng, dtype, lanes, stream):
    for width in (1, 7, 8, 31, 32, 33, 77, 300):
        _check_affine_rows(rng, dtype, lanes, stream, width)


def _check_affine_rows(rng, dtype, lanes, stream, width):
    """Rows of any width: 32-element blocks, 8-element vectors, scalars; the streaming variant
    also peels to a line boundary. Checked against NumPy in float64, from a misaligned base."""
    nrows, base = 5, 3
    src = (1e3 + rng.standard_normal(base + nrows * width + 4)).astype(dtype)
    dst = np.full_like(src, np.nan)
    if lanes:
        h, s, o = (rng.standard_normal(width).astype(dtype) for _ in range(3))
        h += 1e3
    else:
        h, s, o = dtype(1e3 + 0.5), dtype(1.7), dtype(-0.3)
    _affine_rows_jit(src, dst, base, nrows, width, h, s, o, stream)
    seg = src[base:base + nrows * width].astype(np.float64).reshape(nrows, width)
    h64, s64, o64 = (np.asarray(p, np.float64) for p in (h, s, o))
    ref = (seg - h64) * s64 + o64
    got = dst[base:base + nrows * width].reshape(nrows, width)
    assert np.isnan(dst[:base]).all() and np.isnan(dst[base + nrows * width:]).all()
    f32 = dtype == np.float32
    assert np.allclose(got, ref, rtol=1e-5 if f32 else 1e-12, atol=1e-3 if f32 else 1e-9)


@jit()  # numbanorm's disk cache (stamped with the package): compiled once, not per run
def _affine_rows_jit(src, dst, base, nrows, width, h, s, o, stream):
    affine_rows(src, dst, base, nrows, width, h, s, o, stream)


@pytest.mark.parametrize("shape,axis,threads", [((3, 5, 600, 500), 1, 2), ((2, 700, 900, 4), -1, 1),
                                                ((2, 165, 48, 300), -1, 2), ((2, 230, 270, 37), -1, 1)])
def test_batch_norm_eval_streaming_outputs(rng, shape, axis, threads):
    """Outputs >= ``_STREAM_BYTES`` (NCHW: written with non-temporal stores; channels-last: the
    lane rows with a row tail): a misaligned poisoned out=, a fresh output and in place all
    match the reference (large-offset data)."""
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    assert x.nbytes >= affine._STREAM_BYTES
    C = shape[axis]
    rm = (1e4 + rng.standard_normal(C)).astype(np.float32)
    rv = (0.5 + rng.random(C)).astype(np.float32)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    ref = batch_norm_ref(x, rm, rv, w, b, training=False, channel_axis=axis)[0]
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        out = _misaligned_out(x)
        assert nb.batch_norm(x, rm, rv, w, b, channel_axis=axis, out=out) is out
        assert rel_l2(out, ref) <= 1e-6
        assert rel_l2(nb.batch_norm(x, rm, rv, w, b, channel_axis=axis), ref) <= 1e-6
        xi = x.copy()
        nb.batch_norm(xi, rm, rv, w, b, channel_axis=axis, out=xi)
        assert rel_l2(xi, ref) <= 1e-6
    finally:
        numba.set_num_threads(old)


@pytest.mark.parametrize("shape,groups", [((6, 64, 19, 21), 32), ((3, 24, 50, 41), 4), ((1, 8, 67, 129), 8),
                                          ((5, 6, 33), 3)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("threads,affine", [(1, True), (2, False)])
def test_group_norm_fused(rng, shape, groups, channels_last, threads, affine):
    """The fused GroupNorm kernels (NCHW groups pipelined, channels-last whole samples): output
    and stats against the float64 reference at a large offset, poisoned misaligned out=."""
    x = (1e4 + 3 * rng.standard_normal(shape)).astype(np.float32)
    C = shape[1]
    w = b = None
    if affine:
        w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    ry, rmean, rrstd = group_norm_ref(x, groups, w, b)
    axis = 1
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        axis = -1
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        out = _misaligned_out(x)
        y, mean, rstd = nb.group_norm(x, groups, w, b, channel_axis=axis, out=out, return_stats=True)
    finally:
        numba.set_num_threads(old)
    assert y is out
    if channels_last:
        y = np.moveaxis(y, -1, 1)
    assert rel_l2(y, ry) <= 1e-5
    assert rel_l2(mean, rmean) <= 1e-6 and rel_l2(rstd, rrstd) <= 1e-5


def test_instance_norm_fused_matches_reference(rng):
    x = (50 + rng.standard_normal((4, 6, 13, 17))).astype(np.float32)
    y = nb.instance_norm(x, out=poisoned_like(x))
    ry = group_norm_ref(x, 6)[0]
    assert rel_l2(y, ry) <= 1e-5
