"""RMSNorm / GroupNorm layers side by side with torch modules; state dicts; errors leave state alone."""

from __future__ import annotations

import numpy as np
import pytest
from layer_helpers import _assert_unchanged, _check, _snapshot, _train_side_by_side

import numbanorm as nb

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("norm_shape,shape,eps,affine", [((16,), (5, 7, 16), None, True),
                                                         ((3, 4), (6, 3, 4), 1e-3, True),
                                                         ((33,), (2, 33), None, False)])
def test_rms_norm_layer_trains_like_torch(rng, norm_shape, shape, eps, affine):
    layer = nb.RMSNorm(norm_shape, eps=eps, elementwise_affine=affine)
    tm = torch.nn.RMSNorm(norm_shape, eps=eps, elementwise_affine=affine)
    assert repr(layer) == repr(tm)
    assert layer.grad_bias is None and layer.bias is None
    _train_side_by_side(rng, layer, tm, shape, lambda a: torch.from_numpy(np.ascontiguousarray(a)), lambda t: t)


@pytest.mark.parametrize("groups,shape,axis,affine,bias", [(3, (4, 6, 5, 7), 1, True, True),
                                                           (2, (3, 5, 6, 4), -1, True, True),
                                                           (1, (6, 4), 1, False, False),
                                                           (4, (2, 8, 9), 1, True, False)])
def test_group_norm_layer_trains_like_torch(rng, groups, shape, axis, affine, bias):
    C = shape[axis]
    layer = nb.GroupNorm(groups, C, affine=affine, channel_axis=axis, bias=bias)
    tm = torch.nn.GroupNorm(groups, C, affine=affine, bias=bias)
    assert repr(layer) == (repr(tm) if axis == 1 else repr(tm)[:-1] + f", channel_axis={axis})")
    _train_side_by_side(rng, layer, tm, shape,
                        lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, axis, 1))),
                        lambda t: np.moveaxis(t.detach().numpy(), 1, axis))


def test_load_torch_state_dicts_then_savez_round_trip(rng, tmp_path):
    trm, tgn = torch.nn.RMSNorm((4, 6)), torch.nn.GroupNorm(2, 6)
    with torch.no_grad():
        for p in (*trm.parameters(), *tgn.parameters()):
            p.copy_(torch.randn(p.shape))
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    for layer, tm, fresh in ((nb.RMSNorm((4, 6)), trm, nb.RMSNorm((4, 6))),
                             (nb.GroupNorm(2, 6, channel_axis=-1), tgn, nb.GroupNorm(2, 6, channel_axis=-1))):
        result = layer.load_state_dict(tm.state_dict())  # torch tensors, via __array__
        assert result.missing_keys == [] and result.unexpected_keys == []
        xt = torch.from_numpy(x if isinstance(tm, torch.nn.RMSNorm) else np.ascontiguousarray(x.transpose(0, 2, 1)))
        want = tm(xt).detach().numpy()
        _check(layer(x), want if isinstance(tm, torch.nn.RMSNorm) else want.transpose(0, 2, 1), 1e-6)
        path = tmp_path / f"{type(layer).__name__}.npz"
        np.savez(path, **layer.state_dict())
        with np.load(path) as saved:
            fresh.load_state_dict(saved)
        np.testing.assert_array_equal(fresh(x), layer(x))


def test_family_layer_errors_change_no_state(rng):
    gn = nb.GroupNorm(2, 4)
    gn.load_state_dict({"weight": rng.standard_normal(4), "bias": rng.standard_normal(4)})
    before = _snapshot(gn)
    bad = [
        (rng.standard_normal((3, 6, 5)).astype(np.float32), ValueError, "expected num_channels=4"),
        (rng.standard_normal((3, 4, 5)), TypeError, "layer's dtype float32"),
        (np.ones(4, np.float32), ValueError, "at least 2 dims"),
    ]
    for x, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            gn(x)
        _assert_unchanged(gn, before)
    with pytest.raises(ValueError, match=r"state_dict\['weight'\] must have shape \(4,\)"):
        gn.load_state_dict({"weight": np.ones(3), "bias": np.ones(4)})
    _assert_unchanged(gn, before)
    with pytest.raises(ValueError, match=r"unexpected keys \['bias'\]"):
        nb.RMSNorm(4).load_state_dict({"weight": np.ones(4), "bias": np.ones(4)})
    for layer in (nb.RMSNorm(3), nb.GroupNorm(1, 3)):
        with pytest.raises(RuntimeError, match="forward call first"):
            layer.backward(np.ones((2, 3), np.float32))
    rms = nb.RMSNorm(5)
    rms(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="grad_out must have the shape"):
        rms.backward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="divisible by num_groups"):
        nb.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        nb.GroupNorm(0, 6)
    with pytest.raises(ValueError, match="eps"):
        nb.RMSNorm(3, eps=-1.0)
    with pytest.raises(TypeError, match="normalized_shape"):
        nb.RMSNorm("3")
    with pytest.raises(TypeError, match="channel_axis must be an int"):
        nb.GroupNorm(1, 3, channel_axis=1.0)
