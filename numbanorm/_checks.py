"""Argument checking shared by every backend. Each failure names the argument and what was
expected; nothing here mutates its inputs, so a failed call leaves running stats untouched."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

#: Floating dtypes the kernels accept.
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Fast paths: each check first accepts the common case (exact types, native dtypes) in a few
# cheap tests and otherwise falls through to the full check, which alone raises.
_F32, _F64 = SUPPORTED_DTYPES
_INF = math.inf


def as_float_array(x: object, name: str = "x") -> np.ndarray:
    """``x`` as an ndarray of a supported floating dtype (array-likes are converted)."""
    if type(x) is np.ndarray and (x.dtype is _F32 or x.dtype is _F64):
        return x
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {arr.dtype}"
            + (" (integer, bool and complex inputs are not normalized)" if arr.dtype.kind in "biuc" else "")
        )
    return arr


def check_eps(eps: object) -> float:
    if type(eps) is float and 0.0 < eps < _INF:
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a positive finite real number, got {type(eps).__name__}")
    value = float(eps)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"eps must be a positive finite real number, got {value!r}")
    return value


def check_momentum(momentum: object) -> float:
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        return momentum
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a real number in [0, 1], got {type(momentum).__name__}")
    value = float(momentum)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {value!r}")
    return value


def check_channel_axis(channel_axis: object, ndim: int) -> int:
    if type(channel_axis) is int and -ndim <= channel_axis < ndim:
        return channel_axis % ndim
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
        raise TypeError(f"channel_axis must be an int, got {type(channel_axis).__name__}")
    axis = int(channel_axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"channel_axis must be in [{-ndim}, {ndim - 1}] for a {ndim}-D input, got {axis}")
    return axis % ndim


def check_normalized_shape(normalized_shape: object, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple that must equal the trailing dims of ``x``."""
    if type(normalized_shape) is int and x_shape and x_shape[-1] == normalized_shape:
        return (normalized_shape,)
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        shape: tuple[int, ...] = (int(normalized_shape),)
    elif isinstance(normalized_shape, Sequence) and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in normalized_shape
    ):
        shape = tuple(int(d) for d in normalized_shape)
    else:
        raise TypeError(f"normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}")
    k = len(shape)
    if k == 0 or k > len(x_shape) or tuple(x_shape[len(x_shape) - k :]) != shape:
        raise ValueError(
            f"normalized_shape {shape} must be non-empty and equal the trailing dims of x, "
            f"whose shape is {tuple(x_shape)}"
        )
    return shape


def check_param(p: object, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """An optional parameter (weight, bias) with exactly ``shape`` and ``dtype``, as a flat
    contiguous array, or None."""
    if p is None:
        return None
    if type(p) is np.ndarray and p.shape == shape and p.dtype == dtype and p.flags.c_contiguous:
        return p if p.ndim == 1 else p.reshape(-1)
    arr = p if isinstance(p, np.ndarray) else np.asarray(p)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the dtype of x), got {arr.dtype}")
    return np.ascontiguousarray(arr).reshape(-1)


def check_running_stat(p: object, name: str, num_channels: int, dtype: np.dtype, will_update: bool):
    """A running statistic: an ndarray of shape (C,) and x's dtype, writeable if updated."""
    if p is None:
        return None
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape ({num_channels},), got {type(p).__name__}")
    check_param(p, name, (num_channels,), dtype)
    if will_update and not p.flags.writeable:
        raise ValueError(f"{name} must be writeable: training=True updates it in place")
    return p


def check_out(out: object, x: np.ndarray) -> np.ndarray | None:
    """``out`` must match ``x`` in shape and dtype, be writeable, and be ``x`` itself or not
    overlap it (a partial overlap would overwrite input that is still to be read)."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"out must have the shape of x, {x.shape}, got {out.shape}")
    if out.dtype != x.dtype:
        raise TypeError(f"out must have the dtype of x, {x.dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    if out is x or not np.shares_memory(out, x):
        return out
    same = out.__array_interface__["data"][0] == x.__array_interface__["data"][0] and out.strides == x.strides
    if not same:
        raise ValueError("out overlaps x without being x itself; pass out=x for in place, or a separate array")
    return out
