"""The jitted callers of the njit tests (``test_njit``, ``test_njit_errors``), in a module of
their own: they are ``cache=True``, and numba's cache of a function is stamped with its file, so
edits of the tests do not compile them again (numba is slow to compile here)."""

from __future__ import annotations

import numba
import numpy as np

import numbanorm as nb

njit = numba.njit(cache=True)


@njit
def ln_stats(x, shape, w, b, eps):
    return nb.layer_norm(x, shape, w, b, eps, return_stats=True)


@njit
def ln_out(x, w, b, out):
    return nb.layer_norm(x, x.shape[-1], w, b, out=out)


@njit
def rms_stats(x, shape, w, eps):
    return nb.rms_norm(x, shape, w, eps, return_stats=True)


@njit
def rms_default(x, w):
    return nb.rms_norm(x, x.shape[-1], w)


@njit
def add_ln(x, r, w, b, out, rout):
    return nb.add_layer_norm(x, r, x.shape[-1], w, b, 1e-5, out=out, residual_out=rout)


@njit
def bn(x, rm, rv, w, b, training, momentum, eps, axis):
    return nb.batch_norm(x, rm, rv, w, b, training, momentum, eps, channel_axis=axis, return_stats=True)


@njit
def bn_eval(x, rm, rv, w, b):
    return nb.batch_norm(x, rm, rv, w, b)


@njit
def bn_out(x, rm, rv, w, b, training, axis, out):
    return nb.batch_norm(x, rm, rv, w, b, training, channel_axis=axis, out=out)


@njit
def gn(x, groups, w, b, eps, axis):
    return nb.group_norm(x, groups, w, b, eps, channel_axis=axis, return_stats=True)


@njit
def inorm(x, rm, rv, w, b, use_input_stats, momentum, eps, axis):
    return nb.instance_norm(x, rm, rv, w, b, use_input_stats, momentum, eps, channel_axis=axis)


@njit
def ln_bwd(g, x, shape, mean, rstd, w):
    return nb.layer_norm_backward(g, x, shape, mean, rstd, w)


@njit
def rms_bwd(g, x, shape, rstd, w):
    return nb.rms_norm_backward(g, x, shape, rstd, w)


@njit
def bn_bwd(g, x, mean, invstd, w, training, axis):
    return nb.batch_norm_backward(g, x, mean, invstd, w, training, channel_axis=axis)


@njit
def gn_bwd(g, x, groups, mean, rstd, w, axis):
    return nb.group_norm_backward(g, x, groups, mean, rstd, w, channel_axis=axis)


# Inside the user's prange loop
@numba.njit(parallel=True, cache=True)
def ln_each(x, w, b):
    out = np.empty_like(x)
    for i in numba.prange(x.shape[0]):
        out[i] = nb.layer_norm(x[i], x.shape[-1], w, b)
    return out


@numba.njit(parallel=True, cache=True)
def bn_each(x, w, b):
    out = np.empty_like(x)
    for i in numba.prange(x.shape[0]):
        out[i] = nb.batch_norm(x[i], None, None, w, b, True)
    return out
