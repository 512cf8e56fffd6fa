"""Closed-form float64 gradients of the normalizations (plain NumPy, no numbanorm code).

Each takes the statistics the forward returned (as numbanorm's backward does), cast to float64:
float32 statistics are off by ~1e-4 relative at a 1e4 offset, which would swamp what a float32
backward is judged on. Without them the statistics are tests/reference.py's two-pass ones.
Returned grads are float64 ``(grad_x, grad_weight, grad_bias)``; the parameter grads are those of
the affine form (they do not depend on whether the forward had a weight).
"""

from __future__ import annotations

import numpy as np
from reference import two_pass

EPS = 1e-5


def _channel_shape(ndim, axis):
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return shape


def bn_backward_ref(g, x, w, axis=1, mean=None, invstd=None, training=True, eps=EPS):
    """BatchNorm over every axis but ``axis``; ``training`` as numbanorm's argument (eval: the
    statistics are constants, grad_x = dy·w·invstd)."""
    x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
    axes = tuple(i for i in range(x64.ndim) if i != axis % x64.ndim)
    shape = _channel_shape(x64.ndim, axis)
    if mean is None:
        m, var = two_pass(x64, axes)
        mean, invstd = m, 1.0 / np.sqrt(var + eps)
    mean = np.reshape(np.asarray(mean, np.float64), shape)
    invstd = np.reshape(np.asarray(invstd, np.float64), shape)
    xh = (x64 - mean) * invstd
    n = x64.size // x64.shape[axis]
    gb = g64.sum(axes)
    gw = (g64 * xh).sum(axes)
    wv = np.ones(x64.shape[axis]) if w is None else np.asarray(w, np.float64)
    s = np.reshape(wv, shape) * invstd
    if not training:
        return s * g64, gw, gb
    gx = s * (g64 - np.reshape(gb, shape) / n - xh * np.reshape(gw, shape) / n)
    return gx, gw, gb


def rows_backward_ref(g, x, w, k=1, mean=None, rstd=None, centered=True, eps=None):
    """LayerNorm (``centered``) or RMSNorm over the trailing ``k`` dims. Without stats: two-pass
    ones, eps 1e-5 (LN) or the dtype's machine epsilon (RMS, as numbanorm's default)."""
    x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
    axes = tuple(range(x64.ndim - k, x64.ndim))
    rows = tuple(range(x64.ndim - k))
    batch = x64.shape[: x64.ndim - k]
    keep = batch + (1,) * k
    if rstd is None:
        if centered:
            m, var = two_pass(x64, axes)
            mean, rstd = m, 1.0 / np.sqrt(var + (EPS if eps is None else eps))
        else:
            if eps is None:
                eps = float(np.finfo(np.float64 if np.asarray(x).dtype == np.float64 else np.float32).eps)
            ms = (x64.astype(np.longdouble) ** 2).mean(axis=axes, keepdims=True).astype(np.float64)
            rstd = 1.0 / np.sqrt(ms + eps)
    rstd = np.reshape(np.asarray(rstd, np.float64), keep)
    xc = x64 - np.reshape(np.asarray(mean, np.float64), keep) if centered else x64
    xh = xc * rstd
    gg = g64 if w is None else g64 * np.asarray(w, np.float64)
    proj = (gg * xh).mean(axes, keepdims=True)
    if centered:
        gx = rstd * (gg - gg.mean(axes, keepdims=True) - xh * proj)
    else:
        gx = rstd * (gg - xh * proj)
    return gx, (g64 * xh).sum(rows), g64.sum(rows)
