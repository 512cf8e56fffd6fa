"""Helpers of the layer tests (``test_layers.py``, ``test_family_layers.py``): numbanorm layers
side by side with torch modules, and state snapshots for the "errors leave state alone" tests."""

from __future__ import annotations

import numpy as np
import pytest
from reference import rel_l2

torch = pytest.importorskip("torch")

TOL = 1e-5  # float32, after up to 10 SGD steps
LR = 0.1


def _check(a, ref, tol=TOL):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    assert a.shape == ref.shape
    assert rel_l2(a, ref) <= tol


def _step_side_by_side(layer, tm, x, g, to_t, from_t, sgd=True):
    """Forward and backward of ``x``, ``g`` on both (``to_t``/``from_t`` map arrays to torch's
    layout and back), outputs and grads compared; then, with ``sgd``, a plain SGD step on both."""
    tx = to_t(x).requires_grad_(True)
    ty = tm(tx)
    _check(layer(x), from_t(ty))
    ty.backward(to_t(g))
    _check(layer.backward(g), from_t(tx.grad))
    for name in ("weight", "bias"):
        if getattr(tm, name, None) is None:
            assert getattr(layer, "grad_" + name) is None
            continue
        _check(getattr(layer, "grad_" + name), getattr(tm, name).grad)
        if sgd:
            getattr(layer, name)[...] -= LR * getattr(layer, "grad_" + name)
            with torch.no_grad():
                getattr(tm, name).sub_(LR * getattr(tm, name).grad)
                getattr(tm, name).grad = None


def _train_side_by_side(rng, layer, tm, shape, to_t, from_t, steps=4):
    """A few steps of forward, backward and plain SGD on both; every output and grad compared."""
    params = [n for n in ("weight", "bias") if getattr(tm, n, None) is not None]
    assert list(layer.state_dict()) == params == list(tm.state_dict())
    for step in range(steps):
        if step == steps // 2:
            layer.eval()
            tm.eval()  # no effect on either module, on either side
        x = (rng.standard_normal(shape) * (1 + step) + step).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        _step_side_by_side(layer, tm, x, g, to_t, from_t)
    for name in params:
        _check(getattr(layer, name), getattr(tm, name))


def _snapshot(layer):
    return {k: v.copy() for k, v in layer.state_dict().items()}


def _assert_unchanged(layer, before):
    after = layer.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)
        assert after[k].dtype == v.dtype
