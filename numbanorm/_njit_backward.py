"""The backward functions inside users' ``@njit`` code: numba overloads of ``layer_norm_backward``,
``rms_norm_backward``, ``batch_norm_backward`` and ``group_norm_backward`` (see ``_njit``)."""

from __future__ import annotations

import numpy as np
from numba.core.errors import TypingError
from numba.extending import overload, register_jitable

from . import _njit_checks as chk
from . import backward
from ._njit import (
    channel_finish,
    channel_io,
    channel_param,
    constant_flag,
    dense,
    finish,
    last_perm,
    out_shape,
    register,
    result_of,
    row_param,
    rows_input,
    sample_axis,
    split,
    target_of,
)
from ._njit_checks import (
    NjitCheck,
    as_shape,
    axis_value,
    like_shape,
    overlap_message,
    refuse_overlap,
    refuse_partial_overlap,
    stat_shape,
    trailing,
    tuple_size,
)
from ._numba import native_call, to_fixed_tuple
from .cpu import njit as kernels
from .cpu.plan import SERIAL_SIZE


def _grad_types(grad_out, x, op):
    """x and grad_out (x's dtype, and its ndim: else a run-time shape error)."""
    dt = chk.float_array(x, "x", op)
    gdt = chk.float_array(grad_out, "grad_out", op)
    if gdt != dt:
        raise TypingError(f"grad_out must have the dtype of x, {dt}, got {gdt}")
    return dt


def _stat_type(t, name, op):
    """Saved statistics: any float32/float64 array (``check_stat`` converts them to float64)."""
    chk.float_array(t, name, op)


def float64_stat(s, shape, name):
    """``check_stat``: ``s`` of exactly ``shape`` as a flat C-contiguous float64 array (jit-only)."""


@overload(float64_stat)
def _float64_stat(s, shape, name):
    def impl(s, shape, name):
        stat_shape(s.shape, shape, name)
        return np.ascontiguousarray(s).astype(np.float64).reshape(tuple_size(shape))
    return impl


def matching(a, moved, axis, ndim, shape3):
    """``backward._matching_view``: ``a`` (grad_out) as a C-contiguous view laid out like x's
    canonical view (copied when its layout differs; jit-only)."""


@overload(matching)
def _matching(a, moved, axis, ndim, shape3):
    def impl(a, moved, axis, ndim, shape3):
        if moved:
            perm, _ = last_perm(ndim, axis)
            return np.ascontiguousarray(np.transpose(a, to_fixed_tuple(perm, ndim))).reshape(shape3)
        return np.ascontiguousarray(a).reshape(shape3)
    return impl


def stat_or_none(s, shape, name):
    """``float64_stat``, or None for RMSNorm's absent mean (jit-only)."""


@overload(stat_or_none)
def _stat_or_none(s, shape, name):
    if chk.is_none(s):
        return lambda s, shape, name: None
    return lambda s, shape, name: float64_stat(s, shape, name)


# --------------------------------------------------------------------------------------------
# LayerNorm / RMSNorm
# --------------------------------------------------------------------------------------------
def _rows_backward_typing(op, centered):
    def typing(grad_out, x, normalized_shape, mean, rstd, weight, out):
        dt = _grad_types(grad_out, x, op)
        k = chk.rank(normalized_shape)
        if centered:
            _stat_type(mean, "mean", op)
        _stat_type(rstd, "rstd", op)
        chk.param(weight, "weight", dt, k)
        chk.output(out, dt)
        nb = x.ndim - k
        no_weight = chk.is_none(weight)
        m_x = overlap_message("out", "x", True)
        m_g = overlap_message("out", "grad_out", True)
        m_m, m_r, m_w = (overlap_message("out", name, False) for name in ("mean", "rstd", "weight"))

        @register_jitable
        def run(grad_out, x, normalized_shape, mean, rstd, weight, out):
            shape = as_shape(normalized_shape)
            trailing(shape, x.shape)
            like_shape(grad_out.shape, x.shape, "grad_out", "x")
            batch = x.shape[:nb]
            R = tuple_size(batch)
            D = tuple_size(shape)
            m = stat_or_none(mean, batch, "mean")
            s = float64_stat(rstd, batch, "rstd")
            w = row_param(weight, shape, D, "weight")
            out_shape(out, x.shape, "out", "x")
            if out is not None:
                refuse_partial_overlap(out, x, m_x)
                refuse_partial_overlap(out, grad_out, m_g)
                refuse_overlap(out, mean, m_m)
                refuse_overlap(out, rstd, m_r)
                refuse_overlap(out, weight, m_w)
            y = result_of(out, x)
            y2 = target_of(y, (R, D))
            dw, db = native_call(kernels.layer_norm_backward, (rows_input(grad_out, R, D), rows_input(x, R, D), m, s,
                                                               w, y2, 0 if no_weight else D))
            finish(y, y2)
            if no_weight:  # (the caller drops them)
                return y, dw.astype(x.dtype), db.astype(x.dtype)
            return y, dw.astype(x.dtype).reshape(shape), db.astype(x.dtype).reshape(shape)
        return run, no_weight
    return typing


_ln_typing = _rows_backward_typing("layer_norm_backward", True)
_rms_typing = _rows_backward_typing("rms_norm_backward", False)


def _layer_norm_backward(grad_out, x, normalized_shape, mean, rstd, weight=None, *, out=None):
    run, no_weight = _ln_typing(grad_out, x, normalized_shape, mean, rstd, weight, out)
    if no_weight:
        def impl(grad_out, x, normalized_shape, mean, rstd, weight=None, out=None):
            return run(grad_out, x, normalized_shape, mean, rstd, weight, out)[0], None, None
    else:
        def impl(grad_out, x, normalized_shape, mean, rstd, weight=None, out=None):
            return run(grad_out, x, normalized_shape, mean, rstd, weight, out)
    return impl


def _rms_norm_backward(grad_out, x, normalized_shape, rstd, weight=None, *, out=None):
    run, no_weight = _rms_typing(grad_out, x, normalized_shape, None, rstd, weight, out)
    if no_weight:
        def impl(grad_out, x, normalized_shape, rstd, weight=None, out=None):
            return run(grad_out, x, normalized_shape, None, rstd, weight, out)[0], None
    else:
        def impl(grad_out, x, normalized_shape, rstd, weight=None, out=None):
            gx, gw, _ = run(grad_out, x, normalized_shape, None, rstd, weight, out)
            return gx, gw
    return impl


# --------------------------------------------------------------------------------------------
# BatchNorm / GroupNorm
# --------------------------------------------------------------------------------------------
@register_jitable
def is_dense(a):
    return dense(a.shape, a.strides, a.itemsize)


def _batch_norm_backward(grad_out, x, mean, invstd, weight=None, training=True, *, channel_axis=1, out=None):
    op = "batch_norm_backward"
    dt = _grad_types(grad_out, x, op)
    if x.ndim < 2:
        raise TypingError(f"x must have at least 2 dims (N, C, ...), got a {x.ndim}-D array")
    chk.integer(channel_axis, "channel_axis")
    _stat_type(mean, "mean", op)
    _stat_type(invstd, "invstd", op)
    chk.param(weight, "weight", dt, 1)
    chk.flag(training, "training")
    chk.output(out, dt)
    ndim = x.ndim
    no_weight = chk.is_none(weight)
    # backward.batch_norm_backward's tiny path takes statistics and weight of x's dtype only
    tiny_types = mean.dtype == dt and invstd.dtype == dt and (no_weight or weight.dtype == dt)
    may_tiny = tiny_types and constant_flag(training) is not False
    m_x = overlap_message("out", "x", True)
    m_g = overlap_message("out", "grad_out", True)
    m_m, m_i, m_w = (overlap_message("out", name, False) for name in ("mean", "invstd", "weight"))

    @register_jitable
    def run(grad_out, x, mean, invstd, weight, training, channel_axis, out):
        axis = axis_value(channel_axis, ndim)
        C = x.shape[axis]
        like_shape(grad_out.shape, x.shape, "grad_out", "x")
        m = float64_stat(mean, (C,), "mean")
        s = float64_stat(invstd, (C,), "invstd")
        w = channel_param(weight, C, "weight")
        out_shape(out, x.shape, "out", "x")
        if out is not None:
            refuse_partial_overlap(out, x, m_x)
            refuse_partial_overlap(out, grad_out, m_g)
            refuse_overlap(out, mean, m_m)
            refuse_overlap(out, invstd, m_i)
            refuse_overlap(out, weight, m_w)
        if may_tiny:
            if (training and 0 < x.size < SERIAL_SIZE and C and is_dense(x) and is_dense(grad_out) and is_dense(mean)
                    and is_dense(invstd) and dense_or_none(weight) and dense_or_none(out)):
                return tiny(grad_out, x, mean, invstd, weight, axis, C, out)
        x3, y, y3, moved = channel_io(x, out, axis, ndim)
        g3 = matching(grad_out, moved, axis, ndim, x3.shape)
        s_dy, s_dyx = native_call(kernels.batch_norm_backward, (g3, x3, m, s, w, training, y3))
        channel_finish(out, y3, moved, axis, ndim)
        gw = np.empty(s_dyx.shape[0], x.dtype)
        native_call(kernels.bn_grad_weight, (s_dyx, s, gw))
        return y, gw, s_dy.astype(x.dtype)

    @register_jitable
    def tiny(grad_out, x, mean, invstd, weight, axis, C, out):
        """``_tiny.batch_norm_backward_tiny``."""
        shape3 = split(x.shape, axis)
        g3 = np.ascontiguousarray(grad_out).reshape(shape3)
        x3 = np.ascontiguousarray(x).reshape(shape3)
        y = result_of(out, x)
        y3 = target_of(y, shape3)
        grads = np.empty((0, 0), x.dtype) if no_weight else np.empty((2, C), x.dtype)
        native_call(kernels.batch_norm_backward_tiny, (g3, x3, np.ascontiguousarray(mean),
                                                       np.ascontiguousarray(invstd),
                                         np.empty(0, x.dtype) if no_weight else np.ascontiguousarray(weight), y3,
                                         grads))
        finish(y, y3)
        if no_weight:  # (the caller drops them)
            return y, np.empty(0, x.dtype), np.empty(0, x.dtype)
        return y, grads[0], grads[1]

    if no_weight:
        def impl(grad_out, x, mean, invstd, weight=None, training=True, channel_axis=1, out=None):
            return run(grad_out, x, mean, invstd, weight, training, channel_axis, out)[0], None, None
    else:
        def impl(grad_out, x, mean, invstd, weight=None, training=True, channel_axis=1, out=None):
            return run(grad_out, x, mean, invstd, weight, training, channel_axis, out)
    return impl


def dense_or_none(a):
    """Whether ``a`` is None or C-contiguous (jit-only)."""


@overload(dense_or_none)
def _dense_or_none(a):
    if chk.is_none(a):
        return lambda a: True
    return lambda a: is_dense(a)


def _group_norm_backward(grad_out, x, num_groups, mean, rstd, weight=None, *, channel_axis=1, out=None):
    op = "group_norm_backward"
    dt = _grad_types(grad_out, x, op)
    if x.ndim < 2:
        raise TypingError(f"x must have at least 2 dims (N, C, ...) for group_norm, got a {x.ndim}-D array")
    chk.integer(channel_axis, "channel_axis")
    chk.integer(num_groups, "num_groups")
    _stat_type(mean, "mean", op)
    _stat_type(rstd, "rstd", op)
    chk.param(weight, "weight", dt, 1)
    chk.output(out, dt)
    ndim = x.ndim
    no_weight = chk.is_none(weight)
    m_x = overlap_message("out", "x", True)
    m_g = overlap_message("out", "grad_out", True)
    m_m, m_r, m_w = (overlap_message("out", name, False) for name in ("mean", "rstd", "weight"))

    @register_jitable
    def run(grad_out, x, num_groups, mean, rstd, weight, channel_axis, out):
        axis = sample_axis(x, channel_axis, ndim, "group_norm")
        C = x.shape[axis]
        G = np.int64(num_groups)
        if G <= 0 or C % G:
            raise NjitCheck("group_layout", x.shape, channel_axis, G)
        N = x.shape[0]
        like_shape(grad_out.shape, x.shape, "grad_out", "x")
        m = float64_stat(mean, (N, G), "mean").reshape(N, G)
        s = float64_stat(rstd, (N, G), "rstd").reshape(N, G)
        w = channel_param(weight, C, "weight")
        out_shape(out, x.shape, "out", "x")
        if out is not None:
            refuse_partial_overlap(out, x, m_x)
            refuse_partial_overlap(out, grad_out, m_g)
            refuse_overlap(out, mean, m_m)
            refuse_overlap(out, rstd, m_r)
            refuse_overlap(out, weight, m_w)
        x3, y, y3, moved = channel_io(x, out, axis, ndim)
        if x.size == 0:
            channel_finish(out, y3, moved, axis, ndim)
            return y, np.zeros(C, x.dtype), np.zeros(C, x.dtype)
        g3 = matching(grad_out, moved, axis, ndim, x3.shape)
        shape4 = (N, x3.shape[0] // N, C, x3.shape[2])
        gw, gb = native_call(kernels.group_norm_backward,
                             (g3.reshape(shape4), x3.reshape(shape4), m, s, w, y3.reshape(shape4)))
        channel_finish(out, y3, moved, axis, ndim)
        return y, gw.astype(x.dtype), gb.astype(x.dtype)

    if no_weight:
        def impl(grad_out, x, num_groups, mean, rstd, weight=None, channel_axis=1, out=None):
            return run(grad_out, x, num_groups, mean, rstd, weight, channel_axis, out)[0], None, None
    else:
        def impl(grad_out, x, num_groups, mean, rstd, weight=None, channel_axis=1, out=None):
            return run(grad_out, x, num_groups, mean, rstd, weight, channel_axis, out)
    return impl


register(backward.layer_norm_backward, _layer_norm_backward)
register(backward.rms_norm_backward, _rms_norm_backward)
register(backward.batch_norm_backward, _batch_norm_backward)
register(backward.group_norm_backward, _group_norm_backward)
