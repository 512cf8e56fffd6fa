"""Concurrent calls from several Python threads give correct results.

numbanorm selects numba's ``threadsafe`` threading layer (tbb or omp) at import unless the user
chose one; with only ``workqueue`` available it serializes kernel launches instead.

Four threads, each with data of its own (two float32, two float64, so two specializations run at
once), wait at a barrier and then launch their kernels at the same moment, a few rounds in a row.
Every result of every thread is checked against the float64 reference of *that thread's* data:
a wrong result, a result of another thread's input, or a statistic written into a shared buffer
fails, whichever thread got it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
from reference import batch_norm_ref, layer_norm_ref, rel_l2

import numbanorm as nb
from numbanorm.cpu import plan

THREADS = 4
ROUNDS = 3
#: A tiny shape (the serial kernels and the tiny-call entries) and one past the parallel
#: threshold (``plan.SERIAL_SIZE`` = 2**16 elements: the parallel kernels, several tasks).
SHAPES = {"serial": (3, 5, 37), "parallel": (16, 37, 129)}
#: float32 at a 1e4 offset / float64 (tests/test_accuracy.py's table).
BOUND = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def test_threading_layer_is_thread_safe_or_guarded():
    nb.layer_norm(np.ones((64, 2048), np.float32), 2048)  # initializes the layer with a parallel launch
    assert plan.NEEDS_CALL_LOCK or numba.threading_layer() in ("tbb", "omp")


def test_suite_settings_leave_numbas_thread_count():
    """tests/conftest.py gives BLAS and torch one thread; numba keeps its default count."""
    if "NUMBA_NUM_THREADS" not in os.environ:
        assert numba.config.NUMBA_NUM_THREADS == numba.config.NUMBA_DEFAULT_NUM_THREADS
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


def _inputs(rng, shape, dtype):
    C, D = shape[1], shape[-1]
    return {
        "x": (rng.standard_normal(shape) * 3 + 1e4).astype(dtype),
        "w": (rng.standard_normal(D) + 1).astype(dtype),
        "b": rng.standard_normal(D).astype(dtype),
        "rm": (rng.standard_normal(C) + 1e4).astype(dtype),
        "rv": (rng.random(C) + 0.5).astype(dtype),
    }


def _check(got, data):
    """One thread's results of one round against the float64 references of its own data."""
    x, w, b, rm0, rv0 = (data[k] for k in ("x", "w", "b", "rm", "rv"))
    tol = BOUND[x.dtype]
    ly, lmean, lrstd = got["ln"]
    ry, rmean, rrstd = layer_norm_ref(x, (x.shape[-1],), w, b)
    assert ly.dtype == x.dtype and not np.isnan(ly).any()
    assert rel_l2(ly, ry) <= tol and rel_l2(lmean, rmean) <= tol and rel_l2(lrstd, rrstd) <= tol
    by, bmean, binv, rm, rv = got["bn"]
    ry, rmean, rinv, new_rm, new_rv = batch_norm_ref(x, rm0, rv0, training=True, momentum=0.2)
    assert rel_l2(by, ry) <= tol and rel_l2(bmean, rmean) <= tol and rel_l2(binv, rinv) <= tol
    assert rel_l2(rm, new_rm) <= tol and rel_l2(rv, new_rv) <= tol
    ey = got["bn_eval"]
    assert rel_l2(ey, batch_norm_ref(x, rm0, rv0, training=False)[0]) <= tol
    out = got["ln_out"]
    assert rel_l2(out, layer_norm_ref(x, (x.shape[-1],))[0]) <= tol


@pytest.mark.parametrize("path", list(SHAPES))
def test_four_threads_launch_at_once(rng, path):
    shape = SHAPES[path]
    assert (np.prod(shape) < plan.SERIAL_SIZE) == (path == "serial")
    datas = [_inputs(rng, shape, np.float32 if t % 2 == 0 else np.float64) for t in range(THREADS)]
    start = threading.Barrier(THREADS, timeout=300)

    def work(t):
        d = datas[t]
        x = d["x"]
        results = []
        for _ in range(ROUNDS):
            rm, rv = d["rm"].copy(), d["rv"].copy()
            out = np.full(x.shape, np.nan, x.dtype)
            start.wait()  # every thread's next launch starts together
            got = {"ln": nb.layer_norm(x, x.shape[-1], d["w"], d["b"], return_stats=True)}
            y, mean, invstd = nb.batch_norm(x, rm, rv, training=True, momentum=0.2, return_stats=True)
            got["bn"] = (y, mean, invstd, rm, rv)
            got["bn_eval"] = nb.batch_norm(x, d["rm"], d["rv"])
            got["ln_out"] = nb.layer_norm(x, x.shape[-1], out=out)
            assert got["ln_out"] is out
            results.append(got)
        return results

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(work, t) for t in range(THREADS)]
        per_thread = [f.result() for f in futures]  # re-raises a thread's exception here
    assert [len(r) for r in per_thread] == [ROUNDS] * THREADS
    for t, results in enumerate(per_thread):
        for got in results:
            _check(got, datas[t])
