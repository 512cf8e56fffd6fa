"""Layer state on the GPU: parameters, running statistics and saved copies as numba device arrays.

Used by ``numbanorm.layers`` (through ``numbanorm._device.backend()``) when a layer moves to
"cuda". Only numba's own device-array API is used (``to_device``, ``device_array_like``,
``copy_to_host``/``copy_to_device``), so the same code runs on hardware and in the simulator.
"""

from __future__ import annotations

import numpy as np

from .arrays import wrap
from .compat import cuda

__all__ = ["to_device", "to_host", "clone", "write", "dtype_name"]


def to_device(a: np.ndarray):
    """A numba device array holding a copy of host array ``a``."""
    return cuda.to_device(np.ascontiguousarray(a))


def to_host(d) -> np.ndarray:
    """A host copy of a CUDA array: numba's (the layer's parameters), or a CuPy / torch array (the
    grads a backward returned for such inputs)."""
    if hasattr(d, "copy_to_host"):
        return d.copy_to_host()
    if hasattr(d, "get"):  # CuPy
        return d.get()
    return d.detach().cpu().numpy()  # torch


def clone(d):
    """A device-side copy of numba device array ``d`` (no round trip through the host)."""
    c = cuda.device_array_like(d)
    c.copy_to_device(d)
    return c


def write(d, values: np.ndarray) -> None:
    """``d[...] = values`` for a numba device array and a host array of its shape and dtype."""
    d.copy_to_device(np.ascontiguousarray(values, d.dtype))


def dtype_name(x) -> str:
    """The dtype name of a CUDA array of any kind (numba, CuPy, torch), read from its metadata."""
    return wrap(x, "x").dtype
