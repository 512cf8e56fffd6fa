"""Which backend runs an op: the CPU kernels for host arrays, the CUDA backend for GPU arrays.

The fronts (``functional``, ``family``, ``backward``, ``stats``, ``layers``) reach the kernels only
through this module: ``cpu`` is the host backend (``numbanorm/cpu``, always there), and
``device_backend()`` the CUDA one (``numbanorm/cuda``). Host arrays never touch the latter's heavy
parts: detecting a device array is an attribute lookup, and ``numbanorm.cuda`` (which imports
numba.cuda) is imported only when such an array arrives.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import cpu
from ._checks import is_device_array

__all__ = ["cpu", "device_backend", "device_op", "is_device_array"]

_DEVICE: list[ModuleType] = []


def cuda_available() -> bool:
    """Whether the CUDA backend can be imported here (numba-cuda installed); no GPU is touched."""
    return importlib.util.find_spec("numba_cuda") is not None


def device_backend(move: str | None = None) -> ModuleType:
    """The CUDA backend module, or a clear error when it cannot be used here.

    ``move``: what asks for it when no CUDA array did (``"LayerNorm.to('cuda')"``), for the
    error's message; None: a CUDA array arrived."""
    if _DEVICE:
        return _DEVICE[0]
    if not cuda_available():
        if move is not None:
            raise TypeError(f"{move} moves the layer to the GPU, but numba-cuda is not installed; install it "
                            "with `pip install 'numbanorm[cuda]'`, or keep the layer on the CPU")
        raise TypeError(
            "numbanorm got a CUDA array (it has __cuda_array_interface__), but numba-cuda is not "
            "installed; install it with `pip install 'numbanorm[cuda]'`, or pass a NumPy array"
        )
    from . import cuda

    try:
        cuda.require_gpu()
    except RuntimeError:
        if move is None:
            raise
        raise RuntimeError(f"{move} moves the layer to the GPU, but numba.cuda finds no usable GPU (driver "
                           "missing or too old, or no device visible); run numba -s to diagnose, or keep the "
                           "layer on the CPU") from None
    _DEVICE.append(cuda)
    return cuda


def device_op(name: str) -> Callable[..., Any]:
    """The CUDA backend's ``name``, or a clear error while it has no such op."""
    op: Callable[..., Any] | None = getattr(device_backend(), name, None)
    if op is None:
        raise TypeError(f"{name} has no CUDA implementation yet; pass NumPy arrays (host memory)")
    return op
