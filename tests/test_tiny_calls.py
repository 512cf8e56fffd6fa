"""The tiny-call fast paths of layer_norm/batch_norm (``numbanorm/_tiny.py``): every layout and
optional-argument variant they take agrees with the float64 reference, on the first call (through
numba's dispatcher) and on later ones (the compiled entry called directly), and statistics are
written only when asked. (Whether the direct entry is used is a matter of speed: the benchmark's.)"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from backward_reference import bn_backward_ref, rows_backward_ref
from reference import TOL, batch_norm_ref, layer_norm_ref, rel_l2

import numbanorm as nb

DTYPES = (np.float32, np.float64)


def _data(rng, shape, dtype):
    return (rng.standard_normal(shape) * 3 + 1e4 * rng.random()).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 16, 77), (5, 33), (2, 3, 4, 9)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("tuple_shape", [False, True])
def test_layer_norm_tiny_matches_reference(rng, dtype, shape, affine, tuple_shape):
    x = _data(rng, shape, dtype)
    D = shape[-1]
    w = rng.standard_normal(D).astype(dtype) if affine in ("both", "weight") else None
    b = rng.standard_normal(D).astype(dtype) if affine in ("both", "bias") else None
    ns = (D,) if tuple_shape else D
    y_ref, m_ref, r_ref = layer_norm_ref(x, (D,), w, b)
    for _ in range(2):  # the first call may go through the dispatcher, the second the compiled entry
        y = nb.layer_norm(x, ns, w, b)
        y2, mean, rstd = nb.layer_norm(x, ns, w, b, return_stats=True)
        assert y.shape == x.shape and y.dtype == x.dtype and y.flags.c_contiguous
        assert rel_l2(y, y_ref) < 10 * TOL[np.dtype(dtype)]
        np.testing.assert_array_equal(y2, y)
        assert mean.shape == shape[:-1] and rstd.shape == shape[:-1]
        assert mean.dtype == np.dtype(dtype) and rstd.dtype == np.dtype(dtype)
        np.testing.assert_allclose(mean, m_ref, rtol=1e-6 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(rstd, r_ref, rtol=1e-4 if dtype == np.float32 else 1e-9)
    # a later call without stats must not touch the statistics returned earlier
    saved = mean.copy(), rstd.copy()
    nb.layer_norm(_data(rng, shape, dtype), ns, w, b)
    np.testing.assert_array_equal(mean, saved[0])
    np.testing.assert_array_equal(rstd, saved[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("layout", [((2, 5, 3, 7), 1), ((2, 3, 7, 5), -1), ((2, 3, 5, 7), 2), ((2, 5, 3, 7), -3),
                                    ((6, 5), 1), ((4, 5, 9), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_tiny_matches_reference(rng, dtype, training, layout, affine):
    shape, axis = layout
    x = _data(rng, shape, dtype)
    C = shape[axis]
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    rm0 = rng.standard_normal(C).astype(dtype)
    rv0 = (rng.random(C) + 0.5).astype(dtype)
    y_ref, m_ref, i_ref, rm_ref, rv_ref = batch_norm_ref(x, rm0, rv0, w, b, training, 0.1, 1e-5, axis)
    tol = 10 * TOL[np.dtype(dtype)]
    for return_stats in (False, True, True):
        rm, rv = rm0.copy(), rv0.copy()
        res = nb.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, channel_axis=axis, return_stats=return_stats)
        y = res[0] if return_stats else res
        assert y.shape == x.shape and y.dtype == x.dtype
        assert rel_l2(y, y_ref) < tol
        if training:
            np.testing.assert_allclose(rm, rm_ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
            np.testing.assert_allclose(rv, rv_ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
        else:
            np.testing.assert_array_equal(rm, rm0)
            np.testing.assert_array_equal(rv, rv0)
        if return_stats:
            mean, invstd = res[1], res[2]
            assert mean.shape == (C,) and invstd.shape == (C,) and mean.dtype == np.dtype(dtype)
            np.testing.assert_allclose(mean, m_ref, rtol=1e-6 if dtype == np.float32 else 1e-12)
            np.testing.assert_allclose(invstd, i_ref, rtol=1e-4 if dtype == np.float32 else 1e-9)
    if training:  # no running stats at all
        y = nb.batch_norm(x, None, None, w, b, True, channel_axis=axis)
        y_ref = batch_norm_ref(x, None, None, w, b, True, 0.1, 1e-5, axis)[0]
        assert rel_l2(y, y_ref) < tol


@pytest.mark.parametrize("op", ["ln", "bn"])
def test_tiny_read_only_input(rng, op):
    """A read-only x (typed differently by numba) takes the tiny path too, after and before the
    writeable one compiled its entry."""
    x = _data(rng, (2, 8, 12), np.float32)
    x_ro = x.copy()
    x_ro.flags.writeable = False
    tol = 10 * TOL[np.dtype(np.float32)]
    if op == "ln":
        w = rng.standard_normal(12).astype(np.float32)
        want = layer_norm_ref(x, (12,), w)[0]
        for a in (x_ro, x, x_ro):
            assert rel_l2(nb.layer_norm(a, 12, w), want) < tol
    else:
        rm, rv = rng.standard_normal(8).astype(np.float32), (rng.random(8) + 0.5).astype(np.float32)
        want = batch_norm_ref(x, rm, rv)[0]
        for a in (x_ro, x, x_ro):
            assert rel_l2(nb.batch_norm(a, rm, rv), want) < tol


def test_tiny_calls_from_threads(rng):
    """Concurrent tiny calls (nogil kernels; LN shares its write-only stats scratch) from four
    threads released together: every result is the float64 reference of its own thread's input,
    and the same bits as that input's single-threaded result (a call's result depends on its
    arguments only: no shared state leaks between concurrent calls)."""
    xs = [_data(rng, (3, 16, 64), np.float32) for _ in range(4)]
    w = rng.standard_normal(64).astype(np.float32)
    refs = [layer_norm_ref(x, (64,), w) for x in xs]
    tol = 10 * TOL[np.dtype(np.float32)]
    expected = [nb.layer_norm(x, 64, w, return_stats=True) for x in xs]
    for got, ref in zip(expected, refs, strict=True):
        assert rel_l2(got[0], ref[0]) < tol
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-6)
        np.testing.assert_allclose(got[2], ref[2], rtol=1e-4)
    errors = []
    start = threading.Barrier(4, timeout=300)

    def work(i):
        start.wait()
        for _ in range(200):
            if i % 2:  # statistics not wanted: written to the shared scratch
                y = nb.layer_norm(xs[i], 64, w)
                ok = np.array_equal(y, expected[i][0])
            else:
                y, mean, rstd = nb.layer_norm(xs[i], 64, w, return_stats=True)
                ok = all(np.array_equal(a, b) for a, b in zip((y, mean, rstd), expected[i], strict=True))
            if not ok:
                errors.append((i, rel_l2(y, refs[i][0])))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _bn_grads_close(got, ref, affine, dtype, C):
    gx, gw, gb = got
    rx, rw, rb = ref
    tol = 1e-5 if dtype == np.float32 else 1e-10
    assert gx.dtype == np.dtype(dtype) and not np.isnan(gx).any() and rel_l2(gx, rx) <= tol
    if affine:
        assert gw.dtype == np.dtype(dtype) and gb.dtype == np.dtype(dtype) and gw.shape == gb.shape == (C,)
        assert rel_l2(gw, rw) <= tol and rel_l2(gb, rb) <= tol
    else:
        assert gw is None and gb is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", [((2, 5, 3, 7), 1), ((2, 3, 7, 5), -1), ((2, 3, 7, 20), -1), ((2, 3, 5, 7), 2),
                                    ((6, 5), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_tiny_matches_reference(rng, dtype, layout, affine):
    """The one-dispatch training backward of tiny inputs (allocating, and with a C-contiguous
    poisoned ``out=``) and the general path (a strided ``out=`` is not the common form) against
    the closed-form float64 gradients, given the forward's statistics."""
    shape, axis = layout
    x = _data(rng, shape, dtype)
    g = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    w = rng.standard_normal(C).astype(dtype) if affine else None
    _, mean, invstd = nb.batch_norm(x, None, None, w, None, True, channel_axis=axis, return_stats=True)
    ref = bn_backward_ref(g, x, w, axis, mean, invstd)
    tiny = nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis)
    assert tiny[0].shape == shape
    _bn_grads_close(tiny, ref, affine, dtype, C)
    out = np.full(shape, np.nan, dtype)
    got = nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis, out=out)
    assert got[0] is out
    _bn_grads_close(got, ref, affine, dtype, C)
    strided = np.full((*shape[:-1], 2 * shape[-1]), np.nan, dtype)[..., 1::2]
    got = nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis, out=strided)
    assert got[0] is strided
    _bn_grads_close(got, ref, affine, dtype, C)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 16, 77), (5, 33)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_rows_backward_common_path_matches_general_path(rng, dtype, shape, affine, op):
    """layer_norm_backward / rms_norm_backward with the common arguments (checked in a few tests,
    no conversions) and through the full check (``normalized_shape`` as a list is not the common
    form) run the one kernel on the same operands, so they give the same bits; both are the
    closed-form float64 gradients."""
    x = _data(rng, shape, dtype)
    g = rng.standard_normal(shape).astype(dtype)
    D = shape[-1]
    w = rng.standard_normal(D).astype(dtype) if affine else None
    if op == "layer_norm":
        _, mean, rstd = nb.layer_norm(x, D, w, return_stats=True)
        fast = nb.layer_norm_backward(g, x, (D,), mean, rstd, w)
        general = nb.layer_norm_backward(g, x, [D], mean, rstd, w)
    else:
        mean = None
        _, rstd = nb.rms_norm(x, D, w, return_stats=True)
        fast = nb.rms_norm_backward(g, x, D, rstd, w)
        general = nb.rms_norm_backward(g, x, [D], rstd, w)
    ref = rows_backward_ref(g, x, w, 1, mean, rstd, centered=op == "layer_norm")
    tol = 1e-5 if dtype == np.float32 else 1e-10
    for a, b, r in zip(fast, general, ref, strict=False):
        if b is None:
            assert a is None and not affine
        else:
            assert a.shape == b.shape and a.dtype == b.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(a, b)
            assert rel_l2(a, r) <= tol
