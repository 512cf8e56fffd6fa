"""numbanorm's ops called from users' ``@njit`` code (issue #20): bit for bit the Python-level call
(every op, layouts, dtypes, sizes whose Python dispatch is parallel), close to the float64
references, and serial inside the user's own ``prange`` loop.

The jitted callers (``njit_callers``) are ``cache=True``: each compiles once per machine (numba is
slow to compile here), and a numbanorm change recompiles them (``test_njit_cache.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from family_reference import group_norm_ref, instance_norm_running_ref, rms_norm_ref
from njit_callers import (
    add_ln,
    bn,
    bn_bwd,
    bn_each,
    bn_eval,
    bn_out,
    gn,
    gn_bwd,
    inorm,
    ln_bwd,
    ln_each,
    ln_out,
    ln_stats,
    rms_bwd,
    rms_default,
    rms_stats,
)
from reference import TOL, batch_norm_ref, layer_norm_ref, rel_l2

import numbanorm as nb

F32, F64 = np.float32, np.float64
def same(a, b) -> bool:
    """Bit for bit (NaN where NaN), recursively through tuples; None only equals None."""
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(same(p, q) for p, q in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def data(rng, shape, dtype=F32, loc=3.0):
    return (rng.standard_normal(shape) * 2 + loc).astype(dtype)


def params(rng, n, dtype=F32):
    return (1 + 0.5 * rng.standard_normal(n)).astype(dtype), rng.standard_normal(n).astype(dtype)


# --------------------------------------------------------------------------------------------
# Row norms
# --------------------------------------------------------------------------------------------
LN_CASES = {  # name: (shape, normalized_shape, affine, dtype)
    "rows f32": ((2, 5, 16), 16, True, F32),
    "rows f64": ((2, 5, 16), 16, True, F64),
    "no affine": ((2, 5, 16), 16, False, F32),
    "two dims": ((3, 4, 6), (4, 6), True, F32),
    "pipelined, parallel plan": ((1, 600, 1024), 1024, True, F32),  # 8 blocks, each sums its first row apart
}


@pytest.mark.parametrize("case", LN_CASES)
def test_layer_norm(rng, case):
    shape, ns, affine, dt = LN_CASES[case]
    x = data(rng, shape, dt)
    pshape = (ns,) if isinstance(ns, int) else ns
    w, b = (params(rng, int(np.prod(pshape)), dt) if affine else (None, None))
    if affine:
        w, b = w.reshape(pshape), b.reshape(pshape)
    got = ln_stats(x, ns, w, b, 1e-5)
    assert same(got, nb.layer_norm(x, ns, w, b, 1e-5, return_stats=True))
    ry, rmean, rrstd = layer_norm_ref(x, pshape, w, b)
    assert rel_l2(got[0], ry) <= TOL[np.dtype(dt)] * 10
    assert rel_l2(got[1], rmean) <= TOL[np.dtype(dt)] and rel_l2(got[2], rrstd) <= TOL[np.dtype(dt)] * 10


def test_layer_norm_layouts(rng):
    """A non-C-contiguous x (copied, as the Python rows view), out= C-contiguous, Fortran-ordered
    (scratch, then copied) and in place."""
    base = data(rng, (2, 10, 16))
    w, b = params(rng, 16)
    x = base[:, ::2]
    assert same(ln_stats(x, 16, w, b, 1e-5), nb.layer_norm(x, 16, w, b, return_stats=True))
    x = data(rng, (6, 16))
    want = nb.layer_norm(x, 16, w, b)
    for out in (np.full_like(x, np.nan), np.asfortranarray(np.full_like(x, np.nan))):
        got = ln_out(x, w, b, out)
        assert same(got, want) and same(out, want)
    x2 = x.copy()
    assert same(ln_out(x2, w, b, x2), want) and same(x2, want)


@pytest.mark.parametrize("dt", [F32, F64])
def test_rms_norm(rng, dt):
    for shape in ((3, 7, 32), (1, 300, 4096)):  # the second has a parallel Python plan
        x = data(rng, shape, dt, 0.0)
        w = params(rng, shape[-1], dt)[0]
        got = rms_stats(x, shape[-1], w, 1e-6)
        assert same(got, nb.rms_norm(x, shape[-1], w, 1e-6, return_stats=True))
        assert rel_l2(got[0], rms_norm_ref(x, 1, w, 1e-6)) <= TOL[np.dtype(dt)] * 10
    assert same(rms_default(x, w), nb.rms_norm(x, shape[-1], w))  # eps=None: the compute type's epsilon


def test_add_layer_norm(rng):
    x, r = data(rng, (4, 48)), data(rng, (4, 48))
    w, b = params(rng, 48)
    want = nb.add_layer_norm(x, r, 48, w, b)
    assert same(add_ln(x, r, w, b, None, None), want)
    s64 = x.astype(F64) + r
    assert rel_l2(want[1], s64) <= TOL[np.dtype(F32)]
    assert rel_l2(want[0], layer_norm_ref(want[1], (48,), w, b)[0]) <= 1e-5
    xi, ri = x.copy(), r.copy()
    got = add_ln(xi, ri, w, b, xi, ri)  # both in place
    assert same(got, want) and same(xi, want[0]) and same(ri, want[1])


# --------------------------------------------------------------------------------------------
# BatchNorm / GroupNorm / InstanceNorm
# --------------------------------------------------------------------------------------------
BN_CASES = {  # name: (shape, channel_axis, dtype)
    "NCHW f32": ((4, 8, 5, 5), 1, F32),
    "NCHW f64": ((4, 8, 5, 5), 1, F64),
    "NHWC": ((4, 5, 5, 24), -1, F32),
    "NC": ((16, 40, 1, 1), 1, F32),
    "NCHW, parallel plan": ((16, 64, 28, 28), 1, F32),  # partial moments per task
    "NHWC, parallel plan": ((16, 28, 28, 64), -1, F32),
}


@pytest.mark.parametrize("case", BN_CASES)
def test_batch_norm(rng, case):
    shape, axis, dt = BN_CASES[case]
    C = shape[axis]
    x = data(rng, shape, dt)
    w, b = params(rng, C, dt)
    rm0, rv0 = rng.standard_normal(C).astype(dt), (rng.random(C) + 0.5).astype(dt)
    for training in (True, False):
        rm, rv, pm, pv = rm0.copy(), rv0.copy(), rm0.copy(), rv0.copy()
        got = bn(x, rm, rv, w, b, training, 0.1, 1e-5, axis)
        want = nb.batch_norm(x, pm, pv, w, b, training, 0.1, 1e-5, channel_axis=axis, return_stats=True)
        assert same(got, want) and same(rm, pm) and same(rv, pv)
        ry, rmean, rinv, nrm, nrv = batch_norm_ref(x, rm0, rv0, w, b, training, 0.1, 1e-5, axis)
        tol = TOL[np.dtype(dt)] * 10
        assert rel_l2(got[0], ry) <= tol and rel_l2(got[1], rmean) <= tol and rel_l2(got[2], rinv) <= tol
        if training:
            assert rel_l2(rm, nrm) <= tol and rel_l2(rv, nrv) <= tol
    if axis == 1:  # every default (eval, channel_axis=1): training=False is not even compiled
        assert same(bn_eval(x, rm0, rv0, w, b), nb.batch_norm(x, rm0, rv0, w, b))


def test_batch_norm_layouts(rng):
    """No running stats, an NCHW array stored channels-last (the channels-last kernels, a
    channels-last result, as the Python call), out=, and an empty batch."""
    x = data(rng, (4, 6, 5, 5))
    w, b = params(rng, 6)
    assert same(bn(x, None, None, w, b, True, 0.1, 1e-5, 1),
                nb.batch_norm(x, None, None, w, b, True, return_stats=True))
    moved = data(rng, (16, 28, 28, 64)).transpose(0, 3, 1, 2)  # NCHW, stored channels-last
    w, b = params(rng, 64)
    rm, rv, pm, pv = np.zeros(64, F32), np.ones(64, F32), np.zeros(64, F32), np.ones(64, F32)
    got = bn(moved, rm, rv, w, b, True, 0.1, 1e-5, 1)
    want = nb.batch_norm(moved, pm, pv, w, b, True, return_stats=True)
    assert same(got, want) and same(rm, pm) and same(rv, pv)
    assert got[0].strides == want[0].strides  # channels-last like the input
    x = data(rng, (4, 6, 5, 5))
    w, b = params(rng, 6)
    rm, rv = np.zeros(6, F32), np.ones(6, F32)
    want = nb.batch_norm(x, rm, rv, w, b)
    for out in (np.full_like(x, np.nan), np.full_like(x.transpose(0, 2, 3, 1), np.nan).transpose(0, 3, 1, 2)):
        assert same(bn_out(x, rm, rv, w, b, False, 1, out), want) and same(out, want)
    empty = np.empty((0, 6, 5, 5), F32)
    assert same(bn(empty, None, None, w, b, True, 0.1, 1e-5, 1),
                nb.batch_norm(empty, None, None, w, b, True, return_stats=True))


GN_CASES = {  # name: (shape, groups, channel_axis, dtype)
    "NCHW f32": ((3, 12, 5, 5), 4, 1, F32),
    "NCHW f64": ((3, 12, 5, 5), 4, 1, F64),
    "NHWC": ((3, 5, 5, 12), 3, -1, F32),
    "NCHW, parallel plan": ((4, 64, 32, 32), 8, 1, F32),  # fused groups, blocks of groups
    "NHWC, two passes": ((3, 64, 64, 32), 4, -1, F32),  # few samples: the per-sample task passes
}


@pytest.mark.parametrize("case", GN_CASES)
def test_group_norm(rng, case):
    shape, G, axis, dt = GN_CASES[case]
    C = shape[axis]
    x = data(rng, shape, dt)
    w, b = params(rng, C, dt)
    got = gn(x, G, w, b, 1e-5, axis)
    assert same(got, nb.group_norm(x, G, w, b, 1e-5, channel_axis=axis, return_stats=True))
    ry, rmean, rrstd = group_norm_ref(x, G, w, b, 1e-5, axis)
    tol = TOL[np.dtype(dt)] * 10
    assert rel_l2(got[0], ry) <= tol and rel_l2(got[1], rmean) <= tol and rel_l2(got[2], rrstd) <= tol


@pytest.mark.parametrize("dt", [F32, F64])
def test_instance_norm(rng, dt):
    for shape, axis in (((3, 6, 5, 5), 1), ((2, 7, 7, 6), -1), ((20, 1, 9), 1), ((8, 64, 32, 32), 1)):
        C = shape[axis]
        x = data(rng, shape, dt)
        w, b = params(rng, C, dt)
        rm0, rv0 = rng.standard_normal(C).astype(dt), (rng.random(C) + 0.5).astype(dt)
        for use in (True, False):
            rm, rv, pm, pv = rm0.copy(), rv0.copy(), rm0.copy(), rv0.copy()
            got = inorm(x, rm, rv, w, b, use, 0.1, 1e-5, axis)
            want = nb.instance_norm(x, pm, pv, w, b, use, 0.1, 1e-5, channel_axis=axis)
            assert same(got, want) and same(rm, pm) and same(rv, pv), (shape, use)
            if use:
                nrm, nrv = instance_norm_running_ref(x, rm0, rv0, 0.1, axis)
                assert rel_l2(rm, nrm) <= TOL[np.dtype(dt)] * 10 and rel_l2(rv, nrv) <= TOL[np.dtype(dt)] * 10


def test_group_norm_no_affine(rng):
    x = data(rng, (2, 8, 6, 6))
    assert same(gn(x, 2, None, None, 1e-5, 1), nb.group_norm(x, 2, return_stats=True))
    assert same(inorm(x, None, None, None, None, True, 0.1, 1e-5, 1), nb.instance_norm(x))


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------
def _torch_grads(fn, x, params, dy):
    """float64 autograd reference: (grad_x, grad of each param)."""
    torch = pytest.importorskip("torch")
    tx = torch.from_numpy(x.astype(F64)).requires_grad_(True)
    tp = [torch.from_numpy(p.astype(F64)).requires_grad_(True) for p in params]
    grads = torch.autograd.grad(fn(tx, *tp), (tx, *tp), torch.from_numpy(dy.astype(F64)))
    return [g.numpy() for g in grads]


@pytest.mark.parametrize("dt", [F32, F64])
def test_row_backward(rng, dt):
    torch = pytest.importorskip("torch")
    for shape in ((3, 5, 32), (1, 512, 2048)):  # the second: per-block partial sums of dw, db
        D = shape[-1]
        x, dy = data(rng, shape, dt), rng.standard_normal(shape).astype(dt)
        w, b = params(rng, D, dt)
        _, mean, rstd = nb.layer_norm(x, D, w, b, return_stats=True)
        got = ln_bwd(dy, x, D, mean, rstd, w)
        assert same(got, nb.layer_norm_backward(dy, x, D, mean, rstd, w))
        ref = _torch_grads(lambda t, p, q, D=D: torch.nn.functional.layer_norm(t, (D,), p, q), x, (w, b), dy)
        assert all(rel_l2(g, r) <= TOL[np.dtype(dt)] * 100 for g, r in zip(got, ref, strict=True))
        _, rs = nb.rms_norm(x, D, w, return_stats=True)
        got = rms_bwd(dy, x, D, rs, w)
        assert same(got, nb.rms_norm_backward(dy, x, D, rs, w))
        eps = float(np.finfo(F64 if dt == F64 else F32).eps)
        ref = _torch_grads(lambda t, p, D=D, eps=eps: torch.nn.functional.rms_norm(t, (D,), p, eps), x, (w,), dy)
        assert all(rel_l2(g, r) <= TOL[np.dtype(dt)] * 100 for g, r in zip(got, ref, strict=True))
    assert same(ln_bwd(dy, x, D, mean, rstd, None), nb.layer_norm_backward(dy, x, D, mean, rstd))
    assert same(rms_bwd(dy, x, D, rs, None), nb.rms_norm_backward(dy, x, D, rs))


BN_BWD_CASES = {  # name: (shape, channel_axis): tiny (one serial dispatch) and general paths
    "NCHW tiny": ((4, 8, 5, 5), 1),
    "NHWC tiny, C >= 32": ((2, 6, 6, 48), -1),
    "NCHW, parallel plan": ((16, 64, 28, 28), 1),
    "NHWC, parallel plan": ((16, 28, 28, 64), -1),
}


@pytest.mark.parametrize("case", BN_BWD_CASES)
def test_batch_norm_backward(rng, case):
    torch = pytest.importorskip("torch")
    shape, axis = BN_BWD_CASES[case]
    C = shape[axis]
    x, dy = data(rng, shape), rng.standard_normal(shape).astype(F32)
    w, b = params(rng, C)
    _, mean, invstd = nb.batch_norm(x, None, None, w, b, True, channel_axis=axis, return_stats=True)
    for training in (True, False):
        got = bn_bwd(dy, x, mean, invstd, w, training, axis)
        assert same(got, nb.batch_norm_backward(dy, x, mean, invstd, w, training, channel_axis=axis))
    got = bn_bwd(dy, x, mean, invstd, w, True, axis)
    perm, back = ((0, 3, 1, 2), (0, 2, 3, 1)) if axis == -1 else ((0, 1, 2, 3),) * 2
    ref = _torch_grads(
        lambda t, p, q: torch.nn.functional.batch_norm(t.permute(perm), None, None, p, q, True).permute(back),
        x, (w, b), dy)
    assert all(rel_l2(g, r) <= 1e-5 for g, r in zip(got, ref, strict=True))
    assert same(bn_bwd(dy, x, mean, invstd, None, True, axis),
                nb.batch_norm_backward(dy, x, mean, invstd, None, True, channel_axis=axis))
    m64, i64 = mean.astype(F64), invstd.astype(F64)  # float64 statistics: the general path
    assert same(bn_bwd(dy, x, m64, i64, w, True, axis),
                nb.batch_norm_backward(dy, x, m64, i64, w, True, channel_axis=axis))


@pytest.mark.parametrize("shape, G, axis", [((3, 12, 5, 5), 4, 1), ((2, 6, 6, 12), 3, -1), ((4, 64, 32, 32), 8, 1)])
def test_group_norm_backward(rng, shape, G, axis):
    torch = pytest.importorskip("torch")
    C = shape[axis]
    x, dy = data(rng, shape), rng.standard_normal(shape).astype(F32)
    w, b = params(rng, C)
    _, mean, rstd = nb.group_norm(x, G, w, b, channel_axis=axis, return_stats=True)
    got = gn_bwd(dy, x, G, mean, rstd, w, axis)
    assert same(got, nb.group_norm_backward(dy, x, G, mean, rstd, w, channel_axis=axis))
    perm, back = ((0, 3, 1, 2), (0, 2, 3, 1)) if axis == -1 else ((0, 1, 2, 3),) * 2
    ref = _torch_grads(lambda t, p, q: torch.nn.functional.group_norm(t.permute(perm), G, p, q).permute(back),
                       x, (w, b), dy)
    assert all(rel_l2(g, r) <= 1e-5 for g, r in zip(got, ref, strict=True))
    assert same(gn_bwd(dy, x, G, mean, rstd, None, axis),
                nb.group_norm_backward(dy, x, G, mean, rstd, channel_axis=axis))


# --------------------------------------------------------------------------------------------
# Inside the user's prange loop: serial kernels, no nested parallel region
# --------------------------------------------------------------------------------------------
def test_overloads_reach_no_parfor():
    """The overloads call only ``cpu/njit.py``'s entries (through ``native_call``: their own code,
    nothing linked into the caller), and those only serial kernels: no parallel region is
    reachable from jitted code that calls numbanorm."""
    from numba.core.registry import CPUDispatcher

    from numbanorm import _njit, _njit_backward
    from numbanorm.cpu import njit as entries

    reached = [v for m in (_njit, _njit_backward, entries) for v in vars(m).values() if isinstance(v, CPUDispatcher)]
    assert len(reached) > 20
    assert not [d.py_func.__qualname__ for d in reached if d.targetoptions.get("parallel")]


def test_inside_prange(rng):
    """Each slice is large enough for the Python dispatch to plan it in parallel; inside the
    user's prange the overload runs that plan serially, with the same bits."""
    x = data(rng, (4, 160, 1024))
    w, b = params(rng, 1024)
    assert same(ln_each(x, w, b), np.stack([nb.layer_norm(s, 1024, w, b) for s in x]))
    xb = data(rng, (3, 16, 32, 24, 24))
    w, b = params(rng, 32)
    assert same(bn_each(xb, w, b), np.stack([nb.batch_norm(s, None, None, w, b, True) for s in xb]))


@pytest.mark.slow
def test_inside_prange_workqueue(tmp_path):
    """Under the workqueue threading layer, which aborts the process on a nested parallel launch."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np, numba, njit_callers as t\n"
            "x = np.random.default_rng(0).standard_normal((4, 160, 1024)).astype(np.float32)\n"
            "w = np.ones(1024, np.float32)\n"
            "y = t.ln_each(x, w, w)\n"
            "print(numba.threading_layer(), float(np.abs(y).max()) > 0)\n")
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["workqueue", "True"]
