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

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]

#: The parent runs every kind of op on its parallel path first (>= 2**16 elements), then forks;
#: every result, the parent's and each child's, is checked against a float64 reference.
PRELUDE = """
import os, sys, threading, multiprocessing
import numpy as np
import numbanorm as nb

rng = np.random.default_rng(int(os.environ["NUMBANORM_TEST_SEED"]))
X = (rng.standard_normal((256, 512)) + 1e2).astype(np.float32)
IMG = (rng.standard_normal((16, 8, 32, 32)) * 2 - 1e2).astype(np.float32)
G = rng.standard_normal(IMG.shape).astype(np.float32)

def work():
    y = nb.layer_norm(X, 512)
    z = nb.batch_norm(IMG, np.zeros(8, np.float32), np.ones(8, np.float32), training=True)
    g = nb.group_norm(IMG, 4)
    gx = nb.batch_norm_backward(G, IMG, *nb.batch_norm(IMG, training=True, return_stats=True)[1:])[0]
    return [y, z, g, gx]

def two_pass(a, axes):
    mean = a.mean(axes, keepdims=True)
    return mean, ((a - mean) ** 2).mean(axes, keepdims=True)

def reference():
    # float64 two-pass LayerNorm, BatchNorm (training), GroupNorm and BatchNorm's grad_x
    x64, i64, g64 = X.astype(np.float64), IMG.astype(np.float64), G.astype(np.float64)
    m, v = two_pass(x64, 1)
    ln = (x64 - m) / np.sqrt(v + 1e-5)
    m, v = two_pass(i64, (0, 2, 3))
    bn = (i64 - m) / np.sqrt(v + 1e-5)
    n = i64.size // 8
    gx = (g64 - g64.sum((0, 2, 3), keepdims=True) / n
          - bn * (g64 * bn).sum((0, 2, 3), keepdims=True) / n) / np.sqrt(v + 1e-5)
    grouped = i64.reshape(16, 4, -1)
    m, v = two_pass(grouped, 2)
    gn = ((grouped - m) / np.sqrt(v + 1e-5)).reshape(i64.shape)
    return [ln, bn, gn, gx]

REFERENCE = reference()

def check(results):
    for name, got, want in zip(["layer_norm", "batch_norm", "group_norm", "grad_x"], results, REFERENCE):
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < 1e-5, (name, err)

check(work())

def in_child():
    check(work())  # raises (a non-zero exit, or the pool's error) when a result is wrong
    return True
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
def test_forked_child(rng, layer, scenario):
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(SCENARIOS[scenario]) + "\nprint('ok')\n"
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS="2",
               NUMBANORM_TEST_SEED=str(int(rng.integers(2**32))))
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{scenario} under {layer} hung: {exc}")
    if layer == "omp" and "No threading layer could be loaded" in proc.stderr:
        pytest.skip("numba's omp layer does not load here")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.returncode, proc.stdout, proc.stderr)
