"""Errors raised by numbanorm's ops called from ``@njit`` code: the run-time checks raise the type
and message of the Python-level call; what can never pass is a compile-time ``TypingError`` with
the Python message, or one that says what to write instead.

The run-time cases reuse the jitted callers of ``test_njit`` (``njit_callers``, cached)."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
from njit_callers import add_ln, bn, bn_bwd, gn, gn_bwd, inorm, ln_bwd, ln_out, ln_stats, rms_stats
from numba.core.errors import TypingError

import numbanorm as nb

F32, F64 = np.float32, np.float64


def raised(call):
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is what is compared
        call()
    return info.value


def _x(shape=(2, 5, 16), dtype=F32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _cases():
    x = _x()
    w = np.ones(16, F32)
    x2 = _x((6, 16))
    buf = np.zeros(10 * 16 + 1, F32)
    xs, os = buf[:-1].reshape(10, 16), buf[1:].reshape(10, 16)
    xb = _x((4, 6, 3, 3))
    c = np.ones(6, F32)
    rm, rv = np.zeros(6, F32), np.ones(6, F32)
    pair = np.zeros(13, F32)
    xg = _x((2, 12, 3, 3))
    cg = np.ones(12, F32)
    g = _x()
    _, mean, rstd = nb.layer_norm(x, 16, w, None, return_stats=True)
    _, bmean, binv = nb.batch_norm(xb, None, None, c, None, True, return_stats=True)
    _, gmean, grstd = nb.group_norm(xg, 4, cg, None, return_stats=True)
    r = _x()
    return {  # name: (the Python-level call, the same call from jitted code)
        "normalized_shape": (lambda: nb.layer_norm(x, 15, w, w, 1e-5, return_stats=True),
                             lambda: ln_stats(x, 15, w, w, 1e-5)),
        "weight shape": (lambda: nb.layer_norm(x, 16, w[:15], w, 1e-5, return_stats=True),
                         lambda: ln_stats(x, 16, w[:15], w, 1e-5)),
        "eps negative": (lambda: nb.layer_norm(x, 16, w, w, -1.0), lambda: ln_stats(x, 16, w, w, -1.0)),
        "eps nan": (lambda: nb.layer_norm(x, 16, w, w, float("nan")), lambda: ln_stats(x, 16, w, w, float("nan"))),
        "out shape": (lambda: nb.layer_norm(x2, 16, w, w, out=xs[:5]), lambda: ln_out(x2, w, w, xs[:5])),
        "out overlaps x": (lambda: nb.layer_norm(xs, 16, w, w, out=os), lambda: ln_out(xs, w, w, os)),
        "out overlaps weight": (lambda: nb.layer_norm(x2, 16, buf[:16], w, out=buf[:96].reshape(6, 16)),
                                lambda: ln_out(x2, buf[:16], w, buf[:96].reshape(6, 16))),
        "rms eps": (lambda: nb.rms_norm(x, 16, w, 0.0, return_stats=True), lambda: rms_stats(x, 16, w, 0.0)),
        "channel_axis": (lambda: nb.batch_norm(xb, rm, rv, c, c, True, 0.1, 1e-5, channel_axis=4),
                         lambda: bn(xb, rm, rv, c, c, True, 0.1, 1e-5, 4)),
        "eval without running stats": (lambda: nb.batch_norm(xb, None, None, c, c, False),
                                       lambda: bn(xb, None, None, c, c, False, 0.1, 1e-5, 1)),
        "one value per channel": (lambda: nb.batch_norm(xb[:1, :, :1, :1], None, None, c, c, True),
                                  lambda: bn(np.ascontiguousarray(xb[:1, :, :1, :1]), None, None, c, c, True, 0.1,
                                             1e-5, 1)),
        "momentum": (lambda: nb.batch_norm(xb, rm, rv, c, c, True, 1.5),
                     lambda: bn(xb, rm, rv, c, c, True, 1.5, 1e-5, 1)),
        "running shape": (lambda: nb.batch_norm(xb, rm[:5], rv, c, c, True), lambda: bn(xb, rm[:5], rv, c, c, True, 0.1,
                                                                                         1e-5, 1)),
        "running stats overlap": (lambda: nb.batch_norm(xb, pair[:6], pair[5:11], c, c, True),
                                  lambda: bn(xb, pair[:6], pair[5:11], c, c, True, 0.1, 1e-5, 1)),
        "num_groups": (lambda: nb.group_norm(xg, 5, cg, cg, return_stats=True), lambda: gn(xg, 5, cg, cg, 1e-5, 1)),
        "batch axis": (lambda: nb.group_norm(xg, 2, None, None, channel_axis=0, return_stats=True),
                       lambda: gn(xg, 2, None, None, 1e-5, 0)),
        "one value per group": (lambda: nb.group_norm(xg[:, :, :1, :1], 12, cg, cg, return_stats=True),
                                lambda: gn(np.ascontiguousarray(xg[:, :, :1, :1]), 12, cg, cg, 1e-5, 1)),
        "instance spatial": (lambda: nb.instance_norm(np.ascontiguousarray(xb[:, :, :1, :1]), rm, rv, c, c),
                             lambda: inorm(np.ascontiguousarray(xb[:, :, :1, :1]), rm, rv, c, c, True, 0.1, 1e-5, 1)),
        "instance eval without stats": (lambda: nb.instance_norm(xb, None, None, c, c, False),
                                        lambda: inorm(xb, None, None, c, c, False, 0.1, 1e-5, 1)),
        "residual shape": (lambda: nb.add_layer_norm(x2, r[0], 16, w, w), lambda: add_ln(x2, r[0], w, w, None, None)),
        "outputs overlap": (lambda: nb.add_layer_norm(xs[:6] * 1, x2, 16, w, w, out=xs[:6], residual_out=os[:6]),
                            lambda: add_ln(xs[:6] * 1, x2, w, w, xs[:6], os[:6])),
        "grad_out shape": (lambda: nb.layer_norm_backward(g[:1], x, 16, mean, rstd, w),
                           lambda: ln_bwd(np.ascontiguousarray(g[:1]), x, 16, mean, rstd, w)),
        "saved stats shape": (lambda: nb.layer_norm_backward(g, x, 16, mean[:1], rstd, w),
                              lambda: ln_bwd(g, x, 16, np.ascontiguousarray(mean[:1]), rstd, w)),
        "bn backward stats": (lambda: nb.batch_norm_backward(_x((4, 6, 3, 3)), xb, bmean[:5], binv, c),
                              lambda: bn_bwd(_x((4, 6, 3, 3)), xb, bmean[:5], binv, c, True, 1)),
        "gn backward stats": (lambda: nb.group_norm_backward(_x((2, 12, 3, 3)), xg, 4, gmean[:1], grstd, cg),
                              lambda: gn_bwd(_x((2, 12, 3, 3)), xg, 4, np.ascontiguousarray(gmean[:1]), grstd, cg, 1)),
    }


CASES = _cases()


@pytest.mark.parametrize("name", CASES)
def test_runtime_errors_match_python(name):
    python, jitted = CASES[name]
    want, got = raised(python), raised(jitted)
    assert type(want) in (ValueError, TypeError)
    assert (type(got), str(got)) == (type(want), str(want))


def _plain(e: Exception) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", str(e))


@numba.njit
def _ln(x, ns, w, b, eps):
    return nb.layer_norm(x, ns, w, b, eps)


@numba.njit
def _ln_stats_flag(x, flag):
    return nb.layer_norm(x, x.shape[-1], return_stats=flag)


@numba.njit
def _ln_out(x, out):
    return nb.layer_norm(x, x.shape[-1], out=out)


@numba.njit
def _bn(x, rm, rv, axis):
    return nb.batch_norm(x, rm, rv, channel_axis=axis)


@numba.njit
def _bn_train_readonly(x, rm, rv, training):
    return nb.batch_norm(x, rm, rv, training=training)


def test_type_level_errors():
    """Arguments whose numba type can never pass: a TypingError at compile time, with the
    Python-level message where there is one."""
    x = _x()
    w = np.ones(16, F32)

    def typing_error(call) -> str:
        with pytest.raises(TypingError) as info:
            call()
        return _plain(info.value)

    want = str(raised(lambda: nb.layer_norm(x.astype(np.int64), 16)))
    assert want in typing_error(lambda: _ln(x.astype(np.int64), 16, None, None, 1e-5))
    assert "float16 and bfloat16 arrays cannot enter njit code" in typing_error(
        lambda: _ln(x.astype(np.float16).view(np.uint16), 16, None, None, 1e-5))
    want = str(raised(lambda: nb.layer_norm(x, 16, w.astype(F64))))
    assert want in typing_error(lambda: _ln(x, 16, w.astype(F64), None, 1e-5))
    want = str(raised(lambda: nb.layer_norm(x, 16, None, None, True)))
    assert want in typing_error(lambda: _ln(x, 16, None, None, True))
    assert "pass a tuple" in typing_error(lambda: _ln(x, numba.typed.List([16]), None, None, 1e-5))
    assert "return_stats must be a constant True or False" in typing_error(lambda: _ln_stats_flag(x, True))
    ro = np.empty_like(x)
    ro.flags.writeable = False
    assert "out must be writeable" in typing_error(lambda: _ln_out(x, ro))
    xb = _x((4, 6, 3, 3))
    rm = np.zeros(6, F32)
    want = str(raised(lambda: nb.batch_norm(xb, rm, None)))
    assert want in typing_error(lambda: _bn(xb, rm, None, 1))
    want = str(raised(lambda: nb.batch_norm(xb, rm, rm.copy(), channel_axis=1.0)))
    assert want.replace("float", "float64") in typing_error(lambda: _bn(xb, rm, rm.copy(), 1.0))
    rro = rm.copy()
    rro.flags.writeable = False
    assert "running_mean must be writeable" in typing_error(lambda: _bn_train_readonly(xb, rro, rro.copy(), True))


@numba.njit
def _bn_stats(x, m):
    return nb.batch_norm(x, stats=m)


def test_unsupported_arguments():
    xb = _x((4, 6, 3, 3))
    with pytest.raises(TypingError, match="stats= is not supported in njit code"):
        _bn_stats(xb, np.zeros(6))
