"""Independent float64 references for the norm family (plain NumPy, no numbanorm code)."""

from __future__ import annotations

import numpy as np
from reference import two_pass


def rms_norm_ref(x, k, weight=None, eps=None):
    x64 = np.asarray(x, np.float64)
    if eps is None:
        eps = float(np.finfo(np.float64 if np.asarray(x).dtype == np.float64 else np.float32).eps)
    axes = tuple(range(x64.ndim - k, x64.ndim))
    ms = (x64.astype(np.longdouble) ** 2).mean(axis=axes, keepdims=True).astype(np.float64)
    y = x64 / np.sqrt(ms + eps)
    return y if weight is None else y * np.asarray(weight, np.float64)


def group_norm_ref(x, groups, weight=None, bias=None, eps=1e-5, channel_axis=1):
    """(y, mean (N, G), rstd (N, G)) in float64, for any channel axis (axis 0 is the batch)."""
    x64 = np.moveaxis(np.asarray(x, np.float64), channel_axis, 1)
    N, C = x64.shape[:2]
    g = x64.reshape(N, groups, -1)
    mean, var = two_pass(g, (2,))
    rstd = 1.0 / np.sqrt(var + eps)
    y = ((g - mean) * rstd).reshape(x64.shape)
    bshape = (1, C) + (1,) * (x64.ndim - 2)
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(bshape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(bshape)
    return np.moveaxis(y, 1, channel_axis), mean.reshape(N, groups), rstd.reshape(N, groups)


def instance_norm_running_ref(x, running_mean, running_var, momentum, channel_axis=1):
    """torch's InstanceNorm running-stat update: per-(n, c) stats averaged over N."""
    x64 = np.moveaxis(np.asarray(x, np.float64), channel_axis, 1)
    N, C = x64.shape[:2]
    flat = x64.reshape(N, C, -1)
    mean, var = two_pass(flat, (2,))
    n = flat.shape[2]
    rm = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean.reshape(N, C).mean(0)
    rv = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * (var.reshape(N, C) * n / (n - 1)).mean(0)
    return rm, rv


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place between two arrays of one 16-bit float dtype."""
    def key(v):
        bits = np.ascontiguousarray(v).view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)

    return np.abs(key(a) - key(b))
