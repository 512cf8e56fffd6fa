"""numbanorm, NumPy and roofline-copy peers (the numbanorm, numpy and roofline workers).

numbanorm is used through its public API only (``import numbanorm as nb``).
"""

from __future__ import annotations

import numpy as np

from . import _roofline
from ._cases import MOMENTUM, Case, Data, Unsupported, channel_axis, stat_axes
from ._floors import case_floor, llc_bytes
from ._registry import ALL_OPS, Prepared, bn_args, register


@register("numbanorm", *ALL_OPS)
def _numbanorm(case: Case, data: Data, threads: int) -> Prepared:
    return _numbanorm_setup(case, data, out=None)


@register("numbanorm-out", *ALL_OPS)
def _numbanorm_out(case: Case, data: Data, threads: int) -> Prepared:
    return _numbanorm_setup(case, data, out=np.empty_like(data.x))


def _numbanorm_setup(case: Case, data: Data, out: np.ndarray | None) -> Prepared:
    import numbanorm as nb

    spec = case.spec
    x, w, b, eps = data.x, data.weight, data.bias, data.eps
    d, axis = x.shape[-1], channel_axis(case)
    if spec.backward:  # stats from the forward, computed here (untimed) as a training step would
        dy = data.dy
        if spec.kind == "layer_norm":
            _, mean, rstd = nb.layer_norm(x, d, w, b, eps, return_stats=True)
            return Prepared(lambda: nb.layer_norm_backward(dy, x, d, mean, rstd, w, out=out), keep=[out])
        _, mean, invstd = nb.batch_norm(x, None, None, w, b, True, MOMENTUM, eps, channel_axis=axis,
                                        return_stats=True)
        return Prepared(lambda: nb.batch_norm_backward(dy, x, mean, invstd, w, True, channel_axis=axis, out=out),
                        keep=[out])
    if spec.kind == "layer_norm":
        return Prepared(lambda: nb.layer_norm(x, d, w, b, eps, out=out), keep=[out])
    if spec.kind == "rms_norm":
        return Prepared(lambda: nb.rms_norm(x, d, w, eps, out=out), keep=[out])
    if spec.kind == "add_layer_norm":
        r, r_out = data.residual, None if out is None else np.empty_like(x)
        return Prepared(lambda: nb.add_layer_norm(x, r, d, w, b, eps, out=out, residual_out=r_out),
                        keep=[out, r_out])
    if spec.kind == "group_norm":
        return Prepared(lambda: nb.group_norm(x, spec.groups, w, b, eps, channel_axis=axis, out=out), keep=[out])
    training, rm, rv = bn_args(case, data)
    return Prepared(lambda: nb.batch_norm(x, rm, rv, w, b, training, MOMENTUM, eps, channel_axis=axis, out=out),
                    keep=[out, rm, rv])


@register("numpy", *ALL_OPS)
def _numpy(case: Case, data: Data, threads: int) -> Prepared:
    """Plain NumPy, float32. Half inputs are converted to float32 and the result rounded back (NumPy
    has no bfloat16 arithmetic, and float16 sums lose precision); the conversions are timed."""
    spec = case.spec
    x, w, b, eps = data.x, data.weight, data.bias, np.float32(data.eps)
    half = x.dtype != np.float32
    axes, bshape = stat_axes(case, x.ndim)
    w, b = w.reshape(bshape), b.reshape(bshape)
    keep: list = []

    def standardize(a):
        mean = a.mean(axes, keepdims=True)
        ac = a - mean
        var = np.mean(ac * ac, axes, keepdims=True)
        ac *= 1.0 / np.sqrt(var + eps)
        return ac

    if spec.backward:
        dy = data.dy
        mean = x.mean(axes, keepdims=True)  # stats from the forward (untimed), as a training step has them
        rstd = 1.0 / np.sqrt(x.var(axes, keepdims=True) + eps)
        param_axes = tuple(range(x.ndim - 1)) if spec.rows else axes

        def fn(x):
            xhat = (x - mean) * rstd
            dw = (dy * xhat).sum(param_axes)
            db = dy.sum(param_axes)
            g = dy * w
            dx = g - g.mean(axes, keepdims=True)
            dx -= xhat * np.mean(g * xhat, axes, keepdims=True)
            dx *= rstd
            return dx, dw, db
    elif spec.kind == "rms_norm":

        def fn(x):
            return x * (1.0 / np.sqrt(np.mean(x * x, axes, keepdims=True) + eps)) * w
    elif spec.kind == "add_layer_norm":
        r = data.residual.astype(np.float32) if half else data.residual

        def fn(x):
            s = x + r
            y = standardize(s)
            y *= w
            y += b
            return y, s
    elif spec.kind == "group_norm":
        n, c = case.shape[:2]
        g = spec.groups
        # NCHW: (N, G, C/G * HW), reduced over 2; NHWC: (N, HW, G, C/G), reduced over 1 and 3
        gshape, gaxes = ((n, g, -1), (2,)) if case.layout == "NCHW" else ((n, -1, g, c // g), (1, 3))

        def fn(x):
            xg = x.reshape(gshape)
            mean = xg.mean(gaxes, keepdims=True)
            xc = xg - mean
            xc *= 1.0 / np.sqrt(np.mean(xc * xc, gaxes, keepdims=True) + eps)
            y = xc.reshape(x.shape)
            y *= w
            y += b
            return y
    elif spec.kind == "layer_norm":

        def fn(x):
            y = standardize(x)
            y *= w
            y += b
            return y
    else:
        training, rm, rv = bn_args(case, data)
        keep += [rm, rv]
        count = x.size // x.shape[channel_axis(case)]
        rm, rv = rm.reshape(bshape), rv.reshape(bshape)

        def fn(x):
            if training:
                mean = x.mean(axes, keepdims=True)
                var = x.var(axes, keepdims=True)
                rm[...] = (1 - MOMENTUM) * rm + MOMENTUM * mean
                rv[...] = (1 - MOMENTUM) * rv + MOMENTUM * var * (count / (count - 1))
            else:
                mean, var = rm, rv
            scale = w / np.sqrt(var + eps)
            shift = b - mean * scale
            y = x * scale
            y += shift
            return y

    if not half:
        return Prepared(lambda: fn(x), keep=keep)

    def run():
        out = fn(x.astype(np.float32))
        return tuple(o.astype(x.dtype) for o in out) if isinstance(out, tuple) else out.astype(x.dtype)

    return Prepared(run, keep=keep, caveat="half input computed in float32 and rounded back (conversions timed)")


def _copy_setup(case: Case, streaming: bool, one_thread: bool) -> Prepared:
    """A copy moving the case's floor bytes (half read, half written)."""
    if streaming and not _roofline.streaming_supported():
        raise Unsupported("no streaming-store copy on this architecture")
    nbytes = case_floor(case, llc_bytes()).nbytes(case.x_nbytes) // 2
    copy = _roofline.Copy(nbytes, streaming=streaming, one_thread=one_thread)
    return Prepared(copy.run, keep=[copy], self_check=lambda: 0.0 if copy.check() else float("inf"))


@register("copy", *ALL_OPS)
def _copy(case: Case, data: Data, threads: int) -> Prepared:
    return _copy_setup(case, streaming=False, one_thread=False)


@register("copy-nt", *ALL_OPS)
def _copy_nt(case: Case, data: Data, threads: int) -> Prepared:
    return _copy_setup(case, streaming=True, one_thread=False)


@register("copy-1t", *ALL_OPS)
def _copy_1t(case: Case, data: Data, threads: int) -> Prepared:
    return _copy_setup(case, streaming=False, one_thread=True)
