"""The CUDA backend, tested here without a GPU.

* ``tests/cuda/sim_kernels.py`` runs every CUDA kernel under the numba CUDA simulator. The
  simulator must be switched on before numba is imported, so it runs in a subprocess with
  ``NUMBA_ENABLE_CUDASIM=1`` (its name keeps it out of this process's collection).
* The rest checks, in this process, what must hold without numba.cuda: importing numbanorm does
  not import it, host/device mixing errors, and the missing-numba-cuda error.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numbanorm as nb
from numbanorm import _device

ROOT = Path(__file__).resolve().parents[1]
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None


def _run(args, **env):
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed")
def test_cuda_kernels_under_simulator():
    proc = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda/sim_kernels.py"], NUMBA_ENABLE_CUDASIM="1")
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    assert proc.returncode == 0, "simulator tests failed (output above)"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


@pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed")
def test_gpu_check_script_runs_under_simulator():
    proc = _run(["benchmarks/gpu_check.py", "--sim"], NUMBA_ENABLE_CUDASIM="1")
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    assert proc.returncode == 0 and "all checks passed" in proc.stdout


def test_import_does_not_import_numba_cuda():
    proc = _run(["-c", "import sys, numpy as np, numbanorm as nb; nb.layer_norm(np.ones((2, 3)), 3); "
                       "assert not any(m.startswith(('numba.cuda', 'numba_cuda')) for m in sys.modules), "
                       "sorted(m for m in sys.modules if 'cuda' in m)"])
    assert proc.returncode == 0, proc.stderr


class FakeCudaArray:
    """Anything exposing ``__cuda_array_interface__`` is dispatched to the CUDA backend."""

    __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}


def test_missing_numba_cuda_gives_clear_error(monkeypatch):
    monkeypatch.setattr(_device, "_BACKEND", [])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(TypeError, match=r"numba-cuda is not installed.*numbanorm\[cuda\]"):
        nb.layer_norm(FakeCudaArray(), 3)
    with pytest.raises(TypeError, match=r"numba-cuda is not installed"):
        nb.batch_norm(FakeCudaArray(), training=True)


@pytest.mark.parametrize("arg", ["weight", "bias", "out", "running_mean"])
def test_device_argument_with_host_x_is_refused(arg):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="CUDA array but x is a host array"):
        if arg == "running_mean":
            nb.batch_norm(x, FakeCudaArray(), FakeCudaArray(), training=True)
        elif arg == "out":
            nb.layer_norm(x, 3, out=FakeCudaArray())
        else:
            nb.layer_norm(x, 3, **{arg: FakeCudaArray()})
