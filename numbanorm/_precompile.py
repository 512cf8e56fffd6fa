"""Compile the common signatures of numbanorm's kernels into numba's on-disk cache ahead of time.

``numbanorm.precompile()`` / ``python -m numbanorm precompile`` runs, per (op, dtype), the calls
that compile every path of that op (tiny, serial and parallel, both layouts, both LayerNorm size
classes, with and without affine parameters, forward and backward) in fresh worker processes, in
parallel. Afterwards a new process finds each of those kernels in the cache: its first call is a
cache load instead of seconds of compiling. For a Docker image, run it in the image build; in CI,
run it once and cache ``NUMBA_CACHE_DIR`` (see the README, "Compilation and caching").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["OPS", "DTYPES", "Compiled", "precompile"]

#: What ``precompile`` can warm, and the default dtypes (float16/bfloat16 and float64 on request).
OPS = ("layer_norm", "rms_norm", "add_layer_norm", "batch_norm", "group_norm", "instance_norm",
       "layer_norm_backward", "rms_norm_backward", "batch_norm_backward", "group_norm_backward", "moments")
DTYPES = ("float32", "float64", "float16", "bfloat16")
DEFAULT_DTYPES = ("float32",)


@dataclass(frozen=True)
class Compiled:
    """What one (op, dtype) warm-up did, as ``precompile`` returns it.

    Attributes
    ----------
    op : str
        The op warmed (one of ``OPS``).
    dtype : str
        Its dtype name.
    compiled : int
        Kernel specializations compiled now (and written to the cache).
    loaded : int
        Kernel specializations already in the cache.
    seconds : float
        The time it took, in its worker process.
    """

    op: str
    dtype: str
    compiled: int
    loaded: int
    seconds: float


# --------------------------------------------------------------------------------------------
# The calls of each op (they run in the worker processes)
# --------------------------------------------------------------------------------------------
#: Row shapes that take each LayerNorm path: the tiny entry, the cached-rows kernels (serial and
#: parallel) and the pipelined ones (>= cpu.layer_norm.LN_PIPELINE_ELEMENTS).
_ROWS = ((1, 16, 64), (256, 512), (1024, 768))
#: NCHW shapes: tiny, and one past the parallel threshold (2**16 elements).
_IMAGES = ((2, 8, 4, 4), (16, 32, 16, 16))


def _calls(op: str, dtype: np.dtype[Any]) -> list[Callable[[], object]]:
    import numbanorm as nb

    rng = np.random.default_rng(0)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    half = dtype.itemsize == 2
    calls: list[Callable[[], object]] = []
    shape: tuple[int, ...]
    for shape in _ROWS:
        x, D = arr(*shape), shape[-1]
        w, b = arr(D), arr(D)
        g = arr(*shape)
        if op == "layer_norm":
            calls += [partial(nb.layer_norm, x, D, w, b), partial(nb.layer_norm, x, D)]
        elif op == "rms_norm":
            calls += [partial(nb.rms_norm, x, D, w), partial(nb.rms_norm, x, D)]
        elif op == "add_layer_norm":
            calls.append(partial(nb.add_layer_norm, x, g, D, w, b))
        elif op == "layer_norm_backward" and not half:
            calls.append(partial(_layer_norm_backward, nb, g, x, D, w))
        elif op == "rms_norm_backward" and not half:
            calls.append(partial(_rms_norm_backward, nb, g, x, D, w))
    for shape in _IMAGES:
        for axis in (1, -1):
            x = arr(*shape) if axis == 1 else np.ascontiguousarray(arr(*shape).transpose(0, 2, 3, 1))
            C = shape[1]
            calls += _image_calls(nb, op, x, axis, C, arr, half)
    return calls


def _layer_norm_backward(nb: ModuleType, g: np.ndarray, x: np.ndarray, D: int, w: np.ndarray) -> object:
    return nb.layer_norm_backward(g, x, D, *nb.layer_norm(x, D, w, return_stats=True)[1:], w)


def _rms_norm_backward(nb: ModuleType, g: np.ndarray, x: np.ndarray, D: int, w: np.ndarray) -> object:
    return nb.rms_norm_backward(g, x, D, nb.rms_norm(x, D, w, return_stats=True)[1], w)


def _image_calls(nb: ModuleType, op: str, x: np.ndarray, axis: int, C: int, arr: Callable[..., np.ndarray],
                 half: bool) -> list[Callable[[], object]]:
    w, b, g = arr(C), arr(C), arr(*x.shape)
    rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)
    if op == "batch_norm":
        return [lambda: nb.batch_norm(x, rm, rv, w, b, training=True, channel_axis=axis),
                lambda: nb.batch_norm(x, rm, rv, w, b, training=False, channel_axis=axis)]
    if op == "group_norm":
        return [lambda: nb.group_norm(x, 4, w, b, channel_axis=axis)]
    if op == "instance_norm":
        return [lambda: nb.instance_norm(x, rm, rv, w, b, channel_axis=axis)]
    if op == "moments":
        return [lambda: nb.moments(x, channel_axis=axis), lambda: nb.standardize(x, 0)]
    if op == "batch_norm_backward" and not half:
        stats = nb.batch_norm(x, None, None, w, b, training=True, channel_axis=axis, return_stats=True)[1:]
        return [partial(nb.batch_norm_backward, g, x, *stats, w, training=t, channel_axis=axis)
                for t in (True, False)]
    if op == "group_norm_backward" and not half:
        stats = nb.group_norm(x, 4, w, b, channel_axis=axis, return_stats=True)[1:]
        return [lambda: nb.group_norm_backward(g, x, 4, *stats, w, channel_axis=axis)]
    return []


def _warm(op: str, dtype_name: str) -> Compiled:
    """Run ``op``'s calls for ``dtype_name`` on one thread and on all (both plans), in this
    (worker) process, counting the cache misses (compiled) and hits (loaded) of the kernels."""
    import numba

    from ._numba import cache_counts

    t0 = time.perf_counter()
    before = cache_counts()
    dtype = _dtype(dtype_name)
    threads = numba.get_num_threads()
    for n in sorted({1, threads}):
        numba.set_num_threads(n)
        for call in _calls(op, dtype):
            call()
    numba.set_num_threads(threads)
    after = cache_counts()
    return Compiled(op, dtype_name, after[1] - before[1], after[0] - before[0], time.perf_counter() - t0)


def _dtype(name: str) -> np.dtype[Any]:
    if name == "bfloat16":
        import ml_dtypes

        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(name)


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------
def precompile(ops: Iterable[str] | None = None, dtypes: Sequence[str] = DEFAULT_DTYPES, *, jobs: int | None = None,
               progress: bool = True) -> list[Compiled]:
    """Compile the common signatures of numbanorm's kernels into numba's on-disk cache, ahead of time.

    Per (op, dtype), the calls that compile every path of that op (tiny, serial and parallel, both
    layouts, with and without affine parameters) run in a fresh worker process, so the cache is
    what the next process will load: its first call is a cache load instead of seconds of
    compiling. ``python -m numbanorm precompile`` is the command-line form (e.g. in a Docker image
    build, or once per CI cache key).

    Parameters
    ----------
    ops : iterable of str, optional
        The ops to warm (default: all of ``OPS``).
    dtypes : sequence of str, default ("float32",)
        Their dtypes, among ``DTYPES``: float32, float64, float16, bfloat16 (needs ml_dtypes).
    jobs : int, optional
        Worker processes (default: the CPU count, at most one per task).
    progress : bool, default True
        Show a progress bar (with ``rich`` when installed, else a line per task) and a summary.

    Returns
    -------
    list of Compiled
        One per (op, dtype), in the order asked.

    Raises
    ------
    ValueError
        An unknown op or dtype.
    ImportError
        bfloat16 without ml_dtypes.

    Examples
    --------
    >>> import numbanorm as nb
    >>> results = nb.precompile(["moments"], ["float32"], jobs=1, progress=False)
    >>> [(r.op, r.dtype) for r in results]
    [('moments', 'float32')]
    >>> results[0].compiled + results[0].loaded > 0
    True
    """
    ops = list(OPS if ops is None else ops)
    for name, given, known in (("op", ops, OPS), ("dtype", dtypes, DTYPES)):
        bad = [v for v in given if v not in known]
        if bad:
            raise ValueError(f"unknown {name} {bad[0]!r}; choose from {', '.join(known)}")
    if "bfloat16" in dtypes:
        _dtype("bfloat16")  # an ImportError now, with its own message, not in a worker
    tasks = [(op, dt) for dt in dtypes for op in ops]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    report = _Progress(len(tasks)) if progress else None
    results = []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_warm, op, dt) for op, dt in tasks]
        for future in as_completed(futures):
            results.append(future.result())
            if report:
                report.advance(results[-1])
    if report:
        report.close(results, time.perf_counter() - t0)
    order = {t: k for k, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[r.op, r.dtype])


class _Progress:
    """A progress bar (rich's when installed, else a line per task) and the closing summary."""

    def __init__(self, total: int) -> None:
        try:
            from rich.progress import Progress
        except ImportError:
            self._bar = None
        else:
            self._bar = Progress(transient=True)
            self._task = self._bar.add_task("precompiling", total=total)
            self._bar.start()
        self._done, self._total = 0, total

    def advance(self, r: Compiled) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{r.op} {r.dtype}")
        else:
            print(f"[{self._done}/{self._total}] {r.op} {r.dtype}: {r.compiled} compiled, {r.loaded} cached, "
                  f"{r.seconds:.1f} s", flush=True)

    def close(self, results: list[Compiled], seconds: float) -> None:
        if self._bar is not None:
            self._bar.stop()
        from ._numba import cache_location

        width = max(len(r.op) for r in results)
        for r in results:
            print(f"  {r.op:{width}s} {r.dtype:8s} {r.compiled:3d} compiled  {r.loaded:3d} already cached  "
                  f"{r.seconds:6.1f} s")
        compiled = sum(r.compiled for r in results)
        print(f"numbanorm: {compiled} kernel specializations compiled into {cache_location()} in {seconds:.1f} s")
