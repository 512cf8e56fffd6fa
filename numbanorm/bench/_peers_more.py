"""Optional peers: JAX and OpenVINO (each in its own worker process; columns when installed).

- JAX: ``jax.jit`` of the textbook formula (two-pass mean and variance), inputs put on the device
  in setup, ``run`` returns after ``block_until_ready``. Half inputs are computed in float32 and
  rounded back, as mixed-precision JAX code does. A backward is the ``jax.vjp`` of that forward,
  taken in setup (so its residuals are saved, like torch's graph); only the pullback is timed.
- OpenVINO: one small model per case on the CPU plugin, ``INFERENCE_NUM_THREADS`` = the run's
  thread count and ``INFERENCE_PRECISION_HINT`` = f32 (the plugin would otherwise run float32
  models in bfloat16 on CPUs that have it). LayerNorm, BN train and add + LN are ``MVN`` nodes
  (BN train: over N and the spatial axes, so any layout; its running statistics are not
  updated), RMSNorm the multiply/reduce pattern the plugin fuses, BN eval ``BatchNormInference``,
  GroupNorm ``GroupNormalization`` (these two channels-first only). Half inputs are converted to
  float32 in the model and back. Inference only: no backward.
"""

from __future__ import annotations

import numpy as np

from ._cases import MOMENTUM, Case, Data, Unsupported, channel_axis, require, stat_axes
from ._registry import ALL_OPS, Prepared, bn_args, register

_HALF_CAVEAT = "half input computed in float32 and rounded back"


def _jax_forward(case: Case, data: Data):
    """The textbook forward as a function of (x, weight, bias[, running stats / residual])."""
    jnp = require("jax.numpy")
    spec = case.spec
    axes, bshape = stat_axes(case, data.x.ndim)
    eps = data.eps

    def standardize(x, axes):
        mean = jnp.mean(x, axes, keepdims=True)
        xc = x - mean
        return xc / jnp.sqrt(jnp.mean(xc * xc, axes, keepdims=True) + eps)

    if spec.kind == "rms_norm":
        return lambda x, w: x / jnp.sqrt(jnp.mean(x * x, axes, keepdims=True) + eps) * w.reshape(bshape)
    if spec.kind == "add_layer_norm":
        def add_ln(x, r, w, b):
            s = x + r
            return standardize(s.astype(jnp.float32), axes) * w + b, s
        return add_ln
    if spec.kind == "group_norm":
        n, c = case.shape[:2]
        g = spec.groups
        gshape, gaxes = ((n, g, -1), (2,)) if case.layout == "NCHW" else ((n, -1, g, c // g), (1, 3))
        return lambda x, w, b: (standardize(x.reshape(gshape), gaxes).reshape(x.shape) * w.reshape(bshape)
                                + b.reshape(bshape))
    if spec.kind == "batch_norm":
        count = data.x.size // data.x.shape[channel_axis(case)]

        def bn(x, w, b, rm, rv):
            if spec.training:
                mean = jnp.mean(x, axes, keepdims=True)
                var = jnp.mean((x - mean) ** 2, axes, keepdims=True)
                new_rm = (1 - MOMENTUM) * rm + MOMENTUM * mean.reshape(-1)
                new_rv = (1 - MOMENTUM) * rv + MOMENTUM * var.reshape(-1) * (count / (count - 1))
            else:
                mean, var, new_rm, new_rv = rm.reshape(bshape), rv.reshape(bshape), rm, rv
            y = (x - mean) / jnp.sqrt(var + eps) * w.reshape(bshape) + b.reshape(bshape)
            return y, new_rm, new_rv
        return bn
    return lambda x, w, b: standardize(x, axes) * w + b


@register("jax", *ALL_OPS)
def _jax(case: Case, data: Data, threads: int) -> Prepared:
    jax = require("jax")
    jnp = require("jax.numpy")
    spec = case.spec
    half = data.x.dtype != np.float32
    fwd = _jax_forward(case, data)
    put = jax.device_put
    x = put(data.x)
    if half:
        inner, dtype = fwd, x.dtype

        def fwd(x, *rest):  # noqa: F811 - the float32 computation, rounded back
            out = inner(x.astype(jnp.float32), *rest)
            return (out[0].astype(dtype), *out[1:]) if isinstance(out, tuple) else out.astype(dtype)
    w, b = put(data.weight), put(data.bias)
    if spec.backward:
        _, pullback = jax.vjp(lambda x, w, b: (fwd(x, w, b, put(data.running_mean), put(data.running_var))[0]
                                               if spec.kind == "batch_norm" else fwd(x, w, b)), x, w, b)
        apply = jax.jit(lambda f, g: f(g))
        dy = put(data.dy)
        run = lambda: jax.block_until_ready(apply(pullback, dy))  # noqa: E731
        return Prepared(run, stored=lambda r: tuple(np.asarray(a) for a in r), keep=[x, dy])
    if spec.kind == "rms_norm":
        args = (x, w)
    elif spec.kind == "add_layer_norm":
        args = (x, put(data.residual), w, b)
    elif spec.kind == "batch_norm":
        _, rm, rv = bn_args(case, data)
        args = (x, w, b, put(rm), put(rv))
    else:
        args = (x, w, b)
    jitted = jax.jit(fwd)
    run = lambda: jax.block_until_ready(jitted(*args))  # noqa: E731
    def to_numpy(r):  # BatchNorm returns (y, running mean, running var): y is checked
        out = r[0] if spec.kind == "batch_norm" else (tuple(r) if isinstance(r, tuple) else r)
        return tuple(np.asarray(a) for a in out) if isinstance(out, tuple) else np.asarray(out)

    return Prepared(run, stored=to_numpy, keep=list(args), caveat=_HALF_CAVEAT if half else None)


def _ov_model(case: Case, data: Data):
    """(openvino Model, caveat or None) for one case."""
    ov = require("openvino")
    ops = require("openvino.opset13")
    spec = case.spec
    if spec.backward:
        raise Unsupported("OpenVINO is inference-only: no backward")
    et = {"float32": ov.Type.f32, "float16": ov.Type.f16, "bfloat16": ov.Type.bf16}[spec.dtype]
    x = ops.parameter(list(data.x.shape), et, name="x")
    params = [x]
    xf = ops.convert(x, ov.Type.f32) if et != ov.Type.f32 else x
    axes, bshape = stat_axes(case, data.x.ndim)
    eps = float(data.eps)

    def const(a):
        return ops.constant(np.ascontiguousarray(a.reshape(bshape), dtype=np.float32))

    def mvn(t, over):
        return ops.mvn(t, ops.constant(np.array(over, dtype=np.int64)), True, eps, "inside_sqrt")

    w, b = const(data.weight), const(data.bias)
    caveats = [] if et == ov.Type.f32 else [_HALF_CAVEAT]
    outs = []
    if spec.kind == "add_layer_norm":
        r = ops.parameter(list(data.x.shape), et, name="r")
        params.append(r)
        s = ops.add(x, r)
        y = ops.add(ops.multiply(mvn(ops.convert(s, ov.Type.f32) if et != ov.Type.f32 else s, list(axes)), w), b)
        outs = [y, s]
    elif spec.kind == "rms_norm":
        ms = ops.reduce_mean(ops.multiply(xf, xf), ops.constant(np.array(axes, dtype=np.int64)), True)
        outs = [ops.multiply(ops.divide(xf, ops.sqrt(ops.add(ms, ops.constant(np.float32(eps))))), w)]
    elif spec.kind == "layer_norm" or (spec.kind == "batch_norm" and spec.training):
        outs = [ops.add(ops.multiply(mvn(xf, list(axes)), w), b)]
        if spec.training:
            caveats.append("BN train as MVN over N and spatial axes: running statistics not updated")
    elif case.layout != "NCHW":
        raise Unsupported(f"OpenVINO {spec.kind} is channels-first only")
    elif spec.kind == "group_norm":
        outs = [ops.group_normalization(xf, ops.constant(data.weight), ops.constant(data.bias), spec.groups, eps)]
    else:
        outs = [ops.batch_norm_inference(xf, ops.constant(data.weight), ops.constant(data.bias),
                                         ops.constant(data.running_mean), ops.constant(data.running_var), eps)]
    if et != ov.Type.f32:  # back to x's type (add + LN's x + residual already is)
        outs = [ops.convert(outs[0], et), *outs[1:]]
    return ov.Model(outs, params, case.op), "; ".join(caveats) or None


@register("openvino", *ALL_OPS)
def _openvino(case: Case, data: Data, threads: int) -> Prepared:
    ov = require("openvino")
    model, caveat = _ov_model(case, data)
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    inputs = [data.x] + ([data.residual] if case.spec.kind == "add_layer_norm" else [])
    bf16 = case.spec.dtype == "bfloat16"
    if bf16:  # ml_dtypes arrays do not convert: their bits go into bf16 tensors, once, in setup
        tensors = [ov.Tensor(ov.Type.bf16, list(a.shape)) for a in inputs]
        for t, a in zip(tensors, inputs, strict=True):
            t.data.view(np.uint16)[...] = a.view(np.uint16)
        inputs = tensors
    feed = dict(enumerate(inputs))
    n_out = len(compiled.outputs)

    def run():
        res = request.infer(feed, share_inputs=True)
        return res[compiled.output(0)] if n_out == 1 else tuple(res[compiled.output(i)] for i in range(n_out))

    def stored(r):  # bf16 results come back as numpy arrays of the same bits, typed float16
        one = (lambda a: np.asarray(a).view(np.uint16).view(data.x.dtype)) if bf16 else np.asarray
        return tuple(one(a) for a in r) if isinstance(r, tuple) else one(r)

    return Prepared(run, stored=stored, keep=[compiled, request, inputs], caveat=caveat)
