"""The numba.cuda backend: the public ops on GPU arrays (numba device arrays, CuPy, torch).

Imported lazily by ``numbanorm._device.backend()`` when a CUDA array arrives; importing
numbanorm itself never imports numba.cuda. Layout:

* ``_kernels.py``: the kernels (built per dtype by cached factories) and reductions;
* ``_arrays.py``: array interop, zero-copy flat views, allocation of the caller's kind;
* ``_launch.py``: stream selection and the cache of configured launches;
* ``_functional.py``: argument checks (shared with the CPU path) and the host-side drivers.

* ``_kernels_backward.py`` / ``_backward.py``: the backward kernels and their drivers;
* ``_params.py``: layer parameters and buffers as numba device arrays (``Layer.to("cuda")``);
* ``_kernels_family.py`` / ``_family.py``: RMSNorm, residual-add LayerNorm (the LN row kernel's
  other modes), GroupNorm and InstanceNorm (the BN kernels batched over samples).
"""

from __future__ import annotations

import numba
from numba import cuda

from ._compat import patch_row_stack

if not numba.config.ENABLE_CUDASIM:  # pragma: no cover - hardware only
    patch_row_stack()

from ._backward import (  # noqa: E402
    batch_norm_backward,
    group_norm_backward,
    layer_norm_backward,
    rms_norm_backward,
)
from ._family import add_layer_norm, group_norm, instance_norm, rms_norm  # noqa: E402
from ._functional import batch_norm, layer_norm  # noqa: E402
from ._params import clone, dtype_name, to_device, to_host, write  # noqa: E402

__all__ = ["batch_norm", "layer_norm", "batch_norm_backward", "layer_norm_backward", "rms_norm_backward",
           "group_norm_backward", "rms_norm", "group_norm",
           "instance_norm", "add_layer_norm", "require_gpu", "to_device", "to_host", "clone", "write", "dtype_name"]

_CHECKED: list = []


def require_gpu() -> None:
    """Raise a clear error when no usable CUDA device/driver is present (checked once)."""
    if _CHECKED:
        return
    if not cuda.is_available():
        raise RuntimeError(
            "numbanorm got a CUDA array but numba.cuda finds no usable GPU (driver missing or too "
            "old, or no device visible); run numba -s to diagnose, or pass NumPy arrays"
        )
    _CHECKED.append(True)
