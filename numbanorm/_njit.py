"""numbanorm's ops inside users' ``@njit`` code: ``numba.extending.overload`` of the public functions.

``numbanorm.layer_norm(...)`` and the other ops typed inside a jitted function resolve to the
overloads below. Each is the Python-level front door in jitted form: the checks of ``_checks``
(``_njit_checks``: type-level ones at compile time, the rest at run time with the same exception
types and messages), the canonical view, then ``cpu/njit.py``, which makes the Python dispatch's
choice of kernels and plan and runs it on the calling thread, so the results are those of the
Python-level call bit for bit (made with the same numba thread count). The entries are called
through ``_numba.native_call``: the user's function calls the kernels' own machine code, linking
no copy of it (so compiling it optimizes only its own code). No overload starts a
parallel region: they are safe inside the user's own ``prange`` loop. What numba code cannot pass
(float16/bfloat16 arrays, ``stats=``, a ``return_stats`` known only at run time) is a
``TypingError`` that says what to write instead; ``docs/njit.md`` has the table.

The row ops (LayerNorm, RMSNorm, add+LN) and the helpers all overloads share are here,
BatchNorm/GroupNorm/InstanceNorm in ``_njit_channels``, the backward functions in
``_njit_backward``. Registered on ``import numbanorm``; typing an overload imports nothing more.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.core.errors import TypingError
from numba.extending import overload, register_jitable

from . import _njit_checks as chk
from . import family, functional
from ._njit_checks import (
    NjitCheck,
    as_shape,
    axis_value,
    eps_value,
    like_shape,
    outputs_message,
    overlap_message,
    refuse_overlap,
    refuse_partial_overlap,
    shape_is,
    trailing,
    tuple_size,
)
from ._numba import native_call, to_fixed_tuple
from .cpu import njit as kernels

_STATS_HINT = "write return_stats=True (a constant), or leave it out"


def stats_dtype(dt):
    """numba dtype of returned statistics: float64 for float64 x, else float32 (``_layout``)."""
    return np.float64 if dt == types.float64 else np.float32


# --------------------------------------------------------------------------------------------
# Jitted helpers (typed per argument type at compile time)
# --------------------------------------------------------------------------------------------
def row_param(p, shape, D, name):
    """weight/bias of a row op: None, or checked against ``shape`` and flattened to (D,) C-contiguous
    (``check_param``; jit-only)."""


@overload(row_param)
def _row_param(p, shape, D, name):
    if chk.is_none(p):
        return lambda p, shape, D, name: None

    def impl(p, shape, D, name):
        shape_is(p.shape, shape, name)
        return np.ascontiguousarray(p).reshape(D)
    return impl


def channel_param(p, C, name):
    """A per-channel parameter: None, or checked to be (C,) and C-contiguous (jit-only)."""


@overload(channel_param)
def _channel_param(p, C, name):
    if chk.is_none(p):
        return lambda p, C, name: None

    def impl(p, C, name):
        shape_is(p.shape, (C,), name)
        return np.ascontiguousarray(p).reshape(C)
    return impl


def out_shape(out, x_shape, name, x_name):
    """``check_out``'s shape test for an optional output (jit-only)."""


@overload(out_shape)
def _out_shape(out, x_shape, name, x_name):
    if chk.is_none(out):
        return lambda out, x_shape, name, x_name: None
    return lambda out, x_shape, name, x_name: like_shape(out.shape, x_shape, name, x_name)


def result_of(out, x):
    """The array an op returns: ``out``, or a new C-contiguous array like x (jit-only)."""


@overload(result_of)
def _result_of(out, x):
    if chk.is_none(out):
        return lambda out, x: np.empty(x.shape, x.dtype)
    return lambda out, x: out


def target_of(result, shape):
    """Where the kernel writes ``result`` as ``shape`` (C-contiguous): ``result`` itself when it
    is C-contiguous, else scratch that ``finish`` copies back (``_layout.Output``; jit-only)."""


@overload(target_of)
def _target_of(result, shape):
    if result.layout == "C":
        return lambda result, shape: result.reshape(shape)
    return lambda result, shape: np.empty(shape, result.dtype)


def finish(result, target):
    """Copy scratch ``target`` into a non-C-contiguous ``result`` (jit-only)."""


@overload(finish)
def _finish(result, target):
    if result.layout == "C":
        return lambda result, target: None

    def impl(result, target):
        result[...] = target.reshape(result.shape)
    return impl


def rms_eps(eps, machine_eps):
    """rms_norm's eps: checked, or ``machine_eps`` for None (jit-only)."""


@overload(rms_eps)
def _rms_eps(eps, machine_eps):
    if chk.is_none(eps):
        return lambda eps, machine_eps: machine_eps
    return lambda eps, machine_eps: eps_value(eps)


@register_jitable
def rows_input(x, R, D):
    """x as C-contiguous (R, D) rows (``_layout.rows_view``; copies a non-C-contiguous x)."""
    return np.ascontiguousarray(x).reshape(R, D)


# --------------------------------------------------------------------------------------------
# The canonical (outer, C, inner) view of a channel op (``_layout.input_view`` / ``channel_output``)
# --------------------------------------------------------------------------------------------
@register_jitable
def split(shape, axis):
    """``_layout.split_shape``: (outer, C, inner) around ``axis``."""
    outer = 1
    inner = 1
    for i in range(len(shape)):
        if i < axis:
            outer *= shape[i]
        elif i > axis:
            inner *= shape[i]
    return outer, shape[axis], inner


@register_jitable
def dense(shape, strides, itemsize):
    """Whether (shape, strides) is C-contiguous, as NumPy's flag (``_layout.dense``)."""
    expected = itemsize
    empty = False
    for i in range(len(shape)):
        empty = empty or shape[i] == 0
    if empty:
        return True
    for i in range(len(shape) - 1, -1, -1):
        if shape[i] != 1 and strides[i] != expected:
            return False
        expected *= shape[i]
    return True


@register_jitable
def last_perm(ndim, axis):
    """The axes with ``axis`` moved last (``np.moveaxis(a, axis, -1)``), and back."""
    perm = np.empty(ndim, np.int64)
    back = np.empty(ndim, np.int64)
    k = 0
    for i in range(ndim):
        if i != axis:
            perm[k] = i
            k += 1
    perm[ndim - 1] = axis
    for i in range(ndim):
        back[perm[i]] = i
    return perm, back


@register_jitable
def moved_dense(a, axis):
    """Whether ``np.moveaxis(a, axis, -1)`` is C-contiguous (an NCHW array stored NHWC)."""
    perm, _ = last_perm(a.ndim, axis)
    shape = np.empty(a.ndim, np.int64)
    strides = np.empty(a.ndim, np.int64)
    for i in range(a.ndim):
        shape[i] = a.shape[perm[i]]
        strides[i] = a.strides[perm[i]]
    return dense(shape, strides, a.itemsize)


def channel_io(x, out, axis, ndim):
    """(x3, result, target, moved) of a channel op (jit-only): x's copy-free canonical view (a
    C-contiguous copy when x is typed non-C-contiguous), the array returned, the C-contiguous
    array the kernel writes (``result``'s memory, or scratch ``channel_finish`` copies), and
    whether x's channels were moved last (a channels-last copy, as ``_layout.canonical_view``)."""


@overload(channel_io)
def _channel_io(x, out, axis, ndim):
    no_out = chk.is_none(out)
    if x.layout == "C":
        def impl(x, out, axis, ndim):
            shape3 = split(x.shape, axis)
            x3 = x.reshape(shape3)
            if out is None:
                y = np.empty(x.shape, x.dtype)
                return x3, y, y.reshape(shape3), False
            return x3, out, target_of(out, shape3), False
        return impl

    def impl(x, out, axis, ndim):
        outer, C, inner = split(x.shape, axis)
        if dense(x.shape, x.strides, x.itemsize) or not moved_dense(x, axis):
            x3 = np.ascontiguousarray(x).reshape(outer, C, inner)
            if no_out:
                y = np.empty(x.shape, x.dtype)
                return x3, y, y.reshape(x3.shape), False
            return x3, out, np.empty(x3.shape, x.dtype), False
        perm, back = last_perm(ndim, axis)
        rows = x.size // C if C else 0
        moved = np.ascontiguousarray(np.transpose(x, to_fixed_tuple(perm, ndim)))
        x3 = moved.reshape(rows, C, 1)
        if no_out:
            ym = np.empty(moved.shape, x.dtype)
            return x3, np.transpose(ym, to_fixed_tuple(back, ndim)), ym.reshape(x3.shape), True
        return x3, out, np.empty(x3.shape, x.dtype), True
    return impl


def channel_finish(out, target, moved, axis, ndim):
    """Copy scratch ``target`` into ``out`` (jit-only; nothing when the kernel wrote ``out``)."""


@overload(channel_finish)
def _channel_finish(out, target, moved, axis, ndim):
    if chk.is_none(out):
        return lambda out, target, moved, axis, ndim: None

    def impl(out, target, moved, axis, ndim):
        if out.size == 0 or target.ctypes.data == out.ctypes.data:
            return
        if moved:
            perm, _ = last_perm(ndim, axis)
            dest = np.transpose(out, to_fixed_tuple(perm, ndim))
            dest[...] = target.reshape(dest.shape)
        else:
            out[...] = target.reshape(out.shape)
    return impl


def register(target, typing, **options):
    """``numba.extending.overload(target)(typing)``, with the options every overload here uses."""
    return overload(target, prefer_literal=False, **options)(typing)


# --------------------------------------------------------------------------------------------
# LayerNorm / RMSNorm / residual-add LayerNorm
# --------------------------------------------------------------------------------------------
def _row_types(x, normalized_shape, op):
    """Type-level checks of a row op's x and normalized_shape: (dtype, k, batch dims)."""
    dt = chk.float_array(x, "x", op)
    k = chk.rank(normalized_shape)
    return dt, k, x.ndim - k


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    dt, k, nb = _row_types(x, normalized_shape, "layer_norm")
    chk.param(weight, "weight", dt, k)
    chk.param(bias, "bias", dt, k)
    chk.real(eps, "eps")
    chk.output(out, dt)
    want_stats = chk.const_bool(return_stats, "return_stats", _STATS_HINT)
    sdt = stats_dtype(dt)
    m_x, m_w, m_b = (overlap_message("out", "x", True), overlap_message("out", "weight", False),
                     overlap_message("out", "bias", False))

    @register_jitable
    def run(x, normalized_shape, weight, bias, eps, out, mean, rstd):
        shape = as_shape(normalized_shape)
        trailing(shape, x.shape)
        D = tuple_size(shape)
        R = tuple_size(x.shape[:nb])
        w = row_param(weight, shape, D, "weight")
        b = row_param(bias, shape, D, "bias")
        e = eps_value(eps)
        out_shape(out, x.shape, "out", "x")
        if out is not None:
            refuse_partial_overlap(out, x, m_x)
            refuse_overlap(out, weight, m_w)
            refuse_overlap(out, bias, m_b)
        y = result_of(out, x)
        y2 = target_of(y, (R, D))
        native_call(kernels.layer_norm, (rows_input(x, R, D), w, b, e, y2, mean, rstd))
        finish(y, y2)
        return y

    if want_stats:
        def impl(x, normalized_shape, weight=None, bias=None, eps=1e-5, out=None, return_stats=False):
            R = tuple_size(x.shape[:nb])
            mean = np.empty(R, sdt)
            rstd = np.empty(R, sdt)
            y = run(x, normalized_shape, weight, bias, eps, out, mean, rstd)
            return y, mean.reshape(x.shape[:nb]), rstd.reshape(x.shape[:nb])
    else:
        def impl(x, normalized_shape, weight=None, bias=None, eps=1e-5, out=None, return_stats=False):
            # statistics nobody reads: one scratch for both, as the Python tiny path
            scratch = np.empty(tuple_size(x.shape[:nb]), sdt)
            return run(x, normalized_shape, weight, bias, eps, out, scratch, scratch)
    return impl


def _rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False):
    dt, k, nb = _row_types(x, normalized_shape, "rms_norm")
    chk.param(weight, "weight", dt, k)
    if not chk.is_none(eps):
        chk.real(eps, "eps")
    chk.output(out, dt)
    want_stats = chk.const_bool(return_stats, "return_stats", _STATS_HINT)
    sdt = stats_dtype(dt)
    # eps=None: the machine epsilon of the compute type, as rms_norm_args
    machine_eps = float(np.finfo(np.float64 if dt == types.float64 else np.float32).eps)
    m_x, m_w = overlap_message("out", "x", True), overlap_message("out", "weight", False)

    @register_jitable
    def run(x, normalized_shape, weight, eps, out, rstd):
        shape = as_shape(normalized_shape)
        trailing(shape, x.shape)
        D = tuple_size(shape)
        R = tuple_size(x.shape[:nb])
        w = row_param(weight, shape, D, "weight")
        e = rms_eps(eps, machine_eps)
        out_shape(out, x.shape, "out", "x")
        if out is not None:
            refuse_partial_overlap(out, x, m_x)
            refuse_overlap(out, weight, m_w)
        y = result_of(out, x)
        y2 = target_of(y, (R, D))
        native_call(kernels.rms_norm, (rows_input(x, R, D), w, e, y2, rstd))
        finish(y, y2)
        return y

    if want_stats:
        def impl(x, normalized_shape, weight=None, eps=None, out=None, return_stats=False):
            rstd = np.empty(tuple_size(x.shape[:nb]), sdt)
            y = run(x, normalized_shape, weight, eps, out, rstd)
            return y, rstd.reshape(x.shape[:nb])
    else:
        def impl(x, normalized_shape, weight=None, eps=None, out=None, return_stats=False):
            return run(x, normalized_shape, weight, eps, out, np.empty(tuple_size(x.shape[:nb]), sdt))
    return impl


def _add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None,
                    residual_out=None):
    dt, k, nb = _row_types(x, normalized_shape, "add_layer_norm")
    rdt = chk.float_array(residual, "residual", "add_layer_norm")
    if rdt != dt or residual.ndim != x.ndim:
        raise TypingError(f"residual must have the shape and dtype of x: got a {residual.ndim}-D {rdt} array for a "
                          f"{x.ndim}-D {dt} x")
    chk.param(weight, "weight", dt, k)
    chk.param(bias, "bias", dt, k)
    chk.real(eps, "eps")
    chk.output(out, dt, "out")
    chk.output(residual_out, dt, "residual_out")
    sdt = stats_dtype(dt)
    inputs = ("x", "residual", "weight", "bias")
    m_out = tuple(overlap_message("out", name, name in ("x", "residual")) for name in inputs)
    m_res = tuple(overlap_message("residual_out", name, name in ("x", "residual")) for name in inputs)
    m_both = outputs_message("out", "residual_out")
    xdt = str(dt)

    def impl(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, out=None, residual_out=None):
        if residual.shape != x.shape:
            raise NjitCheck("residual", x.shape, xdt, residual.shape, xdt)
        shape = as_shape(normalized_shape)
        trailing(shape, x.shape)
        D = tuple_size(shape)
        R = tuple_size(x.shape[:nb])
        w = row_param(weight, shape, D, "weight")
        b = row_param(bias, shape, D, "bias")
        e = eps_value(eps)
        out_shape(out, x.shape, "out", "x")
        out_shape(residual_out, x.shape, "residual_out", "x")
        if out is not None:
            refuse_partial_overlap(out, x, m_out[0])
            refuse_partial_overlap(out, residual, m_out[1])
            refuse_overlap(out, weight, m_out[2])
            refuse_overlap(out, bias, m_out[3])
            refuse_overlap(out, residual_out, m_both)
        if residual_out is not None:
            refuse_partial_overlap(residual_out, x, m_res[0])
            refuse_partial_overlap(residual_out, residual, m_res[1])
            refuse_overlap(residual_out, weight, m_res[2])
            refuse_overlap(residual_out, bias, m_res[3])
        y = result_of(out, x)
        s = result_of(residual_out, x)
        y2 = target_of(y, (R, D))
        s2 = target_of(s, (R, D))
        stats = np.empty(R, sdt)  # mean and rstd, which add_layer_norm does not return
        native_call(kernels.add_layer_norm,
                    (rows_input(x, R, D), rows_input(residual, R, D), w, b, e, y2, s2, stats, stats))
        finish(y, y2)
        finish(s, s2)
        return y, s
    return impl


# --------------------------------------------------------------------------------------------
# Shared by the channel ops (``_njit_channels``) and the backward (``_njit_backward``)
# --------------------------------------------------------------------------------------------
def running_shape(p, C, name):
    """``check_running_stat``'s shape test (jit-only; None passes)."""


@overload(running_shape)
def _running_shape(p, C, name):
    if chk.is_none(p):
        return lambda p, C, name: None
    return lambda p, C, name: shape_is(p.shape, (C,), name)


def or_empty(p, dtype):
    """``p``, or the zero-length stand-in the BN entries take for an absent array (jit-only)."""


@overload(or_empty)
def _or_empty(p, dtype):
    if chk.is_none(p):
        return lambda p, dtype: np.empty(0, dtype)
    return lambda p, dtype: p


def constant_flag(t):
    """A flag's value when it is known at compile time (omitted, or a literal), else None."""
    if isinstance(t, bool):
        return t
    if isinstance(t, types.BooleanLiteral):
        return t.literal_value
    if isinstance(t, types.Omitted) and isinstance(t.value, bool):
        return t.value
    return None


@register_jitable
def sample_axis(x, channel_axis, ndim, op):
    """``check_sample_layout`` after its type-level part: the channel axis, not 0 (the batch)."""
    axis = axis_value(channel_axis, ndim)
    if axis == 0:
        raise NjitCheck("sample_layout", x.shape, channel_axis, op)
    return axis




register(functional.layer_norm, _layer_norm)
register(family.rms_norm, _rms_norm)
register(family.add_layer_norm, _add_layer_norm)
