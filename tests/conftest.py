"""Shared fixtures: a fresh, printed random seed per test, and NaN-poisoned buffers."""

from __future__ import annotations

import os
import secrets

# Set before NumPy, torch and numba load (pytest imports this file first). The references need no
# more than one BLAS and one torch thread, and with numba's pool, torch's and OpenBLAS's all
# spinning on two shared cores a torch float64 BatchNorm or a float64 dot took 10-100x longer
# (measured: 5-50 ms instead of 0.05-0.5 ms); idle OpenMP threads now sleep instead of spinning.
# numba's own thread count (NUMBA_NUM_THREADS, not read from these) is left alone, so the parallel
# kernels still run on every core. A value set in the environment is kept.
for _name, _value in (("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"),
                      ("OMP_WAIT_POLICY", "PASSIVE")):
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
    """A fresh generator per test; the seed is printed (and shown on failure) to reproduce."""
    seed = int(os.environ.get("NUMBANORM_TEST_SEED", secrets.randbits(32)))
    print(f"{request.node.nodeid}: NUMBANORM_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def poisoned_like(x: np.ndarray) -> np.ndarray:
    """An output buffer full of NaN, so any element the kernel misses fails the comparison."""
    return np.full(x.shape, np.nan, dtype=x.dtype)

