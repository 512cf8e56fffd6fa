"""The CUDA backend, tested here without a GPU.

* ``tests/cuda/sim_*.py`` run every CUDA kernel under the numba CUDA simulator. The
  simulator must be switched on before numba is imported, so it runs in a subprocess with
  ``NUMBA_ENABLE_CUDASIM=1`` (their names keep them out of this process's collection).
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
from numbanorm import _backend

ROOT = Path(__file__).resolve().parents[1]
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None


def _run(args, **env):
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow  # a fresh process
@pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed")
def test_cuda_kernels_under_simulator():
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "cuda").glob("sim_*.py"))
    proc = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *files], NUMBA_ENABLE_CUDASIM="1")
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    assert proc.returncode == 0, "simulator tests failed (output above)"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


@pytest.mark.slow  # a fresh process
@pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed")
def test_gpu_check_script_runs_under_simulator():
    proc = _run(["tools/gpu_check.py", "--sim"], NUMBA_ENABLE_CUDASIM="1")
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    assert proc.returncode == 0 and "all checks passed" in proc.stdout


@pytest.mark.slow  # a fresh process
def test_import_does_not_import_numba_cuda():
    proc = _run(["-c", "import sys, numpy as np, numbanorm as nb; nb.layer_norm(np.ones((2, 3)), 3); "
                       "assert not any(m.startswith(('numba.cuda', 'numba_cuda')) for m in sys.modules), "
                       "sorted(m for m in sys.modules if 'cuda' in m)"])
    assert proc.returncode == 0, proc.stderr


class FakeCudaArray:
    """Anything exposing ``__cuda_array_interface__`` is dispatched to the CUDA backend."""

    __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}


def test_missing_numba_cuda_gives_clear_error(monkeypatch):
    monkeypatch.setattr(_backend, "_DEVICE", [])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(TypeError, match=r"numba-cuda is not installed.*numbanorm\[cuda\]"):
        nb.layer_norm(FakeCudaArray(), 3)
    with pytest.raises(TypeError, match=r"numba-cuda is not installed"):
        nb.batch_norm(FakeCudaArray(), training=True)


def test_host_layer_refuses_a_device_input():
    for layer in (nb.BatchNorm(3), nb.LayerNorm(3), nb.RMSNorm(3), nb.GroupNorm(1, 3)):
        with pytest.raises(TypeError, match=r"x is a CUDA array but this \w+'s parameters are host arrays.*"
                                            r"layer.to\('cuda'\)"):
            layer(FakeCudaArray())
        assert layer._saved is None


def test_layer_to_cuda_without_numba_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_backend, "_DEVICE", [])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    layer = nb.BatchNorm(3)
    with pytest.raises(TypeError, match=r"numba-cuda is not installed"):
        layer.to("cuda")
    assert layer.device == "cpu" and type(layer.weight) is np.ndarray and type(layer.running_mean) is np.ndarray
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:0'"):
        layer.to("cuda:1")
    assert layer.to("cpu") is layer and layer.cpu() is layer  # already there: nothing to import


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


# ------------------------------------------------------------------------------------------
# The hardware-side (non-simulator) host code that runs before any GPU work: reading foreign
# __cuda_array_interface__ arrays and the argument checks. No GPU is touched.
# ------------------------------------------------------------------------------------------
class CAI:
    def __init__(self, shape, typestr="<f4", strides=None, ptr=1 << 20, readonly=False):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "strides": strides,
                                         "data": (ptr, readonly), "version": 3}


@pytest.fixture
def hw():
    pytest.importorskip("numba_cuda")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("hardware-side code paths; this process runs the simulator")
    import numbanorm.cuda as backend
    from numbanorm.cuda import arrays

    return backend, arrays


def test_foreign_arrays_are_read_without_copy(hw):
    _, arrays = hw
    d = arrays.wrap(CAI((2, 3, 4), strides=(48, 4, 12)), "x")  # (2, 3, 4) stored as (2, 4, 3)
    assert (d.kind, d.dtype, d.itemsize, d.size) == ("cai", "float32", 4, 24)
    assert d.memory_order(1) == "moved" and d.memory_order(2) is None
    assert arrays.channel_view(d, 1) == (d, "moved", (8, 3, 1))  # read as stored: no copy
    assert arrays.wrap(CAI((2, 3)), "x").memory_order(0) == "c"
    c = arrays.wrap(CAI((2, 3, 5)), "x")
    assert arrays.channel_view(c, 1) == (c, "c", (2, 3, 5))
    assert arrays.wrap(CAI((2, 3)), "x").extent() == (1 << 20, (1 << 20) + 24)
    f = arrays.flat(arrays.wrap(CAI((2, 3), "<f8"), "x"))
    assert (f.ptr, f.n, f.itemsize, f.dtype) == (1 << 20, 6, 8, np.dtype(np.float64))


def test_checks_run_on_metadata(hw):
    backend, _ = hw
    x = CAI((4, 6))
    with pytest.raises(ValueError, match="normalized_shape"):
        backend.layer_norm(x, 5)
    with pytest.raises(TypeError, match="host and device arrays cannot be mixed"):
        backend.layer_norm(x, 6, np.ones(6, np.float32))
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        backend.layer_norm(x, 6, CAI((6,), "<f8", ptr=1 << 30))
    with pytest.raises(TypeError, match="got int32"):
        backend.layer_norm(CAI((4, 6), "<i4"), 6)
    with pytest.raises(ValueError, match="overlaps x"):
        backend.layer_norm(x, 6, out=CAI((4, 6), ptr=(1 << 20) + 8))
    with pytest.raises(ValueError, match="out must be writeable"):
        backend.layer_norm(x, 6, out=CAI((4, 6), ptr=1 << 30, readonly=True))
    with pytest.raises(ValueError, match="running_mean must be writeable"):
        backend.batch_norm(x, CAI((6,), ptr=1 << 30, readonly=True), CAI((6,), ptr=1 << 31), training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        backend.batch_norm(CAI((1, 6)), training=True)


def test_fast_launch_packs_arguments_as_numba_does(hw):
    """The opt-in lean launch (NUMBANORM_CUDA_FAST_LAUNCH=1) packs kernel parameters itself; they
    must equal what the installed numba-cuda's ``_Kernel._prepare_args`` packs for the same
    arguments (a flat float32 / int16 array, an int, a float)."""
    from types import SimpleNamespace

    from numba import types
    from numba.cuda.args import ArgHint
    from numba.cuda.dispatcher import _Kernel

    from numbanorm.cuda import launch
    from numbanorm.cuda.arrays import Flat

    class Given(ArgHint):  # hands _prepare_args our fake device array as is
        def to_device(self, retr, stream=0):
            return self.value

    def fake_device_array(f):
        layout = SimpleNamespace(strides_in_bytes=(f.itemsize,), is_contiguous_c=True, is_contiguous_f=True)
        return SimpleNamespace(size=f.n, dtype=f.dtype, ptr=f.ptr, shape=(f.n,), _layout=layout)

    args = [Flat(1 << 32, 1000, 4, np.dtype(np.float32), None), 7, 1e-5, Flat(1 << 33, 3, 2, np.dtype(np.int16), None)]
    expected: list = []
    for a in args:
        if isinstance(a, Flat):
            dtype = types.float32 if a.itemsize == 4 else types.int16
            ty, val = types.Array(dtype, 1, "C"), Given(fake_device_array(a))
        else:
            ty, val = (types.float64, a) if isinstance(a, float) else (types.int64, a)
        _Kernel._prepare_args(SimpleNamespace(extensions=[]), ty, val, 0, [], expected)

    def plain(v):
        return (type(v).__name__, v.value) if hasattr(v, "value") else ("int", int(v))

    got = launch.pack_args(args, Flat)
    assert len(expected) == 7 + 1 + 1 + 7
    assert [plain(v) for v in got] == [plain(v) for v in expected]


def test_gpu_call_without_gpu_is_a_clear_error(hw, monkeypatch):
    backend, _ = hw
    from numba import cuda

    if cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setattr(_backend, "_DEVICE", [])
    with pytest.raises(RuntimeError, match="no usable GPU"):
        nb.layer_norm(CAI((2, 3)), 3)


@pytest.mark.slow  # a fresh process
@pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed")
def test_row_stack_shim_on_numpy_without_row_stack():
    """NumPy >= 2.5 has no np.row_stack, which numba-cuda 0.30.4 overloads at first compile: the
    shim imports that module with a temporary alias and leaves NumPy's namespace as it was."""
    code = ("import sys, numpy as np\n"
            "if hasattr(np, 'row_stack'): del np.row_stack  # emulate NumPy 2.5 on older NumPy\n"
            "from numbanorm.cuda.compat import patch_row_stack\n"
            "patch_row_stack()\n"
            "assert 'numba.cuda.np.arrayobj' in sys.modules and not hasattr(np, 'row_stack')\n")
    proc = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr


HAVE_NVVM = os.path.isdir(os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "nvvm"))


@pytest.mark.slow  # a fresh process
@pytest.mark.skipif(not (HAVE_NUMBA_CUDA and HAVE_NVVM),
                    reason="needs numba-cuda and NVVM (CUDA_HOME: a CUDA toolkit or the nvidia-cuda-nvcc wheel)")
def test_every_kernel_compiles_for_hardware():
    """The simulator runs the kernels as Python; this compiles each specialization to sm_90 PTX
    (and, with ptxas, checks registers, spills and that every launched block fits an SM)."""
    proc = _run(["tools/ptx_check.py"], NUMBA_ENABLE_CUDASIM="0")
    print(proc.stdout[-5000:], proc.stderr[-3000:])
    assert proc.returncode == 0 and "all kernels compiled" in proc.stdout
