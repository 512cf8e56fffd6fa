"""The portable half path: the half tests in a fresh process compiled for a generic x86-64 CPU
(``NUMBA_CPU_NAME=generic``), where ``halfio`` uses no F16C, no AVX512_BF16 and 8-lane loops, as
on a CPU without them (an AVX2-only machine takes the same integer bfloat16 code)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TESTS = pathlib.Path(__file__).resolve().parent
SLICE = ["test_half.py", "test_half_simd.py",
         "test_half_contract.py::test_layer_norm", "test_half_contract.py::test_batch_norm_layouts",
         "test_half_contract.py::test_constant_input_gives_exactly_bias", "test_half_contract.py::test_group_norm",
         "test_half_backward.py::test_layer_norm_backward", "test_half_backward.py::test_batch_norm_backward"]

_PROBE = """
from numbanorm.cpu import halfio
assert not halfio.HW_F16 and not halfio.HW_BF16 and halfio.HALF_LANES == 8, (halfio.HW_F16, halfio.HW_BF16)
print("portable")
"""


def _env(tmp_path):
    # A cache of its own (numba keys its index by CPU name, but a fresh one keeps this honest).
    return dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path / "cache"))


def test_portable_flags(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=_env(tmp_path), cwd=TESTS.parent, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "portable", proc.stderr[-2000:]


def test_half_tests_on_a_generic_cpu(tmp_path):
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
            *[str(TESTS / t) for t in SLICE]]
    proc = subprocess.run(args, env=_env(tmp_path), cwd=TESTS.parent, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
