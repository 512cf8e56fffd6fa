"""Dispatch to the CUDA backend for arrays that live on a GPU.

Host arrays never touch this module's heavy parts: detecting a device array is one attribute
lookup, and the CUDA backend is imported only when such an array arrives.
"""

from __future__ import annotations


def is_device_array(x: object) -> bool:
    return hasattr(x, "__cuda_array_interface__")


def backend():
    """The CUDA backend module, or a clear error when it cannot be used here."""
    raise TypeError(
        "numbanorm got a CUDA array (it has __cuda_array_interface__), but the CUDA backend is not "
        "available in this build; pass a NumPy array"
    )
