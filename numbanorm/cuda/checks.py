"""The argument checks of ``numbanorm._checks`` on device-array metadata (no copy to the host).

``_checks`` holds one check sequence per op for both backends; it asks an "args" object how to
check one array argument. ``HOST`` there checks NumPy arrays; ``DEVICE`` here wraps CUDA arrays
(``arrays.wrap``) and checks their shape, dtype, layout and memory, with the same messages.
"""

from __future__ import annotations

from .._checks import check_disjoint, check_float_dtype, check_like_shape_dtype, check_shape_dtype, is_device_array
from . import arrays
from .arrays import DEVICE_DTYPES, DevArray
from .loads import io_of

__all__ = ["DEVICE", "DeviceArgs", "wrap_x", "param_dtype", "running_dtype", "stat_io", "overlaps"]


def wrap_x(x) -> DevArray:
    """x as a DevArray of a dtype the kernels handle."""
    dx = arrays.wrap(x, "x")
    check_float_dtype(dx.dtype, "x", DEVICE_DTYPES)
    return dx


def _param_dtypes(x: DevArray) -> tuple[str, ...]:
    # Half-precision inputs may come with float32 parameters / running stats (mixed precision).
    return (x.dtype, "float32") if x.dtype in ("float16", "bfloat16") else (x.dtype,)


def _wrap_param(p, name: str, shape: tuple[int, ...], x: DevArray) -> DevArray | None:
    if p is None:
        return None
    dp = arrays.wrap(p, name)
    allowed = _param_dtypes(x)
    check_shape_dtype(name, dp.shape, dp.dtype, shape, dp.dtype if dp.dtype in allowed else x.dtype)
    return arrays.dense(dp, name)


def _wrap_running(p, name: str, num_channels: int, x: DevArray, will_update: bool) -> DevArray | None:
    dp = _wrap_param(p, name, (num_channels,), x)
    if dp is not None and will_update:
        if dp.readonly:
            raise ValueError(f"{name} must be writeable: training=True updates it in place")
        if arrays.wrap(p, name).memory_order(0) != "c":  # an update of a copy would be lost
            raise ValueError(f"{name} must be contiguous: training=True updates it in place")
    return dp


def _wrap_out(out, x: DevArray, name: str = "out", x_name: str = "x") -> DevArray | None:
    """``_checks.check_out`` on device arrays."""
    if out is None:
        return None
    do = arrays.wrap(out, name)
    check_like_shape_dtype(name, do.shape, do.dtype, x.shape, x.dtype, x_name)
    if do.readonly:
        raise ValueError(f"{name} must be writeable")
    return do


def _wrap_like(a, name: str, x: DevArray) -> DevArray:
    """``_checks.check_like`` on a device array: shape and dtype of x."""
    da = arrays.wrap(a, name)
    check_float_dtype(da.dtype, name, DEVICE_DTYPES)
    check_like_shape_dtype(name, da.shape, da.dtype, x.shape, x.dtype)
    return da


def _wrap_stat(s, name: str, shape: tuple[int, ...]) -> DevArray:
    """``_checks.check_stat`` on a device array (any float dtype), made contiguous if it is not."""
    ds = arrays.wrap(s, name)
    check_float_dtype(ds.dtype, name, DEVICE_DTYPES)
    if ds.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (as returned by the forward), got {ds.shape}")
    return arrays.dense(ds, name)


def _check_disjoint(outputs, inputs) -> None:
    """``_checks.check_disjoint`` on device arrays (the arguments as the caller passed them)."""
    def dev(a):
        return arrays.wrap(a, "") if a is not None and (isinstance(a, DevArray) or is_device_array(a)) else None

    check_disjoint([(n, dev(a), p) for n, a, p in outputs], [(n, dev(a)) for n, a in inputs], overlaps, _same)


def overlaps(a: DevArray, b: DevArray) -> bool:
    """Whether the memory spans of two device arrays intersect."""
    (a0, a1), (b0, b1) = a.extent(), b.extent()
    return a0 < b1 and b0 < a1


def _same(a: DevArray, b: DevArray) -> bool:
    return a.ptr == b.ptr and a.strides == b.strides and a.shape == b.shape


class DeviceArgs:
    """``_checks.HostArgs`` on device-array metadata: the shared check sequences of
    ``numbanorm._checks`` call these for CUDA arrays (no copy to the host)."""

    param = staticmethod(_wrap_param)
    running = staticmethod(_wrap_running)
    out = staticmethod(_wrap_out)
    like = staticmethod(_wrap_like)
    stat = staticmethod(_wrap_stat)
    disjoint = staticmethod(_check_disjoint)


DEVICE = DeviceArgs()


# --------------------------------------------------------------------------------------------
# Dtype agreements the kernels rely on (one storage format per compiled argument)
# --------------------------------------------------------------------------------------------
def param_dtype(w: DevArray | None, b: DevArray | None, x: DevArray) -> str:
    """The one storage dtype of the affine parameters (weight and bias must agree)."""
    if w is not None and b is not None and w.dtype != b.dtype:
        raise TypeError(f"weight and bias must have one dtype, got {w.dtype} and {b.dtype}")
    return w.dtype if w is not None else (b.dtype if b is not None else x.dtype)


def running_dtype(rm: DevArray | None, rv: DevArray | None) -> str:
    """The one storage dtype of the running statistics ("float32" placeholder without them)."""
    if rm is None:
        return "float32"
    if rm.dtype != rv.dtype:
        raise TypeError(f"running_mean and running_var must have one dtype, got {rm.dtype} and {rv.dtype}")
    return rm.dtype


def stat_io(*stats: DevArray) -> str:
    """The one storage format (``loads.io_of``) of the saved statistics a backward reads."""
    if len({s.dtype == "bfloat16" for s in stats}) != 1:
        raise TypeError("the saved statistics must have one dtype")
    return io_of(stats[0].dtype)
