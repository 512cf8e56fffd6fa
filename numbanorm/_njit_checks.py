"""The argument checks of the numba overloads (``_njit``): ``_checks``' sequences, in jitted code.

Two kinds of check:

* **type-level**, at compile time, in the overloads' typing functions: an argument whose numba
  type can never pass (an integer x, a float64 weight for a float32 x, a read-only ``out``) is
  a ``numba.core.errors.TypingError`` whose text is the message ``_checks`` gives for it (the
  check itself is called to produce it), or, where numba cannot express what Python accepts, a
  message that says what to write instead;
* **run-time**, in the compiled code: shapes, values and overlaps, raising the exception type
  ``_checks`` raises with the same message. numba formats only ints and strings, so a failed
  check raises ``NjitCheck(kind, *values)``, which numba boxes and builds in Python: its
  ``__new__`` replays the very ``_checks`` function on those values (array arguments by
  zero-memory stand-ins of their shape) and returns the exception that function raises, a plain
  ``ValueError`` or ``TypeError``. Overlap messages are constants from ``check_disjoint``.

The run-time checks run in ``_checks``' order; a type-level error is raised before any of them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.core.errors import TypingError
from numba.extending import overload, register_jitable

from ._checks import (
    HOST,
    add_layer_norm_args,
    batch_norm_args,
    check_channel_axis,
    check_disjoint,
    check_eps,
    check_float_dtype,
    check_group_layout,
    check_like_shape_dtype,
    check_momentum,
    check_normalized_shape,
    check_sample_layout,
    check_shape_dtype,
    check_stat,
    group_norm_args,
    instance_norm_args,
)

#: The dtypes numba code can pass (numba has no CPU type for float16, nor ml_dtypes' bfloat16).
NJIT_DTYPES = (types.float32, types.float64)
_HALF_NOTE = ("; float16 and bfloat16 arrays cannot enter njit code (numba has no CPU type for them): "
              "call numbanorm from Python for them, or convert to float32")


# --------------------------------------------------------------------------------------------
# Run-time failures, raised in Python as _checks raises them
# --------------------------------------------------------------------------------------------
def _stand_in(shape: tuple, dtype: str = "float64") -> np.ndarray:
    """A read-only array of ``shape`` and ``dtype`` that uses no memory, for replaying a check."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


_REPLAY = {
    "eps": check_eps,
    "momentum": check_momentum,
    "channel_axis": check_channel_axis,
    "normalized_shape": check_normalized_shape,
    "param": lambda name, got, want: check_shape_dtype(name, got, 0, want, 0),
    "like": lambda name, got, want, x_name: check_like_shape_dtype(name, got, 0, want, 0, x_name),
    "stat": lambda name, got, want: check_stat(_stand_in(got), name, want),
    "bn": lambda shape, training, axis: batch_norm_args(HOST, _stand_in(shape), None, None, None, None, training,
                                                        0.1, 1e-5, axis, None),
    "sample_layout": lambda shape, axis, op: check_sample_layout(_stand_in(shape), axis, op),
    "group_layout": lambda shape, axis, groups: check_group_layout(_stand_in(shape), axis, groups),
    "group": lambda shape, groups, axis: group_norm_args(HOST, _stand_in(shape), groups, None, None, 1e-5, axis,
                                                         None),
    "instance": lambda shape, axis: instance_norm_args(HOST, _stand_in(shape), None, None, None, None, True, 0.1,
                                                       1e-5, axis, None),
    "instance_eval": lambda shape, axis: instance_norm_args(HOST, _stand_in(shape), None, None, None, None, False,
                                                            0.1, 1e-5, axis, None),
    "residual": lambda shape, dtype, rshape, rdtype: add_layer_norm_args(
        HOST, _stand_in(shape, dtype), _stand_in(rshape, rdtype), shape[-1:] or 1, None, None, 1e-5, None, None),
}


class NjitCheck(Exception):  # noqa: N818 - never seen: __new__ returns the check's own exception
    """Raised by the overloads' run-time checks with the values that failed (``kind`` names the
    ``_checks`` function, see ``_REPLAY``). numba builds it in Python, and ``__new__`` returns the
    exception the Python-level check raises for those values instead."""

    def __new__(cls, kind, *args):
        try:
            _REPLAY[kind](*args)
        except (TypeError, ValueError) as e:
            return e
        return AssertionError(f"numbanorm: the njit check {kind!r} refused {args!r}, but the Python-level check "
                              "accepts it (please report this)")


def overlap_message(name: str, other: str, in_place: bool) -> str:
    """``check_disjoint``'s message for output ``name`` overlapping input ``other`` (``in_place``:
    ``other`` is one the output may be, so only a partial overlap is refused)."""
    try:
        check_disjoint(((name, 1, (other,) if in_place else ()),), ((other, 1),),
                       overlaps=lambda a, b: True, same=lambda a, b: False)
    except ValueError as e:
        return str(e)
    raise AssertionError("check_disjoint accepted an overlap")


def outputs_message(name: str, other: str) -> str:
    """``check_disjoint``'s message for two outputs that overlap."""
    try:
        check_disjoint(((name, 1, ()), (other, 1, ())), (), overlaps=lambda a, b: True)
    except ValueError as e:
        return str(e)
    raise AssertionError("check_disjoint accepted an overlap")


# --------------------------------------------------------------------------------------------
# Type-level checks (typing functions; Python)
# --------------------------------------------------------------------------------------------
def is_none(t) -> bool:
    """An omitted (default None) or None argument."""
    return t is None or isinstance(t, (types.NoneType, types.Omitted)) and getattr(t, "value", None) is None


def float_array(t, name: str, op: str):
    """``t`` must be an array of float32/float64 (what ``as_float_array`` accepts that numba can
    pass); returns its numba dtype."""
    if not isinstance(t, types.Array):
        raise TypingError(f"{name} must be a NumPy array in njit code ({op}), got {t}")
    dt = t.dtype
    if dt in NJIT_DTYPES:
        return dt
    try:
        check_float_dtype(np.dtype(str(dt)), name, (np.dtype(np.float16), "bfloat16", np.dtype(np.float32),
                                                    np.dtype(np.float64)))
    except TypeError as e:
        raise TypingError(str(e) + _HALF_NOTE) from None
    raise TypingError(f"{name} must have dtype float32 or float64 in njit code, got {dt}" + _HALF_NOTE)


def param(t, name: str, x_dtype, ndim: int | None) -> None:
    """An optional parameter (weight, bias, running stats): None, or an array of x's dtype.
    ``ndim``: the dims its shape must have (else a run-time shape error, as in Python)."""
    if is_none(t):
        return
    if not isinstance(t, types.Array):
        raise TypingError(f"{name} must be None or a NumPy array in njit code, got {t}")
    if t.dtype != x_dtype:
        try:
            check_shape_dtype(name, (), str(t.dtype), (), str(x_dtype))
        except TypeError as e:
            raise TypingError(str(e)) from None


def output(t, x_dtype, name: str = "out", x_name: str = "x") -> None:
    """An optional output: None, or a writeable array of x's dtype."""
    if is_none(t):
        return
    if not isinstance(t, types.Array):
        raise TypingError(f"{name} must be None or a NumPy array in njit code, got {t}")
    if t.dtype != x_dtype:
        try:
            check_like_shape_dtype(name, (), str(t.dtype), (), str(x_dtype), x_name)
        except TypeError as e:
            raise TypingError(str(e)) from None
    if not t.mutable:
        raise TypingError(f"{name} must be writeable (got a read-only {t})")


def real(t, name: str) -> None:
    """eps, momentum: a real number, not a bool (the range is checked at run time)."""
    if isinstance(t, (types.Float, types.Integer)) or isinstance(t, (int, float)) and not isinstance(t, bool):
        return
    check = check_eps if name == "eps" else check_momentum
    try:
        check(True if isinstance(t, (types.Boolean, bool)) else object())
    except TypeError as e:
        message = str(e)
    raise TypingError(message if isinstance(t, (types.Boolean, bool)) else message.replace("got object", f"got {t}"))


def integer(t, name: str) -> None:
    """channel_axis, num_groups: an int (range checked at run time)."""
    if isinstance(t, int) and not isinstance(t, bool):
        return
    if isinstance(t, types.Integer):
        return
    kind = "bool" if isinstance(t, types.Boolean) else str(t)
    raise TypingError(f"{name} must be an int, got {kind}")


def flag(t, name: str) -> None:
    """training, use_input_stats: a bool (or an int), compile-time constant or not."""
    if isinstance(t, (bool, int)) or isinstance(t, (types.Boolean, types.Integer)):
        return
    raise TypingError(f"{name} must be a bool in njit code, got {t}")


def const_bool(t, name: str, hint: str) -> bool:
    """A flag that changes the return type: it must be a compile-time constant."""
    if isinstance(t, bool):
        return t
    if isinstance(t, types.BooleanLiteral):
        return t.literal_value
    if isinstance(t, types.Omitted) and isinstance(t.value, bool):
        return t.value
    raise TypingError(f"{name} must be a constant True or False in njit code (the return type depends on it), "
                      f"got {t}; {hint}")


def absent(t, name: str, what: str) -> None:
    """An argument that njit code does not support: it must be omitted or None."""
    if not is_none(t):
        raise TypingError(f"{name}= is not supported in njit code, got {t}; {what}")


def rank(t) -> int:
    """len(normalized_shape) from its type: an int, or a tuple of ints."""
    if isinstance(t, int) and not isinstance(t, bool):
        return 1
    if isinstance(t, types.Integer):
        return 1
    if isinstance(t, types.BaseTuple) and all(isinstance(e, types.Integer) for e in t.types):
        return len(t.types)
    if isinstance(t, (types.List, types.ListType, types.Array)):
        raise TypingError(f"normalized_shape must be an int or a tuple of ints in njit code, got {t}: pass a tuple, "
                          "e.g. x.shape[-2:] or (H, W)")
    raise TypingError(f"normalized_shape must be an int or a tuple of ints, got {t}")


# --------------------------------------------------------------------------------------------
# Run-time checks (jitted)
# --------------------------------------------------------------------------------------------
def as_shape(normalized_shape):
    """normalized_shape as a tuple of int64 (jit-only)."""
    return tuple(normalized_shape) if isinstance(normalized_shape, tuple) else (normalized_shape,)


@overload(as_shape)
def _as_shape(normalized_shape):
    if isinstance(normalized_shape, types.Integer):
        return lambda normalized_shape: (np.int64(normalized_shape),)
    k = len(normalized_shape.types)
    items = ", ".join(f"np.int64(normalized_shape[{i}])" for i in range(k)) + ("," if k == 1 else "")
    scope = {"np": np}
    exec(f"def impl(normalized_shape):\n    return ({items})\n", scope)  # noqa: S102 - static index per entry
    return scope["impl"]


@register_jitable
def tuple_size(shape):
    n = 1
    for v in shape:
        n *= v
    return n


@register_jitable
def trailing(shape, x_shape):
    """``check_normalized_shape``'s test: ``shape`` non-empty and the trailing dims of x."""
    k = len(shape)
    ndim = len(x_shape)
    ok = 0 < k <= ndim
    if ok:
        for i in range(k):
            if x_shape[ndim - k + i] != shape[i]:
                ok = False
    if not ok:
        raise NjitCheck("normalized_shape", shape, x_shape)


@register_jitable
def shape_is(got, want, name):
    """``check_shape_dtype``'s shape test for a parameter (weight, bias, running stats)."""
    if got != want:
        raise NjitCheck("param", name, got, want)


@register_jitable
def like_shape(got, want, name, x_name):
    """``check_like_shape_dtype``'s shape test: an output or a gradient with x's shape."""
    if got != want:
        raise NjitCheck("like", name, got, want, x_name)


@register_jitable
def stat_shape(got, want, name):
    """``check_stat``'s shape test (saved statistics)."""
    if got != want:
        raise NjitCheck("stat", name, got, want)


@register_jitable
def eps_value(eps):
    v = np.float64(eps)
    if not 0.0 < v < math.inf:
        raise NjitCheck("eps", v)
    return v


@register_jitable
def momentum_value(momentum):
    v = np.float64(momentum)
    if not 0.0 <= v <= 1.0:
        raise NjitCheck("momentum", v)
    return v


@register_jitable
def axis_value(channel_axis, ndim):
    if not -ndim <= channel_axis < ndim:
        raise NjitCheck("channel_axis", np.int64(channel_axis), np.int64(ndim))
    return np.int64(channel_axis) % ndim


@register_jitable
def extent(a):
    """(first byte, one past the last byte) that ``a`` touches; (0, 0) when empty."""
    if a.size == 0:
        return 0, 0
    lo = a.ctypes.data
    hi = lo + a.itemsize
    for i in range(a.ndim):
        n, s = a.shape[i], a.strides[i]
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi


def overlaps(a, b):
    """Whether arrays ``a`` and ``b`` touch common bytes (jit-only; ``b`` may be None): exact for
    dense arrays, bounds only for strided ones (where NumPy's ``shares_memory`` can be exact)."""
    return False


@overload(overlaps)
def _overlaps(a, b):
    if is_none(b) or is_none(a):
        return lambda a, b: False

    def impl(a, b):
        alo, ahi = extent(a)
        blo, bhi = extent(b)
        return alo < bhi and blo < ahi
    return impl


@register_jitable
def same_memory(a, b):
    """``_overlap.same_memory``: the same elements in the same places (``out=x``)."""
    return a.ctypes.data == b.ctypes.data and a.strides == b.strides and a.shape == b.shape


@register_jitable
def refuse_overlap(out, other, message):
    if overlaps(out, other):
        raise ValueError(message)


@register_jitable
def refuse_partial_overlap(out, other, message):
    """``out`` may be ``other`` itself (in place), but not overlap it otherwise."""
    if overlaps(out, other) and not same_memory(out, other):
        raise ValueError(message)
