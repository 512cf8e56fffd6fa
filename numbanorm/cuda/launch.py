"""Host side of a launch: the stream to run on, a cache of configured kernels, and an opt-in
lean launch path.

* Stream: the producer's *current* stream (torch's / CuPy's), so the kernels are ordered after
  the work that produced x and before the work that will consume y, with no synchronization.
  numba arrays use the default stream. External-stream wrappers are created once per pointer.
* ``kernel[grid, block, stream]`` builds a launch configuration object on every call; reusing
  it saves about 18 us per launch on an H200 (DESIGN.md), so configured kernels are cached by
  (kernel, grid, block, stream).
* ``NUMBANORM_CUDA_FAST_LAUNCH=1`` (opt-in until measured on a GPU by tools/gpu_check.py):
  after the first call of a kernel has compiled it through numba's normal path, later calls
  pack the arguments themselves (numba's ABI for a 1-D C-contiguous array: meminfo, parent,
  nitems, itemsize, data, shape, stride) from raw pointers and call ``cuda.core.launch`` on the
  compiled kernel, skipping DeviceNDArray construction, argument typing, overload lookup and
  per-argument conversion.
"""

from __future__ import annotations

import ctypes
import os
import warnings

from .compat import SIM, NumbaPerformanceWarning, cuda

if not SIM:  # pragma: no cover - hardware only
    from .arrays import Flat, to_numba
    from .compat import core_launch

_STREAMS: dict = {}
_CONFIGURED: dict = {}
_MAX_CONFIGURED = 4096


def stream_for(x) -> object:
    """The stream to launch on for array ``x`` (a DevArray)."""
    if SIM:
        return 0
    if x.kind == "torch":  # pragma: no cover - hardware only
        import torch

        ptr = torch.cuda.current_stream(x.obj.device).cuda_stream
    elif x.kind == "cupy":  # pragma: no cover - hardware only
        import cupy

        ptr = cupy.cuda.get_current_stream().ptr
    else:  # pragma: no cover - hardware only
        ptr = 0
    stream = _STREAMS.get(ptr)
    if stream is None:  # pragma: no cover - hardware only
        stream = cuda.default_stream() if ptr == 0 else cuda.external_stream(ptr)
        _STREAMS[ptr] = stream
    return stream


def configured(kernel, grid: tuple, block: tuple, stream) -> object:
    """``kernel[grid, block, stream]``, cached (not under the simulator, whose ``kernel[...]``
    stores the configuration on the kernel object itself and returns it)."""
    if SIM:
        return kernel[grid, block, stream]
    key = (kernel, grid, block, id(stream))
    cfg = _CONFIGURED.get(key)
    if cfg is None:
        if len(_CONFIGURED) >= _MAX_CONFIGURED:
            _CONFIGURED.clear()
        with warnings.catch_warnings():
            # numba warns about grids under 128 blocks; ours are sized on purpose (C channels
            # in the BN finalize, few rows in LN), and the warning would repeat per new shape.
            warnings.simplefilter("ignore", NumbaPerformanceWarning)
            cfg = _CONFIGURED[key] = kernel[grid, block, stream]
    return cfg


#: Read per call, so that tools/gpu_check.py can compare both paths in one process.
FAST_LAUNCH = [os.environ.get("NUMBANORM_CUDA_FAST_LAUNCH", "0") == "1" and not SIM]
_FAST: dict = {}
_CORE_STREAMS: dict = {}
_CORE_CONFIGS: dict = {}


def launch(kernel, grid: tuple, block: tuple, stream, *args) -> None:
    """Launch ``kernel`` on ``args``: flat arrays (``arrays.Flat`` on hardware, simulator
    arrays under the simulator), Python ints (int64) and floats (float64)."""
    if SIM:
        kernel[grid, block, stream](*args)
        return
    if FAST_LAUNCH[0]:  # pragma: no cover - hardware only
        key = (kernel, tuple(a.dtype if isinstance(a, Flat) else type(a) for a in args))
        compiled = _FAST.get(key)
        if compiled is not None:
            _fast_launch(compiled, grid, block, stream, args, Flat)
            return
        nargs = [to_numba(a) if isinstance(a, Flat) else a for a in args]
        configured(kernel, grid, block, stream)(*nargs)
        overload = kernel.compile(tuple(kernel.typeof_pyval(a) for a in nargs))
        _FAST[key] = overload._codelibrary.get_cufunc().kernel
        return
    configured(kernel, grid, block, stream)(*[to_numba(a) if isinstance(a, Flat) else a for a in args])


def pack_args(args, Flat) -> list:
    """The kernel parameters numba-cuda's ``_Kernel._prepare_args`` would pass for ``args``:
    per 1-D C-contiguous array (meminfo, parent, nitems, itemsize, data, shape, stride), int64
    and float64 scalars as ctypes values. ``tests/test_cuda.py`` checks this against the
    installed numba-cuda's own packing, so an ABI change there fails a test, not a launch."""
    kargs: list = []
    for a in args:
        if isinstance(a, Flat):
            kargs += (0, 0, a.n, a.itemsize, a.ptr, a.n, a.itemsize)
        elif isinstance(a, float):
            kargs.append(ctypes.c_double(a))
        else:
            kargs.append(ctypes.c_int64(a))
    return kargs


def _fast_launch(compiled, grid, block, stream, args, Flat) -> None:  # pragma: no cover - hardware only
    LaunchConfig, core_launch_fn, to_core_stream = core_launch()
    kargs = pack_args(args, Flat)
    core_stream = _CORE_STREAMS.get(id(stream))
    if core_stream is None:
        core_stream = _CORE_STREAMS[id(stream)] = to_core_stream(stream)
    cfg = _CORE_CONFIGS.get((grid, block))
    if cfg is None:
        cfg = _CORE_CONFIGS[(grid, block)] = LaunchConfig(grid=grid, block=block, shmem_size=0)
    core_launch_fn(core_stream, cfg, compiled, *kargs)
