"""Every use of numba internals, each behind a guard with a plain-numba fallback.

The rest of numbanorm uses numba's public API only (``njit``, ``prange``, ``numba.extending``).
What it needs beyond that, for start-up time, per-call cost or correctness, lives here:

========================  ===================================  =================================
what                      why                                  fallback
========================  ===================================  =================================
``jit``: a CPUDispatcher  one specialization per argument      ``numba.njit(cache=True)``
subclass                  *type*, not per constant (~1 s cold
                          compile per kernel); the disk cache
                          attached at first compile (~60 ms of
                          ``import numbanorm`` otherwise)
``PackageCache``: a       a cached kernel is stale when *any*  numba's cache (stamped with the
FunctionCache subclass    numbanorm module changed (numba      defining file only)
                          stamps the defining file only)
no-locator fallback       a read-only install still computes   (the fallback itself)
``compiled_entry``:       skips numba's argument typing on     None: call the dispatcher
``overloads[sig]``        the tiny-call paths (~0.25 us)
``thread_pool_started``   a forked child of a parent that ran  True: the child runs serially
                          parallel code must stay serial
``choose_threading_layer``  a thread-safe layer when one loads  numba's default (with the lock)
``cgutils`` (LLVM IR      the SIMD kernels of ``cpu/simd.py``  ``SIMD = False``: the plain numba
helpers)                                                       loops
========================  ===================================  =================================

``NUMBANORM_PLAIN_NUMBA=1`` forces every fallback, so a future numba release that breaks one of
them makes numbanorm at worst slower, never broken; the test suite runs a slice of itself so.
"""

from __future__ import annotations

import functools
import os
import pathlib
import warnings

import numba

#: Force the plain-numba fallbacks (for the tests, and as a user's escape hatch).
PLAIN = os.environ.get("NUMBANORM_PLAIN_NUMBA", "") not in ("", "0")

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


class CacheUnavailableWarning(RuntimeWarning):
    """No directory is writable for numba's kernel cache: kernels compile in every process.

    Warned once per process, when numbanorm sets up its kernels and none of ``NUMBA_CACHE_DIR``, the
    package folder and ``~/.cache/numba`` is writable. Point ``NUMBA_CACHE_DIR`` at a writable
    directory to keep the compiled kernels between processes.

    Examples
    --------
    >>> import warnings
    >>> import numbanorm as nb
    >>> issubclass(nb.CacheUnavailableWarning, RuntimeWarning)
    True
    >>> with warnings.catch_warnings():  # e.g. a read-only container that compiles anyway
    ...     warnings.simplefilter("ignore", nb.CacheUnavailableWarning)
    """


# --------------------------------------------------------------------------------------------
# The disk cache
# --------------------------------------------------------------------------------------------
@functools.cache
def package_stamp() -> tuple[tuple[str, int, int], ...]:
    """(path, mtime in ns, size) of every module of the package, sub-packages included (but the
    benchmark, which holds no kernel of the library); computed once per process (~50 ``stat``)."""
    files = sorted(p for p in _PACKAGE_DIR.rglob("*.py") if p.relative_to(_PACKAGE_DIR).parts[0] != "bench")
    return tuple((str(p.relative_to(_PACKAGE_DIR)), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


_CACHE_WARNED = False


def _warn_no_cache() -> None:
    global _CACHE_WARNED
    if not _CACHE_WARNED:
        _CACHE_WARNED = True
        warnings.warn(
            "numbanorm: no writable directory for the numba kernel cache (tried NUMBA_CACHE_DIR, the "
            "package folder and ~/.cache/numba), so kernels are compiled again in every process. Set "
            "NUMBA_CACHE_DIR to a writable directory to cache them.", CacheUnavailableWarning, stacklevel=5)


def disk_cache(py_func):
    """numba's on-disk cache for ``py_func``, its index also stamped with ``package_stamp`` (so an
    edit of any numbanorm module, a ``git pull`` into an editable install, compiles again instead
    of loading machine code that inlined the old helper: once a segfault, more often wrong
    results). numba's plain cache if that stamp cannot be attached; no cache at all, with one
    warning, when no cache directory is writable (a read-only container must still compute)."""
    from numba.core.caching import FunctionCache, NullCache

    try:
        cache = FunctionCache(py_func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        _warn_no_cache()
        return NullCache()
    cache_file = getattr(cache, "_cache_file", None)
    if not PLAIN and cache_file is not None and hasattr(cache_file, "_source_stamp"):
        cache_file._source_stamp = (cache_file._source_stamp, package_stamp())
    return cache


# --------------------------------------------------------------------------------------------
# The dispatcher
# --------------------------------------------------------------------------------------------
def _dispatcher_class():
    """The CPUDispatcher subclass, or None when numba's class does not have the hooks it uses."""
    try:
        from numba.core import types
        from numba.core.registry import CPUDispatcher
    except ImportError:
        return None
    if PLAIN or not all(hasattr(CPUDispatcher, name) for name in ("get_call_template", "compile")):
        return None

    class Dispatcher(CPUDispatcher):
        """Compiles one specialization per argument *type*, not per constant: numba types a
        constant argument in a jitted caller as a literal (``f(x, 0, n)``) and compiles, links and
        caches a separate specialization for it (~1 s extra cold compile per kernel). No kernel
        dispatches on a constant's value, and LLVM still propagates it once the callee is inlined."""

        _cache_attached = False

        def get_call_template(self, args, kws):
            args = tuple(types.unliteral(a) for a in args)
            kws = {k: types.unliteral(v) for k, v in kws.items()}
            return super().get_call_template(args, kws)

        def compile(self, sig):
            # Attached at the first compile or cache load, not at import: attaching tests the
            # folder's writability with a temporary file, ~1 ms per kernel, 60+ ms per import.
            if not self._cache_attached:
                self._cache_attached = True
                self._cache = disk_cache(self.py_func)
            return super().compile(sig)

    return Dispatcher


_DISPATCHER = _dispatcher_class()


def jit(**options):
    """``numba.njit(cache=True, **options)``, through the dispatcher above when it is available."""
    def decorate(func):
        if numba.config.DISABLE_JIT:
            return func
        if _DISPATCHER is None:
            return numba.njit(cache=True, **options)(func)
        return _DISPATCHER(py_func=func, locals={}, targetoptions={"nopython": True, **options})
    return decorate


def compiled_entry(dispatcher, argtypes):
    """``dispatcher``'s compiled entry point for exactly the numba types ``argtypes``, or None
    (not compiled yet, or numba keeps it elsewhere): then the caller calls the dispatcher.
    Calling the entry skips numba's typing of every argument (~0.25 us of a ~6 us tiny call), so
    the caller must pass arguments of exactly those types."""
    if PLAIN:
        return None
    overloads = getattr(dispatcher, "overloads", None)  # None under NUMBA_DISABLE_JIT
    cres = overloads.get(tuple(argtypes)) if isinstance(overloads, dict) else None
    return getattr(cres, "entry_point", None)


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------
def thread_pool_started() -> bool:
    """Whether this process started numba's thread pool; True when that cannot be told."""
    if PLAIN:
        return True
    try:
        from numba.np.ufunc import parallel
    except ImportError:
        return True
    return bool(getattr(parallel, "_is_initialized", True))


def choose_threading_layer() -> bool:
    """Select a thread-safe numba threading layer unless the user chose one; return True when
    kernel launches must instead be serialized with a lock (only ``workqueue`` is available).

    numba's default fallback, ``workqueue``, aborts the process when two Python threads launch
    parallel kernels at once; ``tbb`` and ``omp`` are safe for concurrent callers, so
    ``threadsafe`` is asked for when one of them loads."""
    if os.environ.get("NUMBA_THREADING_LAYER") or numba.config.THREADING_LAYER != "default":
        return numba.config.THREADING_LAYER == "workqueue"
    if PLAIN:
        return True
    for module in ("numba.np.ufunc.tbbpool", "numba.np.ufunc.omppool"):
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - an unloadable layer is simply not a candidate
            continue
        numba.config.THREADING_LAYER = "threadsafe"
        return False
    return True


# --------------------------------------------------------------------------------------------
# LLVM IR helpers for the SIMD kernels
# --------------------------------------------------------------------------------------------
try:
    if PLAIN:
        raise ImportError("NUMBANORM_PLAIN_NUMBA")
    from numba.core import cgutils

    SIMD = all(hasattr(cgutils, f) for f in ("alloca_once_value", "get_or_insert_function", "for_range"))
except ImportError:
    cgutils = None
    SIMD = False


# --------------------------------------------------------------------------------------------
# Cache statistics (for ``numbanorm.precompile``)
# --------------------------------------------------------------------------------------------
def _dispatchers():
    """Every jitted function of numbanorm's loaded modules."""
    import sys

    from numba.core.dispatcher import Dispatcher

    seen = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("numbanorm.") or module is None:
            continue
        for obj in vars(module).values():
            if isinstance(obj, Dispatcher) and id(obj) not in seen:
                seen.add(id(obj))
                yield obj


def cache_counts() -> tuple[int, int]:
    """(cache hits, cache misses) summed over numbanorm's kernels in this process: the
    specializations loaded from the disk cache, and those compiled. (0, 0) if numba does not say."""
    hits = misses = 0
    try:
        for d in _dispatchers():
            stats = d.stats
            hits += sum(stats.cache_hits.values())
            misses += sum(stats.cache_misses.values())
    except (ImportError, AttributeError):
        return 0, 0
    return hits, misses


def cache_location() -> str:
    """Where this process's numbanorm kernels are cached (a folder), as numba chose it."""
    try:
        for d in _dispatchers():
            path = d.stats.cache_path
            if path:
                return str(path)
    except (ImportError, AttributeError):
        pass
    return os.environ.get("NUMBA_CACHE_DIR") or "numba's cache (no kernel cached yet)"
