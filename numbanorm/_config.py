"""Process-wide settings for the numba kernels: fastmath flags, task sizes, threading layer.

Why a restricted fastmath set: ``reassoc`` lets LLVM vectorize the reductions, while leaving out
``nnan``/``ninf`` keeps NaN and Inf propagating exactly as torch does.
"""

from __future__ import annotations

import os
import threading

import numba
from numba.core import types
from numba.core.registry import CPUDispatcher

from ._cache import PackageCache

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


class _Dispatcher(CPUDispatcher):
    """A CPU dispatcher that compiles one specialization per argument *type*, not per constant.

    numba types a constant argument in a jitted caller as a literal (``f(x, 0, n)`` as
    ``Literal[int](0)``) and compiles, links and caches a separate specialization for it, which
    measured ~1 s extra cold compile per kernel (``block_moments``, ``block_affine``,
    ``layer_norm_rows`` ...). No kernel here dispatches on a constant's value, and LLVM still
    propagates the constant once the callee is inlined, so calls are typed with plain types.
    """

    _cache_attached = False

    def get_call_template(self, args, kws):
        args = tuple(types.unliteral(a) for a in args)
        kws = {k: types.unliteral(v) for k, v in kws.items()}
        return super().get_call_template(args, kws)

    def compile(self, sig):
        # The on-disk cache (``cache=True``) is attached at the first compile or cache load, not
        # at import: attaching it checks that the cache folder is writable with a temporary file,
        # about 1 ms per kernel, 60+ ms for the whole package at ``import numbanorm``.
        if not self._cache_attached:
            self._cache_attached = True
            self._cache = PackageCache(self.py_func)
        return super().compile(sig)


def jit(**options):
    """``numba.njit(cache=True, **options)`` with the :class:`_Dispatcher` above (its cache is
    :class:`~numbanorm._cache.PackageCache`: stale when any numbanorm module changed)."""
    def decorate(func):
        if numba.config.DISABLE_JIT:
            return func
        return _Dispatcher(py_func=func, locals={}, targetoptions={"nopython": True, **options})
    return decorate

#: Smallest number of elements one parallel task gets. Below two tasks' worth a call runs
#: serially, so tiny tensors never wake the thread pool.
MIN_TASK_ELEMENTS = 1 << 15

#: Tasks per thread, so that uneven task sizes still balance.
TASKS_PER_THREAD = 4


def _choose_threading_layer() -> bool:
    """Select a thread-safe numba threading layer unless the user chose one.

    numba's default fallback, ``workqueue``, aborts the process when two Python threads launch
    parallel kernels at once. ``tbb`` (pip install tbb) and GNU/Intel ``omp`` are safe for
    concurrent callers, so we ask for ``threadsafe`` when one of them loads. Returns True when
    calls must instead be serialized with a lock (only ``workqueue`` available).
    """
    if os.environ.get("NUMBA_THREADING_LAYER") or numba.config.THREADING_LAYER != "default":
        return numba.config.THREADING_LAYER == "workqueue"
    for module in ("numba.np.ufunc.tbbpool", "numba.np.ufunc.omppool"):
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - an unloadable layer is simply not a candidate
            continue
        numba.config.THREADING_LAYER = "threadsafe"
        return False
    return True


NEEDS_CALL_LOCK = _choose_threading_layer()
_CALL_LOCK = threading.Lock()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


#: Context manager that wraps every kernel launch: a real lock only under ``workqueue``.
kernel_guard = _CALL_LOCK if NEEDS_CALL_LOCK else _NoLock()
