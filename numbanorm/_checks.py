"""Argument checking shared by every backend. Each failure names the argument and what was
expected; nothing here mutates its inputs, so a failed call leaves running stats untouched."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import DTypeLike

from ._overlap import check_disjoint
from .cpu.halfio import is_bfloat16, is_half
from .moments import Moments

#: Floating dtypes the kernels accept; ml_dtypes' bfloat16 is accepted too (see ``is_supported``).
SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
#: What the host functions accept, for messages ("bfloat16" needs no ml_dtypes import).
_HOST_DTYPES = (np.dtype(np.float16), "bfloat16", np.dtype(np.float32), np.dtype(np.float64))


def is_device_array(x: object) -> bool:
    """True for ``__cuda_array_interface__`` arrays (CuPy, torch CUDA, numba device arrays) and
    for numba's device arrays under the simulator (which lack the interface)."""
    return hasattr(x, "__cuda_array_interface__") or getattr(x, "__cuda_ndarray__", False) is True


def is_supported(dtype: np.dtype[Any]) -> bool:
    return dtype in SUPPORTED_DTYPES or is_bfloat16(dtype)

# Each check first accepts the common case (exact types, native dtypes) in a few cheap tests; the
# fast paths' own tests are in ``_fast_checks``.
_F16, _F32, _F64 = SUPPORTED_DTYPES
_INF = math.inf


def as_float_array(x: object, name: str = "x") -> np.ndarray:
    """``x`` as an ndarray of a supported floating dtype.

    Array-likes are converted with ``np.asarray``, and a list or tuple of integers becomes
    float64, as the same numbers written as floats would (NumPy's ``np.mean`` converts them so
    too); an integer *ndarray* is refused (its dtype was chosen: convert it explicitly)."""
    if type(x) is np.ndarray and (x.dtype is _F32 or x.dtype is _F64):
        return x
    if isinstance(x, np.ndarray):
        arr = x
    else:
        if x is None:
            raise TypeError(f"{name} is None; expected an array of dtype {_dtype_list(_HOST_DTYPES)}")
        arr = _converted(x, name)
    if not is_supported(arr.dtype):
        check_float_dtype(arr.dtype, name, _HOST_DTYPES)
    return arr


def _converted(a: object, name: str) -> np.ndarray:
    """An array-like (not an ndarray) as NumPy converts it, but integer lists and tuples as float64."""
    arr = np.asarray(a)
    if arr.dtype.kind in "iu" and isinstance(a, (list, tuple)):
        return arr.astype(np.float64)
    if arr.dtype.kind == "O":
        raise TypeError(f"{name} must be an array of numbers, got {type(a).__name__} (NumPy converts it to an "
                        f"array of dtype object)")
    return arr


def _dtype_list(dtypes: Sequence[DTypeLike]) -> str:
    names = [str(d) for d in dtypes]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _got_shape(shape: tuple[int, ...]) -> str:
    """How a message names the shape of an array that has too few dims."""
    return "a 0-d array (a scalar)" if not shape else f"shape {tuple(shape)}"


def check_float_dtype(dtype: DTypeLike, name: str = "x", supported: Sequence[DTypeLike] = SUPPORTED_DTYPES) -> None:
    """``dtype`` (an np.dtype or a dtype name such as "bfloat16") must be one of ``supported``."""
    if dtype in supported:
        return
    kind: str
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        kind = ""
    raise TypeError(
        f"{name} must have dtype {_dtype_list(supported)}, got {dtype}"
        + (" (integer, bool and complex inputs are not normalized)" if kind in "biuc" and kind else "")
    )


def reject_device(p: object, name: str) -> None:
    """A host call got a GPU array for ``name``: say so instead of a confusing conversion error."""
    if is_device_array(p):
        raise TypeError(f"{name} is a CUDA array but x is a host array; host and device arrays cannot be "
                        "mixed (pass NumPy arrays, or put x on the GPU too)")


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
    if not x_shape:
        raise ValueError(f"x must have at least 1 dim (the normalized dims), got {_got_shape(x_shape)}")
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


def check_param(p: object, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray | None:
    """An optional parameter (weight, bias) with exactly ``shape`` and ``dtype``, as a flat
    contiguous array, or None. For half ``dtype`` a float32 parameter is accepted too (mixed
    precision, as torch allows), and either is returned as float32 (exact) for the kernels, which
    compute half data in float32."""
    if p is None:
        return None
    if (type(p) is np.ndarray and p.shape == shape and p.dtype == dtype and (dtype is _F32 or dtype is _F64)
            and p.flags.c_contiguous):
        return p if p.ndim == 1 else p.reshape(-1)
    reject_device(p, name)
    arr = p if isinstance(p, np.ndarray) else _converted(p, name)
    if is_half(dtype):
        # Mixed precision, as torch allows: float32 parameters with half x.
        check_shape_dtype(name, arr.shape, arr.dtype, shape, arr.dtype)
        if arr.dtype != dtype and arr.dtype != np.float32:
            raise TypeError(f"{name} must have dtype {dtype} (the dtype of x) or float32, got {arr.dtype}")
        return np.ascontiguousarray(arr, np.float32).reshape(-1)  # the kernels compute in float32
    check_shape_dtype(name, arr.shape, arr.dtype, shape, dtype)
    return np.ascontiguousarray(arr).reshape(-1)


def check_shape_dtype(name: str, got_shape: tuple[int, ...], got_dtype: object, shape: tuple[int, ...],
                      dtype: object) -> None:
    """Shape then dtype of a parameter; metadata only, so device arrays are checked in place."""
    if tuple(got_shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(got_shape)}")
    if got_dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the dtype of x), got {got_dtype}")


def check_running_stat(p: object, name: str, num_channels: int, dtype: np.dtype[Any],
                       will_update: bool) -> np.ndarray | None:
    """A running statistic: an ndarray of shape (C,) and x's dtype, writeable if updated."""
    if p is None:
        return None
    reject_device(p, name)
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape ({num_channels},), got {type(p).__name__}")
    check_param(p, name, (num_channels,), dtype)
    if will_update and not p.flags.writeable:
        raise ValueError(f"{name} must be writeable: training=True updates it in place")
    return p


def check_out(out: object, x: np.ndarray, *, name: str = "out", x_name: str = "x") -> np.ndarray | None:
    """``out`` must match ``x`` in shape and dtype and be writeable (whether it shares memory
    with another argument: ``check_disjoint``)."""
    if out is None:
        return None
    reject_device(out, name)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    check_like_shape_dtype(name, out.shape, out.dtype, x.shape, x.dtype, x_name)
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def check_axes(axis: object, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """``axis`` (None: all, an int, or a sequence of ints) as sorted, distinct, non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if ndim == 0:
        raise ValueError(f"{name}={axis!r} does not exist: x is a 0-d array (a scalar), which has no axes "
                         f"(axis=None reduces over all of them)")
    items = (axis,) if isinstance(axis, numbers.Integral) else axis
    if isinstance(axis, bool) or not isinstance(items, Sequence) or not all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in items
    ):
        raise TypeError(f"{name} must be None, an int or a tuple of ints, got {axis!r}")
    axes = []
    for a in items:
        if not -ndim <= int(a) < ndim:
            raise ValueError(f"{name} entries must be in [{-ndim}, {ndim - 1}] for a {ndim}-D input, got {int(a)}")
        axes.append(int(a) % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{name} must not repeat an axis, got {axis!r}")
    return tuple(sorted(axes))


def check_stats(stats: object, num_channels: int) -> Moments:
    """Externally computed statistics for batch_norm: a ``Moments`` of shape (C,) with a
    positive count per channel."""
    if not isinstance(stats, Moments):
        raise TypeError(f"stats must be a numbanorm.Moments, got {type(stats).__name__}")
    if stats.shape != (num_channels,):
        raise ValueError(f"stats must have shape ({num_channels},) (one entry per channel), got {stats.shape}")
    if any(f.dtype != np.float64 for f in stats):
        raise TypeError("stats fields (count, mean, m2) must be float64 arrays; build it with numbanorm.Moments(...)")
    if num_channels and not np.all(stats.count > 0):
        raise ValueError("stats.count must be positive for every channel (statistics of no data cannot normalize)")
    return stats
def check_like_shape_dtype(name: str, got_shape: tuple[int, ...], got_dtype: object, x_shape: tuple[int, ...],
                           x_dtype: object, x_name: str = "x") -> None:
    """``name`` (an out buffer, a gradient of x) must have exactly x's shape and dtype; metadata
    only, so device arrays are checked in place."""
    if tuple(got_shape) != tuple(x_shape):
        raise ValueError(f"{name} must have the shape of {x_name}, {tuple(x_shape)}, got {tuple(got_shape)}")
    if got_dtype != x_dtype:
        raise TypeError(f"{name} must have the dtype of {x_name}, {x_dtype}, got {got_dtype}")


def check_like(a: object, name: str, x: np.ndarray) -> np.ndarray:
    """An array-like with exactly the shape and dtype of ``x`` (e.g. a gradient of ``x``)."""
    reject_device(a, name)
    arr = as_float_array(a, name)
    check_like_shape_dtype(name, arr.shape, arr.dtype, x.shape, x.dtype)
    return arr


def check_stat(s: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Saved statistics (mean, rstd, invstd) of exactly ``shape``, as a flat float64 array."""
    reject_device(s, name)
    arr = as_float_array(s, name)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (as returned by the forward), got {arr.shape}")
    return np.ascontiguousarray(arr, np.float64).reshape(-1)


def check_sample_layout(x: ArrayMeta, channel_axis: object, op: str) -> int:
    """The channel axis of a per-sample op's input (axis 0 is the batch); ``x`` is any array
    with ``ndim``/``shape`` (host or device)."""
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims (N, C, ...) for {op}, got {_got_shape(x.shape)}")
    axis = check_channel_axis(channel_axis, x.ndim)
    if axis == 0:
        raise ValueError(f"channel_axis must not be 0, the batch axis, for {op}")
    return axis


def check_group_layout(x: ArrayMeta, channel_axis: object, num_groups: object) -> tuple[int, int]:
    """(channel axis, number of groups) of a group_norm input (forward and backward)."""
    axis = check_sample_layout(x, channel_axis, "group_norm")
    C = x.shape[axis]
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups <= 0 or C % num_groups:
        raise ValueError(f"num_groups must be a positive divisor of the number of channels {C}, got {num_groups}")
    return axis, int(num_groups)


# --------------------------------------------------------------------------------------------
# The argument checks of each op, in one order with one set of messages for both backends.
# ``chk`` says how one array argument is checked: ``HOST`` below for NumPy arrays, and
# ``numbanorm.cuda.checks.DEVICE`` on device-array metadata (no copy to the host). ``x``
# is already converted by the caller (an ndarray, or the CUDA backend's DevArray).
# --------------------------------------------------------------------------------------------
class ArrayMeta(Protocol):
    """What the check sequences read of x: an ndarray on the host, the CUDA backend's
    ``DevArray`` (device-array metadata, its dtype a name) on the device."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def dtype(self) -> Any: ...


#: The array type of one side: ``np.ndarray`` (``HOST``) or the CUDA backend's ``DevArray``.
A = TypeVar("A", bound=ArrayMeta)
#: What the checks of an op hand back to the front: its results are the side's arrays.
R = TypeVar("R")
_Outputs = Sequence[tuple[str, object, tuple[str, ...]]]
_Inputs = Sequence[tuple[str, object]]


class ArgChecks(Protocol[A]):
    """How one side checks one array argument: ``HOST`` here, ``numbanorm.cuda.checks.DEVICE``."""

    def param(self, p: object, name: str, shape: tuple[int, ...], x: A) -> A | None: ...
    def running(self, p: object, name: str, num_channels: int, x: A, will_update: bool) -> A | None: ...
    def out(self, out: object, x: A, name: str = "out", x_name: str = "x") -> A | None: ...
    def like(self, a: object, name: str, x: A) -> A: ...
    def stat(self, s: object, name: str, shape: tuple[int, ...]) -> A: ...
    def disjoint(self, outputs: _Outputs, inputs: _Inputs) -> None: ...


class HostArgs:
    """The host checks of one array argument (``DeviceArgs`` in the CUDA backend is its twin)."""

    def param(self, p: object, name: str, shape: tuple[int, ...], x: np.ndarray) -> np.ndarray | None:
        return check_param(p, name, shape, x.dtype)

    def running(self, p: object, name: str, num_channels: int, x: np.ndarray,
                will_update: bool) -> np.ndarray | None:
        return check_running_stat(p, name, num_channels, x.dtype, will_update)

    def out(self, out: object, x: np.ndarray, name: str = "out", x_name: str = "x") -> np.ndarray | None:
        return check_out(out, x, name=name, x_name=x_name)

    def like(self, a: object, name: str, x: np.ndarray) -> np.ndarray:
        return check_like(a, name, x)

    def stat(self, s: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return check_stat(s, name, shape)

    def disjoint(self, outputs: _Outputs, inputs: _Inputs) -> None:
        check_disjoint(outputs, inputs)


HOST = HostArgs()


def layer_norm_args(chk: ArgChecks[A], x: A, normalized_shape: object, weight: object, bias: object, eps: object,
                    out: object) -> tuple[tuple[int, ...], A | None, A | None, float, A | None]:
    """(normalized shape, weight, bias, eps, out) of layer_norm."""
    shape = check_normalized_shape(normalized_shape, x.shape)
    w = chk.param(weight, "weight", shape, x)
    b = chk.param(bias, "bias", shape, x)
    eps = check_eps(eps)
    out = chk.out(out, x)
    chk.disjoint((("out", out, ("x",)),), (("x", x), ("weight", weight), ("bias", bias)))
    return shape, w, b, eps, out


def rms_norm_args(chk: ArgChecks[A], x: A, normalized_shape: object, weight: object, eps: object,
                  out: object) -> tuple[tuple[int, ...], A | None, float, A | None]:
    """(normalized shape, weight, eps, out) of rms_norm; ``eps=None``: the machine epsilon of the
    compute type (float64's for float64 input, float32's otherwise), as torch."""
    shape = check_normalized_shape(normalized_shape, x.shape)
    w = chk.param(weight, "weight", shape, x)
    if eps is None:
        eps = float(np.finfo(np.float64 if str(x.dtype) == "float64" else np.float32).eps)
    else:
        eps = check_eps(eps)
    out = chk.out(out, x)
    chk.disjoint((("out", out, ("x",)),), (("x", x), ("weight", weight)))
    return shape, w, eps, out


def add_layer_norm_args(chk: ArgChecks[A], x: A, residual: A, normalized_shape: object, weight: object, bias: object,
                        eps: object, out: object,
                        residual_out: object) -> tuple[tuple[int, ...], A | None, A | None, float, A | None, A | None]:
    """(normalized shape, weight, bias, eps, out, residual_out) of add_layer_norm."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        if not x.shape:
            check_normalized_shape(normalized_shape, x.shape)  # a 0-d x: its own message
        raise ValueError(f"residual must have the shape and dtype of x, {x.shape} {x.dtype}, "
                         f"got {residual.shape} {residual.dtype}")
    shape, w, b, eps, _ = layer_norm_args(chk, x, normalized_shape, weight, bias, eps, None)
    bufs = []
    for name, buf in (("out", out), ("residual_out", residual_out)):
        chk.out(buf, x, name=name)
        bufs.append(chk.out(buf, residual, name=name, x_name="residual"))
    in_place = ("x", "residual")
    chk.disjoint((("out", bufs[0], in_place), ("residual_out", bufs[1], in_place)),
                 (("x", x), ("residual", residual), ("weight", weight), ("bias", bias)))
    return shape, w, b, eps, bufs[0], bufs[1]


def batch_norm_args(chk: ArgChecks[A], x: A, running_mean: object, running_var: object, weight: object, bias: object,
                    training: object, momentum: object, eps: object, channel_axis: object, out: object,
                    stats: object = None) -> tuple[int, A | None, A | None, A | None, A | None, float, float, A | None,
                                                   Moments | None]:
    """(axis, running_mean, running_var, weight, bias, momentum, eps, out, stats) of batch_norm,
    all validated before anything is computed or mutated."""
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims (N, C, ...), got {_got_shape(x.shape)}")
    axis = check_channel_axis(channel_axis, x.ndim)
    num_channels = x.shape[axis]
    if stats is not None:
        stats = check_stats(stats, num_channels)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or both be None")
    rm = chk.running(running_mean, "running_mean", num_channels, x, bool(training))
    rv = chk.running(running_var, "running_var", num_channels, x, bool(training))
    w = chk.param(weight, "weight", (num_channels,), x)
    b = chk.param(bias, "bias", (num_channels,), x)
    momentum = check_momentum(momentum)
    eps = check_eps(eps)
    if stats is not None:  # the statistics come from elsewhere, so this shard's size is no matter
        if training and running_mean is not None and num_channels and not np.all(stats.count > 1):
            raise ValueError("stats.count must exceed 1 per channel to update the running variance (unbiased)")
    elif not training and running_mean is None:
        raise ValueError("training=False needs running_mean and running_var (pass them, or training=True)")
    elif training and num_channels and x.size // num_channels == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    out = chk.out(out, x)
    running = (("running_mean", running_mean), ("running_var", running_var))
    params = (("x", x), ("weight", weight), ("bias", bias))
    if training:  # the running stats are updated in place: outputs
        chk.disjoint((("out", out, ("x",)), *((n, r, ()) for n, r in running)), params)
    else:
        chk.disjoint((("out", out, ("x",)),), params + running)
    return axis, rm, rv, w, b, momentum, eps, out, stats


def group_norm_args(chk: ArgChecks[A], x: A, num_groups: object, weight: object, bias: object, eps: object,
                    channel_axis: object, out: object) -> tuple[int, int, A | None, A | None, float, A | None]:
    """(axis, groups, weight, bias, eps, out) of group_norm."""
    axis, G = check_group_layout(x, channel_axis, num_groups)
    C = x.shape[axis]
    w = chk.param(weight, "weight", (C,), x)
    b = chk.param(bias, "bias", (C,), x)
    if x.size and C // G * (x.size // (x.shape[0] * C)) == 1:
        # One value per group: its variance is 0 and the result only the bias, so surely a mistake
        # (torch raises too, for a batch of one).
        raise ValueError(f"Expected more than 1 value per group, got input size {tuple(x.shape)} with "
                         f"num_groups={G}")
    eps = check_eps(eps)
    out = chk.out(out, x)
    chk.disjoint((("out", out, ("x",)),), (("x", x), ("weight", weight), ("bias", bias)))
    return axis, G, w, b, eps, out


def instance_norm_args(chk: ArgChecks[A], x: A, running_mean: object, running_var: object, weight: object,
                       bias: object, use_input_stats: object, momentum: object, eps: object, channel_axis: object,
                       out: object) -> tuple[int, bool, A | None, A | None, A | None, A | None, float, float,
                                             A | None] | None:
    """(axis, update, running_mean, running_var, weight, bias, momentum, eps, out) of
    instance_norm; None for ``use_input_stats=False`` (batch_norm in eval checks the rest)."""
    axis = check_sample_layout(x, channel_axis, "instance_norm")
    C = x.shape[axis]
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or both be None")
    update = bool(use_input_stats) and running_mean is not None
    rm = chk.running(running_mean, "running_mean", C, x, update)
    rv = chk.running(running_var, "running_var", C, x, update)
    momentum = check_momentum(momentum)
    eps = check_eps(eps)
    if not use_input_stats:
        if running_mean is None:
            raise ValueError("use_input_stats=False needs running_mean and running_var")
        return None
    w = chk.param(weight, "weight", (C,), x)
    b = chk.param(bias, "bias", (C,), x)
    if x.shape[0] * C and x.size // (x.shape[0] * C) == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")
    out = chk.out(out, x)
    chk.disjoint((("out", out, ("x",)), ("running_mean", running_mean, ()), ("running_var", running_var, ())),
                 (("x", x), ("weight", weight), ("bias", bias)))
    return axis, update, rm, rv, w, b, momentum, eps, out


def rows_backward_args(chk: ArgChecks[A], x: A, normalized_shape: object, grad_out: object, mean: object,
                       rstd: object, weight: object, out: object,
                       centered: bool) -> tuple[tuple[int, ...], A, A | None, A, A | None, A | None]:
    """(normalized shape, grad_out, mean (None unless ``centered``), rstd, weight, out) of
    layer_norm_backward (``centered``) and rms_norm_backward."""
    shape = check_normalized_shape(normalized_shape, x.shape)
    dy = chk.like(grad_out, "grad_out", x)
    batch_shape = x.shape[: x.ndim - len(shape)]
    m = chk.stat(mean, "mean", batch_shape) if centered else None
    s = chk.stat(rstd, "rstd", batch_shape)
    w = chk.param(weight, "weight", shape, x)
    out = chk.out(out, x)
    chk.disjoint((("out", out, ("x", "grad_out")),),
                 (("x", x), ("grad_out", grad_out), ("mean", mean), ("rstd", rstd), ("weight", weight)))
    return shape, dy, m, s, w, out


def batch_norm_backward_args(chk: ArgChecks[A], x: A, grad_out: object, mean: object, invstd: object, weight: object,
                             channel_axis: object, out: object) -> tuple[int, A, A, A, A | None, A | None]:
    """(axis, grad_out, mean, invstd, weight, out) of batch_norm_backward."""
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims (N, C, ...), got {_got_shape(x.shape)}")
    axis = check_channel_axis(channel_axis, x.ndim)
    C = x.shape[axis]
    dy = chk.like(grad_out, "grad_out", x)
    m = chk.stat(mean, "mean", (C,))
    s = chk.stat(invstd, "invstd", (C,))
    w = chk.param(weight, "weight", (C,), x)
    out = chk.out(out, x)
    chk.disjoint((("out", out, ("x", "grad_out")),),
                 (("x", x), ("grad_out", grad_out), ("mean", mean), ("invstd", invstd), ("weight", weight)))
    return axis, dy, m, s, w, out


def group_norm_backward_args(chk: ArgChecks[A], x: A, num_groups: object, grad_out: object, mean: object,
                             rstd: object, weight: object, channel_axis: object,
                             out: object) -> tuple[int, int, A, A, A, A | None, A | None]:
    """(axis, groups, grad_out, mean, rstd, weight, out) of group_norm_backward; stats of
    shape (N, groups)."""
    axis, G = check_group_layout(x, channel_axis, num_groups)
    N, C = x.shape[0], x.shape[axis]
    dy = chk.like(grad_out, "grad_out", x)
    m = chk.stat(mean, "mean", (N, G))
    s = chk.stat(rstd, "rstd", (N, G))
    w = chk.param(weight, "weight", (C,), x)
    out = chk.out(out, x)
    chk.disjoint((("out", out, ("x", "grad_out")),),
                 (("x", x), ("grad_out", grad_out), ("mean", mean), ("rstd", rstd), ("weight", weight)))
    return axis, G, dy, m, s, w, out


def instance_norm_checked(side: ArgChecks[A], x: object, checked_x: A, running_mean: object, running_var: object,
                          weight: object, bias: object, use_input_stats: object, momentum: object, eps: object,
                          channel_axis: object, out: object, batch_norm: Callable[..., R],
                          run: Callable[..., R]) -> R:
    """What the host and CUDA ``instance_norm`` share: check the arguments (on ``checked_x``, x
    itself or its device metadata) and return ``run(*checked)``; without input statistics, hand
    ``x`` to ``batch_norm`` (the same side's), since normalizing with the running stats is
    BatchNorm in eval mode."""
    checked = instance_norm_args(side, checked_x, running_mean, running_var, weight, bias, use_input_stats, momentum,
                                 eps, channel_axis, out)
    if checked is None:
        return batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps,
                          channel_axis=channel_axis, out=out)
    return run(*checked)
