"""The benchmark grid and its peers, shared by ``benchmarks/`` (pytest-benchmark) and
``python -m numbanorm.bench``, so both time exactly the same calls.

A *case* is one op on one layout and shape. A *peer* is one implementation of it. Peers are
registered per op in :data:`IMPLS` (numbagg's ``COMPARISONS`` pattern): a setup function builds
everything a peer needs (tensors, ONNX sessions, output buffers) and returns a :class:`Prepared`
whose ``run`` is the only thing timed. New ops (backward) and peers (GPU) are new entries:
add an :class:`OpSpec` to :data:`OPS` (its ``traffic`` says how many x-sized arrays an ideal
kernel moves, e.g. 3 for a backward reading x and dy and writing dx), a ``reference`` branch, and
``@register(peer, op)`` setups; a GPU peer's ``run`` must synchronize before it returns, and its
availability check goes in :func:`availability`.

The ``copy`` peer is the roofline: ``np.copyto`` of the same bytes in the same run. Every peer is
credited with the same traffic, ``bytes = x.nbytes + y.nbytes`` for a forward (read the input
once, write the output once; the few parameter bytes are left out), so GB/s is effective
bandwidth and, as copy moves the same bytes, the fraction of the roofline is ``t_copy / t_peer``.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import numpy as np

#: Peer names in display order. ``copy`` is the roofline, not a competitor.
PEERS = ("numbanorm", "numbanorm-out", "torch", "onnxruntime", "numpy", "copy")
EPS = 1e-5
MOMENTUM = 0.1


class Unsupported(Exception):
    """A peer that cannot run a case (not installed, or no such op/layout); the message says why."""


@dataclass(frozen=True)
class Case:
    """One op, layout and logical shape (NCHW order for BN, whatever the storage layout)."""

    op: str
    layout: str
    shape: tuple[int, ...]
    quick: bool = False

    @property
    def group(self) -> str:
        """pytest-benchmark group and report key: ``op|layout|shape``."""
        return f"{self.op}|{self.layout}|{'x'.join(map(str, self.shape))}"

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """Shape of the array in memory: channels-last cases store (N, H, W, C)."""
        if self.layout == "NHWC":
            n, c, *spatial = self.shape
            return (n, *spatial, c)
        return self.shape

    @property
    def nbytes(self) -> int:
        """Bytes read + written by an ideal float32 kernel (forward: x once, y once)."""
        return OPS[self.op].traffic * 4 * int(np.prod(self.shape))

    @property
    def copy_nbytes(self) -> int:
        """Bytes the ``copy`` roofline moves: x read once, written once."""
        return 2 * 4 * int(np.prod(self.shape))

    def smoke(self) -> Case:
        """Same case on a small shape that still spans several parallel tasks: CI-cheap."""
        if self.op.startswith("layer_norm"):
            n, l, d = self.shape
            return replace(self, shape=(min(n, 3), min(l, 29), d))
        n, c, h, w = self.shape
        return replace(self, shape=(min(n, 3), c, min(h, 9), min(w, 11)))


@dataclass(frozen=True)
class OpSpec:
    """An op of the grid: its layouts, shapes (logical) and which shapes are in the quick subset."""

    name: str
    layouts: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    quick: tuple[tuple[int, ...], ...]
    training: bool = False
    traffic: int = 2  # x-sized arrays an ideal kernel reads + writes


_LN_SHAPES = ((32, 512, 768), (8, 128, 1024), (64, 196, 384), (4, 4096, 4096), (1, 16, 768))
_BN_SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 3, 224, 224), (256, 64, 8, 8), (1, 64, 7, 7))

OPS: dict[str, OpSpec] = {
    "layer_norm": OpSpec("layer_norm", ("NLC",), _LN_SHAPES, quick=(_LN_SHAPES[0], _LN_SHAPES[4])),
    "batch_norm_train": OpSpec("batch_norm_train", ("NCHW", "NHWC"), _BN_SHAPES,
                               quick=(_BN_SHAPES[0], _BN_SHAPES[4]), training=True),
    "batch_norm_eval": OpSpec("batch_norm_eval", ("NCHW", "NHWC"), _BN_SHAPES,
                              quick=(_BN_SHAPES[0], _BN_SHAPES[4])),
}


def grid(which: str = "quick", ops: tuple[str, ...] | None = None) -> list[Case]:
    """Cases of the ``full`` grid, its ``quick`` subset, or the ``smoke`` (small-shape) grid."""
    if which not in ("quick", "full", "smoke"):
        raise ValueError(f"grid must be 'quick', 'full' or 'smoke', got {which!r}")
    unknown = set(ops or ()) - set(OPS)
    if unknown:
        raise ValueError(f"unknown ops {sorted(unknown)}; expected some of {list(OPS)}")
    cases = []
    for spec in (OPS[name] for name in (ops or tuple(OPS))):
        for layout in spec.layouts:
            for shape in spec.shapes:
                case = Case(spec.name, layout, shape, quick=shape in spec.quick)
                if which != "quick" or case.quick:
                    cases.append(case)
    return [c.smoke() for c in cases] if which == "smoke" else cases


# ----------------------------------------------------------------------------------- data


@dataclass
class Data:
    """Inputs of one case, float32, built once and shared (read-only) by every peer."""

    x: np.ndarray  # stored layout
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None
    eps: float = EPS


def make_data(case: Case, seed: int = 0) -> Data:
    """Random float32 inputs with a non-zero mean, so a peer that forgets to centre fails the check."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.stored_shape, dtype=np.float32)
    x *= 2.0
    x += 0.5
    nparam = case.shape[-1] if case.op.startswith("layer_norm") else case.shape[1]
    weight = rng.uniform(0.5, 1.5, nparam).astype(np.float32)
    bias = rng.standard_normal(nparam).astype(np.float32)
    data = Data(x, weight, bias)
    if case.op.startswith("batch_norm"):
        data.running_mean = rng.uniform(0.0, 1.0, nparam).astype(np.float32)
        data.running_var = rng.uniform(3.0, 5.0, nparam).astype(np.float32)
    return data


def channel_axis(case: Case) -> int:
    return -1 if case.layout == "NHWC" else 1


def reference(case: Case, data: Data) -> np.ndarray:
    """float64 two-pass result in the *stored* layout (plain NumPy, independent of every peer)."""
    x = data.x.astype(np.float64)
    if case.op.startswith("layer_norm"):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + data.eps) * data.weight + data.bias
    axis = channel_axis(case) % x.ndim
    axes = tuple(i for i in range(x.ndim) if i != axis)
    bshape = [1] * x.ndim
    bshape[axis] = -1
    if OPS[case.op].training:
        mean = x.mean(axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axes, keepdims=True)
    else:
        mean = data.running_mean.astype(np.float64).reshape(bshape)
        var = data.running_var.astype(np.float64).reshape(bshape)
    return (x - mean) / np.sqrt(var + data.eps) * data.weight.reshape(bshape) + data.bias.reshape(bshape)


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(a - ref) / (denom or 1.0))


#: Agreement bound for a float32 peer against the float64 reference (relative L2 error). Loose:
#: float32 peers summing 400k values per channel reach ~4e-5; accuracy itself is tested in tests/.
AGREE_TOL = 1e-4


# ---------------------------------------------------------------------------------- peers


@dataclass
class Prepared:
    """A peer ready to run one case. ``run()`` is timed; ``stored(result)`` maps its result to a
    NumPy array in the stored layout, for the agreement check (not timed)."""

    run: Callable[[], Any]
    stored: Callable[[Any], np.ndarray] = np.asarray
    keep: list = field(default_factory=list)  # keeps buffers and sessions alive


Setup = Callable[[Case, Data, int], Prepared]
IMPLS: dict[str, dict[str, Setup]] = {}


def register(peer: str, *ops: str) -> Callable[[Setup], Setup]:
    """Register ``setup(case, data, threads) -> Prepared`` for ``peer`` on ``ops``."""

    def deco(fn: Setup) -> Setup:
        for op in ops:
            IMPLS.setdefault(op, {})[peer] = fn
        return fn

    return deco


def _module(name: str):
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a broken install is as missing as an absent one
        raise Unsupported(f"{name} is not installed ({type(exc).__name__}: {exc})") from None


def availability() -> dict[str, str | None]:
    """peer -> None if usable here, else the reason it is skipped."""
    needs = {"torch": "torch", "onnxruntime": "onnxruntime"}
    out: dict[str, str | None] = {}
    for peer in PEERS:
        try:
            if peer in needs:
                _module(needs[peer])
                if peer == "onnxruntime":
                    _module("onnx")
            out[peer] = None
        except Unsupported as exc:
            out[peer] = str(exc)
    return out


def prepare(peer: str, case: Case, data: Data, threads: int) -> Prepared:
    """Build ``peer`` for ``case`` (untimed). Raises :class:`Unsupported` with a reason."""
    try:
        setup = IMPLS[case.op][peer]
    except KeyError:
        raise Unsupported(f"{peer} has no {case.op}") from None
    return setup(case, data, threads)


def _bn_args(case: Case, data: Data):
    training = OPS[case.op].training
    rm = data.running_mean.copy()  # each peer updates its own running stats
    rv = data.running_var.copy()
    return training, rm, rv


@register("numbanorm", "layer_norm", "batch_norm_train", "batch_norm_eval")
def _numbanorm(case: Case, data: Data, threads: int) -> Prepared:
    return _numbanorm_setup(case, data, out=None)


@register("numbanorm-out", "layer_norm", "batch_norm_train", "batch_norm_eval")
def _numbanorm_out(case: Case, data: Data, threads: int) -> Prepared:
    return _numbanorm_setup(case, data, out=np.empty_like(data.x))


def _numbanorm_setup(case: Case, data: Data, out: np.ndarray | None) -> Prepared:
    import numbanorm as nb

    x, w, b = data.x, data.weight, data.bias
    if case.op == "layer_norm":
        d = x.shape[-1]
        return Prepared(lambda: nb.layer_norm(x, d, w, b, data.eps, out=out), keep=[out])
    training, rm, rv = _bn_args(case, data)
    axis = channel_axis(case)
    return Prepared(lambda: nb.batch_norm(x, rm, rv, w, b, training, MOMENTUM, data.eps,
                                          channel_axis=axis, out=out), keep=[out, rm, rv])


@register("torch", "layer_norm", "batch_norm_train", "batch_norm_eval")
def _torch(case: Case, data: Data, threads: int) -> Prepared:
    torch = _module("torch")
    F = torch.nn.functional
    torch.set_num_threads(threads)
    xt = torch.from_numpy(data.x)
    w, b = torch.from_numpy(data.weight), torch.from_numpy(data.bias)
    if case.op == "layer_norm":
        shape = (data.x.shape[-1],)

        def run():
            with torch.inference_mode():
                return F.layer_norm(xt, shape, w, b, data.eps)

        return Prepared(run, lambda y: y.numpy(), keep=[xt])
    training, rm, rv = _bn_args(case, data)
    rmt, rvt = torch.from_numpy(rm), torch.from_numpy(rv)
    if case.layout == "NHWC":
        xt = xt.permute(0, 3, 1, 2)  # logical NCHW, channels_last memory: torch's NHWC kernels

    def run():
        with torch.inference_mode():
            return F.batch_norm(xt, rmt, rvt, w, b, training, MOMENTUM, data.eps)

    def stored(y):
        y = y.numpy()
        return y.transpose(0, 2, 3, 1) if case.layout == "NHWC" else y

    return Prepared(run, stored, keep=[xt, rmt, rvt])


@register("onnxruntime", "layer_norm", "batch_norm_eval")
def _onnxruntime(case: Case, data: Data, threads: int) -> Prepared:
    ort = _module("onnxruntime")
    onnx = _module("onnx")
    _module("onnx.numpy_helper")
    if case.layout == "NHWC":
        raise Unsupported("ONNX BatchNormalization is channels-first only (NHWC would add two transposes)")
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    tensor = onnx.numpy_helper.from_array
    init = [tensor(data.weight, "scale"), tensor(data.bias, "B")]
    if case.op == "layer_norm":
        node = h.make_node("LayerNormalization", ["X", "scale", "B"], ["Y"], axis=-1, epsilon=data.eps)
        opset = 17
    else:
        init += [tensor(data.running_mean, "mean"), tensor(data.running_var, "var")]
        node = h.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], ["Y"], epsilon=data.eps)
        opset = 15
    graph = h.make_graph([node], case.op, [h.make_tensor_value_info("X", f32, list(data.x.shape))],
                         [h.make_tensor_value_info("Y", f32, list(data.x.shape))], init)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 8  # the IR of opset 17; loadable by every onnxruntime that has LayerNormalization
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"X": data.x}
    return Prepared(lambda: sess.run(None, feed)[0], keep=[sess])


@register("onnxruntime", "batch_norm_train")
def _onnxruntime_train(case: Case, data: Data, threads: int) -> Prepared:
    raise Unsupported("ONNX Runtime is inference-only: BatchNormalization has no training-mode peer")


@register("numpy", "layer_norm", "batch_norm_train", "batch_norm_eval")
def _numpy(case: Case, data: Data, threads: int) -> Prepared:
    x, w, b, eps = data.x, data.weight, data.bias, np.float32(data.eps)
    if case.op == "layer_norm":

        def run():
            mean = x.mean(-1, keepdims=True)
            xc = x - mean
            var = np.mean(xc * xc, -1, keepdims=True)
            xc *= 1.0 / np.sqrt(var + eps)
            xc *= w
            xc += b
            return xc

        return Prepared(run)
    training, rm, rv = _bn_args(case, data)
    axis = channel_axis(case) % x.ndim
    axes = tuple(i for i in range(x.ndim) if i != axis)
    count = x.size // x.shape[axis]

    def run():
        if training:
            mean = x.mean(axes)
            var = x.var(axes)
            rm[...] = (1 - MOMENTUM) * rm + MOMENTUM * mean
            rv[...] = (1 - MOMENTUM) * rv + MOMENTUM * var * (count / (count - 1))
        else:
            mean, var = rm, rv
        scale = w / np.sqrt(var + eps)
        shift = b - mean * scale
        if axis == 1:
            scale, shift = scale[:, None, None], shift[:, None, None]
        y = x * scale
        y += shift
        return y

    return Prepared(run, keep=[rm, rv])


@register("copy", "layer_norm", "batch_norm_train", "batch_norm_eval")
def _copy(case: Case, data: Data, threads: int) -> Prepared:
    dst = np.empty_like(data.x)
    x = data.x

    def run():
        np.copyto(dst, x)
        return dst

    return Prepared(run, keep=[dst])


def agreement(peer: str, prepared: Prepared, case: Case, data: Data, result: Any,
              ref: np.ndarray | None = None) -> float:
    """Relative L2 error of a peer's result against the float64 reference (``copy``: against x)."""
    y = prepared.stored(result)
    if y.shape != data.x.shape:
        raise AssertionError(f"{peer} on {case.group}: shape {y.shape}, expected {data.x.shape}")
    if peer == "copy":
        return 0.0 if np.array_equal(y, data.x) else float("inf")
    return rel_l2(y, reference(case, data) if ref is None else ref)


def set_threads(threads: int) -> int:
    """Use ``threads`` in numba and torch (ONNX Runtime gets it per session). Returns it."""
    import numba

    numba.set_num_threads(threads)
    try:
        import torch
    except Exception:  # noqa: BLE001 - torch is optional
        return threads
    torch.set_num_threads(threads)
    return threads


def default_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


def _numbanorm_version() -> str:
    import numbanorm

    return numbanorm.__version__


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def _threading_layer() -> str | None:
    import numba

    try:
        return numba.threading_layer()
    except Exception:  # noqa: BLE001 - only known after a parallel kernel ran
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, cores, threads and library versions, recorded with every result."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_name(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "threads": threads,
        "numba_threading_layer": _threading_layer(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in ("numbanorm", "numba", "numpy", "torch", "onnxruntime", "onnx")}
        | {"numbanorm": _numbanorm_version()},
    }
