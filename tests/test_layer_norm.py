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


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rows(dtype):
    """No rows: empty y and empty stats, of the dtypes a non-empty call returns."""
    y, mean, rstd = nb.layer_norm(np.empty((0, 4), dtype), 4, return_stats=True)
    assert y.shape == (0, 4) and y.dtype == dtype
    assert mean.shape == rstd.shape == (0,) and mean.dtype == rstd.dtype == dtype
    assert nb.layer_norm(np.empty((2, 0, 3), dtype), (3,)).shape == (2, 0, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,norm_shape", [((3, 0), 0), ((2, 3, 0), (3, 0)), ((4, 0), (0,))])
def test_zero_width_rows(dtype, shape, norm_shape):
    """Rows of zero elements: y is empty; the mean of no values is 0/0 = NaN (NumPy's ``mean`` of
    an empty axis) and so is the variance, hence rstd = NaN, for every row, weight or not.

    torch's ``native_layer_norm`` (CPU, 2.13) agrees on y and rstd (NaN) but returns a mean of
    0 for such rows (``test_zero_width_rows_mean_like_torch`` records that difference)."""
    batch = shape[: len(shape) - (1 if isinstance(norm_shape, int) else len(norm_shape))]
    w = np.ones(shape[len(batch):], dtype)
    for args in ((), (w, w)):
        y, mean, rstd = nb.layer_norm(np.empty(shape, dtype), norm_shape, *args, return_stats=True)
        assert y.shape == shape and y.dtype == dtype and y.size == 0
        assert mean.shape == rstd.shape == batch and mean.dtype == rstd.dtype == dtype
        assert mean.size == rstd.size == int(np.prod(batch)) > 0
        assert np.isnan(mean).all() and np.isnan(rstd).all()


@pytest.mark.xfail(strict=True, reason="numbanorm returns mean = NaN for a zero-width row, torch 0")
def test_zero_width_rows_mean_like_torch():
    torch = pytest.importorskip("torch")
    _, tmean, trstd = torch.native_layer_norm(torch.empty(3, 0), [0], None, None, 1e-5)
    _, mean, rstd = nb.layer_norm(np.empty((3, 0), np.float32), 0, return_stats=True)
    assert np.isnan(trstd.numpy()).all() and np.isnan(rstd).all()  # they agree on rstd
    np.testing.assert_array_equal(mean, tmean.numpy().reshape(3))


def test_nan_and_inf_propagate_to_their_row_only():
    x = np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0], [1.0, np.inf, 2.0]], np.float32)
    y = nb.layer_norm(x, 3)
    assert np.isnan(y[0]).all() and np.isnan(y[2]).all()
    assert np.isfinite(y[1]).all()
