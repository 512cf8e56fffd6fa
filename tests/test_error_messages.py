"""Error messages that say what is wrong: a missing x, a 0-d x, array-likes of integers, a layer
moved to a GPU it cannot reach, and running statistics passed where a backward wants (mean, invstd)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import numbanorm as nb
from numbanorm import _backend

F = np.float32
X2 = np.arange(12, dtype=F).reshape(4, 3) / 7
X4 = np.arange(2 * 3 * 2 * 2, dtype=F).reshape(2, 3, 2, 2) / 5


def _bn_stats(x=X4):
    return nb.batch_norm(x, training=True, return_stats=True)[1:]


def _ln_stats(x=X2):
    return nb.layer_norm(x, 3, return_stats=True)[1:]


#: Each op called with x (and nothing else wrong): ``call(x)``.
OPS = {
    "layer_norm": lambda x: nb.layer_norm(x, 3),
    "rms_norm": lambda x: nb.rms_norm(x, 3),
    "add_layer_norm": lambda x: nb.add_layer_norm(x, X2, 3),
    "batch_norm": lambda x: nb.batch_norm(x, training=True),
    "group_norm": lambda x: nb.group_norm(x, 1),
    "instance_norm": lambda x: nb.instance_norm(x),
    "layer_norm_backward": lambda x: nb.layer_norm_backward(X2, x, 3, *_ln_stats()),
    "rms_norm_backward": lambda x: nb.rms_norm_backward(X2, x, 3, _ln_stats()[1]),
    "batch_norm_backward": lambda x: nb.batch_norm_backward(X4, x, *_bn_stats()),
    "group_norm_backward": lambda x: nb.group_norm_backward(X4, x, 1, *nb.group_norm(X4, 1, return_stats=True)[1:]),
    "moments": lambda x: nb.moments(x, 0),
    "standardize": lambda x: nb.standardize(x, 0),
    "fold_batch_norm": lambda x: nb.fold_batch_norm(x, None, np.zeros(3), np.ones(3), None, None),
    "LayerNorm": lambda x: nb.LayerNorm(3)(x),
    "BatchNorm": lambda x: nb.BatchNorm(3)(x),
}
_X_NAME = {"fold_batch_norm": "weight"}


@pytest.mark.parametrize("op", OPS)
def test_none_x_says_none(op):
    name = _X_NAME.get(op, "x")
    with pytest.raises(TypeError, match=rf"^{name} is None; expected an array") as info:
        OPS[op](None)
    assert "object" not in str(info.value)


def test_none_in_other_required_arguments():
    with pytest.raises(TypeError, match="^residual is None"):
        nb.add_layer_norm(X2, None, 3)
    with pytest.raises(TypeError, match="^grad_out is None"):
        nb.layer_norm_backward(None, X2, 3, *_ln_stats())
    mean, invstd = _bn_stats()
    with pytest.raises(TypeError, match="^invstd is None"):
        nb.batch_norm_backward(X4, X4, mean, None)
    with pytest.raises(TypeError, match="^mean is None"):
        nb.batch_norm_backward(X4, X4, None, invstd)


def test_object_array_likes_name_their_type():
    with pytest.raises(TypeError, match=r"x must be an array of numbers, got dict"):
        nb.layer_norm({"a": 1.0}, 1)


# ---- 0-d x -------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("zero_d", [np.array(1.5, F), np.float32(1.5), 1.5], ids=["ndarray", "numpy-scalar", "float"])
def test_zero_d_x_has_its_own_message(op, zero_d):
    with pytest.raises(ValueError, match=r"0-d array \(a scalar\)") as info:
        OPS[op](zero_d)
    assert "normalized_shape" not in str(info.value)


def test_zero_d_messages_keep_the_dims_they_need():
    with pytest.raises(ValueError, match=r"^x must have at least 1 dim \(the normalized dims\), got a 0-d array"):
        nb.layer_norm(np.array(2.0), 1)
    with pytest.raises(ValueError, match=r"^x must have at least 2 dims \(N, C, \.\.\.\), got a 0-d array"):
        nb.batch_norm(np.array(2.0), training=True)
    with pytest.raises(ValueError, match=r"^x must have at least 2 dims \(N, C, \.\.\.\) for group_norm, got a 0-d"):
        nb.group_norm(np.array(2.0), 1)
    # 1-D keeps the message it had
    with pytest.raises(ValueError, match=r"x must have at least 2 dims \(N, C, \.\.\.\), got shape \(3,\)"):
        nb.batch_norm(np.ones(3), training=True)


def test_moments_of_a_scalar_is_one_value():
    """``moments`` reduces over all axes by default, as ``np.mean``: a 0-d x is one value."""
    m = nb.moments(np.array(2.0))
    assert m.shape == () and float(m.count) == 1.0 and float(m.mean) == 2.0
    with pytest.raises(ValueError, match=r"0-d array \(a scalar\)"):
        nb.moments(np.array(2.0), 0)
    with pytest.raises(ValueError, match=r"0-d array \(a scalar\)"):
        nb.moments(np.array(2.0), channel_axis=0)


# ---- array-likes of integers -----------------------------------------------------------------
INT_LIST = [[1, 2, 3], [4, 6, 9]]
FLOAT_LIST = [[1.0, 2.0, 3.0], [4.0, 6.0, 9.0]]
INT_IMAGE = np.arange(2 * 3 * 4).reshape(2, 3, 4).tolist()
LIST_OPS = {
    "layer_norm": lambda v: nb.layer_norm(v, 3),
    "rms_norm": lambda v: nb.rms_norm(v, 3),
    "add_layer_norm": lambda v: nb.add_layer_norm(v, v, 3)[0],
    "batch_norm": lambda v: nb.batch_norm(v, training=True),
    "group_norm": lambda v: nb.group_norm(v, 1),
    "instance_norm": lambda v: nb.instance_norm(v),
    "moments": lambda v: nb.moments(v, 0).mean,
    "standardize": lambda v: nb.standardize(v, 0),
    "fold_batch_norm": lambda v: nb.fold_batch_norm(v, None, [0, 1], [1, 4], [2, 2], [0, 1])[0],
    "layer_norm_weight": lambda v: nb.layer_norm(np.asarray(FLOAT_LIST), 3, v[0], v[1]),
}


@pytest.mark.parametrize("op", LIST_OPS)
def test_lists_of_ints_convert_as_lists_of_floats(op):
    """A list of ints is what the same list written with floats is (NumPy's float64 for np.mean)."""
    ints, floats = (INT_IMAGE, np.asarray(INT_IMAGE, np.float64).tolist()) if op in (
        "group_norm", "instance_norm") else (INT_LIST, FLOAT_LIST)
    got = LIST_OPS[op](ints)
    want = LIST_OPS[op](floats)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_backward_takes_lists_of_ints_too():
    x = np.asarray(FLOAT_LIST)
    mean, rstd = nb.layer_norm(x, 3, return_stats=True)[1:]
    got = nb.layer_norm_backward(INT_LIST, INT_LIST, 3, mean, rstd, [1, 1, 1])
    want = nb.layer_norm_backward(x, x, 3, mean, rstd, np.ones(3))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_ndarrays_still_raise(dtype):
    x = np.asarray(INT_LIST, dtype)
    with pytest.raises(TypeError, match=r"x must have dtype float16, bfloat16, float32 or float64, got"):
        nb.layer_norm(x, 3)
    with pytest.raises(TypeError, match="weight must have dtype"):
        nb.layer_norm(np.asarray(FLOAT_LIST), 3, np.ones(3, dtype))


def test_lists_of_bools_are_refused():
    with pytest.raises(TypeError, match="bool"):
        nb.layer_norm([[True, False]], 2)


def test_a_list_of_ints_for_a_float32_x_is_refused_like_a_list_of_floats():
    x = np.asarray(FLOAT_LIST, F)
    for w in ([1, 1, 1], [1.0, 1.0, 1.0]):
        with pytest.raises(TypeError, match=r"weight must have dtype float32 \(the dtype of x\), got float64"):
            nb.layer_norm(x, 3, w)


# ---- a layer moved to the GPU ----------------------------------------------------------------
def test_layer_to_cuda_without_numba_cuda_does_not_mention_a_cuda_array(monkeypatch):
    monkeypatch.setattr(_backend, "_DEVICE", [])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    for layer in (nb.LayerNorm(8), nb.BatchNorm(3), nb.RMSNorm(4), nb.GroupNorm(1, 2)):
        with pytest.raises(TypeError, match=r"numba-cuda is not installed") as info:
            layer.to("cuda")
        message = str(info.value)
        assert "CUDA array" not in message and f"{type(layer).__name__}.to('cuda')" in message
        assert "numbanorm[cuda]" in message
        assert layer.device == "cpu" and type(layer.weight) is np.ndarray
    # a CUDA array arriving at a function still says so
    class FakeCudaArray:
        __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match="got a CUDA array"):
        nb.layer_norm(FakeCudaArray(), 3)


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="numba-cuda is not installed")
def test_layer_to_cuda_without_a_gpu_does_not_mention_a_cuda_array(monkeypatch):
    import numbanorm.cuda as nbcuda

    monkeypatch.setattr(_backend, "_DEVICE", [])
    monkeypatch.setattr(nbcuda, "_CHECKED", [])
    monkeypatch.setattr(nbcuda.cuda, "is_available", lambda: False)
    layer = nb.LayerNorm(8)
    with pytest.raises(RuntimeError, match="finds no usable GPU") as info:
        layer.to("cuda:0")
    assert "CUDA array" not in str(info.value) and "LayerNorm.to('cuda:0')" in str(info.value)
    assert layer.device == "cpu"


# ---- batch_norm_backward given running statistics ----------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (64, 3, 32, 32)], ids=["tiny", "general"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_refuses_non_positive_invstd(shape, training):
    x = np.random.default_rng(0).standard_normal(shape).astype(F)
    g = np.ones_like(x)
    w = np.ones(3, F)
    running_mean, running_var = np.zeros(3, F), np.ones(3, F)
    for invstd in (running_mean, np.array([1.0, -1.0, 1.0], F)):
        with pytest.raises(ValueError, match=r"invstd must be positive \(1 / sqrt\(var \+ eps\)"):
            nb.batch_norm_backward(g, x, running_var, invstd, w, training)
        out = np.full_like(x, 7.0)
        with pytest.raises(ValueError, match="invstd must be positive"):
            nb.batch_norm_backward(g, x, running_var, invstd, w, training, out=out)
        assert (out == 7.0).all()  # refused before anything is written
    # NaN statistics (a forward over NaN data) are not refused: NaN propagates, as in torch
    nan = np.array([np.nan, 1.0, 1.0], F)
    gx, _, _ = nb.batch_norm_backward(g, x, nan, nan, w, training)
    assert np.isnan(gx[:, 0]).all() and np.isfinite(gx[:, 1:]).all()


def test_batch_norm_backward_invstd_check_on_the_noncontiguous_path():
    x = np.random.default_rng(1).standard_normal((3, 4, 2)).astype(F).transpose(1, 0, 2)  # (4, 3, 2), C=3
    with pytest.raises(ValueError, match="invstd must be positive"):
        nb.batch_norm_backward(np.ones_like(x), x, np.zeros(3, F), np.zeros(3, F))


def test_the_tiny_kernel_raises_the_fronts_message():
    import numbanorm.backward as front
    from numbanorm.cpu import backward as kernels

    assert kernels._INVSTD_MESSAGE == front.INVSTD_MESSAGE
