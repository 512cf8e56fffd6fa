"""BatchNorm / LayerNorm layers side by side with torch modules; state dicts; errors leave state alone."""

from __future__ import annotations

import numpy as np
import pytest
from layer_helpers import _assert_unchanged, _check, _snapshot, _step_side_by_side, _train_side_by_side

import numbanorm as nb

torch = pytest.importorskip("torch")


def _bn_state(layer):
    return {k: np.array(v) for k, v in layer.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Side by side: 10 training steps then eval
# --------------------------------------------------------------------------------------------
_BN_LAYOUTS = [((6, 4, 5, 7), 1, "BatchNorm2d"), ((9, 5), 1, "BatchNorm1d"), ((4, 5, 6, 3), -1, "BatchNorm2d"),
               ((2, 3, 4, 5, 3), 1, "BatchNorm3d")]


# Every momentum (a scalar of the same kernels: 0 and 1 are its edges, None the cumulative
# average) on NCHW, and every layout with the default momentum.
@pytest.mark.parametrize("momentum,shape,axis,torch_cls", [(m, *_BN_LAYOUTS[0]) for m in (0.1, 0.0, 1.0, None)]
                         + [(0.1, *layout) for layout in _BN_LAYOUTS[1:]])
def test_batch_norm_layer_trains_like_torch(rng, momentum, shape, axis, torch_cls):
    C = shape[axis]
    layer = nb.BatchNorm(C, momentum=momentum, channel_axis=axis)
    tm = getattr(torch.nn, torch_cls)(C, momentum=momentum)
    assert layer.training and tm.training
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, axis, 1)))  # noqa: E731
    from_t = lambda t: np.moveaxis(t.detach().numpy(), 1, axis)  # noqa: E731
    for step in range(10):
        x = (rng.standard_normal(shape) * (1 + step) + step).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        _step_side_by_side(layer, tm, x, g, to_t, from_t)  # with plain SGD on both sides
        _check(layer.running_mean, tm.running_mean, 1e-6)
        _check(layer.running_var, tm.running_var, 1e-6)
        assert int(layer.num_batches_tracked) == int(tm.num_batches_tracked) == step + 1
    layer.eval()
    tm.eval()
    assert not layer.training
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    _step_side_by_side(layer, tm, x, g, to_t, from_t, sgd=False)
    assert int(layer.num_batches_tracked) == int(tm.num_batches_tracked) == 10  # eval does not count
    _check(layer.running_mean, tm.running_mean, 1e-6)


@pytest.mark.parametrize("affine,track,bias", [(False, True, True), (True, False, True), (False, False, True),
                                               (True, True, False)])
def test_batch_norm_layer_variants_match_torch(rng, affine, track, bias):
    layer = nb.BatchNorm(3, affine=affine, track_running_stats=track, bias=bias)
    tm = torch.nn.BatchNorm2d(3, affine=affine, track_running_stats=track, bias=bias)
    assert list(layer.state_dict()) == list(tm.state_dict())
    assert repr(layer) == repr(tm).replace("BatchNorm2d", "BatchNorm")
    for mode in ["train", "train", "eval", "train", "eval"]:
        getattr(layer, mode)()
        getattr(tm, mode)()
        x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32) * 2 + 1
        g = rng.standard_normal(x.shape).astype(np.float32)
        tx = torch.from_numpy(x).requires_grad_(True)
        ty = tm(tx)
        _check(layer(x), ty)  # track=False: batch statistics in eval too
        ty.backward(torch.from_numpy(g))
        _check(layer.backward(g), tx.grad)
        for name in ("weight", "bias"):
            tp = getattr(tm, name)
            if tp is None:
                assert getattr(layer, name) is None and getattr(layer, "grad_" + name) is None
            else:
                _check(getattr(layer, "grad_" + name), tp.grad)
                tp.grad = None
        for name, value in tm.state_dict().items():
            _check(layer.state_dict()[name].astype(np.float64), value.double().numpy(), 1e-6)


@pytest.mark.parametrize("norm_shape,shape", [((16,), (5, 7, 16)), ((3, 4), (6, 3, 4)), ((33,), (2, 33))])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_layer_norm_layer_trains_like_torch(rng, norm_shape, shape, affine, bias):
    layer = nb.LayerNorm(norm_shape, elementwise_affine=affine, bias=bias)
    tm = torch.nn.LayerNorm(norm_shape, elementwise_affine=affine, bias=bias)
    assert repr(layer) == repr(tm)
    _train_side_by_side(rng, layer, tm, shape, torch.from_numpy, lambda t: t, steps=10)


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------
def _trained_torch_bn(rng, C=5):
    tm = torch.nn.BatchNorm2d(C, momentum=0.3)
    with torch.no_grad():
        tm.weight.copy_(torch.from_numpy(rng.standard_normal(C).astype(np.float32)))
        tm.bias.copy_(torch.from_numpy(rng.standard_normal(C).astype(np.float32)))
        for _ in range(3):
            tm(torch.from_numpy(rng.standard_normal((4, C, 6, 7)).astype(np.float32) * 3 + 2))
    return tm.eval()


def test_load_torch_batch_norm_state_dict_then_savez_round_trip(rng, tmp_path):
    tm = _trained_torch_bn(rng)
    layer = nb.BatchNorm(5)
    result = layer.load_state_dict(tm.state_dict())  # torch tensors, via __array__
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert int(layer.num_batches_tracked) == 3
    layer.eval()
    x = rng.standard_normal((3, 5, 8, 9)).astype(np.float32) * 3 + 2
    expected = tm(torch.from_numpy(x)).detach().numpy()
    _check(layer(x), expected, 1e-6)
    path = tmp_path / "bn.npz"
    np.savez(path, **layer.state_dict())
    fresh = nb.BatchNorm(5).eval()
    with np.load(path) as saved:
        fresh.load_state_dict(saved)
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[name], value)
        assert fresh.state_dict()[name].dtype == value.dtype
    np.testing.assert_array_equal(fresh(x), layer(x))


def test_load_torch_layer_norm_state_dict_then_savez_round_trip(rng, tmp_path):
    tm = torch.nn.LayerNorm((4, 6))
    with torch.no_grad():
        tm.weight.copy_(torch.randn(4, 6))
        tm.bias.copy_(torch.randn(4, 6))
    layer = nb.LayerNorm((4, 6))
    layer.load_state_dict(tm.state_dict())
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    _check(layer(x), tm(torch.from_numpy(x)), 1e-6)
    path = tmp_path / "ln.npz"
    np.savez(path, **layer.state_dict())
    fresh = nb.LayerNorm((4, 6))
    with np.load(path) as saved:
        fresh.load_state_dict(saved)
    np.testing.assert_array_equal(fresh(x), layer(x))


def test_state_dict_is_a_copy_and_float64_checkpoints_are_cast(rng):
    layer = nb.BatchNorm(3)
    sd = layer.state_dict()
    sd["weight"][:] = 7
    assert (layer.weight == 1).all()
    weight_ref = layer.weight
    values = {k: rng.standard_normal(3) for k in ("weight", "bias", "running_mean", "running_var")}
    layer.load_state_dict({**values, "num_batches_tracked": np.int64(4)})
    assert layer.weight is weight_ref  # loaded in place, like torch
    assert layer.weight.dtype == np.float32
    np.testing.assert_allclose(layer.running_var, values["running_var"].astype(np.float32))
    assert int(layer.num_batches_tracked) == 4


def test_old_checkpoint_without_num_batches_tracked_and_non_strict(rng):
    tm = _trained_torch_bn(rng, 3)
    sd = dict(tm.state_dict())
    del sd["num_batches_tracked"]
    layer = nb.BatchNorm(3)
    assert layer.load_state_dict(sd).missing_keys == []  # as torch: tolerated, count kept
    assert int(layer.num_batches_tracked) == 0
    _check(layer.running_mean, tm.running_mean, 1e-7)
    other = nb.BatchNorm(3)
    result = other.load_state_dict({"weight": np.full(3, 2.0), "extra": np.zeros(1)}, strict=False)
    assert result.missing_keys == ["bias", "running_mean", "running_var"]
    assert result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(other.weight, 2.0)
    np.testing.assert_array_equal(other.bias, 0.0)


# --------------------------------------------------------------------------------------------
# Errors leave the state alone
# --------------------------------------------------------------------------------------------
def test_backward_without_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="forward call first"):
        nb.BatchNorm(3).backward(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="forward call first"):
        nb.LayerNorm(3).backward(np.ones((2, 3), np.float32))


def test_failing_forward_changes_no_state(rng):
    layer = nb.BatchNorm(3, momentum=None)
    layer(rng.standard_normal((4, 3, 5)).astype(np.float32))
    before = _snapshot(layer)
    saved = layer._saved
    bad_inputs = [
        (rng.standard_normal((4, 4, 5)).astype(np.float32), ValueError, "expected num_features=3"),
        (rng.standard_normal((4, 3, 5)), TypeError, "layer's dtype float32"),
        (np.ones((1, 3), np.float32), ValueError, "more than 1 value per channel"),
        (np.ones(3, np.float32), ValueError, "at least 2 dims"),
        (np.ones((4, 3, 5), np.int64), TypeError, "float32 or float64"),
    ]
    for x, exc, msg in bad_inputs:
        with pytest.raises(exc, match=msg):
            layer(x)
        _assert_unchanged(layer, before)
        assert layer._saved is saved
    with pytest.raises(ValueError, match="grad_out must have the shape"):
        layer.backward(np.ones((4, 3, 6), np.float32))
    with pytest.raises(TypeError, match="x must have the layer's dtype"):
        nb.LayerNorm(4)(np.ones((2, 4)))


def test_failing_load_state_dict_changes_nothing(rng):
    layer = nb.BatchNorm(3)
    layer(rng.standard_normal((4, 3, 5)).astype(np.float32))
    good = {k: v + 1 for k, v in layer.state_dict().items()}
    before = _snapshot(layer)
    cases = [
        ({k: v for k, v in good.items() if k != "bias"}, ValueError, r"missing keys \['bias'\]"),
        ({**good, "extra": np.zeros(1)}, ValueError, r"unexpected keys \['extra'\]"),
        ({**good, "running_var": np.ones(4)}, ValueError, r"state_dict\['running_var'\] must have shape \(3,\)"),
        ({**good, "running_var": np.ones(3, np.int32)}, TypeError, "must be floating point"),
        ({**good, "num_batches_tracked": np.array(2.0)}, TypeError, "must be an integer"),
        ({**good, "weight": np.ones((3, 1))}, ValueError, "weight"),
        ({**good, "running_var": [1.0, "a", 2.0]}, TypeError, "floating point"),
        ([("weight", 1)], TypeError, "mapping"),
    ]
    for sd, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            layer.load_state_dict(sd)
        _assert_unchanged(layer, before)
    with pytest.raises(ValueError, match="shape"):
        layer.load_state_dict({"running_var": np.ones(2)}, strict=False)  # shapes checked even non-strict
    _assert_unchanged(layer, before)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_features"):
        nb.BatchNorm(0)
    with pytest.raises(ValueError, match="momentum"):
        nb.BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        nb.LayerNorm(3, eps=0.0)
    with pytest.raises(TypeError, match="dtype"):
        nb.LayerNorm(3, dtype=np.int32)
    with pytest.raises(TypeError, match="normalized_shape"):
        nb.LayerNorm("3")
