"""Process-wide settings for the numba kernels: fastmath flags, task sizes, threading layer.

Why a restricted fastmath set: ``reassoc`` lets LLVM vectorize the reductions, while leaving out
``nnan``/``ninf`` keeps NaN and Inf propagating exactly as torch does.
"""

from __future__ import annotations

import os
import threading
import warnings

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
            self._cache = _disk_cache(self.py_func)
        return super().compile(sig)


class CacheUnavailableWarning(RuntimeWarning):
    """numbanorm found no writable directory for its compiled kernels (see ``_disk_cache``)."""


_CACHE_WARNED = False


def _disk_cache(py_func):
    """The on-disk cache of ``py_func``, or numba's no-op cache (compile in every process) when
    no cache directory is writable: a read-only container or service account must get results,
    not ``RuntimeError: cannot cache function ... no locator available`` on every call. Warns once."""
    global _CACHE_WARNED
    try:
        return PackageCache(py_func)
    except RuntimeError:  # numba found no writable locator (package folder, ~/.cache/numba, NUMBA_CACHE_DIR)
        if not _CACHE_WARNED:
            _CACHE_WARNED = True
            warnings.warn(
                "numbanorm: no writable directory for the numba kernel cache (tried NUMBA_CACHE_DIR, the "
                "package folder and ~/.cache/numba), so kernels are compiled again in every process. Set "
                "NUMBA_CACHE_DIR to a writable directory to cache them.", CacheUnavailableWarning, stacklevel=4)
        from numba.core.caching import NullCache

        return NullCache()


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


class _CallLock:
    """The launch lock of the ``workqueue`` layer, renewed in a forked child: a fork while
    another thread held it would leave the child's copy locked forever."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def renew(self) -> None:
        self._lock = threading.Lock()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def renew(self) -> None:
        return None


#: Context manager that wraps every kernel launch: a real lock only under ``workqueue``.
kernel_guard = _CallLock() if NEEDS_CALL_LOCK else _NoLock()

#: Set in a child forked after the parent started numba's thread pool: the child then runs
#: every kernel serially. GNU OpenMP kills a child that starts a parallel region after its parent
#: ran one ("fork() called from a process already using GNU OpenMP"), and workqueue's worker
#: threads do not exist in the child; the serial kernels need neither.
_SERIAL_ONLY = False


def _thread_pool_started() -> bool:
    """Whether this process started numba's thread pool; True when that cannot be told."""
    try:
        from numba.np.ufunc import parallel
    except ImportError:  # pragma: no cover - numba moved it: assume the worst (serial child)
        return True
    return bool(getattr(parallel, "_is_initialized", True))


def _after_fork_in_child() -> None:
    global _SERIAL_ONLY
    kernel_guard.renew()
    if _thread_pool_started():
        _SERIAL_ONLY = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def num_threads() -> int:
    """The thread count a kernel may use: numba's for the calling thread, 1 in a forked child
    (see ``_SERIAL_ONLY``); with 1 every entry takes its serial kernel."""
    return 1 if _SERIAL_ONLY else numba.get_num_threads()
