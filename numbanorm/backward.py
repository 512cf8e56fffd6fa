"""Gradients of ``layer_norm``, ``batch_norm``, ``rms_norm`` and ``group_norm`` with respect to x,
weight and bias.

All take the statistics the forward returned with ``return_stats=True``, so nothing is
recomputed; they match torch autograd of ``F.layer_norm`` / ``F.batch_norm`` / ``F.rms_norm`` /
``F.group_norm``. float16/bfloat16 ``grad_out``/``x`` are computed in float32 with float64 sums
(the weight may be float32 or x's dtype); grad_x has x's dtype and grad_weight/grad_bias the
weight's, as torch's mixed-dtype rules give them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _tiny
from ._backend import cpu, device_op, is_device_array
from ._checks import HOST, as_float_array, batch_norm_backward_args, group_norm_backward_args, rows_backward_args
from ._fast_checks import bn_backward_common_channels, rows_backward_common_width
from ._layout import canonical_view, channel_output, input_view, rows_output, rows_view
from ._overlap import owned_apart
from .cpu.halfio import is_half

__all__ = ["layer_norm_backward", "batch_norm_backward", "rms_norm_backward", "group_norm_backward"]

Grads = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]

#: Below this many elements the kernels plan one task whatever the thread count (as functional).
_SERIAL_SIZE = cpu.SERIAL_SIZE
_NO_LOCK = nullcontext()
_F64 = np.dtype(np.float64)
#: batch_norm_backward's error for an invstd <= 0; the tiny path's kernel
#: (``cpu.backward.batch_norm_backward_serial``) raises the same text.
INVSTD_MESSAGE = ("invstd must be positive (1 / sqrt(var + eps), as batch_norm(..., return_stats=True) returns it), "
                  "got a value <= 0: running_mean / running_var are not the (mean, invstd) a backward takes")
_F16_VIEW = cpu.kernel_array(np.empty(0, np.float16)).dtype  # float16's kernel view (cpu/halfio.py)


def layer_norm_backward(grad_out: ArrayLike, x: ArrayLike, normalized_shape: int | Sequence[int],
                        mean: ArrayLike, rstd: ArrayLike, weight: ArrayLike | None = None, *,
                        out: np.ndarray | None = None) -> Grads:
    """Gradients of ``layer_norm(x, normalized_shape, weight, bias)`` given ``grad_out`` = dL/dy.

    They take the statistics the forward returned, so nothing is recomputed, and match torch
    autograd of ``F.layer_norm``.

    Parameters
    ----------
    grad_out : array_like
        dL/dy: x's shape and dtype.
    x : array_like
        The forward's input: float32, float64, float16 or bfloat16 (computed in float32 with
        float64 sums), or a CUDA array (see Notes). Lists and tuples are converted as NumPy converts them, integers
        in them to float64.
    normalized_shape : int or sequence of int
        As in the forward.
    mean : array_like
        The mean from ``layer_norm(..., return_stats=True)``, shape ``x.shape[:-k]``.
    rstd : array_like
        The rstd from ``layer_norm(..., return_stats=True)``, as ``mean``.
    weight : array_like, optional
        The forward's weight (shape ``normalized_shape``, x's dtype, or float32 for half x); None
        if it had none. grad_weight and grad_bias come in its dtype.
    out : numpy.ndarray, optional
        Receives grad_x: x's shape and dtype, writeable; may be ``grad_out`` (in place).

    Returns
    -------
    grad_x : numpy.ndarray
        dL/dx, x's shape and dtype (``out`` when given).
    grad_weight : numpy.ndarray or None
        dL/dweight, shape ``normalized_shape``, reduced over all rows; None when ``weight`` is None.
    grad_bias : numpy.ndarray or None
        dL/dbias, as ``grad_weight``. It does not depend on the bias, so it is valid whether or
        not the forward had one; None when ``weight`` is None.

    Raises
    ------
    TypeError
        x is None, not a supported float dtype, or an argument has the wrong dtype or type.
    ValueError
        x is 0-d; ``normalized_shape`` is not x's trailing dims; ``grad_out``, a statistic or
        ``weight`` has the wrong shape; ``out`` overlaps an input other than ``grad_out``.

    Notes
    -----
    A CUDA array runs on the GPU and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x, w = np.array([[1.0, 2.0, 4.0], [2.0, 4.0, 8.0]]), np.ones(3)
    >>> y, mean, rstd = nb.layer_norm(x, 3, w, return_stats=True)
    >>> g = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    >>> grad_x, grad_w, grad_b = nb.layer_norm_backward(g, x, 3, mean, rstd, w)
    >>> print(grad_x.round(4))
    [[-0.1145  0.1718 -0.0573]
     [ 0.2864 -0.4295  0.1432]]
    >>> print(grad_w.round(4), grad_b)
    [-4.2762 -0.8018  6.6815] [4. 3. 5.]
    """
    if is_device_array(x):
        on_device: Grads = device_op("layer_norm_backward")(grad_out, x, normalized_shape, mean, rstd, weight, out=out)
        return on_device
    return _rows_backward(grad_out, x, normalized_shape, mean, rstd, weight, out, centered=True)


def rms_norm_backward(grad_out: ArrayLike, x: ArrayLike, normalized_shape: int | Sequence[int], rstd: ArrayLike,
                      weight: ArrayLike | None = None, *,
                      out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients of ``rms_norm(x, normalized_shape, weight, eps)`` given ``grad_out`` = dL/dy.

    Returns ``(grad_x, grad_weight)`` like torch's ``_fused_rms_norm_backward``: RMSNorm has no
    bias.

    Parameters
    ----------
    grad_out : array_like
        dL/dy: x's shape and dtype.
    x : array_like
        The forward's input: float32, float64, float16 or bfloat16 (computed in float32 with
        float64 sums), or a CUDA array (see Notes). Lists and tuples are converted as NumPy converts them, integers
        in them to float64.
    normalized_shape : int or sequence of int
        As in the forward.
    rstd : array_like
        From ``rms_norm(..., return_stats=True)``, shape ``x.shape[:-k]`` (it holds eps, so none
        is passed here).
    weight : array_like, optional
        The forward's weight (shape ``normalized_shape``, x's dtype, or float32 for half x); None
        if it had none. grad_weight and grad_bias come in its dtype.
    out : numpy.ndarray, optional
        Receives grad_x: x's shape and dtype, writeable; may be ``grad_out`` (in place).

    Returns
    -------
    grad_x : numpy.ndarray
        dL/dx, x's shape and dtype (``out`` when given).
    grad_weight : numpy.ndarray or None
        dL/dweight, shape ``normalized_shape``; None when ``weight`` is None.

    Raises
    ------
    TypeError
        x is None, not a supported float dtype, or an argument has the wrong dtype or type.
    ValueError
        x is 0-d; ``normalized_shape`` is not x's trailing dims; ``grad_out``, ``rstd`` or
        ``weight`` has the wrong shape; ``out`` overlaps an input other than ``grad_out``.

    Notes
    -----
    A CUDA array runs on the GPU and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x, w = np.array([[1.0, 2.0, 4.0], [2.0, 4.0, 8.0]]), np.ones(3)
    >>> y, rstd = nb.rms_norm(x, 3, w, return_stats=True)
    >>> grad_x, grad_w = nb.rms_norm_backward(np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]]), x, 3, rstd, w)
    >>> print(grad_x.round(4))
    [[ 0.072  0.144 -0.09 ]
     [ 0.45  -0.045 -0.09 ]]
    >>> print(grad_w.round(4))
    [1.5119 2.2678 7.5593]
    """
    if is_device_array(x):
        on_device: tuple[np.ndarray, np.ndarray | None] = device_op("rms_norm_backward")(
            grad_out, x, normalized_shape, rstd, weight, out=out)
        return on_device
    gx, gw, _ = _rows_backward(grad_out, x, normalized_shape, None, rstd, weight, out, centered=False)
    return gx, gw


def _rows_backward(grad_out: Any, x: Any, normalized_shape: Any, mean: Any, rstd: Any, weight: Any,
                   out: np.ndarray | None, *, centered: bool) -> Grads:
    """LayerNorm (``centered``) or RMSNorm backward over the rows of the trailing dims.

    The arguments are the caller's (``Any``: the fast check's tests, which admit ndarrays of the
    common form, are not something mypy follows)."""
    D = rows_backward_common_width(grad_out, x, normalized_shape, mean, rstd, weight, centered)
    if out is not None and D > 0 and not _common_out(out, x, grad_out, mean, rstd, weight):
        D = -1
    if D > 0:  # the common case, checked in a few tests: no conversions, no general view mapping
        shape: tuple[int, ...] = (D,)
        R = x.size // D
        x2, g2 = x.reshape(R, D), grad_out.reshape(R, D)
        mean = mean.astype(_F64).reshape(R) if centered else None  # the kernels take float64 stats
        rstd = rstd.astype(_F64).reshape(R)
        gdt = x.dtype if weight is None else weight.dtype  # (float32 for half x: the fast check's)
        if x.dtype.kind != "f":  # bfloat16 ("V"); float16 below
            x2, g2 = cpu.kernel_array(x2), cpu.kernel_array(g2)
        elif x.dtype.itemsize == 2:
            x2, g2 = x2.view(_F16_VIEW), g2.view(_F16_VIEW)
    else:
        x = _float_input(x)
        gdt = _grad_param_dtype(weight, x.dtype)
        shape, grad_out, mean, rstd, weight, out = rows_backward_args(HOST, x, normalized_shape, grad_out, mean,
                                                                      rstd, weight, out, centered)
        k = len(shape)
        # (float16/bfloat16: the kernels' 16-bit views, cpu/halfio.py)
        x2, g2 = cpu.kernel_array(rows_view(x, k)), cpu.kernel_array(rows_view(grad_out, k))
    output = rows_output(out, x, x2.shape)
    if x.size < _SERIAL_SIZE:  # one task: neither the thread count (~1 us) nor the launch lock
        gw, gb = cpu.layer_norm_backward(g2, x2, mean, rstd, weight, output.kernel, 1)
    else:
        with cpu.kernel_guard:
            gw, gb = cpu.layer_norm_backward(g2, x2, mean, rstd, weight, output.kernel, cpu.num_threads())
    result = output.finish()
    if weight is None:
        return result, None, None
    return result, gw.astype(gdt).reshape(shape), gb.astype(gdt).reshape(shape)


def batch_norm_backward(grad_out: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: ArrayLike | None = None, training: bool = True, *, channel_axis: int = 1,
                        out: np.ndarray | None = None) -> Grads:
    """Gradients of ``batch_norm(x, ..., weight, bias, training)`` given ``grad_out`` = dL/dy.

    They match torch autograd of ``F.batch_norm``.

    Parameters
    ----------
    grad_out : array_like
        dL/dy: x's shape and dtype.
    x : array_like
        The forward's input: float32, float64, float16 or bfloat16 (computed in float32 with
        float64 sums), or a CUDA array (see Notes). Lists and tuples are converted as NumPy converts them, integers
        in them to float64.
    mean : array_like
        The mean from ``batch_norm(..., return_stats=True)``, shape (C,): the batch statistics
        when the forward normalized with them, the running ones otherwise.
    invstd : array_like
        The invstd from ``batch_norm(..., return_stats=True)``, shape (C,): ``1 / sqrt(var +
        eps)``, not a variance. Its values must be positive (NaN, from NaN data, passes).
    weight : array_like, optional
        The forward's weight (shape (C,), x's dtype); None if it had none.
    training : bool, default True
        Whether the forward used the batch statistics (they depend on x, which changes grad_x) or
        the running ones.
    channel_axis : int, default 1
        As in the forward (``-1``: channels-last).
    out : numpy.ndarray, optional
        Receives grad_x: x's shape and dtype, writeable; may be ``grad_out`` (in place).

    Returns
    -------
    grad_x : numpy.ndarray
        dL/dx, x's shape and dtype (``out`` when given).
    grad_weight : numpy.ndarray or None
        dL/dweight, shape (C,); None when ``weight`` is None, as torch gives no gradient for an
        absent parameter.
    grad_bias : numpy.ndarray or None
        dL/dbias, as ``grad_weight``.

    Raises
    ------
    TypeError
        x is None, not a supported float dtype, or an argument has the wrong dtype or type.
    ValueError
        x has fewer than 2 dims (or is 0-d); ``channel_axis`` is out of range; ``grad_out``, a
        statistic or ``weight`` has the wrong shape; ``invstd`` holds a value <= 0 (running
        statistics passed for ``(mean, invstd)``?: NumPy arrays only, the check is skipped for
        CUDA arrays); ``out`` overlaps an input other than ``grad_out``.

    Notes
    -----
    A CUDA array runs on the GPU and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x, w = np.arange(12.0).reshape(2, 3, 2), np.ones(3)
    >>> y, mean, invstd = nb.batch_norm(x, None, None, w, training=True, return_stats=True)
    >>> g = np.arange(12.0).reshape(2, 3, 2) % 5
    >>> grad_x, grad_w, grad_b = nb.batch_norm_backward(g, x, mean, invstd, w)
    >>> print(grad_x[:, 0].round(4))
    [[-0.1111  0.1555]
     [-0.1555  0.1111]]
    >>> print(grad_w.round(4), grad_b)
    [ 2.3016  2.3016 -3.4524] [ 4. 12.  5.]
    """
    if type(x) is np.ndarray:
        C = -1 if not training else bn_backward_common_channels(grad_out, x, mean, invstd, weight, channel_axis)
        if 0 < C and x.size < _SERIAL_SIZE and (out is None or _common_out(out, x, grad_out, mean, invstd, weight)):
            # tiny and common: checked, one serial dispatch
            return _tiny.batch_norm_backward_tiny(grad_out, x, mean, invstd, weight, channel_axis, C, out)
    elif is_device_array(x):
        on_device: Grads = device_op("batch_norm_backward")(grad_out, x, mean, invstd, weight, training,
                                                             channel_axis=channel_axis, out=out)
        return on_device
    x = _float_input(x)
    gdt = _grad_param_dtype(weight, x.dtype)
    axis, grad_out, mean, invstd, weight, out = batch_norm_backward_args(HOST, x, grad_out, mean, invstd, weight,
                                                                         channel_axis, out)
    if (invstd <= 0.0).any():  # (NaN passes: statistics of NaN data propagate, as in torch)
        raise ValueError(INVSTD_MESSAGE)
    view = input_view(x, axis)
    g3 = cpu.kernel_array(_matching_view(grad_out, axis, view.channels_moved, view.x3.shape))
    output = channel_output(out, x, view, axis)
    s_dy, s_dyx = _batch_norm_backward_kernels(g3, cpu.kernel_array(view.x3), mean, invstd, weight, training,
                                               output.kernel)
    result = output.finish()
    if weight is None:
        return result, None, None
    with np.errstate(all="ignore"):
        grad_weight = (s_dyx * invstd).astype(gdt)
    return result, grad_weight, s_dy.astype(gdt)


def _batch_norm_backward_kernels(g3: np.ndarray, x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                                 weight: np.ndarray | None, training: bool,
                                 target: np.ndarray) -> tuple[Any, Any]:
    """grad_x into ``target`` and the per-channel (Σdy, Σdy·(x - mean)) (None, None without
    weight in eval) on the canonical views; mean/invstd/weight float64. (Typed ``Any``: which of
    the two it is follows from ``weight`` and ``training``, as the caller knows.)"""
    C = x3.shape[1]
    count = float(x3.size // C) if C else 0.0
    # np.errstate: IEEE values as the kernels give them (0 * inf = nan) without a RuntimeWarning,
    # as torch; only here, off the tiny path, where ~1 us does not show.
    with np.errstate(all="ignore"):
        scale = invstd if weight is None else weight * invstd  # float64 (invstd is)
    # Tiny inputs (one task): neither the thread count (~1 us) nor the launch lock.
    serial = x3.size < _SERIAL_SIZE
    nthreads = 1 if serial else cpu.num_threads()
    with _NO_LOCK if serial and not cpu.NEEDS_CALL_LOCK else cpu.kernel_guard:
        if training:
            s_dy, s_dyx = cpu.channel_grad_sums(g3, x3, mean, scale, None, nthreads)
            q, r = _grad_coefficients(scale, invstd, s_dy, s_dyx, count)
            cpu.channel_grad_input(g3, x3, mean, scale, q, r, target, nthreads)
            return s_dy, s_dyx
        if weight is not None:  # statistics are constants: grad_x written during the sums' pass
            sums: tuple[Any, Any] = cpu.channel_grad_sums(g3, x3, mean, scale, target, nthreads)
            return sums
        zeros = np.zeros(C)  # nothing to reduce: grad_x = dy * invstd, x is not even read
        cpu.channel_grad_input(g3, None, mean, scale, zeros, zeros, target, nthreads)
    return None, None


def _grad_coefficients(scale: np.ndarray, invstd: np.ndarray, s_dy: np.ndarray, s_dyx: np.ndarray,
                       count: float) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm training's grad_x = p·dy - q·(x - mean) + r, p = scale: (q, r) per channel."""
    with np.errstate(all="ignore"):  # inf/nan data, or count = 0 (an empty batch)
        if count:  # in place, the order of the expression below (same bits), no temporaries
            q = scale * invstd
            q *= invstd
            q *= s_dyx
            q /= count
            r = scale * s_dy
            r /= -count
        else:
            q = scale * invstd * invstd * s_dyx / count
            r = -scale * s_dy / count
    return q, r


def _common_out(out: object, x: np.ndarray, grad_out: object, *others: object) -> bool:
    """Whether ``out`` can take the common (fast) path as it is: a writeable C-contiguous ndarray
    of x's shape and dtype that is ``grad_out`` or ``x`` itself or, by ownership, shares memory
    with neither, nor with ``others`` (the statistics and weight). Anything else goes through the
    full check (``_checks.check_disjoint``) and ``output_view``."""
    if (type(out) is not np.ndarray or out.dtype is not x.dtype or out.shape != x.shape
            or not out.flags.c_contiguous or not out.flags.writeable):
        return False
    if out is grad_out or out is x:
        return owned_apart((out,), others)
    return owned_apart((out,), (x, grad_out, *others))


def group_norm_backward(grad_out: ArrayLike, x: ArrayLike, num_groups: int, mean: ArrayLike, rstd: ArrayLike,
                        weight: ArrayLike | None = None, *, channel_axis: int = 1,
                        out: np.ndarray | None = None) -> Grads:
    """Gradients of ``group_norm(x, num_groups, weight, bias)`` given ``grad_out`` = dL/dy.

    They match torch's ``native_group_norm_backward``.

    Parameters
    ----------
    grad_out : array_like
        dL/dy: x's shape and dtype.
    x : array_like
        The forward's input: float32, float64, float16 or bfloat16 (computed in float32 with
        float64 sums), or a CUDA array (see Notes). Lists and tuples are converted as NumPy converts them, integers
        in them to float64.
    num_groups : int
        As in the forward.
    mean : array_like
        From ``group_norm(..., return_stats=True)``, shape ``(N, num_groups)``.
    rstd : array_like
        From ``group_norm(..., return_stats=True)``, as ``mean``.
    weight : array_like, optional
        The forward's weight (shape (C,), x's dtype); None if it had none.
    channel_axis : int, default 1
        As in the forward (``-1``: channels-last).
    out : numpy.ndarray, optional
        Receives grad_x: x's shape and dtype, writeable; may be ``grad_out`` (in place).

    Returns
    -------
    grad_x : numpy.ndarray
        dL/dx, x's shape and dtype (``out`` when given).
    grad_weight : numpy.ndarray or None
        dL/dweight, shape (C,), summed over the batch; None when ``weight`` is None.
    grad_bias : numpy.ndarray or None
        dL/dbias, as ``grad_weight``.

    Raises
    ------
    TypeError
        x is None, not a supported float dtype, or an argument has the wrong dtype or type.
    ValueError
        x has fewer than 2 dims (or is 0-d); ``channel_axis`` or ``num_groups`` is invalid;
        ``grad_out``, a statistic or ``weight`` has the wrong shape; ``out`` overlaps an input
        other than ``grad_out``.

    Notes
    -----
    A CUDA array runs on the GPU and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x, w = np.arange(16.0).reshape(2, 4, 2), np.ones(4)
    >>> y, mean, rstd = nb.group_norm(x, 2, w, return_stats=True)
    >>> g = np.arange(16.0).reshape(2, 4, 2) % 3
    >>> grad_x, grad_w, grad_b = nb.group_norm_backward(g, x, 2, mean, rstd, w)
    >>> print(grad_w.round(4), grad_b)
    [-3.1305  4.0249 -2.6833  2.2361] [3. 5. 4. 3.]
    """
    if is_device_array(x):
        on_device: Grads = device_op("group_norm_backward")(grad_out, x, num_groups, mean, rstd, weight,
                                                             channel_axis=channel_axis, out=out)
        return on_device
    x = _float_input(x)
    gdt = _grad_param_dtype(weight, x.dtype)
    axis, G, grad_out, mean, rstd, weight, out = group_norm_backward_args(HOST, x, num_groups, grad_out, mean, rstd,
                                                                          weight, channel_axis, out)
    N, C = x.shape[0], x.shape[axis]
    mean, rstd = mean.reshape(N, G), rstd.reshape(N, G)

    view = input_view(x, axis)
    output = channel_output(out, x, view, axis)
    if x.size == 0:
        zeros = np.zeros(C, gdt)
        result = output.finish()
        return (result, None, None) if weight is None else (result, zeros, zeros.copy())
    g3 = _matching_view(grad_out, axis, view.channels_moved, view.x3.shape)
    shape4 = (N, -1, C, view.x3.shape[2])
    x4, g4 = cpu.kernel_array(view.x3).reshape(shape4), cpu.kernel_array(g3).reshape(shape4)
    t4 = output.kernel.reshape(shape4)
    cmean = np.repeat(mean, C // G, axis=1)  # the group's mean for each of its channels
    count = float(x.size // (N * C))
    nthreads = cpu.num_threads()
    with cpu.kernel_guard:
        s_dy, s_dyx = cpu.sample_channel_grad_sums(g4, x4, cmean, nthreads)
        p, q, r, gw, gb = cpu.group_grad_coefficients(s_dy, s_dyx, rstd, weight, count)
        cpu.sample_channel_grad_input(g4, x4, cmean, p, q, r, t4, nthreads)
    result = output.finish()
    if weight is None:
        return result, None, None
    return result, gw.astype(gdt), gb.astype(gdt)


def _float_input(x: ArrayLike) -> np.ndarray:
    """x for a backward: float32, float64, float16 or bfloat16."""
    return as_float_array(x)


def _grad_param_dtype(weight: object, dtype: np.dtype) -> np.dtype:
    """dtype of grad_weight/grad_bias: the weight's, as torch gives them (a float32 weight of half
    x gets float32 gradients); x's for float32/float64 x (``check_param`` insists on it)."""
    if is_half(dtype) and getattr(weight, "dtype", None) == np.float32:
        return np.dtype(np.float32)
    return dtype


def _matching_view(a: np.ndarray, axis: int, channels_moved: bool, shape: tuple[int, int, int]) -> np.ndarray:
    """``a`` as a canonical view laid out like x's, so both are read with the same indices;
    copies only when ``a``'s memory layout differs from x's (or has no copy-free view)."""
    view = canonical_view(a, axis)
    if view is not None and view.channels_moved == channels_moved:
        return view.x3
    if channels_moved:
        return np.ascontiguousarray(np.moveaxis(a, axis, -1)).reshape(shape)
    return np.ascontiguousarray(a).reshape(shape)
