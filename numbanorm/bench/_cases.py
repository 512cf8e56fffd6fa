"""The benchmark grid, shared by ``benchmarks/`` (pytest-benchmark) and ``python -m numbanorm.bench``,
so both time exactly the same calls: ops, layouts, shapes, inputs and a float64 reference.

A *case* is one op on one layout and shape. A *peer* is one implementation of it, registered in
:mod:`numbanorm.bench._registry` (numbagg's ``COMPARISONS`` pattern). What each op must move (its
traffic floor) is in :mod:`numbanorm.bench._floors`, the copies it is measured against in
:mod:`numbanorm.bench._roofline`.

Ops: float32 forward (``layer_norm``, ``batch_norm_train``, ``batch_norm_eval``), float32
backward (``layer_norm_backward``, ``batch_norm_train_backward``), float16 / bfloat16 forward
(``layer_norm_f16``, ``batch_norm_train_bf16``, ...; float32 parameters) and the family
(``rms_norm``, ``group_norm``, ``add_layer_norm``, float32). New ops are an :class:`OpSpec` in
:data:`OPS`, a :func:`reference` branch, a floor and the peers' setups.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

EPS = 1e-5
MOMENTUM = 0.1
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


class Unsupported(Exception):
    """A peer that cannot run a case (not installed, or no such op/layout); the message says why."""


@dataclass(frozen=True)
class OpSpec:
    """An op of the grid: its layouts, shapes (logical) and which shapes are in the quick subset.
    What it must move is :func:`numbanorm.bench._floors.floor`."""

    name: str
    kind: str  # layer_norm | batch_norm | rms_norm | group_norm | add_layer_norm: what is computed
    category: str  # forward | backward | half | family: a --ops alias and a panel of the plot
    layouts: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    quick: tuple[tuple[int, ...], ...]
    training: bool = False
    backward: bool = False
    dtype: str = "float32"
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
_RMS_SHAPES = ((8, 128, 4096), (32, 512, 768), (1, 16, 4096))  # LLaMA-7B hidden size, BERT, latency
_GN_SHAPES = ((32, 64, 56, 56), (4, 256, 64, 64))  # ResNet-like, diffusion U-Net-like; 32 groups
_ADD_LN_SHAPES = ((32, 512, 768), (8, 128, 4096), (1, 16, 768))


def _ops() -> dict[str, OpSpec]:
    ops = [
        OpSpec("layer_norm", "layer_norm", "forward", ("NLC",), _LN_SHAPES, _LN_QUICK),
        OpSpec("batch_norm_train", "batch_norm", "forward", _BN_LAYOUTS, _BN_SHAPES, _BN_QUICK, training=True),
        OpSpec("batch_norm_eval", "batch_norm", "forward", _BN_LAYOUTS, _BN_SHAPES, _BN_QUICK),
        OpSpec("layer_norm_backward", "layer_norm", "backward", ("NLC",), _LN_SHAPES, _LN_QUICK,
               backward=True),
        OpSpec("batch_norm_train_backward", "batch_norm", "backward", _BN_LAYOUTS, _BN_SHAPES, _BN_QUICK,
               training=True, backward=True),
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
        OpSpec("add_layer_norm", "add_layer_norm", "family", ("NLC",), _ADD_LN_SHAPES, _ADD_LN_SHAPES[:1]),
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
        return np.dtype(require("ml_dtypes").bfloat16)
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


def stat_axes(case: Case, ndim: int) -> tuple[tuple[int, ...], list[int]]:
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
    axes, bshape = stat_axes(case, x.ndim)
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


def require(name: str):
    """``importlib.import_module(name)``, a failure raised as :class:`Unsupported` (a broken
    install is as missing as an absent one)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        raise Unsupported(f"{name} is not installed ({type(exc).__name__}: {exc})") from None


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


def _cpuinfo(key: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


#: CPU features that matter to these kernels, recorded when the CPU has them.
FLAGS_OF_INTEREST = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16")


def machine_info(threads: int, threading_layer: str | None = None) -> dict[str, Any]:
    """CPU, caches, cores, threads, load and library versions, recorded with every result."""
    from ._floors import llc_bytes

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    flags = set((_cpuinfo("flags") or "").split())
    names = ("numbanorm", "numba", "numpy", "torch", "onnxruntime", "onnx", "jax", "jaxlib", "openvino")
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "llc_bytes": llc_bytes(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "threads": threads,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "numba_threading_layer": threading_layer,
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in names} | {"numbanorm": _numbanorm_version()},
    }
