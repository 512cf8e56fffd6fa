"""The jitted transformer block example (``examples/numba_transformer_block.py``), at a small size:
its check against torch float64 and its decode-loop timings run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import numbanorm as nb

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "numba_transformer_block.py"


def load_example():
    spec = importlib.util.spec_from_file_location("numba_transformer_block", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_block_example_small():
    ex = load_example()
    params = ex.weights(32, 48)
    x = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    y, s = ex.block(x, *params)
    h = nb.rms_norm(x, 32, params[0], ex.EPS_RMS)  # the same block through the Python-level calls
    u = ex.matvec(ex.silu(ex.matvec(h, params[1])), params[2])
    want = nb.add_layer_norm(u, x, 32, params[3], params[4], ex.EPS_LN)
    assert np.array_equal(y, want[0]) and np.array_equal(s, want[1])
    threads = numba.get_num_threads()
    result = ex.main(["--hidden", "64", "--ffn", "32", "--tokens", "3", "--repeats", "1"])
    assert numba.get_num_threads() == threads  # its one-thread timings restore the caller's count
    if result["error"] is not None:  # torch installed: checked against its float64 block
        assert result["error"] < 1e-5
    assert result["norms njit"] > 0 and result["block njit"] > 0
