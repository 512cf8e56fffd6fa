"""The benchmark grid and its peers, shared by ``benchmarks/`` (pytest-benchmark) and
``python -m numbanorm.bench``, so both time exactly the same calls.

A *case* is one op on one layout and shape. A *peer* is one implementation of it. Peers are
registered per op in :data:`IMPLS` (numbagg's ``COMPARISONS`` pattern): a setup function builds
everything a peer needs (tensors, autograd graphs, ONNX sessions, output buffers) and returns a
:class:`Prepared` whose ``run`` is the only thing timed. New ops and peers (GPU) are new entries:
add an :class:`OpSpec` to :data:`OPS`, a :func:`reference` branch, and ``@register(peer, op)``
setups; a GPU peer's ``run`` must synchronize before it returns, and its availability check goes
in :func:`availability`.

Ops: float32 forward (``layer_norm``, ``batch_norm_train``, ``batch_norm_eval``), float32
backward (``layer_norm_backward``, ``batch_norm_train_backward``: the torch peer times only
``torch.autograd.grad`` of a graph built in setup), float16 / bfloat16 forward
(``layer_norm_f16``, ``batch_norm_train_bf16``, ...; float32 parameters) and the family
(``rms_norm``, ``group_norm``, ``add_layer_norm``, float32).

The ``copy`` peer is the roofline: ``np.copyto`` of x in the same run. Every peer is credited with
the same traffic, the bytes the op must read and write (``OpSpec.traffic`` x-sized arrays in the
case's dtype, described by ``OpSpec.moves``): 2 for a forward (x read once, y written once; the
few parameter bytes are left out), 3 for a backward (x and dy read, dx written), 4 for
``add_layer_norm``. So GB/s is effective bandwidth, and the fraction of the roofline is
``peer GB/s / copy GB/s`` (= ``t_copy / t_peer`` when the op moves 2 arrays, like the copy).
Half cases count 2 bytes per element: GB/s of the useful data, not of a float32 equivalent.
This is the compulsory traffic: an op that needs per-channel statistics before it can write
(BatchNorm train, GroupNorm over large groups, BatchNorm backward) must read x (and dy) a second
time once they no longer fit in cache, which caps its fraction of the roofline below 1 there.
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
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


class Unsupported(Exception):
    """A peer that cannot run a case (not installed, or no such op/layout); the message says why."""


@dataclass(frozen=True)
class OpSpec:
    """An op of the grid: its layouts, shapes (logical) and which shapes are in the quick subset.

    ``traffic`` is how many x-sized arrays the op must read + write (its compulsory memory traffic,
    described in ``moves``); GB/s and the roofline fraction are computed from it, in ``dtype``.
    """

    name: str
    kind: str  # layer_norm | batch_norm | rms_norm | group_norm | add_layer_norm: what is computed
    category: str  # forward | backward | half | family: a --ops alias and a panel of the plot
    layouts: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    quick: tuple[tuple[int, ...], ...]
    training: bool = False
    backward: bool = False
    dtype: str = "float32"
    traffic: int = 2
    moves: str = "x read, y written"
    groups: int = 0  # group_norm's num_groups

    @property
    def rows(self) -> bool:
        """Normalized over the trailing dim (LN-like), rather than per channel (BN-like)."""
        return self.kind in ("layer_norm", "rms_norm", "add_layer_norm")


@dataclass(frozen=True)
class Case:
    """One op, layout and logical shape (NCHW order for BN, whatever the storage layout)."""

    op: str
    layout: str
    shape: tuple[int, ...]
    quick: bool = False

    @property
    def spec(self) -> OpSpec:
        return OPS[self.op]

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
    def x_nbytes(self) -> int:
        return ITEMSIZE[self.spec.dtype] * int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes the op must read + write: ``traffic`` x-sized arrays (forward: x once, y once)."""
        return self.spec.traffic * self.x_nbytes

    @property
    def copy_nbytes(self) -> int:
        """Bytes the ``copy`` roofline moves: x read once, written once."""
        return 2 * self.x_nbytes

    def smoke(self) -> Case:
        """Same case on a small shape that still spans several parallel tasks: CI-cheap."""
        if self.spec.rows:
            n, l, d = self.shape
            return replace(self, shape=(min(n, 3), min(l, 29), d))
        n, c, h, w = self.shape
        return replace(self, shape=(min(n, 3), c, min(h, 9), min(w, 11)))


_LN_SHAPES = ((32, 512, 768), (8, 128, 1024), (64, 196, 384), (4, 4096, 4096), (1, 16, 768))
_BN_SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 3, 224, 224), (256, 64, 8, 8), (1, 64, 7, 7))
_LN_QUICK = (_LN_SHAPES[0], _LN_SHAPES[4])
_BN_QUICK = (_BN_SHAPES[0], _BN_SHAPES[4])
_BN_LAYOUTS = ("NCHW", "NHWC")
_BACKWARD = "x and dy read, dx written (dweight/dbias are parameter-sized)"
_RMS_SHAPES = ((8, 128, 4096), (32, 512, 768), (1, 16, 4096))  # LLaMA-7B hidden size, BERT, latency
_GN_SHAPES = ((32, 64, 56, 56), (4, 256, 64, 64))  # ResNet-like, diffusion U-Net-like; 32 groups
_ADD_LN_SHAPES = ((32, 512, 768), (8, 128, 4096), (1, 16, 768))


def _ops() -> dict[str, OpSpec]:
    ops = [
        OpSpec("layer_norm", "layer_norm", "forward", ("NLC",), _LN_SHAPES, _LN_QUICK),
        OpSpec("batch_norm_train", "batch_norm", "forward", _BN_LAYOUTS, _BN_SHAPES, _BN_QUICK, training=True),
        OpSpec("batch_norm_eval", "batch_norm", "forward", _BN_LAYOUTS, _BN_SHAPES, _BN_QUICK),
        OpSpec("layer_norm_backward", "layer_norm", "backward", ("NLC",), _LN_SHAPES, _LN_QUICK,
               backward=True, traffic=3, moves=_BACKWARD),
        OpSpec("batch_norm_train_backward", "batch_norm", "backward", _BN_LAYOUTS, _BN_SHAPES, _BN_QUICK,
               training=True, backward=True, traffic=3, moves=_BACKWARD),
    ]
    for dtype, suffix in (("float16", "f16"), ("bfloat16", "bf16")):
        ops += [
            OpSpec(f"layer_norm_{suffix}", "layer_norm", "half", ("NLC",), _LN_SHAPES, _LN_QUICK, dtype=dtype),
            OpSpec(f"batch_norm_train_{suffix}", "batch_norm", "half", _BN_LAYOUTS, _BN_SHAPES, _BN_QUICK,
                   training=True, dtype=dtype),
        ]
    ops += [
        OpSpec("rms_norm", "rms_norm", "family", ("NLC",), _RMS_SHAPES, _RMS_SHAPES[:1]),
        OpSpec("group_norm", "group_norm", "family", _BN_LAYOUTS, _GN_SHAPES, _GN_SHAPES[:1], groups=32),
        OpSpec("add_layer_norm", "add_layer_norm", "family", ("NLC",), _ADD_LN_SHAPES, _ADD_LN_SHAPES[:1],
               traffic=4, moves="x and residual read, y and x + residual written"),
    ]
    return {op.name: op for op in ops}


OPS: dict[str, OpSpec] = _ops()
#: ``--ops`` aliases: every op of a category.
CATEGORIES: dict[str, tuple[str, ...]] = {}
for _spec in OPS.values():
    CATEGORIES.setdefault(_spec.category, ())
    CATEGORIES[_spec.category] += (_spec.name,)


def expand_ops(ops: tuple[str, ...] | None) -> tuple[str, ...]:
    """Op names, with category aliases (``forward``, ``backward``, ``half``, ``family``) expanded."""
    if not ops:
        return tuple(OPS)
    names: list[str] = []
    for op in ops:
        for name in CATEGORIES.get(op, (op,)):
            if name not in names:
                names.append(name)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown ops {unknown}; expected some of {list(OPS)} or of the aliases {list(CATEGORIES)}")
    return tuple(names)


def grid(which: str = "quick", ops: tuple[str, ...] | None = None) -> list[Case]:
    """Cases of the ``full`` grid, its ``quick`` subset, or the ``smoke`` grid (small shapes: all
    of the float32 forward ops' shapes, the quick ones of the other ops, shrunk)."""
    if which not in ("quick", "full", "smoke"):
        raise ValueError(f"grid must be 'quick', 'full' or 'smoke', got {which!r}")
    cases = []
    for spec in (OPS[name] for name in expand_ops(ops)):
        # smoke: every shape of the float32 forward ops, the quick ones of the rest (CI time)
        every = which == "full" or (which == "smoke" and spec.category == "forward")
        for layout in spec.layouts:
            for shape in spec.shapes:
                case = Case(spec.name, layout, shape, quick=shape in spec.quick)
                if every or case.quick:
                    cases.append(case)
    return [c.smoke() for c in cases] if which == "smoke" else cases


# ----------------------------------------------------------------------------------- data


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a case; bfloat16 needs ml_dtypes (else the case is skipped)."""
    if name == "bfloat16":
        return np.dtype(_module("ml_dtypes").bfloat16)
    return np.dtype(name)


@dataclass
class Data:
    """Inputs of one case, built once and shared (read-only) by every peer. ``x`` (and
    ``residual``) have the case's dtype; parameters, running stats and ``dy`` are float32
    (half ops take float32 parameters, like torch's mixed-type LayerNorm and AMP's BatchNorm)."""

    x: np.ndarray  # stored layout
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None
    dy: np.ndarray | None = None  # backward: dL/dy, stored layout
    residual: np.ndarray | None = None  # add_layer_norm
    eps: float = EPS


def make_data(case: Case, seed: int = 0) -> Data:
    """Random inputs with a non-zero mean, so a peer that forgets to centre fails the check.
    Raises :class:`Unsupported` when the dtype is not available (bfloat16 without ml_dtypes)."""
    spec = case.spec
    dtype = numpy_dtype(spec.dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.stored_shape, dtype=np.float32)
    x *= 2.0
    x += 0.5
    if dtype != np.float32:
        x = x.astype(dtype)
    nparam = case.shape[-1] if spec.rows else case.shape[1]
    weight = rng.uniform(0.5, 1.5, nparam).astype(np.float32)
    bias = rng.standard_normal(nparam).astype(np.float32)
    data = Data(x, weight, bias)
    if spec.kind == "batch_norm":
        data.running_mean = rng.uniform(0.0, 1.0, nparam).astype(np.float32)
        data.running_var = rng.uniform(3.0, 5.0, nparam).astype(np.float32)
    if spec.backward:
        data.dy = rng.standard_normal(case.stored_shape, dtype=np.float32)
    if spec.kind == "add_layer_norm":
        data.residual = rng.standard_normal(case.stored_shape, dtype=np.float32).astype(dtype)
    return data


def channel_axis(case: Case) -> int:
    return -1 if case.layout == "NHWC" else 1


def _stat_axes(case: Case, ndim: int) -> tuple[tuple[int, ...], list[int]]:
    """(axes the statistics reduce over, broadcast shape of a per-feature parameter)."""
    if case.spec.rows:
        return (ndim - 1,), [-1]
    axis = channel_axis(case) % ndim
    bshape = [1] * ndim
    bshape[axis] = -1
    return tuple(i for i in range(ndim) if i != axis), bshape


def reference(case: Case, data: Data) -> np.ndarray | tuple[np.ndarray, ...]:
    """float64 two-pass result in the *stored* layout (plain NumPy, independent of every peer).

    A tuple for ops with several results: ``(dx, dweight, dbias)`` for a backward,
    ``(y, x + residual)`` for ``add_layer_norm``.
    """
    spec = case.spec
    x = data.x.astype(np.float64)
    axes, bshape = _stat_axes(case, x.ndim)
    w = data.weight.astype(np.float64).reshape(bshape)
    b = data.bias.astype(np.float64).reshape(bshape)
    if spec.kind == "add_layer_norm":
        s = data.x + data.residual  # rounded to x's dtype: the op normalizes the rounded sum
        return _standardize(s.astype(np.float64), axes, data.eps) * w + b, s
    if spec.kind == "group_norm":
        nchw = x if case.layout == "NCHW" else x.transpose(0, 3, 1, 2)
        n, c = nchw.shape[:2]
        xhat = _standardize(nchw.reshape(n, spec.groups, -1), (2,), data.eps).reshape(nchw.shape)
        xhat = xhat if case.layout == "NCHW" else xhat.transpose(0, 2, 3, 1)
        return xhat * w + b
    if spec.kind == "batch_norm" and not spec.training:
        mean = data.running_mean.astype(np.float64).reshape(bshape)
        var = data.running_var.astype(np.float64).reshape(bshape)
        return (x - mean) / np.sqrt(var + data.eps) * w + b
    if spec.kind == "rms_norm":
        return x / np.sqrt((x * x).mean(axes, keepdims=True) + data.eps) * w
    xhat = _standardize(x, axes, data.eps)
    if not spec.backward:
        return xhat * w + b
    dy = data.dy.astype(np.float64)
    rstd = 1.0 / np.sqrt(((x - x.mean(axes, keepdims=True)) ** 2).mean(axes, keepdims=True) + data.eps)
    g = dy * w
    dx = rstd * (g - g.mean(axes, keepdims=True) - xhat * (g * xhat).mean(axes, keepdims=True))
    param_axes = tuple(range(x.ndim - 1)) if spec.rows else axes  # dweight/dbias: sum over all but features
    return dx, (dy * xhat).sum(param_axes), dy.sum(param_axes)


def _standardize(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    mean = x.mean(axes, keepdims=True)
    xc = x - mean
    return xc / np.sqrt((xc * xc).mean(axes, keepdims=True) + eps)


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    a = np.asarray(a).astype(np.float64)
    ref = np.asarray(ref).astype(np.float64)
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(a - ref) / (denom or 1.0))


#: Agreement bound for a float32 peer against the float64 reference (relative L2 error). Loose:
#: float32 peers summing 400k values per channel reach ~4e-5; accuracy itself is tested in tests/.
AGREE_TOL = 1e-4
#: Half results: rounding the exact result to the format alone gives a relative L2 error of about
#: 0.42 u (unit roundoff u = 2**-11 for float16, 2**-8 for bfloat16; measured: every peer 2.1e-4 on
#: float16, 1.7e-3 on bfloat16). The bound is 2u (the format's machine epsilon): room for faithful
#: (< 1 ulp) rounding, while LayerNorm with its sums in bfloat16 (measured 5.7e-2) fails.
HALF_TOL = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def agree_tol(case: Case) -> float:
    """Relative L2 error a peer may have against the float64 reference on ``case``."""
    return HALF_TOL.get(case.spec.dtype, AGREE_TOL)


# ---------------------------------------------------------------------------------- peers


@dataclass
class Prepared:
    """A peer ready to run one case. ``run()`` is timed; ``stored(result)`` maps its result to a
    NumPy array (or tuple of arrays, like :func:`reference`) in the stored layout, for the agreement
    check (not timed). ``caveat`` says how the peer differs from the op, if it does."""

    run: Callable[[], Any]
    stored: Callable[[Any], Any] = lambda r: r if isinstance(r, tuple) else np.asarray(r)  # noqa: E731
    keep: list = field(default_factory=list)  # keeps buffers and sessions alive
    caveat: str | None = None


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
    training = case.spec.training
    rm = data.running_mean.copy()  # each peer updates its own running stats
    rv = data.running_var.copy()
    return training, rm, rv


_ALL = tuple(OPS)


@register("numbanorm", *_ALL)
def _numbanorm(case: Case, data: Data, threads: int) -> Prepared:
    return _numbanorm_setup(case, data, out=None)


@register("numbanorm-out", *_ALL)
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
    training, rm, rv = _bn_args(case, data)
    return Prepared(lambda: nb.batch_norm(x, rm, rv, w, b, training, MOMENTUM, eps, channel_axis=axis, out=out),
                    keep=[out, rm, rv])


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


@register("torch", *_ALL)
def _torch(case: Case, data: Data, threads: int) -> Prepared:
    """torch.nn.functional on the same memory; channels-last cases as channels_last tensors (torch's
    NHWC kernels). Forward in ``inference_mode``; a backward builds the graph here and times only
    ``torch.autograd.grad`` of it (``retain_graph``, so it can be run again)."""
    torch = _module("torch")
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
        training, rm, rv = _bn_args(case, data)
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
    ort = _module("onnxruntime")
    onnx = _module("onnx")
    _module("onnx.numpy_helper")
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


@register("onnxruntime", *(op for op in _ALL if op not in _ORT_OPS))
def _onnxruntime_unsupported(case: Case, data: Data, threads: int) -> Prepared:
    spec = case.spec
    if spec.backward or spec.training:
        raise Unsupported("ONNX Runtime is inference-only: no training-mode BatchNorm, no backward")
    raise Unsupported("onnxruntime's Python API takes no bfloat16 arrays")


@register("numpy", *_ALL)
def _numpy(case: Case, data: Data, threads: int) -> Prepared:
    """Plain NumPy, float32. Half inputs are converted to float32 and the result rounded back (NumPy
    has no bfloat16 arithmetic, and float16 sums lose precision); the conversions are timed."""
    spec = case.spec
    x, w, b, eps = data.x, data.weight, data.bias, np.float32(data.eps)
    half = x.dtype != np.float32
    axes, bshape = _stat_axes(case, x.ndim)
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
        training, rm, rv = _bn_args(case, data)
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


@register("copy", *_ALL)
def _copy(case: Case, data: Data, threads: int) -> Prepared:
    dst = np.empty_like(data.x)
    x = data.x

    def run():
        np.copyto(dst, x)
        return dst

    return Prepared(run, keep=[dst])


def agreement(peer: str, prepared: Prepared, case: Case, data: Data, result: Any,
              ref: Any = None) -> float:
    """Largest relative L2 error of a peer's results against the float64 reference (``copy``:
    against x). Compare with :func:`agree_tol`."""
    got = prepared.stored(result)
    got = got if isinstance(got, tuple) else (got,)
    if got[0].shape != data.x.shape:
        raise AssertionError(f"{peer} on {case.group}: shape {got[0].shape}, expected {data.x.shape}")
    if peer == "copy":
        return 0.0 if np.array_equal(got[0], data.x) else float("inf")
    ref = reference(case, data) if ref is None else ref
    refs = ref if isinstance(ref, tuple) else (ref,)
    if len(got) != len(refs):
        raise AssertionError(f"{peer} on {case.group}: {len(got)} results, expected {len(refs)}")
    return max(rel_l2(g, r) for g, r in zip(got, refs, strict=True))


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
