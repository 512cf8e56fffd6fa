"""GPU array interop: read numba / CuPy / torch / any ``__cuda_array_interface__`` array
without copying, hand the kernels flat numba arrays, and allocate outputs of the caller's kind.

Why not ``cuda.as_cuda_array``: it parses the interface dict, creates an external stream object
and, with ``NUMBA_CUDA_ARRAY_INTERFACE_SYNC=1`` (the default), synchronizes the producer's
stream on every call. Here torch and CuPy arrays are read through their own cheap attributes
(``data_ptr()``/``stride()``, ``.data.ptr``/``.strides``), the kernels run on the producer's
*current* stream (so no synchronization is needed for ordering), and one flat
``DeviceNDArray`` is built directly over the pointer. torch bfloat16 tensors are passed as
int16 bits (``__cuda_array_interface__`` has no bfloat16).

Under the simulator (NUMBA_ENABLE_CUDASIM=1) only numba's (fake) device arrays exist; they
wrap NumPy arrays, and views are NumPy views.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from .. import _layout
from .compat import SIM, cuda

if SIM:
    from .compat import FakeCUDAArray
else:  # pragma: no cover - hardware only
    from .compat import devicearray, driver

#: Any CUDA array the backend accepts: a numba device array, a CuPy array, a torch CUDA tensor or
#: another ``__cuda_array_interface__`` object (the public entry points take and return these).
GpuArray = Any

#: dtypes the CUDA kernels read and write (bfloat16 only through torch tensors).
DEVICE_DTYPES = ("float16", "bfloat16", "float32", "float64")
_TORCH_FLOATS = {"torch.float16": "float16", "torch.bfloat16": "bfloat16", "torch.float32": "float32",
                 "torch.float64": "float64"}


class DevArray:
    """One GPU array argument: its owner object and kind, and its memory geometry."""

    __slots__ = ("obj", "kind", "dtype", "shape", "strides", "itemsize", "ptr", "readonly")

    def __init__(self, obj, kind, dtype, shape, strides, itemsize, ptr, readonly=False):
        self.obj = obj
        self.kind = kind          # "numba", "torch", "cupy" or "cai" (any other interface)
        self.dtype = dtype        # a name from DEVICE_DTYPES (or another dtype's name)
        self.shape = tuple(shape)
        self.strides = tuple(strides)  # bytes
        self.itemsize = itemsize
        self.ptr = ptr
        self.readonly = readonly

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def memory_order(self, axis: int) -> str | None:
        """"c" for C-contiguous, "moved" when moving ``axis`` last is C-contiguous (an NCHW
        array stored channels-last), else None (``_layout.memory_order``)."""
        return _layout.memory_order(self.shape, self.strides, self.itemsize, axis)

    def extent(self) -> tuple[int, int]:
        lo = hi = self.ptr
        for n, s in zip(self.shape, self.strides, strict=True):
            if n == 0:
                return self.ptr, self.ptr
            lo += min(0, s * (n - 1))
            hi += max(0, s * (n - 1))
        return lo, hi + self.itemsize


def _c_strides(shape, itemsize):
    strides, acc = [], itemsize
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def kind_of(obj) -> str:
    if getattr(obj, "__cuda_ndarray__", False):
        return "numba"
    module = type(obj).__module__
    if module.startswith("torch"):
        return "torch"
    if module.startswith("cupy"):
        return "cupy"
    return "cai"


def wrap(obj, name: str) -> DevArray:
    """Describe a GPU array; TypeError for a host array."""
    if isinstance(obj, DevArray):
        return obj
    kind = kind_of(obj)
    if kind == "numba":
        if SIM:
            a = obj._ary
            dev = DevArray(obj, kind, a.dtype.name, a.shape, a.strides, a.itemsize, a.ctypes.data)
        else:  # pragma: no cover - hardware only
            dev = DevArray(obj, kind, obj.dtype.name, obj.shape, obj.strides, obj.dtype.itemsize,
                           obj.device_ctypes_pointer.value or 0)
    elif kind == "torch":
        if not getattr(obj, "is_cuda", False):
            raise TypeError(f"{name} is a torch tensor on {obj.device}, but x is a CUDA array; "
                            "host and device arrays cannot be mixed")
        dtype = _TORCH_FLOATS.get(str(obj.dtype), str(obj.dtype).replace("torch.", ""))
        item = obj.element_size()
        dev = DevArray(obj, kind, dtype, obj.shape, tuple(s * item for s in obj.stride()), item, obj.data_ptr())
    elif kind == "cupy":
        dev = DevArray(obj, kind, obj.dtype.name, obj.shape, obj.strides, obj.dtype.itemsize, obj.data.ptr)
    else:
        desc = getattr(obj, "__cuda_array_interface__", None)
        if desc is None:
            raise TypeError(f"{name} is a {type(obj).__name__}, not a CUDA array, but x is a CUDA array; "
                            "host and device arrays cannot be mixed (pass GPU arrays for every argument)")
        dt = np.dtype(desc["typestr"])
        shape = tuple(desc["shape"])
        strides = desc.get("strides") or _c_strides(shape, dt.itemsize)
        ptr, readonly = desc["data"]
        dev = DevArray(obj, kind, dt.name, shape, strides, dt.itemsize, ptr or 0, bool(readonly))
    return dev


# --------------------------------------------------------------------------------------------
# Kernel arguments: flat 1-D numba arrays over the memory
# --------------------------------------------------------------------------------------------
def _kernel_dtype(dtype: str):
    return np.dtype(np.int16) if dtype == "bfloat16" else np.dtype(dtype)


if SIM:

    def flat(dev: DevArray):
        """The memory of a dense array as a flat array (bfloat16 as int16 bits)."""
        a = dev.obj._ary
        if not a.flags.c_contiguous:
            a = a.transpose(sorted(range(a.ndim), key=lambda k: -a.strides[k] if a.shape[k] > 1 else 0))
        view = a.reshape(-1)
        assert view.size == 0 or np.shares_memory(view, dev.obj._ary), "flat() must not copy"
        return _FakeFlat(view)

    def _FakeFlat(a):
        return FakeCUDAArray(a)

else:  # pragma: no cover - hardware only
    from typing import NamedTuple

    _CTX = []

    class Flat(NamedTuple):
        """A dense array's memory as a flat kernel argument: raw pointer and size, plus the
        owner that keeps the memory alive until the launch is queued."""

        ptr: int
        n: int
        itemsize: int
        dtype: np.dtype
        owner: object

    def flat(dev: DevArray) -> Flat:
        """The memory of a dense array as a flat kernel argument (bfloat16 as int16 bits)."""
        kdt = _kernel_dtype(dev.dtype)
        return Flat(dev.ptr, dev.size, kdt.itemsize, kdt, dev.obj)

    def _context():
        if not _CTX:
            _CTX.append(cuda.current_context())
        return _CTX[0]

    def to_numba(f: Flat):
        """A flat DeviceNDArray over the pointer, built without the interface protocol (no dict
        parsing, no stream object, no synchronization)."""
        data = driver.MemoryPointer(_context(), driver.binding.CUdeviceptr(f.ptr), size=f.n * f.itemsize,
                                     owner=f.owner)
        return devicearray.DeviceNDArray(shape=(f.n,), strides=(f.itemsize,), dtype=f.dtype, gpu_data=data)


# --------------------------------------------------------------------------------------------
# Allocation of the caller's kind
# --------------------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def _cupy():
    import cupy

    return cupy


_TORCH_DTYPE_NAMES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64"}


def empty_like(x: DevArray) -> DevArray:
    """An uninitialized array of x's kind, dtype, shape and memory layout (channels-last stays
    channels-last, as torch does)."""
    if x.kind == "torch":
        return wrap(_torch().empty_like(x.obj), "out")
    if x.kind == "cupy":
        return wrap(_cupy().empty_like(x.obj), "out")
    # numba (and foreign interfaces, whose producer we cannot call): a numba device array.
    order = sorted(range(x.ndim), key=lambda k: -x.strides[k] if x.shape[k] > 1 else 0)
    if order == sorted(order) or x.memory_order(0) == "c":
        return _typed(wrap(_numba_empty(x.shape, x.dtype), "out"), x.dtype)
    mem_shape = tuple(x.shape[k] for k in order)
    buf = _numba_empty(mem_shape, x.dtype)
    inverse = [order.index(k) for k in range(x.ndim)]
    return _typed(wrap(_numba_permuted(buf, inverse), "out"), x.dtype)


def _typed(dev: DevArray, dtype: str) -> DevArray:
    dev.dtype = dtype  # a bfloat16 buffer held as int16 bits
    return dev


def empty(like: DevArray, shape: tuple[int, ...], dtype: str) -> DevArray:
    """A C-contiguous array of ``like``'s kind (stats, scratch), on its device."""
    if like.kind == "torch":
        torch = _torch()
        return wrap(torch.empty(shape, dtype=getattr(torch, dtype), device=like.obj.device), "stats")
    if like.kind == "cupy":
        cupy = _cupy()
        with cupy.cuda.Device(like.obj.device.id):
            return wrap(cupy.empty(shape, dtype=dtype), "stats")
    return _typed(wrap(_numba_empty(shape, dtype), "stats"), dtype)


_SCRATCH = threading.local()  # per thread: two threads' launches on one stream may interleave


def scratch(like: DevArray, n: int, dtype: str, slot: int) -> DevArray:
    """Internal work space (BN partials and coefficients), never returned to the caller.

    torch and CuPy inputs take it from their caching allocators. numba's ``device_array`` is a
    bare cudaMalloc, and freeing it synchronizes the device, so numba and foreign inputs (always
    launched on the default stream, so stream-ordered reuse is safe) reuse one grow-only buffer
    per slot.

    Slots (one buffer each, so arrays live at once never share one): 0-2 the normalize
    coefficients (BatchNorm, GroupNorm), 3-5 the partial moments / partial sums, 6-7 the LN
    backward's grad_weight partial rows, 8-11 the backward's grad_x coefficients, 12-13 GroupNorm's
    per-(n, c) moments (forward) or grad_weight parts (backward), 14-15 the row stats the caller
    does not get back (RMSNorm, add+LN)."""
    if like.kind in ("torch", "cupy") or SIM:
        return empty(like, (n,), dtype)
    cache = _SCRATCH.__dict__.setdefault("buffers", {})  # pragma: no cover - hardware only
    buf = cache.get((slot, dtype))
    if buf is None or buf.size < n:
        buf = cache[(slot, dtype)] = wrap(_numba_empty((max(n, 1024),), dtype), "scratch")
    return DevArray(buf.obj, buf.kind, dtype, (n,), (buf.itemsize,), buf.itemsize, buf.ptr)


def from_host(like: DevArray, values: np.ndarray) -> DevArray:
    """A copy of a small host array as ``like``'s kind (used for degenerate empty inputs)."""
    if like.kind == "torch":
        return wrap(_torch().from_numpy(np.ascontiguousarray(values)).to(like.obj.device), "stats")
    if like.kind == "cupy":
        return wrap(_cupy().asarray(values), "stats")
    return wrap(cuda.to_device(np.ascontiguousarray(values)), "stats")


def zeros(like: DevArray, shape: tuple[int, ...], dtype: str) -> DevArray:
    """A zero-filled C-contiguous array of ``like``'s kind (bfloat16 too: torch makes it)."""
    if like.kind == "torch":
        torch = _torch()
        return _typed(wrap(torch.zeros(shape, dtype=getattr(torch, dtype), device=like.obj.device), "zeros"), dtype)
    if like.kind == "cupy":
        cupy = _cupy()
        with cupy.cuda.Device(like.obj.device.id):
            return wrap(cupy.zeros(shape, dtype=dtype), "zeros")
    return _typed(from_host(like, np.zeros(shape, _kernel_dtype(dtype))), dtype)


def contiguous(x: DevArray, name: str) -> DevArray:
    """A C-contiguous copy of a strided array (torch/CuPy through their own copy)."""
    if x.kind == "torch":
        return wrap(x.obj.contiguous(), name)
    if x.kind == "cupy":
        return wrap(_cupy().ascontiguousarray(x.obj), name)
    if SIM:
        return wrap(_FakeFlat(np.ascontiguousarray(x.obj._ary)), name)
    raise ValueError(f"{name} must be C-contiguous (or channels-last for batch_norm) when it is a numba "
                     "device array or a foreign __cuda_array_interface__ array; pass a contiguous copy")


def copy_into(dst: DevArray, src: DevArray) -> None:
    """``dst[...] = src`` for arrays of one logical shape (the ``out=`` fallback)."""
    if dst.kind == "torch":
        dst.obj.copy_(src.obj if src.kind == "torch" else _torch().as_tensor(src.obj, device=dst.obj.device))
        return
    if dst.kind == "cupy":
        dst.obj[...] = _cupy().asarray(src.obj)
        return
    if SIM:
        dst.obj._ary[...] = src.obj._ary
        return
    raise ValueError("out must have the memory layout of x when it is a numba device array or a foreign "
                     "__cuda_array_interface__ array")


def reshape(dev: DevArray, shape: tuple[int, ...]) -> object:
    """A C-contiguous array of the caller's kind viewed with a new shape (stats)."""
    obj = dev.obj
    if dev.kind in ("torch", "cupy"):
        return obj.reshape(shape)
    if SIM:
        return _FakeFlat(obj._ary.reshape(shape))
    return obj.reshape(shape) if shape != tuple(obj.shape) else obj  # pragma: no cover - hardware


def _numba_empty(shape, dtype: str):
    if SIM:  # bfloat16 as int16 bits: how the simulator tests feed the bf16 kernels
        return _FakeFlat(np.empty(shape, _kernel_dtype(dtype)))
    if dtype == "bfloat16":  # pragma: no cover - hardware only
        raise TypeError("bfloat16 arrays are only supported as torch tensors")
    return cuda.device_array(shape, dtype)  # pragma: no cover - hardware only


def _numba_permuted(buf, axes):
    if SIM:
        return _FakeFlat(buf._ary.transpose(axes))
    # pragma: no cover - hardware only: a permuted view over the same allocation
    strides = tuple(buf.strides[k] for k in axes)
    shape = tuple(buf.shape[k] for k in axes)
    return devicearray.DeviceNDArray(shape=shape, strides=strides, dtype=buf.dtype, gpu_data=buf.gpu_data)


def flat_or(p: DevArray | None, placeholder):
    """The kernel argument for an optional array. numba-cuda cannot pass None to a kernel, so an
    absent one is compiled out of the kernel and ``placeholder`` (any flat array) fills its slot."""
    return placeholder if p is None else flat(p)


# --------------------------------------------------------------------------------------------
# The canonical view of a device array (decided by ``numbanorm._layout``), and where an op's
# result goes
# --------------------------------------------------------------------------------------------
def dense(dev: DevArray, name: str) -> DevArray:
    """``dev`` itself when it is C-contiguous, else a C-contiguous copy (rows, parameters)."""
    return dev if dev.memory_order(0) == "c" else contiguous(dev, name)


def channel_view(dx: DevArray, axis: int) -> tuple[DevArray, str, tuple[int, int, int]]:
    """(x to read, its memory order, its ``(outer, C, inner)`` view): x as stored when it is
    C-contiguous or channels-last about ``axis``, else a C-contiguous copy."""
    order = dx.memory_order(axis)
    src = dx if order is not None else contiguous(dx, "x")
    order = order or "c"
    return src, order, _layout.canonical_shape(src.shape, axis, order)


def paired_view(dx: DevArray, dg: DevArray, axis: int) -> tuple[DevArray, DevArray, str, tuple[int, int, int]]:
    """(x, grad_out, memory order, view) laid out alike, so both are read with the same indices:
    as stored when they agree (C-contiguous or channels-last), else both C-contiguous (one copy
    each at most)."""
    src, order, _ = channel_view(dx, axis)
    gsrc = dg
    if dg.memory_order(axis) != order or (order == "moved" and dg.strides != src.strides):
        src = src if order == "c" else contiguous(src, "x")
        gsrc = dense(dg, "grad_out")
        order = "c"
    return src, gsrc, order, _layout.canonical_shape(src.shape, axis, order)


class Output:
    """Where the kernels write an op's result, and the one way it reaches the caller (the CUDA
    twin of ``_layout.Output``).

    ``target`` is ``out`` itself when its memory layout is the source's (``order`` "c", or
    "moved" about ``axis`` with the source's strides), else a new array of the source's layout;
    ``finish()`` copies that into ``out`` (when there is one) and returns the caller's array.
    """

    __slots__ = ("result", "target")

    def __init__(self, dout: DevArray | None, src: DevArray, axis: int = 0, order: str = "c") -> None:
        if dout is not None and dout.memory_order(axis) == order and (order == "c" or dout.strides == src.strides):
            self.result = self.target = dout
        else:
            self.target = empty_like(src)
            self.result = dout if dout is not None else self.target

    def finish(self) -> GpuArray:
        if self.result is not self.target:
            copy_into(self.result, self.target)
        return self.result.obj
