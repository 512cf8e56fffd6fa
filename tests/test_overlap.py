"""Outputs that share memory with another argument are refused, before any work, with a
ValueError that names both; nothing is mutated. The documented in-place cases (``out=x``,
``out=grad_out``, ``out=residual``) still work, and inputs may share memory with each other."""

from __future__ import annotations

import numpy as np
import pytest
from backward_reference import rows_backward_ref
from reference import batch_norm_ref, layer_norm_ref, rel_l2

import numbanorm as nb

#: A tiny shape (the serial fast paths) and one past the parallel threshold (2**16 elements).
SIZES = {"tiny": (4, 3, 5), "large": (64, 8, 160)}


def _snapshot(*arrays):
    return [a.copy() for a in arrays]


def _assert_unchanged(arrays, before):
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(params=list(SIZES))
def x(request, rng):
    return rng.standard_normal(SIZES[request.param]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# layer_norm / rms_norm / add_layer_norm
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("param", ["weight", "bias"])
def test_layer_norm_out_overlapping_a_parameter(x, param):
    D = x.shape[-1]
    buf = np.arange(x.size, dtype=np.float32)
    p = buf[:D]  # the parameter is the first row of out
    out = buf.reshape(x.shape)
    before = _snapshot(buf, x)
    with pytest.raises(ValueError, match=f"out overlaps {param}"):
        nb.layer_norm(x, D, **{param: p}, out=out)
    _assert_unchanged([buf, x], before)


def test_rms_norm_out_overlapping_weight(x):
    D = x.shape[-1]
    buf = np.ones(x.size + 1, np.float32)
    with pytest.raises(ValueError, match="out overlaps weight"):
        nb.rms_norm(x, D, buf[-D:], out=buf[1:].reshape(x.shape))


def test_add_layer_norm_outputs_overlapping_inputs(x, rng):
    D = x.shape[-1]
    res = rng.standard_normal(x.shape).astype(np.float32)
    w = np.ones(D, np.float32)
    shifted = np.empty(x.size + D, np.float32)
    with pytest.raises(ValueError, match="residual_out overlaps residual"):
        nb.add_layer_norm(x, res, D, out=np.empty_like(x), residual_out=res.reshape(-1)[::-1].reshape(x.shape))
    with pytest.raises(ValueError, match="out overlaps weight"):
        nb.add_layer_norm(x, res, D, shifted[:D], out=shifted[: x.size].reshape(x.shape))
    shifted[:D] = 1.0
    with pytest.raises(ValueError, match="out and residual_out must not overlap"):
        nb.add_layer_norm(x, res, D, w, out=shifted[:x.size].reshape(x.shape),
                          residual_out=shifted[D:].reshape(x.shape))


def test_in_place_and_shared_inputs_still_work(x, rng):
    """out=x and out=residual are the documented in-place cases; weight and bias may be views of
    one parameter buffer (inputs may overlap each other)."""
    D = x.shape[-1]
    params = rng.standard_normal(2 * D).astype(np.float32)
    w, b = params[:D], params[D:]
    want = layer_norm_ref(x, (D,), w, b)[0]
    got = nb.layer_norm(x, D, w, b, out=x)
    assert got is x
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    res = rng.standard_normal(x.shape).astype(np.float32)
    y = rng.standard_normal(x.shape).astype(np.float32)
    total = (y.astype(np.float64) + res).astype(np.float32)
    out, s = nb.add_layer_norm(y, res, D, w, w, out=res, residual_out=y)  # weight and bias one array
    assert out is res and s is y
    np.testing.assert_array_equal(s, total)
    np.testing.assert_allclose(out, layer_norm_ref(total, (D,), w, w)[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# batch_norm / instance_norm / group_norm
# --------------------------------------------------------------------------------------------
def _bn_args(x):
    C = x.shape[1]
    buf = np.concatenate([np.zeros(C), np.ones(C), np.ones(C), np.zeros(C)]).astype(np.float32)
    return buf, buf[:C], buf[C:2 * C], buf[2 * C:3 * C], buf[3 * C:]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("other", ["running_mean", "running_var", "weight", "bias"])
def test_batch_norm_out_overlapping(x, training, other):
    _, rm, rv, w, b = _bn_args(x)
    args = dict(running_mean=rm, running_var=rv, weight=w, bias=b)
    out = np.empty(x.size + 8, np.float32)
    args[other] = out[: x.shape[1]]  # the first elements of out
    args[other][:] = 1.0
    before = _snapshot(rm, rv, out, x)
    with pytest.raises(ValueError, match=f"out overlaps {other}|out and {other} must not overlap"):
        nb.batch_norm(x, training=training, out=out[: x.size].reshape(x.shape), **args)
    _assert_unchanged([rm, rv, out, x], before)


def test_batch_norm_running_stats_overlapping_each_other_or_x(x):
    C = x.shape[1]
    stats = np.ones(C + 1, np.float32)
    before = _snapshot(stats, x)
    with pytest.raises(ValueError, match="running_mean and running_var must not overlap"):
        nb.batch_norm(x, stats[:C], stats[1:], training=True)
    _assert_unchanged([stats, x], before)
    xs = x.copy()
    flat = xs.reshape(-1)
    with pytest.raises(ValueError, match="running_mean overlaps x"):
        nb.batch_norm(xs, flat[:C], np.ones(C, np.float32), training=True)
    w = np.ones(2 * C, np.float32)
    with pytest.raises(ValueError, match="running_var overlaps weight"):
        nb.batch_norm(x, np.zeros(C, np.float32), w[C:], w[1 : C + 1], training=True)


def test_batch_norm_eval_running_stats_may_overlap_inputs(x, rng):
    """In eval the running stats are only read: sharing memory with weight/bias is fine."""
    C = x.shape[1]
    rv = (rng.random(C) + 0.5).astype(np.float32)
    rm = rng.standard_normal(C).astype(np.float32)
    got = nb.batch_norm(x, rm, rv, rm, rv, training=False)
    np.testing.assert_allclose(got, batch_norm_ref(x, rm, rv, rm, rv)[0], rtol=1e-5, atol=1e-5)


def test_instance_norm_and_group_norm_overlaps(rng):
    x = rng.standard_normal((4, 6, 9)).astype(np.float32)
    buf = np.ones(x.size, np.float32)
    out = buf.reshape(x.shape)
    with pytest.raises(ValueError, match="out overlaps weight"):
        nb.group_norm(x, 2, buf[:6], out=out)
    with pytest.raises(ValueError, match="out overlaps bias"):
        nb.instance_norm(x, weight=np.ones(6, np.float32), bias=buf[-6:], out=out)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    before = _snapshot(rm, rv, buf)
    with pytest.raises(ValueError, match="out and running_mean must not overlap"):
        nb.instance_norm(x, buf[:6], rv, out=out)
    with pytest.raises(ValueError, match="out overlaps running_var"):  # eval: the running stats are inputs
        nb.instance_norm(x, rm, buf[6:12], use_input_stats=False, out=out)
    _assert_unchanged([rm, rv, buf], before)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------
def _ln_backward_case(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    D = shape[-1]
    w = np.ones(D, np.float32)
    _, mean, rstd = nb.layer_norm(x, D, w, return_stats=True)
    return x, g, D, w, mean, rstd


@pytest.mark.parametrize("size", list(SIZES))
def test_layer_norm_backward_out_overlaps(rng, size):
    x, g, D, w, mean, rstd = _ln_backward_case(rng, SIZES[size])
    buf = np.zeros(x.size + D, np.float32)
    with pytest.raises(ValueError, match="out overlaps grad_out without being grad_out"):
        gb = buf[:x.size].reshape(x.shape)
        gb[...] = g
        nb.layer_norm_backward(gb, x, D, mean, rstd, w, out=buf[D:].reshape(x.shape))
    with pytest.raises(ValueError, match="out overlaps weight"):
        nb.layer_norm_backward(g, x, D, mean, rstd, buf[:D], out=buf[:x.size].reshape(x.shape))
    stats = np.zeros(x.size, np.float32)
    stats[: mean.size] = mean.reshape(-1)
    with pytest.raises(ValueError, match="out overlaps mean"):
        nb.layer_norm_backward(g, x, D, stats[: mean.size].reshape(mean.shape), rstd, w,
                               out=stats.reshape(x.shape))
    with pytest.raises(ValueError, match="out overlaps rstd"):
        nb.rms_norm_backward(g, x, D, stats[: rstd.size].reshape(rstd.shape), w, out=stats.reshape(x.shape))
    for out in (g, x):  # documented in place
        want = rows_backward_ref(g, x, w, 1, mean, rstd)[0]
        got = nb.layer_norm_backward(g, x, D, mean, rstd, w, out=out)[0]
        assert got is out
        assert rel_l2(got, want) <= 1e-5
        x, g, D, w, mean, rstd = _ln_backward_case(rng, SIZES[size])


@pytest.mark.parametrize("size", list(SIZES))
def test_batch_and_group_norm_backward_out_overlaps(rng, size):
    x = rng.standard_normal(SIZES[size]).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    C = x.shape[1]
    _, mean, invstd = nb.batch_norm(x, training=True, return_stats=True)
    buf = np.ones(x.size, np.float32)
    out = buf.reshape(x.shape)
    for name, args in (("mean", (buf[:C], invstd, None)), ("invstd", (mean, buf[-C:], None)),
                       ("weight", (mean, invstd, buf[:C]))):
        before = _snapshot(buf)
        with pytest.raises(ValueError, match=f"out overlaps {name}"):
            nb.batch_norm_backward(g, x, *args, out=out)
        _assert_unchanged([buf], before)
    _, gmean, grstd = nb.group_norm(x, 1, return_stats=True)
    with pytest.raises(ValueError, match="out overlaps rstd"):
        nb.group_norm_backward(g, x, 1, gmean, buf[: grstd.size].reshape(grstd.shape), out=out)
    with pytest.raises(ValueError, match="out overlaps x without being x itself"):
        nb.batch_norm_backward(g, x, mean, invstd, out=x.reshape(-1)[::-1].reshape(x.shape))


def test_tiny_backward_fast_path_checks_statistics(rng):
    """The tiny one-dispatch entry (float32, out given) still sees an ``out`` that is ``mean``'s
    memory: ownership says "not shown apart", so the full check runs and refuses it."""
    x = rng.standard_normal((8, 4)).astype(np.float32)
    g = rng.standard_normal((8, 4)).astype(np.float32)
    _, mean, invstd = nb.batch_norm(x, training=True, return_stats=True)
    buf = np.zeros(32, np.float32)
    buf[:4] = mean
    with pytest.raises(ValueError, match="out overlaps mean"):
        nb.batch_norm_backward(g, x, buf[:4], invstd, out=buf.reshape(8, 4))
