"""Hypothesis: random shapes, layouts, dtypes and offsets against the float64 reference.

Each property runs a few examples in the default loop and many more as a ``slow`` test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import batch_norm_ref, layer_norm_ref, rel_l2

import numbanorm as nb

shapes = st.lists(st.integers(1, 9), min_size=2, max_size=5).map(tuple)
dtypes = st.sampled_from([np.float32, np.float64])
offsets = st.sampled_from([0.0, 1.0, -100.0, 1e4])
BOUND = {np.float32: 1e-5, np.float64: 1e-11}
FEW, MANY = 25, 300
_given = given(shape=shapes, dtype=dtypes, offset=offsets, data=st.data())


def _layer_norm_property(shape, dtype, offset, data):
    k = data.draw(st.integers(1, len(shape)), label="k")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    norm_shape = shape[len(shape) - k:]
    w = rng.standard_normal(norm_shape).astype(dtype) if data.draw(st.booleans(), label="affine") else None
    y = nb.layer_norm(x, norm_shape, w)
    ry = layer_norm_ref(x, norm_shape, w)[0]
    if np.prod(norm_shape) == 1:  # a single element normalizes to exactly 0 (or bias)
        assert np.all(y == 0)
    else:
        assert rel_l2(y, ry) <= BOUND[dtype]


def _batch_norm_property(shape, dtype, offset, data):
    axis = data.draw(st.sampled_from([1, -1]), label="channel_axis")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    training = data.draw(st.booleans(), label="training") and np.prod(shape) // shape[axis] > 1
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    C = shape[axis]
    rm = (offset + rng.standard_normal(C)).astype(dtype)
    rv = (rng.random(C) + 0.5).astype(dtype)
    ry, _, _, new_rm, new_rv = batch_norm_ref(x, rm, rv, training=training, channel_axis=axis)
    y = nb.batch_norm(x, rm, rv, training=training, channel_axis=axis)
    # Constant channels (e.g. many ones in shape) have a reference of exactly zero; compare
    # absolute error at the float's resolution there.
    assert rel_l2(y, ry) <= BOUND[dtype] or np.max(np.abs(y - ry)) <= 1e3 * np.finfo(dtype).eps
    if training:
        assert rel_l2(rm, new_rm) <= BOUND[dtype] and rel_l2(rv, new_rv) <= BOUND[dtype]


test_layer_norm_property = settings(max_examples=FEW, deadline=None)(_given(_layer_norm_property))
test_batch_norm_property = settings(max_examples=FEW, deadline=None)(_given(_batch_norm_property))
test_layer_norm_property_many = pytest.mark.slow(
    settings(max_examples=MANY, deadline=None)(_given(_layer_norm_property)))
test_batch_norm_property_many = pytest.mark.slow(
    settings(max_examples=MANY, deadline=None)(_given(_batch_norm_property)))
