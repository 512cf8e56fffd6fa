"""numbanorm.dask on a dask.distributed LocalCluster (2 workers, TCP on loopback): results are the
float64 references (tests/reference.py) of the whole array, as the in-memory ops are. Skipped
when dask/distributed are absent."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from reference import batch_norm_ref, layer_norm_ref, rel_l2, two_pass

import numbanorm as nb

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
nd = pytest.importorskip("numbanorm.dask")

#: Against the float64 reference (tests/test_accuracy.py's table): no offset / a 1e2..1e4 offset.
TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
TOL_OFFSET = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


@pytest.fixture(scope="module")
def client():
    """Two single-threaded workers in this process, talking TCP over 127.0.0.1, so every task
    and result is serialized as on a real cluster, without process start-up costs."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        with distributed.Client(cluster, timeout="30s") as c:
            assert len(c.scheduler_info()["workers"]) == 2
            yield c


@pytest.mark.slow  # a fresh process
def test_import_numbanorm_does_not_import_dask():
    code = "import sys, numbanorm; assert not any(m == 'dask' or m.startswith('dask.') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channel_axis, shape, chunks", [
    (1, (61, 5, 7), (13, 2, 4)),      # channel axis chunked too, ragged chunks everywhere
    (-1, (97, 3, 6), (25, 3, 6)),     # channels-last, chunked over samples only
    (1, (40, 4), (7, 4)),             # (N, C)
])
def test_batch_norm_equals_in_memory(client, rng, dtype, channel_axis, shape, chunks):
    x = (1e4 + rng.standard_normal(shape)).astype(dtype)
    C = shape[channel_axis]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)
    expected, _, _, new_rm, new_rv = batch_norm_ref(x, rm, rv, w, b, training=True, channel_axis=channel_axis)
    with distributed.get_task_stream(client) as ts:
        y, stats = nd.batch_norm(da.from_array(x, chunks=chunks), rm, rv, w, b, training=True,
                                 channel_axis=channel_axis, split_every=2)
        assert isinstance(y, da.Array) and y.dtype == dtype
        got = y.compute()
    assert len(ts.data) > 0  # the work really ran on the cluster
    assert got.dtype == dtype and got.shape == x.shape
    assert rel_l2(got, expected) <= TOL_OFFSET[np.dtype(dtype)]
    _tol_stats(stats, x, tuple(i for i in range(x.ndim) if i != channel_axis % x.ndim))
    assert rel_l2(rm, new_rm) <= TOL_OFFSET[np.dtype(dtype)] and rel_l2(rv, new_rv) <= TOL_OFFSET[np.dtype(dtype)]


def _tol_stats(got, x, axes):
    """Moments against the long-double two-pass reference of ``x`` over ``axes``."""
    x64 = np.asarray(x, np.float64)
    mean, var = two_pass(x64, axes)
    count = int(np.prod([x64.shape[i] for i in axes]))
    mean, m2 = np.squeeze(mean, axes), np.squeeze(var, axes) * count
    assert got.shape == mean.shape and np.all(got.count == count)
    assert np.allclose(got.mean, mean, rtol=1e-13, atol=0)
    assert np.allclose(got.m2, m2, rtol=1e-10, atol=0)


def test_batch_norm_eval_and_given_stats(client, rng):
    x = rng.standard_normal((30, 4, 5))
    d = da.from_array(x, chunks=(8, 3, 5))
    rm, rv = rng.standard_normal(4), rng.random(4) + 0.5
    y, stats = nd.batch_norm(d, rm, rv, training=False)
    assert stats is None
    assert rel_l2(y.compute(), batch_norm_ref(x, rm, rv)[0]) <= 1e-12
    given = nb.moments(x[:10], channel_axis=1)
    y, stats = nd.batch_norm(d, training=True, stats=given)
    assert stats is given
    mean, var = two_pass(x[:10], (0, 2))  # normalized with the given statistics: eval's formula
    assert rel_l2(y.compute(), batch_norm_ref(x, mean.reshape(-1), var.reshape(-1))[0]) <= 1e-12


def test_moments_tree_and_lazy(client, rng):
    x = rng.standard_normal((200, 3)) * 5 - 7
    d = da.from_array(x, chunks=(9, 2))  # 23 x 2 chunks, split_every=2: a deep tree of merges
    _tol_stats(nd.moments(d, 0, split_every=2), x, (0,))
    lazy = nd.moments(d, channel_axis=1, compute=False)
    assert isinstance(lazy, da.Array) and lazy.dtype == nb.MOMENTS_DTYPE
    _tol_stats(nb.Moments.from_records(lazy.compute()), x, (0,))


@pytest.mark.parametrize("axis, chunks", [(0, (17, 3)), ((0, 1), (17, 2))])
def test_standardize_equals_in_memory(client, rng, axis, chunks):
    x = (50 + 3 * rng.standard_normal((101, 5))).astype(np.float64)
    x[:, 1] = 2.5  # constant column: centred only
    d = da.from_array(x, chunks=chunks)
    y, stats = nd.standardize(d, axis, return_stats=True)
    got = y.compute()
    assert np.all(np.isfinite(got))
    axes = tuple(np.atleast_1d(axis))
    mean, var = two_pass(x, axes)
    ref = (x - mean) / np.sqrt(np.where(var == 0, 1.0, var))  # a constant column: centred only
    assert np.max(np.abs(got - ref)) <= 1e-9
    _tol_stats(stats, x, axes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_equals_in_memory(client, rng, dtype):
    x = (100 + rng.standard_normal((37, 6, 8))).astype(dtype)
    w, b = rng.standard_normal((6, 8)).astype(dtype), rng.standard_normal((6, 8)).astype(dtype)
    expected = layer_norm_ref(x, (6, 8), w, b)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chunks already span the normalized dims: no warning
        y = nd.layer_norm(da.from_array(x, chunks=(10, 6, 8)), (6, 8), w, b)
    assert rel_l2(y.compute(), expected) <= TOL_OFFSET[np.dtype(dtype)]
    with pytest.warns(nd.RechunkWarning, match="rechunking"):
        y = nd.layer_norm(da.from_array(x, chunks=(10, 3, 8)), (6, 8), w, b)
    assert rel_l2(y.compute(), expected) <= TOL_OFFSET[np.dtype(dtype)]


def test_errors_mutate_nothing(rng):
    x = rng.standard_normal((10, 3))
    d = da.from_array(x, chunks=(4, 3))
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(TypeError, match="dask.array.Array"):
        nd.batch_norm(x)
    with pytest.raises(TypeError, match="float32 or float64"):
        nd.batch_norm(d.astype(np.int32))
    with pytest.raises(ValueError, match="weight must have shape"):
        nd.batch_norm(d, rm, rv, weight=np.ones(4))
    with pytest.raises(ValueError, match="channel_axis must be in"):
        nd.batch_norm(d, channel_axis=2)
    with pytest.raises(ValueError, match="stats must be"):
        nd.batch_norm(d, rm, rv, stats=nb.Moments.empty(2))
    with pytest.raises(ValueError, match="normalized_shape"):
        nd.layer_norm(d, 4)
    with pytest.raises(ValueError, match="eps must be"):
        nd.standardize(d, 0, eps=-1.0)
    with pytest.raises(ValueError, match=r"stats must be a numbanorm.Moments of shape \(3,\)"):
        nd.standardize(d, 0, stats=nb.Moments.empty(2))
    with pytest.raises(ValueError, match="either axis"):
        nd.moments(d, 0, channel_axis=1)
    assert np.all(rm == 0) and np.all(rv == 1)
