"""Dispatch to the CUDA backend for arrays that live on a GPU.

Host arrays never touch this module's heavy parts: detecting a device array is an attribute
lookup, and the CUDA backend (``numbanorm.cuda``, which imports ``numba.cuda``) is imported only
when such an array arrives.
"""

from __future__ import annotations

_BACKEND: list = []


def is_device_array(x: object) -> bool:
    """True for ``__cuda_array_interface__`` arrays (CuPy, torch CUDA, numba device arrays) and
    for numba's device arrays under the simulator (which lack the interface)."""
    return hasattr(x, "__cuda_array_interface__") or getattr(x, "__cuda_ndarray__", False) is True


def backend():
    """The CUDA backend module, or a clear error when it cannot be used here."""
    if _BACKEND:
        return _BACKEND[0]
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        raise TypeError(
            "numbanorm got a CUDA array (it has __cuda_array_interface__), but numba-cuda is not "
            "installed; install it with `pip install 'numbanorm[cuda]'`, or pass a NumPy array"
        )
    from . import cuda

    cuda.require_gpu()
    _BACKEND.append(cuda)
    return cuda
