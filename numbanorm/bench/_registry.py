"""Peers: who implements which op, which library (worker process) runs it, and what it needs.

Peers register a setup per op (numbagg's ``COMPARISONS`` pattern): ``setup(case, data, threads)``
builds everything a peer needs (tensors, autograd graphs, sessions, compiled models, output
buffers) and returns a :class:`Prepared` whose ``run`` is the only thing timed; it must return
only when the result is ready (JAX: ``block_until_ready``). A new peer is a ``@register`` setup
in one of the peer modules, a row in :data:`PEERS` and :data:`LIBRARY`, and what it imports in
:data:`REQUIRES`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._cases import OPS, Case, Data, Unsupported, reference, rel_l2

#: Competitors, in display order (``numbanorm-out``: numbanorm writing into ``out=`` buffers).
PEERS = ("numbanorm", "numbanorm-out", "torch", "onnxruntime", "jax", "openvino", "numpy")
#: Roofline copies (see :mod:`numbanorm.bench._roofline`): N-thread memcpy slices, the same with
#: streaming stores, one-thread memcpy.
COPIES = ("copy", "copy-nt", "copy-1t")
#: The worker process (one per library) that runs each peer.
LIBRARY = {"numbanorm": "numbanorm", "numbanorm-out": "numbanorm", "torch": "torch",
           "onnxruntime": "onnxruntime", "jax": "jax", "openvino": "openvino", "numpy": "numpy",
           "copy": "roofline", "copy-nt": "roofline", "copy-1t": "roofline"}
#: Modules a library needs (checked without importing them).
REQUIRES = {"torch": ("torch",), "onnxruntime": ("onnxruntime", "onnx"), "jax": ("jax", "jaxlib"),
            "openvino": ("openvino",)}
#: Modules that register each library's setups.
_SETUP_MODULES = {"numbanorm": "_peers", "numpy": "_peers", "roofline": "_peers", "torch": "_peers_torch",
                  "onnxruntime": "_peers_torch", "jax": "_peers_more", "openvino": "_peers_more"}


@dataclass
class Prepared:
    """A peer ready to run one case. ``run()`` is timed; ``stored(result)`` maps its result to a
    NumPy array (or tuple of arrays, like :func:`reference`) in the stored layout, for the agreement
    check (not timed); ``self_check()``, where set, replaces that check (the copies: exact or not).
    ``caveat`` says how the peer differs from the op, if it does."""

    run: Callable[[], Any]
    stored: Callable[[Any], Any] = lambda r: r if isinstance(r, tuple) else np.asarray(r)  # noqa: E731
    keep: list = field(default_factory=list)  # keeps buffers and sessions alive
    caveat: str | None = None
    self_check: Callable[[], float] | None = None


Setup = Callable[[Case, Data, int], Prepared]
IMPLS: dict[str, dict[str, Setup]] = {}


def register(peer: str, *ops: str) -> Callable[[Setup], Setup]:
    """Register ``setup(case, data, threads) -> Prepared`` for ``peer`` on ``ops``."""

    def deco(fn: Setup) -> Setup:
        for op in ops:
            IMPLS.setdefault(op, {})[peer] = fn
        return fn

    return deco


def missing_module(library: str) -> str | None:
    """Why ``library`` cannot run here (a module it needs is not installed), else None. Looks the
    modules up without importing them: the driver process never loads a peer's library."""
    for name in REQUIRES.get(library, ()):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module entry of None (blocked)
            found = False
        if not found:
            return f"{name} is not installed"
    return None


def availability() -> dict[str, str | None]:
    """peer -> None if its library is installed here, else why not."""
    return {peer: missing_module(LIBRARY[peer]) for peer in PEERS + COPIES}


def load_setups(library: str) -> None:
    """Import the module that registers ``library``'s setups."""
    importlib.import_module(f"{__package__}.{_SETUP_MODULES[library]}")


def prepare(peer: str, case: Case, data: Data, threads: int) -> Prepared:
    """Build ``peer`` for ``case`` (untimed). Raises :class:`Unsupported` with a reason."""
    load_setups(LIBRARY[peer])
    try:
        setup = IMPLS[case.op][peer]
    except KeyError:
        raise Unsupported(f"{peer} has no {case.op}") from None
    return setup(case, data, threads)


def agreement(peer: str, prepared: Prepared, case: Case, data: Data, result: Any, ref: Any = None) -> float:
    """Largest relative L2 error of a peer's results against the float64 reference (a copy: 0 if
    exact, else inf). Compare with :func:`numbanorm.bench._cases.agree_tol`."""
    if prepared.self_check is not None:
        return prepared.self_check()
    got = prepared.stored(result)
    got = got if isinstance(got, tuple) else (got,)
    if got[0].shape != data.x.shape:
        raise AssertionError(f"{peer} on {case.group}: shape {got[0].shape}, expected {data.x.shape}")
    ref = reference(case, data) if ref is None else ref
    refs = ref if isinstance(ref, tuple) else (ref,)
    if len(got) != len(refs):
        raise AssertionError(f"{peer} on {case.group}: {len(got)} results, expected {len(refs)}")
    return max(rel_l2(g, r) for g, r in zip(got, refs, strict=True))


def bn_args(case: Case, data: Data) -> tuple[bool, np.ndarray, np.ndarray]:
    """(training, running_mean, running_var): copies, as each peer updates its own."""
    return case.spec.training, data.running_mean.copy(), data.running_var.copy()


#: Every op of the grid.
ALL_OPS: tuple[str, ...] = tuple(OPS)
