"""LayerNorm rows written with non-temporal stores (``cpu/simd.normalize_row_sums``, used by the
pipelined ``layer_norm_rows_into`` for outputs >= ``_ln._LN_STREAM_BYTES``), against the
float64 two-pass reference and torch: odd widths, rows that start off a cache line (views offset
by one element), weight/bias absent or present, float32/float64, NaN-poisoned ``out=``.

The threshold is a compile-time constant of the kernels (numba freezes module globals, and the
compiled kernels are cached on disk), so it cannot be monkeypatched: small inputs reach the
streaming loop through ``layer_norm_rows_into``'s ``stream_bytes`` argument (0: always stream),
called directly and from a test-local parallel loop; one public call is above the threshold.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from reference import TOL, layer_norm_ref, rel_l2

import numbanorm as nb
from numbanorm._numba import jit
from numbanorm.cpu import layer_norm as _ln
from numbanorm.cpu.plan import block_bounds

WIDTHS = (1, 7, 31, 33, 100, 1027)
PARAMS = ("none", "weight", "bias", "both")


def _offset(shape, dtype, off, fill):
    """A C-contiguous array of ``shape`` that starts ``off`` elements past an allocation."""
    n = int(np.prod(shape))
    buf = np.full(n + 2, fill, dtype)
    return buf[off:off + n].reshape(shape), buf


def _inputs(rng, R, D, dtype, params, off):
    x, _ = _offset((R, D), dtype, off, 0)
    x[...] = 1e4 + 3.0 * rng.standard_normal((R, D))  # large offset: |mean| >> std
    w = rng.standard_normal(D).astype(dtype) if params in ("weight", "both") else None
    b = rng.standard_normal(D).astype(dtype) if params in ("bias", "both") else None
    return x, w, b


def _run(x, w, b, out, stream_bytes):
    R = x.shape[0]
    mean, rstd = np.full(R, np.nan), np.full(R, np.nan)
    _ln.layer_norm_rows_into(x, 0, R, w, b, 1e-5, out, mean, rstd, None, stream_bytes)
    return mean, rstd


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("x_off,out_off", [(0, 0), (1, 1), (0, 1), (1, 0)])
def test_streamed_rows_match_reference(rng, dtype, params, x_off, out_off):
    """Every width (peel to a line, 32-element blocks, single vectors, scalars) from row starts
    on and off a cache line; nothing outside the output is written."""
    dtype = np.dtype(dtype)
    for D in WIDTHS:
        R = 9
        x, w, b = _inputs(rng, R, D, dtype, params, x_off)
        out, buf = _offset((R, D), dtype, out_off, np.nan)
        mean, rstd = _run(x, w, b, out, 0)
        ry, rm, rr = layer_norm_ref(x, (D,), w, b)
        assert rel_l2(out, ry) <= TOL[dtype], (D, rel_l2(out, ry))
        assert rel_l2(mean, rm) <= 1e-12 and rel_l2(rstd, rr) <= (1e-6 if D == 1 else 1e-9)
        assert np.isnan(buf[:out_off]).all() and np.isnan(buf[out_off + out.size:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", PARAMS)
def test_streamed_rows_match_normal_stores(rng, dtype, params):
    """The streaming loop and the numba loop (``stream_bytes`` above any size): both the float64
    reference, and within a few ulps of each other (the same float32 rounding of
    ``((x - mh) * rs + tail) * w + b``; float64 statistics that differ only by the order of the
    float64 sums)."""
    R, D = 12, 1027
    x, w, b = _inputs(rng, R, D, np.dtype(dtype), params, 1)
    a, c = np.full((R, D), np.nan, dtype), np.full((R, D), np.nan, dtype)
    ma, ra = _run(x, w, b, a, 0)
    mc, rc = _run(x, w, b, c, 1 << 62)
    ry, rm, rr = layer_norm_ref(x, (D,), w, b)
    for y, mean, rstd in ((a, ma, ra), (c, mc, rc)):
        assert rel_l2(y, ry) <= TOL[np.dtype(dtype)]
        assert rel_l2(mean, rm) <= 1e-12 and rel_l2(rstd, rr) <= 1e-9
    assert np.allclose(ma, mc, rtol=1e-15, atol=0) and np.allclose(ra, rc, rtol=1e-12, atol=0)
    # Each path rounds (x - mh) * rs + tail, * w, + b (a few ulps each way) from float64 stats that
    # may differ in their last bits: 4 eps of the largest output was exceeded by one ulp at some
    # seeds (3.6e-15 against 3.5e-15 in float64); 8 eps still catches a wrong element (~1e-1).
    assert np.abs(a - c).max() <= 8 * np.finfo(dtype).eps * np.abs(c).max()


def test_constant_rows_give_the_bias_exactly(rng):
    """Zero variance: (x - mean) is exactly 0, so the output is exactly the bias."""
    R, D = 5, 777
    x = np.full((R, D), 1234.5, np.float32)
    w = rng.standard_normal(D).astype(np.float32)
    b = rng.standard_normal(D).astype(np.float32)
    out, _ = _offset((R, D), np.float32, 1, np.nan)
    _run(x, w, b, out, 0)
    assert np.array_equal(out, np.broadcast_to(b, (R, D)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_rows_match_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    R, D = 16, 1000
    x, w, b = _inputs(rng, R, D, np.dtype(dtype), "both", 1)
    x -= 1e4  # torch's own one-pass statistics lose digits at a 1e4 offset in float32
    out, _ = _offset((R, D), dtype, 1, np.nan)
    _run(x, w, b, out, 0)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x.copy()), (D,), torch.from_numpy(w),
                                         torch.from_numpy(b), 1e-5).numpy()
    assert rel_l2(out, ref) <= (1e-6 if dtype == np.float32 else 1e-12)


def test_strided_rows_fall_back_to_the_plain_loop(rng):
    """Rows of a non-contiguous 2-D view (numba layout 'A') take the plain loop even when asked
    to stream; same results."""
    R, D = 7, 300
    big = (1e4 + 3.0 * rng.standard_normal((R, D + 5))).astype(np.float32)
    x = big[:, 2:2 + D]
    w, b = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    out = np.full((R, D), np.nan, np.float32)
    _run(x, w, b, out, 0)
    assert rel_l2(out, layer_norm_ref(x, (D,), w, b)[0]) <= 1e-6


@jit(parallel=True)  # numbanorm's disk cache (stamped with the package): compiled once, not per run
def _parallel_streamed(x2, w, b, out2, mean, rstd, nblocks):
    """Like ``cpu.layer_norm.parallel_layer_norm_pipelined``, but always streaming (each task fences its stores)."""
    R = x2.shape[0]
    for k in numba.prange(nblocks):
        r0, r1 = block_bounds(R, nblocks, k)
        _ln.layer_norm_rows_into(x2, r0, r1, w, b, 1e-5, out2, mean, rstd, None, 0)


@pytest.mark.parametrize("params", ["none", "both"])  # one parallel compile each
def test_streamed_rows_in_parallel(rng, params):
    """Two threads, several blocks each: every task's streamed rows are visible to the caller."""
    R, D = 61, 517
    x, w, b = _inputs(rng, R, D, np.dtype(np.float32), params, 1)
    out, _ = _offset((R, D), np.float32, 1, np.nan)
    mean, rstd = np.full(R, np.nan), np.full(R, np.nan)
    old = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        _parallel_streamed(x, w, b, out, mean, rstd, 8)
    finally:
        numba.set_num_threads(old)
    ry, rm, rr = layer_norm_ref(x, (D,), w, b)
    assert rel_l2(out, ry) <= 1e-6 and rel_l2(mean, rm) <= 1e-12 and rel_l2(rstd, rr) <= 1e-9


def test_public_call_above_the_threshold_streams(rng):
    """A public call on an output >= ``_LN_STREAM_BYTES``: misaligned poisoned ``out=`` and the
    allocating call, two threads, against the reference."""
    D = 2050
    R = _ln._LN_STREAM_BYTES // (4 * D) + 3
    x = rng.standard_normal((R, D), dtype=np.float32)
    x += 1e4
    assert x.nbytes >= _ln._LN_STREAM_BYTES
    w, b = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    old = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        out, buf = _offset((R, D), np.float32, 1, np.nan)
        assert nb.layer_norm(x, D, w, b, out=out) is out
        y2 = nb.layer_norm(x, D, w, b)
    finally:
        numba.set_num_threads(old)
    assert np.isnan(buf[0]) and np.isnan(buf[-1])
    rows = np.r_[0:5, 5:R:37, R - 5:R]  # the reference on a sample of rows (each row is independent)
    ref = layer_norm_ref(x[rows], (D,), w, b)[0]
    assert rel_l2(out[rows], ref) <= 1e-6
    assert np.isfinite(out).all()
    assert np.array_equal(out, y2)
