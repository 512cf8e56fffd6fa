"""Bad input to the norm family raises ValueError/TypeError naming the argument; nothing is mutated."""

from __future__ import annotations

import numpy as np
import pytest

import numbanorm as nb

X = np.random.default_rng(0).standard_normal((4, 6, 5)).astype(np.float32)


@pytest.mark.parametrize("call", [
    lambda x: nb.rms_norm(x, 5),
    lambda x: nb.group_norm(x, 2),
    lambda x: nb.instance_norm(x),
    lambda x: nb.add_layer_norm(x, x, 5),
])
@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64])
def test_non_float_inputs(call, dtype):
    with pytest.raises(TypeError, match="x must have dtype"):
        call(np.ones((4, 6, 5), dtype))


RMS_CASES = [
    (dict(normalized_shape=4), ValueError, "normalized_shape"),
    (dict(normalized_shape=5, weight=np.ones(4, np.float32)), ValueError, "weight must have shape"),
    (dict(normalized_shape=5, weight=np.ones(5, np.float64)), TypeError, "weight must have dtype"),
    (dict(normalized_shape=5, eps=0.0), ValueError, "eps"),
    (dict(normalized_shape=5, eps="tiny"), TypeError, "eps"),
    (dict(normalized_shape=5, out=np.empty((4, 6, 5), np.float64)), TypeError, "out must have the dtype"),
]


@pytest.mark.parametrize("kwargs,exc,match", RMS_CASES)
def test_rms_norm_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nb.rms_norm(X, **kwargs)


GN_CASES = [
    (dict(num_groups=4), ValueError, "num_groups must be a positive divisor of the number of channels 6"),
    (dict(num_groups=0), ValueError, "num_groups"),
    (dict(num_groups=2.0), TypeError, "num_groups must be an int"),
    (dict(num_groups=2, channel_axis=0), ValueError, "channel_axis must not be 0"),
    (dict(num_groups=2, channel_axis=3), ValueError, "channel_axis"),
    (dict(num_groups=2, weight=np.ones(5, np.float32)), ValueError, r"weight must have shape \(6,\)"),
    (dict(num_groups=2, bias=np.ones(6, np.float64)), TypeError, "bias must have dtype"),
    (dict(num_groups=2, eps=-1.0), ValueError, "eps"),
    (dict(num_groups=2, out=np.empty((4, 6), np.float32)), ValueError, "out must have the shape"),
]


@pytest.mark.parametrize("kwargs,exc,match", GN_CASES)
def test_group_norm_bad_arguments(kwargs, exc, match):
    x = X.copy()
    with pytest.raises(exc, match=match):
        nb.group_norm(x, **kwargs)
    np.testing.assert_array_equal(x, X)


def test_group_norm_rank_below_two():
    with pytest.raises(ValueError, match="x must have at least 2 dims"):
        nb.group_norm(np.ones(6, np.float32), 2)


IN_CASES = [
    (dict(running_mean=np.zeros(6, np.float32)), ValueError, "running_mean and running_var"),
    (dict(running_mean=np.zeros(5, np.float32), running_var=np.ones(5, np.float32)), ValueError,
     "running_mean must have shape"),
    (dict(running_mean=[0.0] * 6, running_var=np.ones(6, np.float32)), TypeError,
     "running_mean must be a numpy.ndarray"),
    (dict(momentum=2.0), ValueError, "momentum"),
    (dict(weight=np.ones(3, np.float32)), ValueError, "weight must have shape"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(use_input_stats=False, running_mean=None, running_var=None), ValueError,
     "use_input_stats=False needs running_mean"),
    (dict(channel_axis=0), ValueError, "channel_axis must not be 0"),
    (dict(out=np.empty((4, 6, 5), np.float64)), TypeError, "out must have the dtype"),
]


@pytest.mark.parametrize("kwargs,exc,match", IN_CASES)
def test_instance_norm_bad_arguments_leave_running_stats_alone(kwargs, exc, match):
    kwargs = dict(kwargs)
    rm, rv = np.arange(6, dtype=np.float32), np.arange(1, 7, dtype=np.float32)
    if "running_mean" not in kwargs:
        kwargs.update(running_mean=rm, running_var=rv)
    with pytest.raises(exc, match=match):
        nb.instance_norm(X, **kwargs)
    np.testing.assert_array_equal(rm, np.arange(6))
    np.testing.assert_array_equal(rv, np.arange(1, 7))


def test_instance_norm_one_spatial_element():
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        nb.instance_norm(np.ones((2, 3, 1), np.float32), rm, rv)
    np.testing.assert_array_equal(rm, 0.0)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean must be writeable"):
        nb.instance_norm(X[:, :3], rm, rv)
    np.testing.assert_array_equal(rv, 1.0)


def test_add_layer_norm_bad_arguments():
    r = X.copy()
    with pytest.raises(ValueError, match="residual must have the shape and dtype of x"):
        nb.add_layer_norm(X, r[:, :, :4], 5)
    with pytest.raises(ValueError, match="residual must have the shape and dtype of x"):
        nb.add_layer_norm(X, r.astype(np.float64), 5)
    with pytest.raises(TypeError, match="residual must have dtype"):
        nb.add_layer_norm(X, r.astype(np.int64), 5)
    with pytest.raises(ValueError, match="normalized_shape"):
        nb.add_layer_norm(X, r, 6)
    buf = np.zeros((5, 6, 5), np.float32)
    with pytest.raises(ValueError, match="residual_out overlaps residual"):
        nb.add_layer_norm(X, buf[:4], 5, residual_out=buf[1:])
    with pytest.raises(ValueError, match="out overlaps x"):
        nb.add_layer_norm(buf[:4], r, 5, out=buf[1:])
    out = np.empty_like(X)
    with pytest.raises(ValueError, match="out and residual_out must not overlap"):
        nb.add_layer_norm(X, r, 5, out=out, residual_out=out)
    np.testing.assert_array_equal(r, X)


def test_fold_batch_norm_bad_arguments():
    w, v = np.ones((4, 3), np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"running_var must have shape \(4,\)"):
        nb.fold_batch_norm(w, None, v, np.ones(3, np.float32), v, v)
    with pytest.raises(TypeError, match="running_mean must be an array"):
        nb.fold_batch_norm(w, None, None, v, v, v)
    with pytest.raises(ValueError, match="out_axis"):
        nb.fold_batch_norm(w, None, v, v, v, v, out_axis=2)
    with pytest.raises(TypeError, match="weight must have dtype"):
        nb.fold_batch_norm(w.astype(np.int32), None, v, v, v, v)
    with pytest.raises(ValueError, match="eps"):
        nb.fold_batch_norm(w, None, v, v, v, v, eps=0.0)


class _FakeDeviceArray:
    __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}


@pytest.mark.parametrize("call", [
    lambda x: nb.rms_norm(x, 3),
    lambda x: nb.group_norm(x, 1),
    lambda x: nb.instance_norm(x),
    lambda x: nb.add_layer_norm(x, x, 3),
])
def test_device_arrays_go_to_the_cuda_backend(call, monkeypatch):
    """Device arrays are dispatched before any host check; a backend without the op says so."""
    from numbanorm import _backend

    monkeypatch.setattr(_backend, "_DEVICE", [object()])
    with pytest.raises(TypeError, match="has no CUDA implementation yet"):
        call(_FakeDeviceArray())
