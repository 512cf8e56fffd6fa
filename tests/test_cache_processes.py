"""Kernels compiled by one process and loaded from numba's on-disk cache by the next stay correct.

Before the BN entry points took absent weight/bias/running stats as zero-length arrays, a BN call
without weight in a process that loaded the cache written by a call *with* weight (and another
without) segfaulted: the cached wrapper of the second specialization called a null pointer. This
replays that sequence in fresh processes sharing one empty cache, for BN and LN with and without
affine parameters, and checks each result against the float64 reference.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # fresh processes

ROOT = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from reference import batch_norm_ref, layer_norm_ref, rel_l2
import numbanorm as nb

affine = sys.argv[1] == "affine"
rng = np.random.default_rng(int(sys.argv[2]))
x = (rng.standard_normal((6, 5, 7, 3)) + 10.0).astype(np.float32)
C, D = x.shape[1], x.shape[-1]
w = rng.standard_normal(C).astype(np.float32) if affine else None
b = rng.standard_normal(C).astype(np.float32) if affine else None
rm, rv = rng.standard_normal(C).astype(np.float32), rng.random(C).astype(np.float32) + 0.5
errors = [
    rel_l2(nb.batch_norm(x, rm, rv, w, b), batch_norm_ref(x, rm, rv, w, b)[0]),
    rel_l2(nb.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True),
           batch_norm_ref(x, rm, rv, w, b, training=True)[0]),
]
wl = rng.standard_normal(D).astype(np.float32) if affine else None
bl = rng.standard_normal(D).astype(np.float32) if affine else None
errors.append(rel_l2(nb.layer_norm(x, D, wl, bl), layer_norm_ref(x, (D,), wl, bl)[0]))
print(max(errors))
"""


def test_mixed_specializations_across_processes(tmp_path, rng):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    code = _SCRIPT.format(tests=str(ROOT / "tests"))
    for step, variant in enumerate(("affine", "plain", "plain", "affine")):
        seed = str(int(rng.integers(2**31)))
        proc = subprocess.run([sys.executable, "-c", code, variant, seed], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"step {step} ({variant}) exited {proc.returncode}: {proc.stderr[-2000:]}"
        assert float(proc.stdout.split()[-1]) < 1e-6, f"step {step} ({variant}): {proc.stdout}"
