"""numbanorm on plain numba: every guarded use of numba internals (``numbanorm/_numba.py``) turned
off with ``NUMBANORM_PLAIN_NUMBA=1``, as if a numba release had broken them all. A slice of the
suite runs in a fresh process that way: slower kernels (no custom dispatcher, no direct compiled
entries, no SIMD loops), the same results."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TESTS = pathlib.Path(__file__).resolve().parent
SLICE = ["test_layer_norm.py", "test_batch_norm.py", "test_accuracy.py", "test_family.py", "test_tiny_calls.py",
         "test_out_layouts.py::test_layer_norm_out", "test_out_layouts.py::test_batch_norm_out"]

_PROBE = """
from numbanorm import _numba
from numbanorm.cpu import simd
assert _numba.PLAIN and _numba._DISPATCHER is None and not _numba.SIMD and simd._NATIVE == ()
assert _numba.compiled_entry(None, ()) is None
print("plain")
"""


def _env(tmp_path):
    # A cache of its own: plain numba stamps its entries differently from numbanorm's dispatcher.
    return dict(os.environ, NUMBANORM_PLAIN_NUMBA="1", NUMBA_CACHE_DIR=str(tmp_path / "cache"))


def test_fallbacks_are_in_effect(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "plain", proc.stderr[-2000:]


def test_suite_slice_on_plain_numba(tmp_path):
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
            *[str(TESTS / t) for t in SLICE]]
    proc = subprocess.run(args, env=_env(tmp_path), cwd=TESTS.parent, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
