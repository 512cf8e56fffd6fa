"""numba's on-disk cache entries of numbanorm kernels go stale when any numbanorm module changes.

numba alone stamps an entry with the defining file only, so a kernel whose jitted callee (in
another module) changed would keep loading old machine code. ``numbanorm._cache`` adds a stamp of
the whole package; these tests run a kernel built with numbanorm's ``jit`` in fresh processes
that share one cache folder.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from numbanorm import _cache

ROOT = pathlib.Path(__file__).resolve().parents[1]

_MODULE = """
from numbanorm._config import jit

@jit()
def add_one(x):
    return x + 1
"""

_RUN = """
import sys
import numbanorm._cache as cache
if sys.argv[1] == "edited":  # what an edit of any numbanorm module does to the stamp
    stamp = cache.package_stamp()
    cache.package_stamp = lambda: stamp + (("edited.py", 1, 1),)
import kernel_module
assert kernel_module.add_one(41) == 42
stats = kernel_module.add_one.stats
print(sum(stats.cache_hits.values()),
      sum(stats.cache_misses.values()))
"""


def _run(tmp_path: pathlib.Path, variant: str) -> tuple[int, int]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _RUN, variant], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits, misses = proc.stdout.split()
    return int(hits), int(misses)


def test_cache_reused_until_a_package_module_changes(tmp_path):
    (tmp_path / "kernel_module.py").write_text(_MODULE)
    assert _run(tmp_path, "same") == (0, 1)  # compiled and saved
    assert _run(tmp_path, "same") == (1, 0)  # loaded: the stamp is stable between processes
    assert _run(tmp_path, "edited") == (0, 1)  # another module changed: compiled again
    assert _run(tmp_path, "edited") == (1, 0)


def test_package_stamp_covers_every_kernel_module():
    names = {name for name, _, _ in _cache.package_stamp()}
    kernel_modules = {p.name for p in (ROOT / "numbanorm").glob("*.py")}
    assert names == kernel_modules and {"_engine.py", "_simd.py", "_engine_backward.py"} <= names
