"""Independent float64 two-pass references (plain NumPy, no numbanorm code)."""

from __future__ import annotations

import numpy as np


def two_pass(x64: np.ndarray, axes: tuple[int, ...]):
    """Two-pass mean and biased variance, summed in extended precision.

    NumPy's float64 sum over a strided axis is sequential, and at a 1e8 offset its rounding
    (~1e-7 of the std) would exceed the bounds being tested; long double keeps the reference
    an order of magnitude better than what it judges.
    """
    xl = x64.astype(np.longdouble)
    mean = xl.mean(axis=axes, keepdims=True)
    mean = mean + (xl - mean).mean(axis=axes, keepdims=True)  # corrected two-pass
    var = ((xl - mean) ** 2).mean(axis=axes, keepdims=True)
    return mean.astype(np.float64), var.astype(np.float64)


def layer_norm_ref(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(y, mean, rstd) in float64; stats have shape x.shape[:-k]."""
    x64 = np.asarray(x, np.float64)
    k = len(normalized_shape)
    axes = tuple(range(x64.ndim - k, x64.ndim))
    mean, var = two_pass(x64, axes)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x64 - mean) * rstd
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    batch = x64.shape[: x64.ndim - k]
    return y, mean.reshape(batch), rstd.reshape(batch)


def batch_norm_ref(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                   momentum=0.1, eps=1e-5, channel_axis=1):
    """(y, mean, invstd, new_running_mean, new_running_var) in float64 (running None if not given)."""
    x64 = np.asarray(x, np.float64)
    axis = channel_axis % x64.ndim
    axes = tuple(i for i in range(x64.ndim) if i != axis)
    bshape = [1] * x64.ndim
    bshape[axis] = x64.shape[axis]
    new_rm = new_rv = None
    if training:
        mean, var = two_pass(x64, axes)
        mean, var = mean.reshape(-1), var.reshape(-1)
        if running_mean is not None:
            n = x64.size // x64.shape[axis]
            new_rm = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean
            new_rv = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * var * n / (n - 1)
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x64 - mean.reshape(bshape)) * invstd.reshape(bshape)
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(bshape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(bshape)
    return y, mean, invstd, new_rm, new_rv


def rel_l2(a, ref) -> float:
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(a - ref) / (denom if denom else 1.0))


#: Relative L2 tolerance per dtype for parity checks on N(0,1)-scale data.
TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
