"""Without any writable cache directory (a read-only container, a locked-down service account),
calls still compute their results: numbanorm compiles without the disk cache and warns once,
saying how to enable it.

The tests run as root on CI, where permission bits do not stop a write, so the child process
makes every temporary file fail with EACCES: that is how numba tests a directory for
writability (``tempfile.TemporaryFile(dir=...)``), and how a read-only filesystem answers."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # fresh processes

ROOT = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = """
import errno, tempfile, warnings

def read_only(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Read-only file system")

tempfile.TemporaryFile = read_only
import numpy as np
import numbanorm as nb

x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = nb.layer_norm(x, 16)
    z = nb.batch_norm(x, training=True)
    r = nb.rms_norm(x, 16)
x64 = x.astype(np.float64)
want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
assert np.abs(y - want).max() < 1e-5
want = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
assert np.abs(z - want).max() < 1e-5
want = x64 / np.sqrt((x64 * x64).mean(1, keepdims=True) + np.finfo(np.float32).eps)
assert np.abs(r - want).max() < 1e-5
ours = [w for w in caught if w.category.__name__ == "CacheUnavailableWarning"]
assert len(ours) == 1, [str(w.message) for w in caught]
print(ours[0].message)
"""


def test_no_writable_cache_directory_compiles_without_cache(tmp_path):
    for cache_dir in (None, str(tmp_path / "cache")):  # numba's default locations, then NUMBA_CACHE_DIR
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        if cache_dir:
            env["NUMBA_CACHE_DIR"] = cache_dir
        proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "NUMBA_CACHE_DIR" in proc.stdout
