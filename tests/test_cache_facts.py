"""What numbanorm's on-disk kernel cache must do in real deployments, checked in fresh processes:

* ``python -m numbanorm precompile`` fills it, so that a new process only loads kernels;
* a cache written for another CPU model, or by another numba version, is ignored (numba keys its
  index on both, and numbanorm's own stamp must keep that), and the results stay right;
* four processes compiling into one empty cache at once (numba#4807's case) all succeed.

(Stale code after an edit of any module: ``test_cache_stamp.py``.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

_CALLS = """
import sys
import numpy as np
import numbanorm as nb
from numbanorm._numba import cache_counts

rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
x = (rng.standard_normal((64, 8, 16, 16)) * 2 + 100).astype(np.float32)
y = nb.batch_norm(x, training=True)
x64 = x.astype(np.float64)
want = (x64 - x64.mean((0, 2, 3), keepdims=True)) / np.sqrt(x64.var((0, 2, 3), keepdims=True) + 1e-5)
assert np.abs(y - want).max() < 1e-4
r = rng.standard_normal((4, 96)).astype(np.float32)
r64 = r.astype(np.float64)
want = (r64 - r64.mean(1, keepdims=True)) / np.sqrt(r64.var(1, keepdims=True) + 1e-5)
assert np.abs(nb.layer_norm(r, 96) - want).max() < 1e-5
print(*cache_counts())
"""


def _run(cache, *args, env=None, code=_CALLS):
    env = dict(os.environ if env is None else env, NUMBA_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _counts(proc) -> tuple[int, int]:
    hits, misses = proc.stdout.split()[-2:]
    return int(hits), int(misses)


def test_precompile_then_every_first_call_is_a_cache_load(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-m", "numbanorm", "precompile", "--ops", "layer_norm,batch_norm",
                           "--jobs", "2", "--quiet"], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hits, misses = _counts(_run(cache))
    assert misses == 0 and hits > 0


def test_precompile_refuses_unknown_ops():
    proc = subprocess.run([sys.executable, "-m", "numbanorm", "precompile", "--ops", "layer_nrom"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown op 'layer_nrom'" in proc.stderr


def test_cache_of_another_cpu_or_numba_version_is_ignored(tmp_path):
    cache = tmp_path / "cache"
    assert _counts(_run(cache))[1] > 0  # written for this CPU and numba
    assert _counts(_run(cache))[1] == 0
    other_cpu = dict(os.environ, NUMBA_CPU_NAME="generic")  # what another CPU model looks like to the index
    assert _counts(_run(cache, env=other_cpu))[0] == 0  # nothing loaded, all compiled (and right)
    assert _counts(_run(cache))[1] == 0  # the entries of each CPU live side by side
    other_numba = "import numba; numba.__version__ = '0.0.0'\n" + _CALLS
    assert _counts(_run(cache, code=other_numba))[0] == 0  # another numba loads none of them (and is right)


def test_four_processes_compile_into_one_empty_cache(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", _CALLS, str(seed)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    hits, misses = _counts(_run(cache))  # and what they left behind loads cleanly
    assert misses == 0 and hits > 0
