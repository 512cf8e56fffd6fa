"""The numba.cuda backend: the public ops on GPU arrays (numba device arrays, CuPy, torch).

Imported lazily by ``numbanorm._backend.device_backend()`` when a CUDA array arrives; importing
numbanorm itself never imports numba.cuda. Each op module is the peer of the CPU's module of
the same name:

* ``layer_norm.py``, ``batch_norm.py``, ``family.py`` (RMSNorm, add+LN, GroupNorm,
  InstanceNorm), ``backward.py`` (+ ``backward_kernels.py``): each op's kernels and driver;
* ``moments.py``: block reductions, the one Chan merge, the partial-moment kernels;
* ``loads.py``: element loads and stores (bfloat16 bits, 16-byte vectors); ``plan.py``: block
  and grid sizes;
* ``arrays.py``: array interop, canonical views, allocation of the caller's kind;
  ``checks.py``: the shared check sequences on device metadata; ``launch.py``: streams and
  configured launches; ``params.py``: layer state on the device;
* ``compat.py``: the one module that imports numba-cuda.

The package's attributes ``layer_norm`` and ``batch_norm`` are the entry points (functions), which
shadow the submodules of the same names: reach those with
``importlib.import_module("numbanorm.cuda.layer_norm")`` (``sys.modules``), not attribute access.
"""

from __future__ import annotations

from .backward import batch_norm_backward, group_norm_backward, layer_norm_backward, rms_norm_backward
from .batch_norm import batch_norm
from .compat import cuda
from .family import add_layer_norm, group_norm, instance_norm, rms_norm
from .layer_norm import layer_norm
from .params import clone, dtype_name, to_device, to_host, write

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
