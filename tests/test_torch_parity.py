"""Parity with torch.nn.functional in float32 (skipped when torch is not installed)."""

from __future__ import annotations

import numpy as np
import pytest
from reference import rel_l2

import numbanorm as nb

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = 2e-6


@pytest.mark.parametrize("shape,norm_shape", [((4, 9, 768), (768,)), ((3, 5, 7, 11), (5, 7, 11)), ((6, 1), (1,))])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_outputs_and_stats(rng, shape, norm_shape, affine):
    x = rng.standard_normal(shape).astype(np.float32) * 2 + 1
    w = rng.standard_normal(norm_shape).astype(np.float32) if affine else None
    b = rng.standard_normal(norm_shape).astype(np.float32) if affine else None
    y, mean, rstd = nb.layer_norm(x, norm_shape, w, b, return_stats=True)
    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    ty, tmean, trstd = torch.native_layer_norm(t(x), norm_shape, t(w), t(b), 1e-5)
    batch = shape[: len(shape) - len(norm_shape)]
    assert rel_l2(y, ty.numpy()) <= TOL
    assert rel_l2(mean, tmean.numpy().reshape(batch)) <= TOL
    assert rel_l2(rstd, trstd.numpy().reshape(batch)) <= TOL


@pytest.mark.parametrize("shape,axis", [((8, 3, 13, 11), 1), ((8, 13, 11, 3), -1), ((16, 7), 1), ((4, 5, 9), 1),
                                        ((2, 4, 3, 5, 6), 1)])
@pytest.mark.parametrize("momentum", [0.1, 0.7])
def test_batch_norm_five_training_steps_then_eval(rng, shape, axis, momentum):
    C = shape[axis]
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    trm, trv = torch.zeros(C), torch.ones(C)
    for step in range(5):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(np.float32)
        tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, axis, 1)))
        y, mean, invstd = nb.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, channel_axis=axis,
                                        return_stats=True)
        ty = F.batch_norm(tx, trm, trv, torch.from_numpy(w), torch.from_numpy(b), True, momentum, 1e-5)
        assert rel_l2(np.moveaxis(y, axis, 1), ty.numpy()) <= TOL
        tvar = tx.var(dim=[d for d in range(tx.ndim) if d != 1], unbiased=False)
        assert rel_l2(invstd, (1 / torch.sqrt(tvar + 1e-5)).numpy()) <= TOL
        assert rel_l2(mean, tx.mean(dim=[d for d in range(tx.ndim) if d != 1]).numpy()) <= TOL
        assert rel_l2(rm, trm.numpy()) <= TOL and rel_l2(rv, trv.numpy()) <= TOL
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, axis, 1)))
    y = nb.batch_norm(x, rm, rv, w, b, training=False, channel_axis=axis)
    ty = F.batch_norm(tx, trm, trv, torch.from_numpy(w), torch.from_numpy(b), False)
    assert rel_l2(np.moveaxis(y, axis, 1), ty.numpy()) <= TOL


def test_torch_cpu_tensors_are_accepted_as_array_likes(rng):
    x = torch.randn(4, 6, 10)
    y = nb.layer_norm(x, 10)
    assert isinstance(y, np.ndarray)
    assert rel_l2(y, F.layer_norm(x, (10,)).numpy()) <= TOL
