"""layer_norm against the float64 two-pass reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import poisoned_like
from reference import TOL, layer_norm_ref, rel_l2

import numbanorm as nb

DTYPES = [np.float32, np.float64]

# (shape, normalized_shape): ranks 2-5, k = 1..3, LN on NLC and on NCHW images, odd sizes.
CASES = [
    ((5, 1), (1,)),
    ((7, 3), (3,)),
    ((3, 13, 7), (7,)),
    ((2, 37, 1000), (1000,)),
    ((4, 3, 5, 7), (3, 5, 7)),  # LN on images: each sample over C x H x W
    ((2, 3, 4, 5, 6), (5, 6)),
    ((3, 129, 257), (257,)),  # large enough for several parallel tasks
    ((1, 17, 4099), (17, 4099)),
]


def _params(rng, shape, dtype, affine):
    if not affine:
        return None, None
    return rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,norm_shape", CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_matches_reference(rng, dtype, shape, norm_shape, affine):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = _params(rng, norm_shape, dtype, affine)
    y, mean, rstd = nb.layer_norm(x, norm_shape, w, b, return_stats=True)
    ry, rmean, rrstd = layer_norm_ref(x, norm_shape, w, b)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert mean.shape == x.shape[: x.ndim - len(norm_shape)] == rstd.shape
    tol = TOL[np.dtype(dtype)] * 5
    assert rel_l2(y, ry) <= tol
    assert rel_l2(mean, rmean) <= tol
    assert rel_l2(rstd, rrstd) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", ["weight", "bias"])
def test_weight_or_bias_alone(rng, dtype, affine):
    x = rng.standard_normal((6, 33)).astype(dtype)
    p = rng.standard_normal(33).astype(dtype)
    kwargs = {affine: p}
    y = nb.layer_norm(x, 33, **kwargs)
    ry, _, _ = layer_norm_ref(x, (33,), **kwargs)
    assert rel_l2(y, ry) <= TOL[np.dtype(dtype)] * 5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("contiguous_out", [True, False])
def test_out_is_filled_completely(rng, dtype, contiguous_out):
    x = rng.standard_normal((9, 11, 31)).astype(dtype)
    w, b = _params(rng, (31,), dtype, True)
    if contiguous_out:
        out = poisoned_like(x)
    else:
        out = np.full((9, 11, 62), np.nan, dtype)[..., ::2]
    res = nb.layer_norm(x, 31, w, b, out=out)
    assert res is out
    assert not np.isnan(out).any()
    assert rel_l2(out, layer_norm_ref(x, (31,), w, b)[0]) <= TOL[np.dtype(dtype)] * 5


@pytest.mark.parametrize("make", [
    lambda a: a.transpose(1, 0, 2),  # rows permuted
    lambda a: a[:, ::2, :],  # strided rows
    lambda a: a[..., ::3],  # strided inside a row
    lambda a: np.asfortranarray(a),
])
def test_non_contiguous_input(rng, make):
    base = rng.standard_normal((10, 12, 30)).astype(np.float32) + 5
    x = make(base)
    assert not x.flags.c_contiguous or x.base is not None
    d = x.shape[-1]
    y = nb.layer_norm(x, d)
    assert rel_l2(y, layer_norm_ref(x, (d,))[0]) <= TOL[np.dtype(np.float32)] * 5


def test_in_place(rng):
    x = rng.standard_normal((40, 129)).astype(np.float64)
    expected = layer_norm_ref(x, (129,))[0]
    res = nb.layer_norm(x, 129, out=x)
    assert res is x
    assert rel_l2(x, expected) <= 1e-12


@pytest.mark.parametrize("eps", [1e-12, 1e-5, 0.1, 10.0])
def test_eps(rng, eps):
    x = (rng.standard_normal((8, 50)) * 0.01).astype(np.float64)
    assert rel_l2(nb.layer_norm(x, 50, eps=eps), layer_norm_ref(x, (50,), eps=eps)[0]) <= 1e-12


def test_accepts_array_likes_and_tuple_or_list_shapes(rng):
    x = rng.standard_normal((3, 4, 5))
    ref = layer_norm_ref(x, (4, 5))[0]
    assert rel_l2(nb.layer_norm(x.tolist(), [4, 5]), ref) <= 1e-12
    assert rel_l2(nb.layer_norm(x, (np.int64(4), 5)), ref) <= 1e-12


def test_zero_rows_and_zero_width():
    y = nb.layer_norm(np.empty((0, 4), np.float32), 4)
    assert y.shape == (0, 4) and y.dtype == np.float32
    y, mean, rstd = nb.layer_norm(np.empty((3, 0), np.float32), 0, return_stats=True)
    assert y.shape == (3, 0) and mean.shape == (3,)


def test_nan_and_inf_propagate_to_their_row_only():
    x = np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0], [1.0, np.inf, 2.0]], np.float32)
    y = nb.layer_norm(x, 3)
    assert np.isnan(y[0]).all() and np.isnan(y[2]).all()
    assert np.isfinite(y[1]).all()
