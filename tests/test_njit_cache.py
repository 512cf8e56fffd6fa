"""The on-disk cache of a user's ``@njit(cache=True)`` function that calls numbanorm.

Such a function holds numbanorm's code (the overloads' checks, inlined), and numba's cache index is
stamped with the user's file only. Every kernel call from an overload goes through
``_numba.native_call``, which adds a ``reload_init`` entry (the kernel, its symbol and numbanorm's
package stamp) to the caller's cached code: a later process that loads it with another numbanorm
gets a miss and compiles it again. These tests run a copy of the package in fresh processes: a
cache hit, then an edit of a kernel module, which must give a miss and the edited kernel's
results; and, with the plain-numba fallback (no stamp), what numba alone does: a hit, with the old
kernel's results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USER = '''
import numba, numbanorm

@numba.njit(cache=True)
def block(x, w):
    return numbanorm.rms_norm(x, x.shape[-1], w, 1e-6), numbanorm.layer_norm(x, x.shape[-1], w, None)
'''

RUN = '''
import json, numpy as np, numbanorm, user_block
x = (np.arange(32, dtype=np.float32).reshape(2, 16) - 10) / 7
w = np.ones(16, np.float32)
rms, ln = user_block.block(x, w)
stats = user_block.block.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "rms": float(rms[0, 1]), "ln": float(ln[0, 1]), "package": numbanorm.__file__}))
'''

#: A kernel edit with a visible effect: RMSNorm's output doubled.
KERNEL_FILE = Path("numbanorm", "cpu", "layer_norm.py")
BEFORE = "            v = load(row[j]) * rstd_c\n"
AFTER = "            v = load(row[j]) * rstd_c * 2\n"


def _setup(tmp_path: Path) -> dict[str, str]:
    shutil.copytree(ROOT / "numbanorm", tmp_path / "pkg" / "numbanorm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "user_block.py").write_text(USER)
    (tmp_path / "user" / "run.py").write_text(RUN)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "pkg"), str(tmp_path / "user")]),
            "NUMBA_CACHE_DIR": str(tmp_path / "cache")}


def _run(tmp_path: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, str(tmp_path / "user" / "run.py")], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["package"].startswith(str(tmp_path / "pkg"))
    return result


def _edit(tmp_path: Path) -> None:
    path = tmp_path / "pkg" / KERNEL_FILE
    source = path.read_text()
    assert source.count(BEFORE) == 1, "the edited kernel line moved: update BEFORE"
    path.write_text(source.replace(BEFORE, AFTER))


@pytest.mark.slow
def test_user_cache_follows_numbanorm_edits(tmp_path):
    env = _setup(tmp_path)
    first = _run(tmp_path, env)
    assert (first["hits"], first["misses"]) == (0, 1)
    second = _run(tmp_path, env)
    assert (second["hits"], second["misses"]) == (1, 0)  # cached, kernels included
    assert (second["rms"], second["ln"]) == (first["rms"], first["ln"])
    _edit(tmp_path)
    third = _run(tmp_path, env)
    assert (third["hits"], third["misses"]) == (0, 1)  # the stamp changed: compiled again
    assert third["rms"] == 2 * first["rms"] and third["ln"] == first["ln"]  # with the edited kernel
    fourth = _run(tmp_path, env)
    assert (fourth["hits"], fourth["misses"], fourth["rms"]) == (1, 0, third["rms"])  # and cached again


@pytest.mark.slow
def test_plain_numba_cache_is_stale(tmp_path):
    """What numba's cache alone does (``NUMBANORM_PLAIN_NUMBA=1`` turns the stamp off): after the
    edit it loads the user's function with the old kernels."""
    env = {**_setup(tmp_path), "NUMBANORM_PLAIN_NUMBA": "1"}
    first = _run(tmp_path, env)
    _edit(tmp_path)
    stale = _run(tmp_path, env)
    assert (stale["hits"], stale["misses"]) == (1, 0)
    assert stale["rms"] == first["rms"]  # not 2x: the old kernel's code
