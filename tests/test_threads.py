"""Concurrent calls from several Python threads give correct results.

numbanorm selects numba's ``threadsafe`` threading layer (tbb or omp) at import unless the user
chose one; with only ``workqueue`` available it serializes kernel launches instead.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from reference import batch_norm_ref, layer_norm_ref, rel_l2

import numbanorm as nb
from numbanorm.cpu import plan


def test_threading_layer_is_thread_safe_or_guarded():
    nb.layer_norm(np.ones((64, 2048), np.float32), 2048)  # initializes the layer with a parallel launch
    assert plan.NEEDS_CALL_LOCK or numba.threading_layer() in ("tbb", "omp")


def test_four_threads_at_once(rng):
    seeds = rng.integers(0, 2**32, size=16)

    def work(seed):
        r = np.random.default_rng(seed)
        x = r.standard_normal((16, 37, 513)).astype(np.float32) + 100.0
        rm, rv = np.zeros(37, np.float32), np.ones(37, np.float32)
        ln = nb.layer_norm(x, 513)
        bn = nb.batch_norm(x, rm, rv, training=True)
        return (
            rel_l2(ln, layer_norm_ref(x, (513,))[0]),
            rel_l2(bn, batch_norm_ref(x, training=True)[0]),
            rel_l2(rm, batch_norm_ref(x, np.zeros(37), np.ones(37), training=True)[3]),
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        errors = list(pool.map(work, seeds))
    assert len(errors) == 16
    assert max(max(e) for e in errors) <= 1e-5
