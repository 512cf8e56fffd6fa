"""Which backend runs an op: the CPU kernels for host arrays, the CUDA backend for GPU arrays.

The fronts (``functional``, ``family``, ``backward``, ``stats``, ``layers``) reach the kernels only
through this module: ``cpu`` is the host backend (``numbanorm/cpu``, always there), and
``device_backend()`` the CUDA one (``numbanorm/cuda``). Host arrays never touch the latter's heavy
parts: detecting a device array is an attribute lookup, and ``numbanorm.cuda`` (which imports
numba.cuda) is imported only when such an array arrives.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from . import cpu
from ._checks import is_device_array

__all__ = ["cpu", "device_backend", "device_op", "is_device_array"]

_DEVICE: list[ModuleType] = []


def cuda_available() -> bool:
    """Whether the CUDA backend can be imported here (numba-cuda installed); no GPU is touched."""
    return importlib.util.find_spec("numba_cuda") is not None


def device_backend() -> ModuleType:
    """The CUDA backend module, or a clear error when it cannot be used here."""
    if _DEVICE:
        return _DEVICE[0]
    if not cuda_available():
        raise TypeError(
            "numbanorm got a CUDA array (it has __cuda_array_interface__), but numba-cuda is not "
            "installed; install it with `pip install 'numbanorm[cuda]'`, or pass a NumPy array"
        )
    from . import cuda

    cuda.require_gpu()
    _DEVICE.append(cuda)
    return cuda


def device_op(name: str):
    """The CUDA backend's ``name``, or a clear error while it has no such op."""
    op = getattr(device_backend(), name, None)
    if op is None:
        raise TypeError(f"{name} has no CUDA implementation yet; pass NumPy arrays (host memory)")
    return op
