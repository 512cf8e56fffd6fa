"""Shared fixtures: a fresh, printed random seed per test, and NaN-poisoned buffers."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh generator per test; the seed is printed (and shown on failure) to reproduce."""
    seed = int(os.environ.get("NUMBANORM_TEST_SEED", secrets.randbits(32)))
    print(f"{request.node.nodeid}: NUMBANORM_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def poisoned_like(x: np.ndarray) -> np.ndarray:
    """An output buffer full of NaN, so any element the kernel misses fails the comparison."""
    return np.full(x.shape, np.nan, dtype=x.dtype)
