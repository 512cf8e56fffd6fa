"""Host side of a launch: the stream to run on and a cache of configured kernels.

* Stream: the producer's *current* stream (torch's / CuPy's), so the kernels are ordered after
  the work that produced x and before the work that will consume y, with no synchronization.
  numba arrays use the default stream. External-stream wrappers are created once per pointer.
* ``kernel[grid, block, stream]`` builds a launch configuration object on every call; reusing
  it saves about 18 us per launch on an H200 (DESIGN.md), so configured kernels are cached by
  (kernel, grid, block, stream).
"""

from __future__ import annotations

import warnings

from numba import cuda

from ._kernels import SIM

try:
    from numba.cuda.core.errors import NumbaPerformanceWarning
except ImportError:  # pragma: no cover - older numba-cuda
    from numba.core.errors import NumbaPerformanceWarning

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
