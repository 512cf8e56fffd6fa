"""Mergeable moments: against the float64 two-pass reference, merge over random partitions
(Hypothesis), batch_norm(stats=...), standardize, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import batch_norm_ref, rel_l2, two_pass

import numbanorm as nb

EPS64 = np.finfo(np.float64).eps


def ref_moments(x, axes):
    """count, mean, m2 from the independent long-double two-pass reference."""
    x64 = np.asarray(x, np.float64)
    mean, var = two_pass(x64, axes)
    count = np.prod([x64.shape[a] for a in axes]) if axes else 1
    return count, np.squeeze(mean, axes), np.squeeze(var, axes) * count


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1, 2, -1, (0, 1), (0, 2), (1, 2), None])
@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_moments_match_reference(rng, dtype, axis, order):
    base = (1e4 + rng.standard_normal((7, 6, 11))).astype(dtype)
    x = {"C": base, "F": np.asfortranarray(base), "strided": base[:, ::2, 1:]}[order]
    axes = tuple(range(3)) if axis is None else tuple(np.atleast_1d(axis) % 3)
    count, mean, m2 = ref_moments(x, axes)
    m = nb.moments(x, axis)
    assert m.shape == mean.shape and m.mean.dtype == np.float64
    assert np.all(m.count == count)
    # Accumulated in float64 from the input's values: float64 rounding even for float32 input.
    assert np.max(np.abs(m.mean - mean)) <= 1e-11 * 1e4
    assert rel_l2(m.m2, m2) <= 1e-11


@pytest.mark.parametrize("channel_axis", [0, 1, -1])
def test_channel_axis_is_bn_statistics(rng, channel_axis):
    x = rng.standard_normal((5, 4, 3)) * 3 + 2
    m = nb.moments(x, channel_axis=channel_axis)
    axes = tuple(i for i in range(3) if i != channel_axis % 3)
    assert m.count[0] == x.size // x.shape[channel_axis]
    assert np.allclose(m.mean, x.mean(axes), rtol=0, atol=1e-13)
    assert np.allclose(m.var(), x.var(axes), rtol=1e-12)
    assert np.allclose(m.var(1), x.var(axes, ddof=1), rtol=1e-12)


def _tol_ok(merged, whole):
    """Equal up to float64 rounding, scaled by the conditioning |mean|/std of the data."""
    std = np.sqrt(whole.var())
    scale = np.abs(whole.mean) + std
    assert np.all(merged.count == whole.count)
    assert np.all(np.abs(merged.mean - whole.mean) <= 256 * EPS64 * scale)
    assert np.all(np.abs(merged.m2 - whole.m2) <= 256 * EPS64 * whole.count * std * scale)


_partitions = given(
    n=st.integers(1, 60),
    channels=st.integers(1, 5),
    inner=st.integers(1, 4),
    offset=st.sampled_from([0.0, 1.0, -300.0, 1e4, 1e7]),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    data=st.data(),
)


def _merge_any_partition_equals_whole(n, channels, inner, offset, scale, data):
    """Merge moments of a random partition of the samples (random groups, empty ones allowed,
    random merge order and tree shape): equals the moments of the whole to float64 rounding."""
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = offset + scale * rng.standard_normal((n, channels, inner))
    if data.draw(st.booleans(), label="integer data"):
        x = np.round(x)
    whole = nb.moments(x, channel_axis=1)
    k = data.draw(st.integers(1, 6), label="groups")
    groups = np.asarray(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n), label="assignment"))
    parts = [nb.moments(x[groups == g], channel_axis=1) for g in range(k)]
    order = data.draw(st.permutations(range(k)), label="order")
    parts = [parts[i] for i in order]
    while len(parts) > 1:  # a random binary tree of merges
        i = data.draw(st.integers(0, len(parts) - 2), label="merge at")
        parts[i : i + 2] = [nb.merge_moments(parts[i], parts[i + 1])]
    _tol_ok(parts[0], whole)


#: A few examples in the default loop, many more as a slow test.
test_merge_any_partition_equals_whole = settings(max_examples=30, deadline=None)(
    _partitions(_merge_any_partition_equals_whole))
test_merge_any_partition_equals_whole_many = pytest.mark.slow(
    settings(max_examples=400, deadline=None)(_partitions(_merge_any_partition_equals_whole)))


def test_merge_identity_and_method(rng):
    x = rng.standard_normal((10, 3))
    a, b, c = (nb.moments(p, axis=0) for p in (x[:2], x[2:7], x[7:]))
    empty = nb.Moments.empty(3)
    assert nb.merge_moments(a, empty) == a and nb.merge_moments(empty, a) == a
    _tol_ok(a.merge(b, c), nb.moments(x, axis=0))
    assert nb.moments(np.empty((0, 3)), axis=0) == empty


def test_conversions_and_repr(rng):
    m = nb.moments(rng.standard_normal((9, 4)), axis=0)
    assert nb.Moments.from_array(m.to_array()) == m
    assert nb.Moments.from_records(m.to_records()) == m
    assert m.to_records().dtype == nb.MOMENTS_DTYPE
    back = nb.Moments.from_mean_var(m.count, m.mean, m.var(1), ddof=1)
    assert np.allclose(back.m2, m.m2, rtol=1e-14)
    count, mean, m2 = m  # unpacks like a tuple
    assert count is m.count and mean is m.mean and m2 is m.m2
    text = repr(m)
    assert text.startswith("Moments(shape=(4,), count=9, mean=[") and "var=[" in text
    assert np.all(np.isnan(nb.Moments.empty(2).var()))


@pytest.mark.parametrize("bad, exc, match", [
    (dict(count=-1.0, mean=[0.0], m2=[0.0]), ValueError, "count"),
    (dict(count=1.0, mean=[0.0], m2=[-1.0]), ValueError, "m2"),
    (dict(count=1.0, mean=[0.0, 1.0], m2=[0.0]), ValueError, "one shape"),
    (dict(count=[1.0, 2.0, 3.0], mean=[0.0, 1.0], m2=[0.0, 0.0]), ValueError, "count"),
])
def test_moments_constructor_errors(bad, exc, match):
    with pytest.raises(exc, match=match):
        nb.Moments(**bad)


def test_moments_argument_errors(rng):
    x = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="either axis"):
        nb.moments(x, 0, channel_axis=1)
    with pytest.raises(ValueError, match=r"axis entries must be in \[-2, 1\]"):
        nb.moments(x, 2)
    with pytest.raises(ValueError, match="repeat"):
        nb.moments(x, (0, -2))
    with pytest.raises(TypeError, match="axis must be"):
        nb.moments(x, 0.5)
    with pytest.raises(ValueError, match="channel_axis must be in"):
        nb.moments(x, channel_axis=3)
    with pytest.raises(TypeError, match="dtype float16, bfloat16, float32 or float64"):
        nb.moments(x.astype(np.int64), 0)
    with pytest.raises(ValueError, match="shapes"):
        nb.merge_moments(nb.Moments.empty(3), nb.Moments.empty(2))
    with pytest.raises(TypeError, match="two Moments"):
        nb.merge_moments(nb.Moments.empty(3), (0, 0, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_batch_norm_with_split_stats_equals_whole_batch(rng, dtype, channel_axis):
    """SyncBatchNorm: each shard normalized with merged stats == BN of the concatenated batch,
    and running stats updated from the global (count, mean, unbiased var)."""
    x = (1e4 + rng.standard_normal((13, 5, 7))).astype(dtype)
    C = x.shape[channel_axis]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm0, rv0 = rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)
    shards = [x[:4], x[4:5], x[5:]]
    stats = nb.merge_moments(nb.merge_moments(*(nb.moments(s, channel_axis=channel_axis) for s in shards[:2])),
                             nb.moments(shards[2], channel_axis=channel_axis))
    ry, rmean, rinvstd, new_rm, new_rv = batch_norm_ref(x, rm0, rv0, w, b, training=True, channel_axis=channel_axis)
    tol = {np.float32: 1e-6, np.float64: 1e-11}[dtype]
    ys = []
    for i, s in enumerate(shards):
        rm, rv = rm0.copy(), rv0.copy()
        out = np.full(s.shape, np.nan, dtype)
        y, mean, invstd = nb.batch_norm(s, rm, rv, w, b, training=True, channel_axis=channel_axis, out=out,
                                        stats=stats, return_stats=True)
        assert y is out and y.dtype == dtype
        ys.append(y)
        assert rel_l2(mean, rmean) <= tol and rel_l2(invstd, rinvstd) <= tol
        assert rel_l2(rm, new_rm) <= tol and rel_l2(rv, new_rv) <= tol, f"shard {i}"
    assert rel_l2(np.concatenate(ys), ry) <= tol


def test_batch_norm_stats_in_eval_needs_no_running_stats(rng):
    x = rng.standard_normal((6, 3, 2))
    stats = nb.moments(x, channel_axis=1)
    y = nb.batch_norm(x[:1], stats=stats)  # training=False, no running stats: stats are used
    ref = batch_norm_ref(x, training=True)[0][:1]
    assert rel_l2(y, ref) <= 1e-12


def test_batch_norm_stats_errors_mutate_nothing(rng):
    x = rng.standard_normal((4, 3))
    rm, rv = np.zeros(3), np.ones(3)
    good = nb.moments(x, channel_axis=1)
    cases = [
        ((good.count, good.mean, good.m2), TypeError, "stats must be a numbanorm.Moments"),
        (nb.Moments.empty(4), ValueError, r"stats must have shape \(3,\)"),
        (nb.Moments.empty(3), ValueError, "count must be positive"),
        (nb.Moments(1.0, good.mean, good.m2), ValueError, "exceed 1"),
        (nb.Moments._make((good.count, good.mean.astype(np.float32), good.m2)), TypeError, "float64"),
    ]
    for stats, exc, match in cases:
        with pytest.raises(exc, match=match):
            nb.batch_norm(x, rm, rv, training=True, stats=stats)
        assert np.all(rm == 0) and np.all(rv == 1)
    with pytest.raises(ValueError, match="running_mean must have shape"):
        nb.batch_norm(x, np.zeros(2), np.ones(2), training=True, stats=good)


@pytest.mark.parametrize("axis", [0, (0, 2), 1, None])
def test_standardize(rng, axis):
    x = (1e4 + 3 * rng.standard_normal((8, 5, 3))).astype(np.float64)
    x[:, 2] = 7.0  # a constant column: centred only, as StandardScaler does
    y = nb.standardize(x, axis)
    mean, var = two_pass(x, tuple(range(3)) if axis is None else tuple(np.atleast_1d(axis)))
    safe = np.where(var == 0, 1.0, var)
    ref = (x - mean) / np.sqrt(safe)
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y - ref)) <= 1e-9
    # With stats given (merged elsewhere), the same reference.
    m = nb.moments(x, axis)
    assert np.max(np.abs(nb.standardize(x, axis, stats=m) - ref)) <= 1e-9
    with pytest.raises(ValueError, match="stats must be a Moments of shape"):
        nb.standardize(x, axis, stats=nb.Moments.empty(99))
