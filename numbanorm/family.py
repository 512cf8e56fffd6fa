"""The norm family on the moments engine: RMSNorm, GroupNorm, InstanceNorm, residual-add LayerNorm,
and BatchNorm folding. Semantics follow ``torch.nn.functional`` where torch has the op."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from ._backend import cpu, device_op, is_device_array
from ._checks import (
    HOST,
    add_layer_norm_args,
    as_float_array,
    check_eps,
    group_norm_args,
    instance_norm_checked,
    rms_norm_args,
)
from ._layout import Output, channel_output, input_view, rows_output, rows_view, stats_dtype
from .functional import batch_norm

__all__ = ["rms_norm", "group_norm", "instance_norm", "add_layer_norm", "fold_batch_norm"]


@overload
def rms_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = ...,
             eps: float | None = ..., *, out: np.ndarray | None = ...,
             return_stats: Literal[False] = ...) -> np.ndarray: ...
@overload
def rms_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = ...,
             eps: float | None = ..., *, out: np.ndarray | None = ...,
             return_stats: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def rms_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = ...,
             eps: float | None = ..., *, out: np.ndarray | None = ...,
             return_stats: bool) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...
def rms_norm(x: ArrayLike, normalized_shape: int | Sequence[int], weight: ArrayLike | None = None,
             eps: float | None = None, *, out: np.ndarray | None = None,
             return_stats: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """RMS normalization over the trailing dims, as ``F.rms_norm``: ``x / sqrt(mean(x²) + eps) * weight``.

    Parameters
    ----------
    x : array_like
        The input: float16, bfloat16, float32 or float64, or a CUDA array (see Notes). Lists and
        tuples are converted as NumPy converts them, and integers in them become float64; an
        integer ndarray is refused.
    normalized_shape : int or sequence of int
        The trailing dims normalized over; they must equal ``x.shape[-k:]``.
    weight : array_like, optional
        Elementwise scale of shape ``normalized_shape`` and x's dtype (float32 too for a half x).
    eps : float, optional
        Added to ``mean(x²)``; positive and finite. None (the default) uses the machine epsilon of
        the compute type, as torch does: float64's for float64 input, float32's otherwise (half
        inputs are computed in float32 or wider by torch too).
    out : numpy.ndarray, optional
        Where y is written: x's shape and dtype, writeable; may be ``x`` itself (in place).
    return_stats : bool, default False
        Also return ``rstd``, as ``rms_norm_backward`` takes it.

    Returns
    -------
    y : numpy.ndarray
        x normalized, of x's shape and dtype (``out`` when given). Alone unless ``return_stats``.
    rstd : numpy.ndarray
        With ``return_stats=True``: ``1 / sqrt(mean(x²) + eps)`` of each row, of shape
        ``x.shape[:-k]`` (float32, float64 for a float64 x).

    Raises
    ------
    TypeError
        x is None or not floating point; ``weight`` or ``out`` has the wrong dtype or type.
    ValueError
        x is 0-d; ``normalized_shape`` is not x's trailing dims; ``weight`` has the wrong shape;
        ``eps`` is not positive and finite; ``out`` is read-only or overlaps an input.

    Notes
    -----
    A CUDA array runs on the GPU and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> y, rstd = nb.rms_norm(np.array([[3.0, 4.0], [1.0, 1.0]]), 2, return_stats=True)
    >>> print(y.round(4))
    [[0.8485 1.1314]
     [1.     1.    ]]
    >>> print(rstd.round(4))
    [0.2828 1.    ]
    """
    if is_device_array(x):
        on_device: np.ndarray | tuple[np.ndarray, np.ndarray]
        if return_stats:
            on_device = device_op("rms_norm")(x, normalized_shape, weight, eps, out=out, return_stats=True)
        else:
            on_device = device_op("rms_norm")(x, normalized_shape, weight, eps, out=out)
        return on_device
    x = as_float_array(x)
    shape, weight, eps, out = rms_norm_args(HOST, x, normalized_shape, weight, eps, out)
    x2 = rows_view(x, len(shape))
    output = rows_output(out, x, x2.shape)
    rstd = np.empty(x2.shape[0], stats_dtype(x.dtype))
    with cpu.kernel_guard:
        cpu.rms_norm_forward(cpu.kernel_array(x2), weight, eps, output.kernel, rstd, cpu.num_threads())
    y = output.finish()
    return (y, rstd.reshape(x.shape[: x.ndim - len(shape)])) if return_stats else y


def add_layer_norm(x: ArrayLike, residual: ArrayLike, normalized_shape: int | Sequence[int],
                   weight: ArrayLike | None = None, bias: ArrayLike | None = None, eps: float = 1e-5, *,
                   out: np.ndarray | None = None,
                   residual_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(layer_norm(x + residual), x + residual)`` in one pass over ``x`` and ``residual``.

    The sum is rounded to the input dtype before it is normalized, so both results equal the
    unfused ops.

    Parameters
    ----------
    x : array_like
        The input: float16, bfloat16, float32 or float64, or a CUDA array (see Notes). Lists and
        tuples are converted as NumPy converts them, and integers in them become float64; an
        integer ndarray is refused.
    residual : array_like
        Added to x: x's shape and dtype.
    normalized_shape : int or sequence of int
        The trailing dims normalized over; they must equal ``x.shape[-k:]``.
    weight : array_like, optional
        Elementwise scale of shape ``normalized_shape`` and x's dtype (float32 too for a half x).
    bias : array_like, optional
        Elementwise offset, as ``weight``.
    eps : float, default 1e-5
        Added to the variance; positive and finite.
    out : numpy.ndarray, optional
        Where the normalized sum is written (x's shape and dtype, writeable).
    residual_out : numpy.ndarray, optional
        Where the sum ``x + residual`` is written. ``out`` and ``residual_out`` may be ``x`` or
        ``residual`` themselves (in place), but not overlap them partially nor each other.

    Returns
    -------
    y : numpy.ndarray
        ``layer_norm(x + residual, normalized_shape, weight, bias, eps)`` (``out`` when given).
    sum : numpy.ndarray
        ``x + residual`` in x's dtype (``residual_out`` when given), the next block's residual.

    Raises
    ------
    TypeError
        x or residual is None or not floating point; a parameter or output has the wrong dtype.
    ValueError
        ``residual`` is not of x's shape and dtype; x is 0-d; ``normalized_shape`` is not x's
        trailing dims; a parameter has the wrong shape; ``eps`` is out of range; an output is
        read-only or overlaps an input or the other output.

    Notes
    -----
    A CUDA array runs on the GPU and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> y, s = nb.add_layer_norm(np.array([[1.0, 2.0, 4.0]]), np.array([[1.0, 0.0, 2.0]]), 3)
    >>> print(y.round(4), s)
    [[-0.7071 -0.7071  1.4142]] [[2. 2. 6.]]
    """
    if is_device_array(x):
        on_device: tuple[np.ndarray, np.ndarray] = device_op("add_layer_norm")(
            x, residual, normalized_shape, weight, bias, eps, out=out, residual_out=residual_out)
        return on_device
    x = as_float_array(x)
    residual = as_float_array(residual, "residual")
    shape, weight, bias, eps, out, residual_out = add_layer_norm_args(HOST, x, residual, normalized_shape, weight,
                                                                      bias, eps, out, residual_out)
    k = len(shape)
    x2, res2 = rows_view(x, k), rows_view(residual, k)
    output = rows_output(out, x, x2.shape)
    sum_output = rows_output(residual_out, x, x2.shape)
    mean = np.empty(x2.shape[0], stats_dtype(x.dtype))
    rstd = np.empty_like(mean)
    with cpu.kernel_guard:
        cpu.add_layer_norm_forward(cpu.kernel_array(x2), cpu.kernel_array(res2), weight, bias, eps, output.kernel,
                                   sum_output.kernel, mean, rstd, cpu.num_threads())
    return output.finish(), sum_output.finish()


@overload
def group_norm(x: ArrayLike, num_groups: int, weight: ArrayLike | None = ..., bias: ArrayLike | None = ...,
               eps: float = ..., *, channel_axis: int = ..., out: np.ndarray | None = ...,
               return_stats: Literal[False] = ...) -> np.ndarray: ...
@overload
def group_norm(x: ArrayLike, num_groups: int, weight: ArrayLike | None = ..., bias: ArrayLike | None = ...,
               eps: float = ..., *, channel_axis: int = ..., out: np.ndarray | None = ...,
               return_stats: Literal[True]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
@overload
def group_norm(x: ArrayLike, num_groups: int, weight: ArrayLike | None = ..., bias: ArrayLike | None = ...,
               eps: float = ..., *, channel_axis: int = ..., out: np.ndarray | None = ...,
               return_stats: bool) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def group_norm(x: ArrayLike, num_groups: int, weight: ArrayLike | None = None, bias: ArrayLike | None = None,
               eps: float = 1e-5, *, channel_axis: int = 1, out: np.ndarray | None = None,
               return_stats: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group normalization, as ``F.group_norm``.

    Per sample, over each group of ``C / num_groups`` consecutive channels and all spatial
    positions; per-channel ``weight``/``bias``. Axis 0 is the batch; ``channel_axis=-1`` is
    channels-last (NHWC), read without a transpose.

    Parameters
    ----------
    x : array_like
        The input: float16, bfloat16, float32 or float64, or a CUDA array (see Notes). Lists and
        tuples are converted as NumPy converts them, and integers in them become float64; an
        integer ndarray is refused. Shape ``(N, C, ...)``, channels on ``channel_axis``.
    num_groups : int
        The number of groups: a positive divisor of C.
    weight : array_like, optional
        Per-channel scale of shape (C,) and x's dtype (float32 too for a half x).
    bias : array_like, optional
        Per-channel offset, as ``weight``.
    eps : float, default 1e-5
        Added to the variance; positive and finite.
    channel_axis : int, default 1
        The channel axis; not 0, the batch axis.
    out : numpy.ndarray, optional
        Where y is written: x's shape and dtype, writeable; may be ``x`` itself (in place).
    return_stats : bool, default False
        Also return the statistics, as ``group_norm_backward`` takes them.

    Returns
    -------
    y : numpy.ndarray
        x normalized, of x's shape and dtype (``out`` when given). Alone unless ``return_stats``.
    mean : numpy.ndarray
        With ``return_stats=True``: the mean of each (sample, group), shape ``(N, num_groups)``
        (float32, float64 for a float64 x).
    rstd : numpy.ndarray
        With ``return_stats=True``: ``1 / sqrt(var + eps)`` of each (sample, group), as ``mean``.

    Raises
    ------
    TypeError
        x is None or not floating point; ``num_groups`` or ``channel_axis`` is not an int; a
        parameter or ``out`` has the wrong dtype.
    ValueError
        x has fewer than 2 dims (or is 0-d); ``channel_axis`` is 0 or out of range;
        ``num_groups`` does not divide C; one value per group; a parameter has the wrong shape;
        ``eps`` is out of range; ``out`` is read-only or overlaps an input.

    Notes
    -----
    A CUDA array runs on the GPU and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x = np.arange(16.0).reshape(2, 4, 2)  # (N, C, L), two groups of two channels
    >>> y, mean, rstd = nb.group_norm(x, 2, return_stats=True)
    >>> print(y[0].round(4))
    [[-1.3416 -0.4472]
     [ 0.4472  1.3416]
     [-1.3416 -0.4472]
     [ 0.4472  1.3416]]
    >>> print(mean)
    [[ 1.5  5.5]
     [ 9.5 13.5]]
    """
    if is_device_array(x):
        on_device: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray] = device_op("group_norm")(
            x, num_groups, weight, bias, eps, channel_axis=channel_axis, out=out, return_stats=return_stats)
        return on_device
    x = as_float_array(x)
    axis, G, weight, bias, eps, out = group_norm_args(HOST, x, num_groups, weight, bias, eps, channel_axis, out)

    output, x4 = _sample_io(x, axis, out)
    if x4 is None:  # empty input: nothing to normalize, stats undefined
        gmean = grstd = np.full((x.shape[0], G), np.nan)
    else:
        _, _, _, gmean, grstd = _grouped_norm(x4, G, weight, bias, eps, output.kernel.reshape(x4.shape))
    result = output.finish()
    if not return_stats:
        return result
    sdt = stats_dtype(x.dtype)
    return result, gmean.astype(sdt), grstd.astype(sdt)


def instance_norm(x: ArrayLike, running_mean: np.ndarray | None = None, running_var: np.ndarray | None = None,
                  weight: ArrayLike | None = None, bias: ArrayLike | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *, channel_axis: int = 1,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Instance normalization, as ``F.instance_norm``: per sample and channel over the spatial dims.

    With ``use_input_stats`` and running stats given, they are updated in place as torch does:
    with the per-(n, c) batch mean and unbiased variance averaged over N.
    ``use_input_stats=False`` normalizes with the running stats (that is BatchNorm in eval mode).

    Parameters
    ----------
    x : array_like
        The input: float16, bfloat16, float32 or float64, or a CUDA array (see Notes). Lists and
        tuples are converted as NumPy converts them, and integers in them become float64; an
        integer ndarray is refused. Shape ``(N, C, ...)``, channels on ``channel_axis``.
    running_mean : numpy.ndarray, optional
        Running mean of shape (C,) and x's dtype, updated in place when ``use_input_stats``;
        give both running stats or neither.
    running_var : numpy.ndarray, optional
        Running variance, as ``running_mean``.
    weight : array_like, optional
        Per-channel scale of shape (C,) and x's dtype (float32 too for a half x).
    bias : array_like, optional
        Per-channel offset, as ``weight``.
    use_input_stats : bool, default True
        Normalize with each instance's statistics (else with the running ones, which are then
        required).
    momentum : float, default 0.1
        Weight of the batch statistics in the running-stats update; in [0, 1].
    eps : float, default 1e-5
        Added to the variance; positive and finite.
    channel_axis : int, default 1
        The channel axis; not 0, the batch axis.
    out : numpy.ndarray, optional
        Where y is written: x's shape and dtype, writeable; may be ``x`` itself (in place).

    Returns
    -------
    numpy.ndarray
        x normalized, of x's shape and dtype (``out`` when given).

    Raises
    ------
    TypeError
        x is None or not floating point; an argument has the wrong type or dtype.
    ValueError
        x has fewer than 2 dims (or is 0-d); ``channel_axis`` is 0 or out of range; only one
        running stat is given, or none with ``use_input_stats=False``; one spatial element per
        instance; a shape, ``momentum`` or ``eps`` is wrong; ``out`` overlaps an input.

    Notes
    -----
    A CUDA array runs on the GPU and gives arrays of the same kind, after the same checks.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> x = np.array([[[1.0, 3.0], [2.0, 6.0]], [[0.0, 4.0], [4.0, 8.0]]])  # (N, C, L)
    >>> running_mean, running_var = np.zeros(2), np.ones(2)
    >>> print(nb.instance_norm(x, running_mean, running_var, eps=1e-12)[0])
    [[-1.  1.]
     [-1.  1.]]
    >>> print(running_mean, running_var)
    [0.2 0.5] [1.4 1.7]
    """
    if is_device_array(x):
        on_device: np.ndarray = device_op("instance_norm")(x, running_mean, running_var, weight, bias,
                                                            use_input_stats, momentum, eps, channel_axis=channel_axis,
                                                            out=out)
        return on_device
    x = as_float_array(x)
    return instance_norm_checked(HOST, x, x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                                 channel_axis, out, batch_norm, lambda *checked: _instance_norm(x, *checked))


def _instance_norm(x: np.ndarray, axis: int, update: bool, running_mean: np.ndarray | None,
                   running_var: np.ndarray | None, weight: np.ndarray | None, bias: np.ndarray | None, momentum: float,
                   eps: float, out: np.ndarray | None) -> np.ndarray:
    """Host instance_norm after the checks (``instance_norm_args``' values)."""
    C = x.shape[axis]

    output, x4 = _sample_io(x, axis, out)
    if x4 is None:
        return output.finish()
    count, mean, m2, _, _ = _grouped_norm(x4, C, weight, bias, eps, output.kernel.reshape(x4.shape))  # G = C
    result = output.finish()
    if update and running_mean is not None and running_var is not None:  # (update says they are given)
        keep = np.float64(1.0 - momentum)
        running_mean[...] = keep * running_mean + momentum * mean.mean(axis=0)
        running_var[...] = keep * running_var + momentum * (m2 / (count - 1.0)).mean(axis=0)
    return result


def fold_batch_norm(weight: ArrayLike, bias: ArrayLike | None, running_mean: ArrayLike, running_var: ArrayLike,
                    bn_weight: ArrayLike | None, bn_bias: ArrayLike | None, eps: float = 1e-5, *,
                    out_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BatchNorm into the Linear/Conv before it.

    Returns ``(weight', bias')`` with ``conv(x, weight') + bias' == batch_norm(conv(x, weight) +
    bias)``. Computed in float64, returned in ``weight``'s dtype.

    Parameters
    ----------
    weight : array_like
        The Linear/Conv weight, floating point, with at least 1 dim (the output channels).
    bias : array_like or None
        Its bias, shape (C,) (None: zero).
    running_mean : array_like
        The BatchNorm's running mean, shape (C,).
    running_var : array_like
        The BatchNorm's running variance, shape (C,).
    bn_weight : array_like or None
        The BatchNorm's weight (γ), shape (C,) (None: one).
    bn_bias : array_like or None
        The BatchNorm's bias (β), shape (C,) (None: zero).
    eps : float, default 1e-5
        The BatchNorm's eps; positive and finite.
    out_axis : int, default 0
        The output-channel axis of ``weight``: 0 for Linear/Conv, 1 for ConvTranspose (like
        torch's ``transpose=True``).

    Returns
    -------
    weight : numpy.ndarray
        The folded weight, of ``weight``'s shape and dtype.
    bias : numpy.ndarray
        The folded bias, shape (C,), ``weight``'s dtype.

    Raises
    ------
    TypeError
        ``weight`` is None or not floating point; a statistic is None or not floating point;
        ``out_axis`` is not an int.
    ValueError
        ``weight`` is 0-d; ``out_axis`` is out of range; a vector is not of shape (C,); ``eps`` is
        out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> w, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -0.5])
    >>> mean, var = np.array([1.0, 2.0]), np.array([4.0, 1.0])
    >>> w2, b2 = nb.fold_batch_norm(w, b, mean, var, None, None, eps=1e-12)
    >>> print(w2.round(4), b2.round(4))
    [[0.5 1. ]
     [3.  4. ]] [-0.25 -2.5 ]
    >>> x = np.array([[1.0, -1.0]])
    >>> print((x @ w2.T + b2).round(4), nb.batch_norm(x @ w.T + b, mean, var, eps=1e-12).round(4))
    [[-0.75 -3.5 ]] [[-0.75 -3.5 ]]
    """
    weight = as_float_array(weight, "weight")
    if weight.ndim == 0:
        raise ValueError("weight must have at least 1 dim (the output channels), got a 0-d array (a scalar)")
    if isinstance(out_axis, bool) or not isinstance(out_axis, numbers.Integral):
        raise TypeError(f"out_axis must be an int, got {type(out_axis).__name__}")
    if not -weight.ndim <= out_axis < weight.ndim:
        raise ValueError(f"out_axis must be in [{-weight.ndim}, {weight.ndim - 1}] for a {weight.ndim}-D weight, "
                         f"got {out_axis}")
    axis = int(out_axis) % weight.ndim
    C = weight.shape[axis]
    dt = weight.dtype
    rm = _fold_vector(running_mean, "running_mean", C, None)
    rv = _fold_vector(running_var, "running_var", C, None)
    gamma = _fold_vector(bn_weight, "bn_weight", C, 1.0)
    beta = _fold_vector(bn_bias, "bn_bias", C, 0.0)
    b = _fold_vector(bias, "bias", C, 0.0)
    eps = check_eps(eps)
    scale = gamma / np.sqrt(rv + eps)
    bshape = [1] * weight.ndim
    bshape[axis] = C
    new_weight = (weight.astype(np.float64) * scale.reshape(bshape)).astype(dt)
    new_bias = ((b - rm) * scale + beta).astype(dt)
    return new_weight, new_bias


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _grouped_norm(x4: np.ndarray, G: int, weight: np.ndarray | None, bias: np.ndarray | None, eps: float,
                  target4: np.ndarray) -> tuple[Any, Any, Any, Any, Any]:
    """Per-(n, c) moments, merged into G groups per sample, then the per-channel affine.
    Returns (count per channel, mean (N, C), M2 (N, C), group mean (N, G), group rstd (N, G))."""
    C = x4.shape[2]
    nthreads = cpu.num_threads()
    with cpu.kernel_guard:
        fused: tuple[Any, Any, Any, Any, Any] | None = cpu.group_norm_fused(x4, G, weight, bias, eps, target4,
                                                                          nthreads)
        if fused is not None:
            return fused
        count, mean, m2 = cpu.sample_channel_moments(x4, nthreads)
        gmean, gm2 = (mean, m2) if G == C else cpu.merge_groups(mean, m2, count, G)
        grstd = 1.0 / np.sqrt(gm2 / (count * (C // G)) + eps)
        shift, scale, offset = cpu.group_scale_offset(gmean, grstd, weight, bias, C)
        cpu.sample_channel_affine(x4, shift, scale, offset, target4, nthreads)
    return count, mean, m2, gmean, grstd


def _sample_io(x: np.ndarray, axis: int, out: np.ndarray | None) -> tuple[Output, np.ndarray | None]:
    """(``Output`` of a per-sample op, 4-D kernel input view (N, outer, C, inner) or None for an
    empty input)."""
    view = input_view(x, axis)
    output = channel_output(out, x, view, axis)
    if x.size == 0:
        return output, None
    N, C, inner = x.shape[0], x.shape[axis], view.x3.shape[2]
    return output, cpu.kernel_array(view.x3).reshape(N, -1, C, inner)


def _fold_vector(v: object, name: str, C: int, default: float | None) -> np.ndarray:
    if v is None:
        if default is None:
            raise TypeError(f"{name} must be an array of shape ({C},), got None")
        return np.full(C, default)
    arr = as_float_array(v, name)
    if arr.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) (the output channels of weight), got {arr.shape}")
    return arr.astype(np.float64)

