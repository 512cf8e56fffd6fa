"""The fast paths' argument tests: a few cheap tests per call that accept the common form of each
op's arguments (exact types, native dtypes, C-contiguous), exactly what the full check
(``_checks``) accepts without converting anything. Anything else, every error included, goes to the
full check, which alone raises. Per-call Python is most of a tiny call's time: these cost a few
hundred ns where the full check costs ~3 us.

The arguments are typed ``object`` (anything the caller passed), or ``Any`` where the code relies on
``type(a) is T`` tests made through a local (``tn = type(a)``), which mypy does not follow.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._overlap import owned_apart

_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_INF = math.inf
#: ml_dtypes' bfloat16 dtype once seen (recognized without importing ml_dtypes).
_BF16: list[np.dtype[Any]] = []


def param_dtype(dt: np.dtype) -> np.dtype | None:
    """The dtype the fast paths accept for the parameters (and running stats) of an x of dtype
    ``dt``: x's own for float32/float64, float32 for float16/bfloat16 (mixed precision, as AMP
    runs it: the kernels take float32 parameters of half x unconverted); None for any other."""
    if dt is _F32 or dt is _F64:
        return dt
    if dt is _F16 or (_BF16 and dt is _BF16[0]):
        return _F32
    if dt.kind == "V" and dt.itemsize == 2 and dt.name == "bfloat16":
        _BF16.append(dt)
        return _F32
    return None


def bn_common_channels(x: object, running_mean: object, running_var: object, weight: object, bias: object,
                       training: object, momentum: object, eps: object, channel_axis: object) -> int:
    """The channel count when every ``batch_norm`` argument has its common form, else -1.

    Common: ``x`` a non-empty C-contiguous float32/float64/float16/bfloat16 ndarray,
    ``channel_axis`` an in-range int, ``momentum``/``eps`` floats in range, and each given
    statistic/parameter an ndarray of shape (C,), C-contiguous (running stats writeable when
    training), of x's dtype (float32 for half x: ``param_dtype``). Everything the
    full check (``functional._check_batch_norm``) accepts without conversion; anything else,
    including every error, goes to it. A few plain tests, so a tiny call does not pay ~3 µs of
    checks for a ~3 µs kernel.
    """
    # (ordered cheapest-first; each attribute of an ndarray costs ~30-40 ns here)
    if (type(x) is not np.ndarray or type(channel_axis) is not int or type(eps) is not float
            or type(momentum) is not float):
        return -1
    dt = x.dtype  # then the parameters' and running stats' dtype (param_dtype, inlined: ~60 ns a call)
    if not (dt is _F32 or dt is _F64):
        dt = param_dtype(dt)
        if dt is None:
            return -1
    shape = x.shape
    ndim = len(shape)
    if ndim < 2 or not -ndim <= channel_axis < ndim or not 0.0 < eps < _INF or not 0.0 <= momentum <= 1.0:
        return -1
    n = x.size
    if n == 0 or not x.flags.c_contiguous:
        return -1
    C: int = shape[channel_axis]
    pshape = (C,)
    if weight is not None and not (type(weight) is np.ndarray and weight.dtype is dt and weight.shape == pshape
                                   and weight.flags.c_contiguous):
        return -1
    if bias is not None and not (type(bias) is np.ndarray and bias.dtype is dt and bias.shape == pshape
                                 and bias.flags.c_contiguous):
        return -1
    if running_mean is None or running_var is None:
        # training=False needs them; a lone one is an error: the full check says which
        return C if training and running_mean is None and running_var is None and n // C > 1 else -1
    for p in (running_mean, running_var):
        if not (type(p) is np.ndarray and p.dtype is dt and p.shape == pshape):
            return -1
        flags = p.flags
        if not flags.c_contiguous or training and not flags.writeable:
            return -1
    if training and (n // C <= 1 or not owned_apart((running_mean, running_var), (x, weight, bias))):
        return -1  # (the running stats are outputs: the full check says what overlaps what)
    return C


def ln_common_width(x: np.ndarray, normalized_shape: Any, weight: object, bias: object, eps: object) -> int:
    """The row width D when every ``layer_norm`` argument has its common form, else -1.

    Common: ``x`` (an ndarray) C-contiguous float32/float64/float16/bfloat16 with a last dim
    D > 0, ``normalized_shape`` D or (D,) as ints, ``eps`` a float in range, and weight/bias None
    or C-contiguous ndarrays of shape (D,) and x's dtype (float32 for half x: ``param_dtype``):
    what ``layer_norm_args`` accepts unchanged. Anything else, every error included, goes to the full check.
    """
    dt: np.dtype[Any] | None = x.dtype  # then the parameters' dtype (param_dtype, inlined: ~60 ns a call)
    if not (dt is _F32 or dt is _F64):
        dt = param_dtype(x.dtype)
        if dt is None:
            return -1
    if not x.flags.c_contiguous:
        return -1
    shape = x.shape
    tn = type(normalized_shape)
    if tn is tuple and len(normalized_shape) == 1:
        normalized_shape = normalized_shape[0]
        tn = type(normalized_shape)
    if tn is not int or not shape or shape[-1] != normalized_shape or normalized_shape <= 0:
        return -1
    if type(eps) is not float or not 0.0 < eps < _INF:
        return -1
    D: int = normalized_shape
    pshape = (D,)
    for p in (weight, bias):
        if p is not None and not (type(p) is np.ndarray and p.dtype is dt and p.shape == pshape
                                  and p.flags.c_contiguous):
            return -1
    return D


def bn_backward_common_channels(grad_out: object, x: object, mean: object, invstd: object, weight: object,
                                channel_axis: object) -> int:
    """The channel count when every ``batch_norm_backward`` argument has its common form, else -1.

    Common: ``x`` a non-empty C-contiguous float32/float64/float16/bfloat16 ndarray,
    ``channel_axis`` an in-range int, ``grad_out`` an ndarray of x's shape and dtype, C-contiguous,
    and ``mean``/``invstd`` (as the forward returns them) and ``weight`` (or None) C-contiguous
    ndarrays of shape (C,) and x's dtype (float32 for half x: ``param_dtype``): what
    ``batch_norm_backward_args`` accepts (with ``out=None``) without converting.
    Anything else, every error included, goes to the full check.
    """
    if type(x) is not np.ndarray or type(grad_out) is not np.ndarray or type(channel_axis) is not int:
        return -1
    dt = x.dtype
    if grad_out.dtype is not dt:
        return -1
    if not (dt is _F32 or dt is _F64):  # half x: float32 statistics (as the forward returns them), weight
        dt = param_dtype(dt)
        if dt is None:
            return -1
    shape = x.shape
    ndim = len(shape)
    if ndim < 2 or not -ndim <= channel_axis < ndim or grad_out.shape != shape or x.size == 0:
        return -1
    if not x.flags.c_contiguous or not grad_out.flags.c_contiguous:
        return -1
    C: int = shape[channel_axis]
    pshape = (C,)
    for p in (mean, invstd, weight):
        if p is not None and not (type(p) is np.ndarray and p.dtype is dt and p.shape == pshape
                                  and p.flags.c_contiguous):
            return -1
    return C if mean is not None and invstd is not None else -1


def rows_backward_common_width(grad_out: object, x: object, normalized_shape: Any, mean: object, rstd: object,
                               weight: object, centered: bool) -> int:
    """The row width D when every ``layer_norm_backward`` (``centered``) / ``rms_norm_backward``
    argument has its common form, else -1 (then the full check, which alone raises, runs).

    Common: ``x`` a C-contiguous float32/float64/float16/bfloat16 ndarray with a last dim D > 0,
    ``normalized_shape`` D or (D,) as ints, ``grad_out`` an ndarray of x's shape and dtype,
    C-contiguous, ``mean`` (when ``centered``) and ``rstd`` float32/float64 ndarrays of shape
    ``x.shape[:-1]``, ``weight`` None or a C-contiguous ndarray of shape (D,) and x's dtype
    (float32 for half x) (and no ``out``: the caller asks only then).
    """
    if type(x) is not np.ndarray or type(grad_out) is not np.ndarray:
        return -1
    dt = x.dtype
    if grad_out.dtype is not dt:
        return -1
    if not (dt is _F32 or dt is _F64):  # half x: a float32 weight (param_dtype)
        dt = param_dtype(dt)
        if dt is None:
            return -1
    shape = x.shape
    if type(normalized_shape) is tuple and len(normalized_shape) == 1:
        normalized_shape = normalized_shape[0]
    if type(normalized_shape) is not int or not shape or shape[-1] != normalized_shape or normalized_shape <= 0:
        return -1
    if grad_out.shape != shape or not x.flags.c_contiguous or not grad_out.flags.c_contiguous:
        return -1
    batch = shape[:-1]
    for s in (mean, rstd) if centered else (rstd,):
        if type(s) is not np.ndarray or not (s.dtype is _F32 or s.dtype is _F64) or s.shape != batch:
            return -1
    if weight is not None and not (type(weight) is np.ndarray and weight.dtype is dt
                                   and weight.shape == (normalized_shape,) and weight.flags.c_contiguous):
        return -1
    return normalized_shape
