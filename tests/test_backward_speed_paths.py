"""The backward's speed paths (bwd5): channels-last sums over whole rows (``cl_sweep_sums``: four
rows at a time below 128 channels, one above), grad_x in the compute type (float32 for float32
data, the mean split into a float32 head and a float64 tail) and ``out=`` on the common fast paths.
Checked against a float64 NumPy reference of the gradients (given the forward's statistics, or
tests/reference.py's two-pass ones), on shapes that do not divide evenly, large-offset data, poisoned outputs, 1 and 2
threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from backward_reference import bn_backward_ref, rows_backward_ref
from conftest import poisoned_like
from reference import rel_l2

import numbanorm as nb


def _with_threads(n, fn):
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


# Channels-last, C >= 32: the row sweeps. (rows, C): C = 32/33/64/127 four rows at a time (rows
# not a multiple of 4: the leftover rows), 128/200 one row at a time; some large enough for the
# parallel path (> 65536 elements).
CL_SHAPES = [(4, 5, 7, 33), (3, 11, 32), (2, 9, 13, 64), (5, 3, 127), (2, 7, 5, 128), (3, 7, 200),
             (2, 41, 29, 64), (641, 129)]


@pytest.mark.parametrize("shape", CL_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_channels_last_sweep_sums_match_reference(rng, shape, dtype, threads):
    C = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 1e4).astype(dtype)  # large offset: x - mean cancels
    g = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal(C) + 1).astype(dtype)
    _, mean, invstd = nb.batch_norm(x, None, None, w, training=True, channel_axis=-1, return_stats=True)
    gx, gw, gb = _with_threads(threads, lambda: nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=-1))
    rx, rw, rb = bn_backward_ref(g, x, w, -1, mean, invstd)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    assert gx.dtype == dtype and rel_l2(gx, rx) <= tol
    assert rel_l2(gw, rw) <= tol and rel_l2(gb, rb) <= tol


@pytest.mark.parametrize("shape,axis", [((3, 7, 5, 9), 1), ((256, 64, 3, 3), 1), ((2, 5, 9, 3), -1),
                                        ((2, 17, 11, 16), -1), ((9, 31, 21), 1), ((8, 61, 67, 3), -1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_float32_grad_input_with_large_offset(rng, shape, axis, threads):
    """grad_x in float32 (head of the mean in float32, tail in the offset) stays at float32
    accuracy when |mean| >> std, both layouts, lanes (C < 16) and channel rows."""
    C = shape[axis]
    x64 = rng.standard_normal(shape) * 0.5 + 1e4
    x = x64.astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal(C) + 1).astype(np.float32)
    _, mean, invstd = nb.batch_norm(x, None, None, w, training=True, channel_axis=axis, return_stats=True)
    gx, _, _ = _with_threads(threads, lambda: nb.batch_norm_backward(g, x, mean, invstd, w, True,
                                                                     channel_axis=axis))
    rx, _, _ = bn_backward_ref(g, x, w, axis, mean, invstd)
    assert rel_l2(gx, rx) <= 1e-5
    # eval (grad_x = dy·γ·invstd, x not read) and without weight go through the same kernels
    ex = _with_threads(threads, lambda: nb.batch_norm_backward(g, x, mean, invstd, None, False,
                                                               channel_axis=axis)[0])
    shape1 = [1] * x.ndim
    shape1[axis % x.ndim] = -1
    assert rel_l2(ex, g.astype(np.float64) * np.reshape(invstd.astype(np.float64), shape1)) <= 1e-6


def _close(got, want, tol=1e-5):
    """Every element written (no NaN left of a poisoned out) and within ``tol`` of the reference."""
    assert not np.isnan(got).any() and rel_l2(got, want) <= tol


def _close_all(got, want, tol=1e-5):
    for a, b in zip(got, want, strict=True):
        _close(a, b, tol)


@pytest.mark.parametrize("shape,axis", [((1, 64, 7, 7), 1), ((1, 7, 7, 64), -1), ((3, 5, 2), 1), ((9, 3), -1)])
def test_tiny_batch_norm_backward_with_out(rng, shape, axis):
    """``out=`` on the tiny one-dispatch path: poisoned buffer, in place over grad_out and x, and
    an overlapping view (the full path), each against the float64 reference."""
    C = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 1e3).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    _, mean, invstd = nb.batch_norm(x, None, None, w, training=True, channel_axis=axis, return_stats=True)
    rx, rw, rb = bn_backward_ref(g, x, w, axis, mean, invstd)
    gx, gw, gb = nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis)
    _close_all((gx, gw, gb), (rx, rw, rb))
    out = poisoned_like(x)
    gx, gw, gb = nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis, out=out)
    assert gx is out
    _close_all((out, gw, gb), (rx, rw, rb))
    g2 = g.copy()
    assert nb.batch_norm_backward(g2, x, mean, invstd, w, True, channel_axis=axis, out=g2)[0] is g2
    _close(g2, rx)
    x2 = x.copy()
    assert nb.batch_norm_backward(g, x2, mean, invstd, w, True, channel_axis=axis, out=x2)[0] is x2
    _close(x2, rx)
    # a different view of grad_out's memory: not the fast path (the general kernels), still correct
    g3 = g.copy()
    view = g3.reshape(-1).reshape(shape)
    assert view is not g3 and nb.batch_norm_backward(g3, x, mean, invstd, w, True, channel_axis=axis,
                                                     out=view)[0] is view
    _close(view, rx)
    with pytest.raises((TypeError, ValueError), match="out"):
        nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis, out=np.empty(shape, np.float64))
    ro = np.empty(shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises((TypeError, ValueError), match="out"):
        nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis, out=ro)


@pytest.mark.parametrize("shape", [(1, 16, 768), (3, 5, 37), (67, 1031)])
def test_layer_norm_backward_with_out_on_the_common_path(rng, shape):
    D = shape[-1]
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal(D) + 1).astype(np.float32)
    _, mean, rstd = nb.layer_norm(x, D, w, return_stats=True)
    rx, rw, rb = rows_backward_ref(g, x, w, 1, mean, rstd)
    gx, gw, gb = nb.layer_norm_backward(g, x, D, mean, rstd, w)
    _close_all((gx, gw, gb), (rx, rw, rb))
    out = poisoned_like(x)
    gx, gw, gb = nb.layer_norm_backward(g, x, D, mean, rstd, w, out=out)
    assert gx is out
    _close_all((out, gw, gb), (rx, rw, rb))
    g2 = g.copy()
    assert nb.layer_norm_backward(g2, x, D, mean, rstd, w, out=g2)[0] is g2
    _close(g2, rx)
    with pytest.raises((TypeError, ValueError), match="out"):
        nb.layer_norm_backward(g, x, D, mean, rstd, w, out=np.empty(shape[:-1] + (D + 1,), np.float32))
