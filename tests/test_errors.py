"""Bad input raises ValueError/TypeError naming the argument; nothing is mutated on failure."""

from __future__ import annotations

import numpy as np
import pytest

import numbanorm as nb

X = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)


def _running():
    return np.arange(3, dtype=np.float32), np.arange(1, 4, dtype=np.float32)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, np.uint8, np.uint16, np.longdouble])
def test_non_float_inputs(dtype):
    x = np.ones((4, 3), dtype)
    with pytest.raises(TypeError, match="x must have dtype float16, bfloat16, float32 or float64"):
        nb.layer_norm(x, 3)
    with pytest.raises(TypeError, match="x must have dtype"):
        nb.batch_norm(x, training=True)


LN_CASES = [
    (dict(normalized_shape=4), ValueError, "normalized_shape"),
    (dict(normalized_shape=(3, 4)), ValueError, "normalized_shape"),
    (dict(normalized_shape=(1, 4, 3, 5)), ValueError, "normalized_shape"),
    (dict(normalized_shape=()), ValueError, "normalized_shape"),
    (dict(normalized_shape=5.0), TypeError, "normalized_shape"),
    (dict(normalized_shape=5, weight=np.ones(4, np.float32)), ValueError, "weight must have shape"),
    (dict(normalized_shape=5, weight=np.ones(5, np.float64)), TypeError, "weight must have dtype"),
    (dict(normalized_shape=5, bias=np.ones((1, 5), np.float32)), ValueError, "bias must have shape"),
    (dict(normalized_shape=5, bias=np.ones(5, np.int32)), TypeError, "bias must have dtype"),
    (dict(normalized_shape=5, eps=0.0), ValueError, "eps"),
    (dict(normalized_shape=5, eps=-1e-5), ValueError, "eps"),
    (dict(normalized_shape=5, eps=float("nan")), ValueError, "eps"),
    (dict(normalized_shape=5, eps=float("inf")), ValueError, "eps"),
    (dict(normalized_shape=5, eps="1e-5"), TypeError, "eps"),
    (dict(normalized_shape=5, out=np.empty((4, 3, 4), np.float32)), ValueError, "out must have the shape"),
    (dict(normalized_shape=5, out=np.empty((4, 3, 5), np.float64)), TypeError, "out must have the dtype"),
    (dict(normalized_shape=5, out=[0.0]), TypeError, "out must be a numpy.ndarray"),
]


@pytest.mark.parametrize("kwargs,exc,match", LN_CASES)
def test_layer_norm_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nb.layer_norm(X, **kwargs)


BN_CASES = [
    (dict(training=True, channel_axis=3), ValueError, "channel_axis"),
    (dict(training=True, channel_axis=-4), ValueError, "channel_axis"),
    (dict(training=True, channel_axis=1.0), TypeError, "channel_axis"),
    (dict(training=True, weight=np.ones(4, np.float32)), ValueError, "weight must have shape"),
    (dict(training=True, bias=np.ones(3, np.float64)), TypeError, "bias must have dtype"),
    (dict(training=True, running_mean=np.zeros(4, np.float32), running_var=np.ones(4, np.float32)),
     ValueError, "running_mean must have shape"),
    (dict(training=True, running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float64)),
     TypeError, "running_var must have dtype"),
    (dict(training=True, running_mean=np.zeros(3, np.float32)), ValueError, "running_mean and running_var"),
    (dict(training=True, running_mean=[0.0, 0.0, 0.0], running_var=np.ones(3, np.float32)),
     TypeError, "running_mean must be a numpy.ndarray"),
    (dict(training=True, momentum=1.5), ValueError, "momentum"),
    (dict(training=True, momentum=-0.1), ValueError, "momentum"),
    (dict(training=True, momentum=None), TypeError, "momentum"),
    (dict(training=True, eps=0), ValueError, "eps"),
    (dict(training=False), ValueError, "training=False needs running_mean"),
    (dict(training=True, out=np.empty((4, 3), np.float32)), ValueError, "out must have the shape"),
]


@pytest.mark.parametrize("kwargs,exc,match", BN_CASES)
def test_batch_norm_bad_arguments_leave_running_stats_alone(kwargs, exc, match):
    kwargs = dict(kwargs)
    rm, rv = _running()
    if "running_mean" not in kwargs and "running_var" not in kwargs and kwargs.get("training") is not False:
        kwargs.update(running_mean=rm, running_var=rv)
    x = X.copy()
    with pytest.raises(exc, match=match):
        nb.batch_norm(x, **kwargs)
    np.testing.assert_array_equal(rm, _running()[0])
    np.testing.assert_array_equal(rv, _running()[1])
    np.testing.assert_array_equal(x, X)


def test_batch_norm_rank_below_two():
    with pytest.raises(ValueError, match="x must have at least 2 dims"):
        nb.batch_norm(np.ones(5, np.float32), training=True)


@pytest.mark.parametrize("shape,axis", [((1, 3), 1), ((1, 3, 1, 1), 1), ((1, 1, 3), -1)])
def test_one_value_per_channel_in_training(shape, axis):
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        nb.batch_norm(np.ones(shape, np.float32), rm, rv, training=True, channel_axis=axis)
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)
    # ... but eval with a single value is fine, as in torch.
    assert nb.batch_norm(np.ones(shape, np.float32), rm, rv, channel_axis=axis).shape == shape


def test_read_only_running_stats_in_training():
    rm, rv = _running()
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean must be writeable"):
        nb.batch_norm(X, rm, rv, training=True)
    np.testing.assert_array_equal(rv, _running()[1])


def test_out_partial_overlap_and_read_only():
    buf = np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match="out overlaps x"):
        nb.layer_norm(buf[:4], 5, out=buf[1:])
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    with pytest.raises(ValueError, match="out overlaps x"):
        nb.batch_norm(buf[:4], rm, rv, training=True, out=buf[1:])
    with pytest.raises(ValueError, match="out overlaps x"):
        nb.batch_norm(buf[:4], rm, rv, training=True, out=buf[::-1][:4])
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)
    ro = np.empty_like(X)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        nb.layer_norm(X, 5, out=ro)
