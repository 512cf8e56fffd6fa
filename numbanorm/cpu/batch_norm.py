"""BatchNorm on the CPU: training (batch statistics, running-stat update) and inference, over the
canonical view ``(outer, C, inner)``.

One dispatch per call: the serial entries (one per layout, so that a cold call compiles only its
layout's moments and normalize loops) fuse statistics, coefficients, normalize and the
running-stat update; large inputs run the two parfors (``moments``, ``affine``) driven from
Python, since a jitted entry over the parfors compiled, optimized and emitted all of their code
once more (5 s of a 16-19 s cold first call).
"""

from __future__ import annotations

import numpy as np

from .affine import channel_scale_offset, cl_affine, parallel_cl_affine, parallel_rows_affine, rows_affine
from .halfio import load, store
from .jit import glue, serial
from .moments import cl_moments, parallel_cl_moments, parallel_rows_moments, rows_moments
from .plan import plan

_F32 = np.dtype(np.float32)

#: Zero-length arrays that stand for an absent weight, bias or running stats in the BN entry
#: points: None is a compile-time type in numba, so each None/array combination compiled (and
#: cached) its own copy of the whole entry (6 copies of BN training per dtype in the tests).
_NONE: dict = {}

def none_of(dtype):
    a = _NONE.get(dtype)
    if a is None:
        a = _NONE[dtype] = np.empty(0, dtype)
    return a


def no_stats(dtype):
    """The empty ``stats_out`` of the BN entries (statistics not wanted), of a ``stats_dtype``."""
    a = _NO_STATS.get(dtype)
    if a is None:
        a = _NO_STATS[dtype] = np.empty((0, 0), dtype)
    return a


_NO_STATS: dict = {}

def _absent(p, x3):
    """``p``, or the zero-length stand-in of the dtype ``check_param`` gives a parameter for x3:
    x's float dtype, float32 for the 16-bit views of half arrays."""
    if p is not None:
        return p
    return none_of(x3.dtype if x3.dtype.kind == "f" else _F32)


@serial
def update_running_stats(running_mean, running_var, count, mean, m2, momentum):
    """torch's running-stats rule in float64, in place; a no-op when they are None or empty."""
    if running_mean is not None and running_var is not None and running_mean.size > 0:
        keep = 1.0 - momentum
        for c in range(mean.shape[0]):
            running_mean[c] = store(keep * np.float64(load(running_mean[c])) + momentum * mean[c], running_mean)
            running_var[c] = store(keep * np.float64(load(running_var[c])) + momentum * (m2[c] / (count - 1.0)),
                                   running_var)


@glue
def write_stats(stats_out, mean, invstd):
    """(mean, invstd) into the caller's (2, C) ``stats_out``, unless it is empty."""
    if stats_out.size:
        for c in range(mean.shape[0]):
            stats_out[0, c] = mean[c]
            stats_out[1, c] = invstd[c]


def batch_norm_train_forward(x3, weight, bias, running_mean, running_var, momentum, eps, out3, nthreads,
                             stats_out):
    """BatchNorm training forward in one dispatch; ``stats_out`` (2, C) receives (mean, invstd)
    unless it is empty (``no_stats``): returning the arrays from the jitted entry cost ~1.2 us of
    boxing per tiny call, paid even when the caller dropped them.

    Also updates the running stats in place (when given) with torch's rule in float64:
    ``r = (1 - momentum) * r + momentum * batch``, unbiased variance. Needs ``x3.size > 0``.
    """
    weight, bias = _absent(weight, x3), _absent(bias, x3)
    if running_mean is None:
        running_mean = running_var = none_of(x3.dtype)
    n_o, n_i = plan(x3.shape[0], x3.shape[1], x3.shape[2], nthreads)
    if n_o * n_i == 1:
        train_serial_entry(x3)(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out)
        return
    mean, invstd = batch_norm_train_parallel(x3, weight, bias, running_mean, running_var, momentum, eps, out3,
                                             n_o, n_i)
    if stats_out.size:
        stats_out[0], stats_out[1] = mean, invstd


def train_serial_entry(x3):
    """The serial BN training entry for x3's layout: one per layout, so that a cold call compiles
    only its layout's moments and normalize loops (the channels-last register kernels cost ~40%
    of a cold NCHW call when both were compiled)."""
    return batch_norm_train_rows if x3.shape[2] != 1 else batch_norm_train_cl


@serial
def batch_norm_train_rows(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out):
    C = x3.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    count = rows_moments(x3, 0, x3.shape[0], 0, x3.shape[2], mean, m2)
    invstd, scale, offset = channel_scale_offset(mean, m2 / count, weight, bias, eps)
    rows_affine(x3, 0, x3.shape[0], 0, x3.shape[2], mean, scale, offset, out3)
    update_running_stats(running_mean, running_var, count, mean, m2, momentum)
    write_stats(stats_out, mean, invstd)


@serial
def batch_norm_train_cl(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out):
    C = x3.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    count = cl_moments(x3, 0, x3.shape[0], 0, 1, mean, m2)
    invstd, scale, offset = channel_scale_offset(mean, m2 / count, weight, bias, eps)
    cl_affine(x3, 0, x3.shape[0], 0, 1, mean, scale, offset, out3)
    update_running_stats(running_mean, running_var, count, mean, m2, momentum)
    write_stats(stats_out, mean, invstd)


def batch_norm_train_parallel(x3, weight, bias, running_mean, running_var, momentum, eps, out3, n_o, n_i):
    """The serial entry's steps with the two parfors, driven from Python: a jitted entry over the
    parfors compiled, optimized and emitted all of their code once more (5 s of a 16-19 s cold
    first call)."""
    rows = x3.shape[2] != 1  # the parfors of x3's layout (parallel_moments, parallel_affine), chosen once
    count, mean, m2 = (parallel_rows_moments if rows else parallel_cl_moments)(x3, n_o, n_i)
    invstd, scale, offset = train_scale_offset(count, mean, m2, weight, bias, running_mean, running_var, momentum,
                                               eps)
    (parallel_rows_affine if rows else parallel_cl_affine)(x3, mean, scale, offset, out3, n_o, n_i)
    return mean, invstd


@serial
def train_scale_offset(count, mean, m2, weight, bias, running_mean, running_var, momentum, eps):
    """BN training's steps between the two parfors in one dispatch (each call from Python costs
    1-2 us): (invstd, scale, offset), and the running stats updated."""
    invstd, scale, offset = channel_scale_offset(mean, m2 / count, weight, bias, eps)
    update_running_stats(running_mean, running_var, count, mean, m2, momentum)
    return invstd, scale, offset


def batch_norm_eval_forward(x3, running_mean, running_var, weight, bias, eps, out3, nthreads, stats_out):
    """BatchNorm inference forward in one dispatch; (mean, invstd) into ``stats_out`` unless it
    is empty (as ``batch_norm_train_forward``)."""
    weight, bias = _absent(weight, x3), _absent(bias, x3)
    n_o, n_i = plan(x3.shape[0], x3.shape[1], x3.shape[2], nthreads)
    if n_o * n_i == 1:
        eval_serial_entry(x3)(x3, running_mean, running_var, weight, bias, eps, out3, stats_out)
        return
    mean, invstd = batch_norm_eval_parallel(x3, running_mean, running_var, weight, bias, eps, out3, n_o, n_i)
    if stats_out.size:
        stats_out[0], stats_out[1] = mean, invstd


@glue
def eval_scale_offset(running_mean, running_var, weight, bias, eps):
    """(mean, invstd, scale, offset) in float64 from the running stats and the optional affine."""
    C = running_mean.shape[0]
    mean = np.empty(C)
    var = np.empty(C)
    for c in range(C):
        mean[c] = load(running_mean[c])
        var[c] = load(running_var[c])
    invstd, scale, offset = channel_scale_offset(mean, var, weight, bias, eps)
    return mean, invstd, scale, offset


def eval_serial_entry(x3):
    """The serial BN inference entry for x3's layout (see ``train_serial_entry``)."""
    return batch_norm_eval_rows if x3.shape[2] != 1 else batch_norm_eval_cl


@serial
def batch_norm_eval_rows(x3, running_mean, running_var, weight, bias, eps, out3, stats_out):
    mean, invstd, scale, offset = eval_scale_offset(running_mean, running_var, weight, bias, eps)
    if x3.size:
        rows_affine(x3, 0, x3.shape[0], 0, x3.shape[2], mean, scale, offset, out3)
    write_stats(stats_out, mean, invstd)


@serial
def batch_norm_eval_cl(x3, running_mean, running_var, weight, bias, eps, out3, stats_out):
    mean, invstd, scale, offset = eval_scale_offset(running_mean, running_var, weight, bias, eps)
    if x3.size:
        cl_affine(x3, 0, x3.shape[0], 0, 1, mean, scale, offset, out3)
    write_stats(stats_out, mean, invstd)


def batch_norm_eval_parallel(x3, running_mean, running_var, weight, bias, eps, out3, n_o, n_i):
    """BN inference with the normalize parfor, driven from Python (see the training entry)."""
    mean, invstd, scale, offset = eval_scale_offset(running_mean, running_var, weight, bias, eps)
    (parallel_rows_affine if x3.shape[2] != 1 else parallel_cl_affine)(x3, mean, scale, offset, out3, n_o, n_i)
    return mean, invstd


# The tiny half path's entries (``_tiny``): N-D C-contiguous ``x``/``out`` with the channels on
# axis 1 (``*_nd_rows``) or last (``*_nd_cl``), viewed as (outer, C, inner) here, since each
# reshape or view in Python costs ~0.25 us and the 16-bit views already cost two.
@glue
def nd_rows_view(a):
    return a.reshape(a.shape[0], a.shape[1], a.size // (a.shape[0] * a.shape[1]))


@glue
def nd_cl_view(a):
    return a.reshape(a.size // a.shape[-1], a.shape[-1], 1)


@serial
def batch_norm_train_nd_rows(x, weight, bias, running_mean, running_var, momentum, eps, out, stats_out):
    batch_norm_train_rows(nd_rows_view(x), weight, bias, running_mean, running_var, momentum, eps,
                          nd_rows_view(out), stats_out)


@serial
def batch_norm_train_nd_cl(x, weight, bias, running_mean, running_var, momentum, eps, out, stats_out):
    batch_norm_train_cl(nd_cl_view(x), weight, bias, running_mean, running_var, momentum, eps, nd_cl_view(out),
                        stats_out)


@serial
def batch_norm_eval_nd_rows(x, running_mean, running_var, weight, bias, eps, out, stats_out):
    batch_norm_eval_rows(nd_rows_view(x), running_mean, running_var, weight, bias, eps, nd_rows_view(out), stats_out)


@serial
def batch_norm_eval_nd_cl(x, running_mean, running_var, weight, bias, eps, out, stats_out):
    batch_norm_eval_cl(nd_cl_view(x), running_mean, running_var, weight, bias, eps, nd_cl_view(out), stats_out)
