"""The one module of the CUDA backend that imports numba-cuda.

Every other module of ``numbanorm.cuda`` takes the kernel language and runtime (``cuda``), the
simulator flag and the numba-cuda internals it needs from here, so that a change of CUDA
compiler touches this file first. That is where issue #21 would pick numba-cuda-mlir
(``from numba_cuda_mlir import cuda``): it has no simulator, its extension API emits MLIR (so the
16-byte vector intrinsics in ``loads.py`` would need a second codegen), and it needs a driver even
for ``compile_ptx``.

What is imported here, and who uses it:

* ``cuda``, ``SIM``, ``jit_device``: every kernel module; ``types``: the element types of shared
  and local arrays (``loads.numba_float``) and of the vector intrinsics;
* ``NumbaPerformanceWarning``: ``launch.py``, which silences it for grids sized on purpose;
* hardware only: ``devicearray`` and ``driver`` (``arrays.py``: a flat ``DeviceNDArray`` over a
  raw pointer; ``launch.py``: ``core_launch``), ``libdevice`` and ``intrinsic``/``cgutils``/
  ``ir`` (``loads.py``: bit casts and 16-byte vector loads);
* simulator only: ``FakeCUDAArray`` (``arrays.py``: views of the simulator's NumPy-backed arrays).

It also holds the workaround for numba-cuda 0.30.4 on NumPy >= 2.5 (``patch_row_stack``, applied
on import on hardware).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda, types

__all__ = ["cuda", "types", "SIM", "jit_device", "NumbaPerformanceWarning", "patch_row_stack", "core_launch"]

#: The numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1, read by numba at import): kernels run as
#: Python, one thread per CUDA thread, with no warp shuffles and no intrinsics.
SIM = bool(numba.config.ENABLE_CUDASIM)

#: Device functions: inlined on hardware (each is a few instructions called per element).
jit_device = cuda.jit(device=True, inline=True) if not SIM else cuda.jit(device=True)

try:
    from numba.cuda.core.errors import NumbaPerformanceWarning
except ImportError:  # pragma: no cover - older numba-cuda
    from numba.core.errors import NumbaPerformanceWarning

if SIM:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    __all__ += ["FakeCUDAArray"]
else:  # pragma: no cover - hardware only
    from llvmlite import ir
    from numba.cuda import cgutils, libdevice
    from numba.cuda.cudadrv import devicearray, driver
    from numba.cuda.extending import intrinsic

    __all__ += ["ir", "cgutils", "libdevice", "devicearray", "driver", "intrinsic"]


def core_launch():  # pragma: no cover - hardware only
    """(``LaunchConfig``, ``launch``, stream converter) of ``cuda.core``: the lean launch path of
    ``launch.py`` (opt-in), imported on its first use."""
    from cuda.core import LaunchConfig
    from cuda.core import launch as core_launch_fn

    return LaunchConfig, core_launch_fn, driver._to_core_stream


# --------------------------------------------------------------------------------------------
# Workarounds for upstream bugs, each removable on its own
# --------------------------------------------------------------------------------------------
def patch_row_stack() -> None:
    """numba-cuda 0.30.4 + NumPy >= 2.5 (the lent GPU machines: numpy 2.5.2, numba 0.68.0,
    numba-cuda 0.30.4): ``numba/cuda/np/arrayobj.py`` runs ``overload(np.row_stack)`` for every
    NumPy >= 2.0, but NumPy 2.5 removed ``row_stack``. That module is imported lazily when the
    first kernel compiles, which then fails with ``AttributeError: module 'numpy' has no
    attribute 'row_stack'``. numba itself guards the same line with ``numpy_version < (2, 5)``.

    Fix: import that module once with ``np.row_stack`` aliased to ``np.vstack`` (what it always
    was), then remove the alias so NumPy's namespace is left as it was. REMOVE this shim once
    numba-cuda guards the overload (check: ``grep row_stack numba_cuda/numba/cuda/np/arrayobj.py``).
    """
    if hasattr(np, "row_stack"):
        return  # NumPy < 2.5: nothing to do
    np.row_stack = np.vstack
    try:
        import numba.cuda.np.arrayobj  # noqa: F401 - registers its overloads, then stays imported
    finally:
        del np.row_stack


if not SIM:  # pragma: no cover - hardware only
    patch_row_stack()
