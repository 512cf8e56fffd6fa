"""BatchNorm, GroupNorm and InstanceNorm inside users' ``@njit`` code: their numba overloads (see
``_njit``, which has the row ops and the helpers these share)."""

from __future__ import annotations

import numpy as np
from numba import types
from numba.core.errors import TypingError
from numba.extending import overload, register_jitable

from . import _njit_checks as chk
from . import family, functional
from ._njit import (
    _STATS_HINT,
    channel_finish,
    channel_io,
    channel_param,
    constant_flag,
    or_empty,
    out_shape,
    register,
    running_shape,
    sample_axis,
    stats_dtype,
)
from ._njit_checks import (
    NjitCheck,
    axis_value,
    eps_value,
    momentum_value,
    outputs_message,
    overlap_message,
    refuse_overlap,
    refuse_partial_overlap,
)
from ._numba import native_call
from .cpu import njit as kernels
from .cpu.njit import instance_running_update


def _channel_types(x, channel_axis, op, at_least=2):
    dt = chk.float_array(x, "x", op)
    if x.ndim < at_least:
        raise TypingError(f"x must have at least 2 dims (N, C, ...) for {op}, got a {x.ndim}-D array")
    chk.integer(channel_axis, "channel_axis")
    return dt


def _running_types(running_mean, running_var, dt, update, update_name):
    """Type-level checks of the running statistics (``batch_norm_args``/``instance_norm_args``);
    ``update``: the type of the flag under which they are updated in place."""
    if chk.is_none(running_mean) != chk.is_none(running_var):
        raise TypingError("running_mean and running_var must be given together or both be None")
    for name, p in (("running_mean", running_mean), ("running_var", running_var)):
        chk.param(p, name, dt, 1)
        never = update is False or isinstance(update, types.BooleanLiteral) and not update.literal_value or (
            isinstance(update, types.Omitted) and not update.value)
        if not chk.is_none(p) and not p.mutable and not never:
            raise TypingError(f"{name} must be writeable: {update_name}=True updates it in place (got a read-only "
                              f"array; pass a writeable one, or {update_name}=False as a constant)")


@register_jitable
def train(x3, weight, bias, running_mean, running_var, momentum, eps, out3, stats_out):
    """``functional._batch_norm_kernels`` in training, after the checks."""
    if x3.size:
        native_call(kernels.batch_norm_train, (x3, weight, bias, or_empty(running_mean, x3.dtype),
                                               or_empty(running_var, x3.dtype), momentum, eps, out3, stats_out))
    elif stats_out.size:  # an empty batch: no statistics (torch leaves the running stats alone)
        native_call(kernels.empty_batch_stats, (x3.shape[1], weight, bias, eps, stats_out))


def evaluate(x3, running_mean, running_var, weight, bias, eps, out3, stats_out):
    """``functional._batch_norm_kernels`` in eval, after the checks (jit-only; nothing without
    running stats: the checks refused that call)."""


@overload(evaluate)
def _evaluate(x3, running_mean, running_var, weight, bias, eps, out3, stats_out):
    if chk.is_none(running_mean):
        return lambda x3, running_mean, running_var, weight, bias, eps, out3, stats_out: None

    def impl(x3, running_mean, running_var, weight, bias, eps, out3, stats_out):
        native_call(kernels.batch_norm_eval, (x3, running_mean, running_var, weight, bias, eps, out3, stats_out))
    return impl


def _batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1,
                eps=1e-5, *, channel_axis=1, out=None, return_stats=False, stats=None):
    dt = _channel_types(x, channel_axis, "batch_norm")
    chk.absent(stats, "stats", "normalizing with merged statistics (numbanorm.Moments) needs the Python-level call")
    _running_types(running_mean, running_var, dt, training, "training")
    chk.param(weight, "weight", dt, 1)
    chk.param(bias, "bias", dt, 1)
    chk.flag(training, "training")
    chk.real(momentum, "momentum")
    chk.real(eps, "eps")
    chk.output(out, dt)
    want_stats = chk.const_bool(return_stats, "return_stats", _STATS_HINT)
    sdt = stats_dtype(dt)
    ndim = x.ndim
    # training known at compile time (omitted: False): the other mode is not compiled
    mode = constant_flag(training)
    any_mode, train_mode = mode is None, mode is True
    # check_disjoint's messages: output "o" overlapping input "i" (m_o_i), two outputs (m2_a_b)
    m_out_x, m_out_w, m_out_b = (overlap_message("out", i, i == "x") for i in ("x", "weight", "bias"))
    m_out_rm, m_out_rv = overlap_message("out", "running_mean", False), overlap_message("out", "running_var", False)
    m_rm_x, m_rm_w, m_rm_b = (overlap_message("running_mean", i, False) for i in ("x", "weight", "bias"))
    m_rv_x, m_rv_w, m_rv_b = (overlap_message("running_var", i, False) for i in ("x", "weight", "bias"))
    m2_out_rm, m2_out_rv = outputs_message("out", "running_mean"), outputs_message("out", "running_var")
    m2_rm_rv = outputs_message("running_mean", "running_var")

    @register_jitable
    def run(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out, stats_out):
        axis = axis_value(channel_axis, ndim)
        C = x.shape[axis]
        running_shape(running_mean, C, "running_mean")
        running_shape(running_var, C, "running_var")
        w = channel_param(weight, C, "weight")
        b = channel_param(bias, C, "bias")
        m = momentum_value(momentum)
        e = eps_value(eps)
        if running_mean is None and not training:
            raise NjitCheck("bn", x.shape, False, channel_axis)
        if training and C and x.size // C == 1:
            raise NjitCheck("bn", x.shape, True, channel_axis)
        out_shape(out, x.shape, "out", "x")
        if training:  # the running stats are updated in place: outputs
            if out is not None:
                refuse_partial_overlap(out, x, m_out_x)
                refuse_overlap(out, weight, m_out_w)
                refuse_overlap(out, bias, m_out_b)
                refuse_overlap(out, running_mean, m2_out_rm)
                refuse_overlap(out, running_var, m2_out_rv)
            if running_mean is not None:
                refuse_overlap(running_mean, x, m_rm_x)
                refuse_overlap(running_mean, weight, m_rm_w)
                refuse_overlap(running_mean, bias, m_rm_b)
                refuse_overlap(running_mean, running_var, m2_rm_rv)
                refuse_overlap(running_var, x, m_rv_x)
                refuse_overlap(running_var, weight, m_rv_w)
                refuse_overlap(running_var, bias, m_rv_b)
        elif out is not None:
            refuse_partial_overlap(out, x, m_out_x)
            refuse_overlap(out, weight, m_out_w)
            refuse_overlap(out, bias, m_out_b)
            refuse_overlap(out, running_mean, m_out_rm)
            refuse_overlap(out, running_var, m_out_rv)
        x3, y, y3, moved = channel_io(x, out, axis, ndim)
        wk = or_empty(w, x.dtype)
        bk = or_empty(b, x.dtype)
        if any_mode:
            if training:
                train(x3, wk, bk, running_mean, running_var, m, e, y3, stats_out)
            else:
                evaluate(x3, running_mean, running_var, wk, bk, e, y3, stats_out)
        elif train_mode:
            train(x3, wk, bk, running_mean, running_var, m, e, y3, stats_out)
        else:
            evaluate(x3, running_mean, running_var, wk, bk, e, y3, stats_out)
        channel_finish(out, y3, moved, axis, ndim)
        return y, C

    if want_stats:
        def impl(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1,
                 eps=1e-5, channel_axis=1, out=None, return_stats=False, stats=None):
            C = x.shape[axis_value(channel_axis, ndim)]
            stats_out = np.empty((2, C), sdt)
            y, _ = run(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out,
                       stats_out)
            return y, stats_out[0], stats_out[1]
    else:
        def impl(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1,
                 eps=1e-5, channel_axis=1, out=None, return_stats=False, stats=None):
            return run(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out,
                       np.empty((0, 0), sdt))[0]
    return impl


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, out=None, return_stats=False):
    dt = _channel_types(x, channel_axis, "group_norm")
    chk.integer(num_groups, "num_groups")
    chk.param(weight, "weight", dt, 1)
    chk.param(bias, "bias", dt, 1)
    chk.real(eps, "eps")
    chk.output(out, dt)
    want_stats = chk.const_bool(return_stats, "return_stats", _STATS_HINT)
    sdt = stats_dtype(dt)
    ndim = x.ndim
    m_x, m_w, m_b = (overlap_message("out", "x", True), overlap_message("out", "weight", False),
                     overlap_message("out", "bias", False))

    @register_jitable
    def run(x, num_groups, weight, bias, eps, channel_axis, out):
        axis = sample_axis(x, channel_axis, ndim, "group_norm")
        C = x.shape[axis]
        G = np.int64(num_groups)
        if G <= 0 or C % G:
            raise NjitCheck("group_layout", x.shape, channel_axis, G)
        w = channel_param(weight, C, "weight")
        b = channel_param(bias, C, "bias")
        N = x.shape[0]
        if x.size and C // G * (x.size // (N * C)) == 1:
            raise NjitCheck("group", x.shape, G, channel_axis)
        e = eps_value(eps)
        out_shape(out, x.shape, "out", "x")
        if out is not None:
            refuse_partial_overlap(out, x, m_x)
            refuse_overlap(out, weight, m_w)
            refuse_overlap(out, bias, m_b)
        x3, y, y3, moved = channel_io(x, out, axis, ndim)
        if x.size == 0:  # nothing to normalize, stats undefined
            gmean = np.full((N, G), np.nan)
            grstd = np.full((N, G), np.nan)
        else:
            shape4 = (N, x3.shape[0] // N, C, x3.shape[2])
            _, _, _, gmean, grstd = native_call(kernels.group_norm,
                                                (x3.reshape(shape4), G, w, b, e, y3.reshape(shape4)))
        channel_finish(out, y3, moved, axis, ndim)
        return y, gmean, grstd

    if want_stats:
        def impl(x, num_groups, weight=None, bias=None, eps=1e-5, channel_axis=1, out=None, return_stats=False):
            y, gmean, grstd = run(x, num_groups, weight, bias, eps, channel_axis, out)
            return y, gmean.astype(sdt), grstd.astype(sdt)
    else:
        def impl(x, num_groups, weight=None, bias=None, eps=1e-5, channel_axis=1, out=None, return_stats=False):
            return run(x, num_groups, weight, bias, eps, channel_axis, out)[0]
    return impl


def _instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                   momentum=0.1, eps=1e-5, *, channel_axis=1, out=None):
    dt = _channel_types(x, channel_axis, "instance_norm")
    _running_types(running_mean, running_var, dt, use_input_stats, "use_input_stats")
    chk.param(weight, "weight", dt, 1)
    chk.param(bias, "bias", dt, 1)
    chk.flag(use_input_stats, "use_input_stats")
    chk.real(momentum, "momentum")
    chk.real(eps, "eps")
    chk.output(out, dt)
    ndim = x.ndim
    # check_disjoint's messages: output "o" overlapping input "i" (m_o_i), two outputs (m2_a_b)
    m_out_x, m_out_w, m_out_b = (overlap_message("out", i, i == "x") for i in ("x", "weight", "bias"))
    m_rm_x, m_rm_w, m_rm_b = (overlap_message("running_mean", i, False) for i in ("x", "weight", "bias"))
    m_rv_x, m_rv_w, m_rv_b = (overlap_message("running_var", i, False) for i in ("x", "weight", "bias"))
    m2_out_rm, m2_out_rv = outputs_message("out", "running_mean"), outputs_message("out", "running_var")
    m2_rm_rv = outputs_message("running_mean", "running_var")

    batch_norm = functional.batch_norm
    eval_possible = constant_flag(use_input_stats) is not True  # (omitted: True, not compiled)

    def impl(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True, momentum=0.1,
             eps=1e-5, channel_axis=1, out=None):
        axis = sample_axis(x, channel_axis, ndim, "instance_norm")
        C = x.shape[axis]
        running_shape(running_mean, C, "running_mean")
        running_shape(running_var, C, "running_var")
        m = momentum_value(momentum)
        eps_value(eps)
        if eval_possible:
            if not use_input_stats:
                if running_mean is None:
                    raise NjitCheck("instance_eval", x.shape, channel_axis)
                # normalizing with the running stats is BatchNorm in eval mode (its checks included)
                return batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps,
                                  channel_axis=channel_axis, out=out)
        w = channel_param(weight, C, "weight")
        b = channel_param(bias, C, "bias")
        N = x.shape[0]
        if N * C and x.size // (N * C) == 1:
            raise NjitCheck("instance", x.shape, channel_axis)
        e = eps_value(eps)
        out_shape(out, x.shape, "out", "x")
        if out is not None:
            refuse_partial_overlap(out, x, m_out_x)
            refuse_overlap(out, weight, m_out_w)
            refuse_overlap(out, bias, m_out_b)
            refuse_overlap(out, running_mean, m2_out_rm)
            refuse_overlap(out, running_var, m2_out_rv)
        if running_mean is not None:
            refuse_overlap(running_mean, x, m_rm_x)
            refuse_overlap(running_mean, weight, m_rm_w)
            refuse_overlap(running_mean, bias, m_rm_b)
            refuse_overlap(running_mean, running_var, m2_rm_rv)
            refuse_overlap(running_var, x, m_rv_x)
            refuse_overlap(running_var, weight, m_rv_w)
            refuse_overlap(running_var, bias, m_rv_b)
        x3, y, y3, moved = channel_io(x, out, axis, ndim)
        if x.size:
            shape4 = (N, x3.shape[0] // N, C, x3.shape[2])
            count, mean, m2, _, _ = native_call(kernels.group_norm,
                                                (x3.reshape(shape4), C, w, b, e, y3.reshape(shape4)))
            channel_finish(out, y3, moved, axis, ndim)
            if running_mean is not None:  # (use_input_stats here) updated as torch does
                instance_running_update(running_mean, running_var, count, mean, m2, m)
        else:
            channel_finish(out, y3, moved, axis, ndim)
        return y
    return impl


register(functional.batch_norm, _batch_norm)
register(family.group_norm, _group_norm)
register(family.instance_norm, _instance_norm)
