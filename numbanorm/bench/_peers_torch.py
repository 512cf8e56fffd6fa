"""torch and ONNX Runtime peers (each in its own worker process)."""

from __future__ import annotations

import numpy as np

from ._cases import MOMENTUM, Case, Data, Unsupported, require
from ._registry import ALL_OPS, Prepared, bn_args, register


def _to_torch(torch, a: np.ndarray):
    """A tensor sharing ``a``'s memory; bfloat16 goes through its 16-bit pattern (torch.from_numpy
    does not know ml_dtypes)."""
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _from_torch(torch, t, dtype: np.dtype) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(dtype)
    return t.numpy()


@register("torch", *ALL_OPS)
def _torch(case: Case, data: Data, threads: int) -> Prepared:
    """torch.nn.functional on the same memory; channels-last cases as channels_last tensors (torch's
    NHWC kernels). Forward in ``inference_mode``; a backward builds the graph here and times only
    ``torch.autograd.grad`` of it (``retain_graph``, so it can be run again)."""
    torch = require("torch")
    F = torch.nn.functional
    torch.set_num_threads(threads)
    spec = case.spec
    nhwc = case.layout == "NHWC"

    def logical(a):  # stored -> logical (NCHW) tensor
        t = _to_torch(torch, a)
        return t.permute(0, 3, 1, 2) if nhwc else t

    def stored(result):
        def one(t):
            a = _from_torch(torch, t, data.x.dtype)
            return a.transpose(0, 2, 3, 1) if nhwc and a.ndim == 4 else a

        return tuple(one(t) for t in result) if isinstance(result, tuple) else one(result)

    xt = logical(data.x)
    w, b, eps = torch.from_numpy(data.weight), torch.from_numpy(data.bias), data.eps
    shape = (data.x.shape[-1],)
    if spec.backward:
        tx = xt.detach().requires_grad_(True)
        tw, tb = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
        if spec.kind == "layer_norm":
            ty = F.layer_norm(tx, shape, tw, tb, eps)
        else:
            ty = F.batch_norm(tx, None, None, tw, tb, True, MOMENTUM, eps)
        tg = logical(data.dy)
        return Prepared(lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True), stored,
                        keep=[tx, tw, tb, ty, tg])
    if spec.kind == "layer_norm":
        fn = lambda: F.layer_norm(xt, shape, w, b, eps)  # noqa: E731
    elif spec.kind == "rms_norm":
        fn = lambda: F.rms_norm(xt, shape, w, eps)  # noqa: E731
    elif spec.kind == "add_layer_norm":
        rt = logical(data.residual)

        def fn():  # the unfused ops: what a torch model runs
            s = xt + rt
            return F.layer_norm(s, shape, w, b, eps), s
    elif spec.kind == "group_norm":
        fn = lambda: F.group_norm(xt, spec.groups, w, b, eps)  # noqa: E731
    else:
        training, rm, rv = bn_args(case, data)
        rmt, rvt = torch.from_numpy(rm), torch.from_numpy(rv)
        fn = lambda: F.batch_norm(xt, rmt, rvt, w, b, training, MOMENTUM, eps)  # noqa: E731

    def run():
        with torch.inference_mode():
            return fn()

    return Prepared(run, stored, keep=[xt])


_ORT_OPS = ("layer_norm", "batch_norm_eval", "layer_norm_f16", "rms_norm", "group_norm", "add_layer_norm")


@register("onnxruntime", *_ORT_OPS)
def _onnxruntime(case: Case, data: Data, threads: int) -> Prepared:
    """One-node ONNX models: LayerNormalization (float32, and float16 with float16 weight/bias, as
    its type constraint requires), BatchNormalization, RMSNormalization (opset 23),
    GroupNormalization (opset 21, per-channel scale) and ONNX Runtime's SkipLayerNormalization
    (com.microsoft; outputs y and x + residual). Channels-first only."""
    ort = require("onnxruntime")
    onnx = require("onnx")
    require("onnx.numpy_helper")
    spec = case.spec
    if case.layout == "NHWC":
        raise Unsupported(f"ONNX {spec.kind} is channels-first only (NHWC would add two transposes)")
    h = onnx.helper
    elem = onnx.TensorProto.FLOAT16 if data.x.dtype == np.float16 else onnx.TensorProto.FLOAT
    pdtype = data.x.dtype  # ONNX wants the parameters in x's type
    eps, xs = data.eps, list(data.x.shape)

    def tensor(a: np.ndarray, name: str):
        return onnx.numpy_helper.from_array(a.astype(pdtype), name)

    def vi(name: str):
        return h.make_tensor_value_info(name, elem, xs)

    inputs, outputs, domain_opsets = ["X"], ["Y"], []
    init = [tensor(data.weight, "scale"), tensor(data.bias, "B")]
    if spec.kind == "layer_norm":
        node = h.make_node("LayerNormalization", ["X", "scale", "B"], ["Y"], axis=-1, epsilon=eps)
        opset = 17
    elif spec.kind == "rms_norm":
        init = init[:1]
        node = h.make_node("RMSNormalization", ["X", "scale"], ["Y"], axis=-1, epsilon=eps)
        opset = 23
    elif spec.kind == "group_norm":
        node = h.make_node("GroupNormalization", ["X", "scale", "B"], ["Y"], epsilon=eps, num_groups=spec.groups)
        opset = 21
    elif spec.kind == "add_layer_norm":
        inputs, outputs = ["X", "R"], ["Y", "S"]
        node = h.make_node("SkipLayerNormalization", ["X", "R", "scale", "B"], ["Y", "", "", "S"],
                           domain="com.microsoft", epsilon=eps)
        opset, domain_opsets = 17, [h.make_opsetid("com.microsoft", 1)]
    else:
        init += [tensor(data.running_mean, "mean"), tensor(data.running_var, "var")]
        node = h.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], ["Y"], epsilon=eps)
        opset = 15
    graph = h.make_graph([node], case.op, [vi(n) for n in inputs], [vi(n) for n in outputs], init)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset), *domain_opsets])
    # the oldest IR that carries the opset: loadable by the oldest onnxruntime that has the op
    model.ir_version = 8 if opset <= 17 else 10
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - an older onnxruntime without the op or opset
        raise Unsupported(f"this onnxruntime cannot run {node.op_type} (opset {opset}): {exc}") from None
    feed = {"X": data.x} | ({"R": data.residual} if "R" in inputs else {})
    if len(outputs) == 1:
        return Prepared(lambda: sess.run(None, feed)[0], keep=[sess])
    return Prepared(lambda: tuple(sess.run(None, feed)), keep=[sess])


@register("onnxruntime", *(op for op in ALL_OPS if op not in _ORT_OPS))
def _onnxruntime_unsupported(case: Case, data: Data, threads: int) -> Prepared:
    spec = case.spec
    if spec.backward or spec.training:
        raise Unsupported("ONNX Runtime is inference-only: no training-mode BatchNorm, no backward")
    raise Unsupported("onnxruntime's Python API takes no bfloat16 arrays")
