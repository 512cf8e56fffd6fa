"""A forked child gets correct results: no kill, no hang.

GNU OpenMP kills a child that starts a parallel region after its parent ran one, and a fork while
another thread holds the ``workqueue`` launch lock used to leave the child's copy locked forever.
Each scenario runs in a fresh interpreter under one threading layer, with a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

#: The parent runs every kind of op on its parallel path first (>= 2**16 elements), then forks.
PRELUDE = """
import os, sys, threading, multiprocessing
import numpy as np
import numbanorm as nb

rng = np.random.default_rng(7)
X = rng.standard_normal((256, 512)).astype(np.float32)
IMG = rng.standard_normal((16, 8, 32, 32)).astype(np.float32)

def work():
    y = nb.layer_norm(X, 512)
    z = nb.batch_norm(IMG, np.zeros(8, np.float32), np.ones(8, np.float32), training=True)
    g = nb.group_norm(IMG, 4)
    gx = nb.batch_norm_backward(IMG, IMG, *nb.batch_norm(IMG, training=True, return_stats=True)[1:])[0]
    return [y, z, g, gx]

def reference():
    x64 = X.astype(np.float64)
    y = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    return y

def check(results):
    err = np.abs(results[0] - reference()).max()
    assert err < 1e-4, err
    for r in results:
        assert np.isfinite(r).all()

EXPECTED = work()
check(EXPECTED)

def in_child():
    results = work()
    check(results)
    return all(np.array_equal(a, b) or np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(results, EXPECTED))
"""

SCENARIOS = {
    "os.fork": """
pid = os.fork()
if pid == 0:
    os._exit(0 if in_child() else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
check(work())  # the parent still runs its parallel kernels
""",
    "fork pool": """
def task(_):
    return in_child()
with multiprocessing.get_context("fork").Pool(2) as pool:
    assert all(pool.map(task, range(4)))
""",
    "fork mid-call": """
stop = threading.Event()
def busy():
    while not stop.is_set():
        work()
t = threading.Thread(target=busy)
t.start()
try:
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            os._exit(0 if in_child() else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
finally:
    stop.set()
    t.join()
""",
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("layer", ["omp", "workqueue"])
def test_forked_child(layer, scenario):
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(SCENARIOS[scenario]) + "\nprint('ok')\n"
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS="2")
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{scenario} under {layer} hung: {exc}")
    if layer == "omp" and "No threading layer could be loaded" in proc.stderr:
        pytest.skip("numba's omp layer does not load here")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.returncode, proc.stdout, proc.stderr)
