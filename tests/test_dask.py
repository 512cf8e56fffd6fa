"""numbanorm.dask on a dask.distributed LocalCluster (2 workers, TCP on loopback): results equal
the in-memory numbanorm result on the same data. Skipped when dask/distributed are absent."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from reference import rel_l2

import numbanorm as nb

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
nd = pytest.importorskip("numbanorm.dask")

TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
#: float64 parity at a 1e4 offset: the merge order changes the mean by ~eps * 1e4, and y with it.
TOL_OFFSET = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 64 * np.finfo(np.float64).eps * 1e4}


@pytest.fixture(scope="module")
def client():
    """Two single-threaded workers in this process, talking TCP over 127.0.0.1, so every task
    and result is serialized as on a real cluster, without process start-up costs."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        with distributed.Client(cluster, timeout="30s") as c:
            assert len(c.scheduler_info()["workers"]) == 2
            yield c


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
    rm_np, rv_np = rm.copy(), rv.copy()
    expected = nb.batch_norm(x, rm_np, rv_np, w, b, training=True, channel_axis=channel_axis)
    with distributed.get_task_stream(client) as ts:
        y, stats = nd.batch_norm(da.from_array(x, chunks=chunks), rm, rv, w, b, training=True,
                                 channel_axis=channel_axis, split_every=2)
        assert isinstance(y, da.Array) and y.dtype == dtype
        got = y.compute()
    assert len(ts.data) > 0  # the work really ran on the cluster
    assert got.dtype == dtype and got.shape == x.shape
    assert rel_l2(got, expected) <= TOL_OFFSET[np.dtype(dtype)]
    _tol_stats(stats, nb.moments(x, channel_axis=channel_axis))
    assert rel_l2(rm, rm_np) <= TOL[np.dtype(dtype)] and rel_l2(rv, rv_np) <= TOL[np.dtype(dtype)]


def _tol_stats(got, want):
    assert got.shape == want.shape and np.all(got.count == want.count)
    assert np.allclose(got.mean, want.mean, rtol=1e-13, atol=0)
    assert np.allclose(got.m2, want.m2, rtol=1e-10, atol=0)


def test_batch_norm_eval_and_given_stats(client, rng):
    x = rng.standard_normal((30, 4, 5))
    d = da.from_array(x, chunks=(8, 3, 5))
    rm, rv = rng.standard_normal(4), rng.random(4) + 0.5
    y, stats = nd.batch_norm(d, rm, rv, training=False)
    assert stats is None
    assert rel_l2(y.compute(), nb.batch_norm(x, rm, rv)) <= 1e-12
    given = nb.moments(x[:10], channel_axis=1)
    y, stats = nd.batch_norm(d, training=True, stats=given)
    assert stats is given
    assert rel_l2(y.compute(), nb.batch_norm(x, stats=given)) <= 1e-12


def test_moments_tree_and_lazy(client, rng):
    x = rng.standard_normal((200, 3)) * 5 - 7
    d = da.from_array(x, chunks=(9, 2))  # 23 x 2 chunks, split_every=2: a deep tree of merges
    _tol_stats(nd.moments(d, 0, split_every=2), nb.moments(x, 0))
    lazy = nd.moments(d, channel_axis=1, compute=False)
    assert isinstance(lazy, da.Array) and lazy.dtype == nb.MOMENTS_DTYPE
    _tol_stats(nb.Moments.from_records(lazy.compute()), nb.moments(x, channel_axis=1))


@pytest.mark.parametrize("axis, chunks", [(0, (17, 3)), ((0, 1), (17, 2))])
def test_standardize_equals_in_memory(client, rng, axis, chunks):
    x = (50 + 3 * rng.standard_normal((101, 5))).astype(np.float64)
    x[:, 1] = 2.5  # constant column: centred only
    d = da.from_array(x, chunks=chunks)
    y, stats = nd.standardize(d, axis, return_stats=True)
    got = y.compute()
    assert np.all(np.isfinite(got))
    assert rel_l2(got, nb.standardize(x, axis)) <= 1e-12
    _tol_stats(stats, nb.moments(x, axis))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_equals_in_memory(client, rng, dtype):
    x = (100 + rng.standard_normal((37, 6, 8))).astype(dtype)
    w, b = rng.standard_normal((6, 8)).astype(dtype), rng.standard_normal((6, 8)).astype(dtype)
    expected = nb.layer_norm(x, (6, 8), w, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chunks already span the normalized dims: no warning
        y = nd.layer_norm(da.from_array(x, chunks=(10, 6, 8)), (6, 8), w, b)
    assert rel_l2(y.compute(), expected) <= TOL[np.dtype(dtype)]
    with pytest.warns(nd.RechunkWarning, match="rechunking"):
        y = nd.layer_norm(da.from_array(x, chunks=(10, 3, 8)), (6, 8), w, b)
    assert rel_l2(y.compute(), expected) <= TOL[np.dtype(dtype)]


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
