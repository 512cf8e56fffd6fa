"""The SyncBatchNorm example: the custom-op reduction over spawned processes (always), and under
``mpiexec -n 2`` with mpi4py where MPI is installed (skipped otherwise, e.g. in CI)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import batch_norm_ref

import numbanorm as nb

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sync_batch_norm_mpi.py"


def load_example():
    spec = importlib.util.spec_from_file_location("sync_batch_norm_mpi", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # spawned ranks import it by this name
    spec.loader.exec_module(module)
    return module


def test_merge_op_on_raw_buffers(rng):
    """The MPI callback merges in place on raw bytes, like MPI hands them over."""
    ex = load_example()
    x = rng.standard_normal((9, 4)) + 50
    a, b = nb.moments(x[:4], axis=0).to_records(), nb.moments(x[4:], axis=0).to_records()
    inout = bytearray(b.tobytes())
    ex.mpi_merge_op(a.tobytes(), memoryview(inout), None)
    got = nb.Moments.from_records(np.frombuffer(bytes(inout), nb.MOMENTS_DTYPE))
    whole = nb.moments(x, axis=0)
    assert np.all(got.count == 9)
    assert np.allclose(got.mean, whole.mean, rtol=1e-14) and np.allclose(got.m2, whole.m2, rtol=1e-11)


@pytest.mark.slow  # spawns processes
def test_simulated_sync_batch_norm_over_processes(monkeypatch):
    # Spawned ranks get this process's sys.path and re-import the example by module name.
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    ex = load_example()
    out = ex.simulate(3)
    x = ex.global_batch()
    C = x.shape[1]
    ry, rmean, _, rm, rv = batch_norm_ref(x, np.zeros(C), np.ones(C), training=True)
    y = np.concatenate([t[1] for t in out])
    assert [t[1].shape[0] for t in out] == [7, 8, 8]  # uneven shards
    assert np.max(np.abs(y - ry)) <= 1e-9
    for _, _, stats, r_mean, r_var in out:  # every rank got the same global stats and running stats
        stats = nb.Moments.from_records(stats)
        assert np.all(stats.count == x.size // C)
        assert np.allclose(stats.mean, rmean, rtol=1e-14, atol=0)
        assert np.allclose(r_mean, rm, rtol=1e-12) and np.allclose(r_var, rv, rtol=1e-12)


def _mpiexec():
    exe = shutil.which("mpiexec")
    if exe is None or importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpiexec or mpi4py not installed (apt-get install openmpi-bin libopenmpi-dev; pip install mpi4py)")
    return exe


@pytest.mark.slow  # mpiexec starts processes
def test_mpiexec_two_ranks():
    exe = _mpiexec()
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if ("Open MPI" in version or "OpenRTE" in version) else []
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([exe, "-n", "2", *extra, sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK ranks=2" in proc.stdout
