"""numba's on-disk cache entries of numbanorm kernels go stale when any numbanorm module changes,
sub-packages included.

numba alone stamps an entry with the defining file only, so a kernel whose jitted callee (in
another module) changed would keep loading old machine code. ``numbanorm._numba.disk_cache`` adds
a stamp of the whole package. These tests edit a copy of the package between fresh processes that
share one cache folder, and look at the dispatcher's own hit/miss counts.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import numbanorm

pytestmark = pytest.mark.slow

PACKAGE = pathlib.Path(numbanorm.__file__).resolve().parent

_RUN = """
import numpy as np
import numbanorm as nb
from numbanorm.cpu import layer_norm

x = np.arange(24, dtype=np.float32).reshape(4, 6)
y = nb.layer_norm(x, 6)
x64 = x.astype(np.float64)
want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
assert np.abs(y - want).max() < 1e-5, y
stats = layer_norm.layer_norm_serial_cached.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


@pytest.fixture
def package_copy(tmp_path):
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "numbanorm", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _run(root: pathlib.Path, cache: pathlib.Path) -> tuple[int, int]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", _RUN], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits, misses = proc.stdout.split()
    return int(hits), int(misses)


def _touch(path: pathlib.Path) -> None:
    """An edit: the file's size and modification time change (its code does not)."""
    with open(path, "a") as f:
        f.write("\n# edited\n")


@pytest.mark.parametrize("module", ["cpu/moments.py", "cpu/halfio.py", "_layout.py"])
def test_cache_reused_until_a_package_module_changes(package_copy, tmp_path, module):
    cache = tmp_path / "cache"
    assert _run(package_copy, cache) == (0, 1)  # compiled and written
    assert _run(package_copy, cache) == (1, 0)  # a second process loads it
    _touch(package_copy / "numbanorm" / module)  # a helper the kernel inlines changes (or any module)
    assert _run(package_copy, cache) == (0, 1)  # stale: compiled again, never the old code
    assert _run(package_copy, cache) == (1, 0)


def test_benchmark_edits_leave_the_cache_alone(package_copy, tmp_path):
    """``numbanorm/bench`` holds no kernel of the library: editing it keeps the cache."""
    cache = tmp_path / "cache"
    _run(package_copy, cache)
    _touch(package_copy / "numbanorm" / "bench" / "__init__.py")
    assert _run(package_copy, cache) == (1, 0)
