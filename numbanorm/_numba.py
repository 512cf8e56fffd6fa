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
``reload_init`` entries   a user's ``cache=True`` function     numba's cache (stamped with the
(``tag_reload``)          that inlined numbanorm kernels is    user's file only: stale code
                          stale when numbanorm changed         after a numbanorm change)
``native_call``: a call   njit code runs the kernels' own      ``kernel(*args)``: numba's
to a kernel's symbol      machine code (the Python-level       linked copy, optimized again in
                          call's), not a re-optimized copy     the caller
``native_num_threads``:   the thread count in jitted code      1: njit calls plan for one
the threading layer's     without a dynamic global (numba's    thread (bits as the Python-level
``get_num_threads``       ``get_num_threads()`` cannot cache)  call with one numba thread)
``to_fixed_tuple``        the njit overloads' axis moves: a    none: moved-axis layouts fail to
(``numba.np.unsafe``)     permutation as a tuple for           compile in njit code (Python
                          ``np.transpose``                     calls are unaffected)
========================  ===================================  =================================

``NUMBANORM_PLAIN_NUMBA=1`` forces every fallback, so a future numba release that breaks one of
them makes numbanorm at worst slower, never broken; the test suite runs a slice of itself so.
"""

from __future__ import annotations

import functools
import hashlib
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
# Users' cached functions that inlined numbanorm kernels
# --------------------------------------------------------------------------------------------
# A jitted function that calls a numbanorm op (its numba overload, ``numbanorm/_njit.py``) links a
# copy of the kernels' machine code, and numba's cache of *that* function is stamped with its own
# file only: after a numbanorm change it would load the old kernels. numba runs the entries of a
# compile result's ``reload_init`` when it loads cached code, pickles them with the cached data,
# and a caller inherits its callees' entries. So every numbanorm kernel carries a ``_Reload``
# entry holding the package stamp; unpickling it in a later process compares that with the
# current stamp and, when they differ, raises an ``OSError``, which numba's cache takes for a
# missing data file: a cache miss, so the caller compiles again (and overwrites the stale entry).
class StaleKernelCache(OSError):
    """Cached machine code holds numbanorm kernels of another version of the package."""


@functools.cache
def stamp_digest() -> str:
    """A short digest of ``package_stamp`` (it goes into every cached function that inlined a kernel)."""
    return hashlib.sha256(repr(package_stamp()).encode()).hexdigest()[:20]


class _Reload:
    """A ``reload_init`` entry: the stamp of the numbanorm that compiled the code; ``threads``:
    the code calls the threading layer's ``get_num_threads`` (``native_num_threads``), which
    must be loaded before the code is linked."""

    __slots__ = ("digest", "threads")

    def __init__(self, digest: str, threads: bool = False) -> None:
        self.digest = digest
        self.threads = threads

    def __call__(self) -> None:
        if self.threads:
            _launch_threads()

    def __reduce__(self):
        return _reloaded, (self.digest, self.threads)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reload) and (self.digest, self.threads) == (other.digest, other.threads)

    def __hash__(self) -> int:
        return hash((self.digest, self.threads))


def _reloaded(digest: str, threads: bool) -> _Reload:
    """Unpickling a ``_Reload`` (numba loading cached code): refuse code of another numbanorm."""
    if digest != stamp_digest():
        raise StaleKernelCache(f"cached code holds numbanorm kernels of another version ({digest}, now "
                               f"{stamp_digest()}): compiling again")
    return _Reload(digest, threads)


def _reload_supported() -> bool:
    try:
        from numba.core.compiler import CompileResult
    except ImportError:
        return False
    return not PLAIN and "reload_init" in getattr(CompileResult, "_fields", ())


RELOAD = _reload_supported()


def tag_reload(cres) -> None:
    """Give a numbanorm kernel's compile result the package stamp entry, and its library every
    entry of the result (a library loaded from the cache starts with none, so callers compiled
    later would not inherit them)."""
    init = getattr(cres, "reload_init", None)
    lib_init = getattr(getattr(cres, "library", None), "_reload_init", None)
    if not RELOAD or not isinstance(init, list) or not isinstance(lib_init, set):
        return
    entry = _Reload(stamp_digest())
    if entry not in init:
        init.append(entry)
    lib_init.update(init)


def _launch_threads() -> None:
    from numba.np.ufunc.parallel import _launch_threads as launch

    launch()


def _native_num_threads():
    """An intrinsic returning numba's thread count of the calling thread (``numba.get_num_threads``
    compiles to a call through a ctypes pointer, which numba cannot cache), or None."""
    if not RELOAD:
        return None
    try:
        from llvmlite import ir
        from numba.core import types
        from numba.extending import intrinsic
        from numba.np.ufunc import parallel

        if not callable(getattr(parallel, "_launch_threads", None)) or cgutils is None:
            return None
    except ImportError:
        return None

    @intrinsic
    def native_num_threads(typingctx):
        _launch_threads()  # registers the symbol

        def codegen(context, builder, signature, args):
            library = getattr(context, "active_code_library", None)
            if isinstance(getattr(library, "_reload_init", None), set):
                library._reload_init.add(_Reload(stamp_digest(), True))
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                "get_num_threads")
            return builder.sext(builder.call(fn, []), ir.IntType(64))

        return types.int64(), codegen

    return native_num_threads


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

        def add_overload(self, cres):
            super().add_overload(cres)
            tag_reload(cres)

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


# --------------------------------------------------------------------------------------------
# Calls to a kernel's own machine code from other jitted code
# --------------------------------------------------------------------------------------------
# A jitted function that calls another links a copy of the callee's code into its own module, and
# LLVM optimizes that copy again in its caller's context, where fastmath reassociation can round
# differently; which copy then runs depends on which was loaded into the process first. The
# overloads (``_njit``) and the entries of ``cpu/njit.py`` promise the Python-level call's bits, so
# they call kernels through ``native_call``: a call to the symbol of the kernel's own compiled code
# (compiled, or loaded from the cache, at the caller's typing), with nothing linked. The caller's
# code then holds a reference by name, so each such call adds a ``_Link`` entry to its
# ``reload_init``: a process that loads the caller's cached code first loads that kernel (from
# numbanorm's cache) under the same symbol, or takes the cache entry for stale (another package
# stamp, or a kernel compiled again under another name).
# ``numbanorm._numba._linked`` and ``numbanorm._numba._Reload`` are pickled by name into users'
# cache files: keep those names. numba takes only an OSError for a miss, so a numbanorm without
# them (an older release, another checkout sharing the user's cache) fails the load with
# AttributeError instead of compiling again.
class _Link:
    """A ``reload_init`` entry: the kernel ``module.qualname`` compiled for ``argtypes`` must be
    loaded, as symbol ``name``, before the code that calls it is linked."""

    __slots__ = ("key",)

    def __init__(self, module: str, qualname: str, argtypes: tuple, name: str, digest: str) -> None:
        self.key = (module, qualname, argtypes, name, digest)

    def __call__(self) -> None:
        return None

    def __reduce__(self):
        return _linked, self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Link) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def _linked(module: str, qualname: str, argtypes: tuple, name: str, digest: str) -> _Link:
    """Unpickling a ``_Link`` (numba loading a caller's cached code): load the kernel, or refuse."""
    if digest != stamp_digest():
        raise StaleKernelCache(f"cached code calls numbanorm kernels of another version ({digest}, now "
                               f"{stamp_digest()}): compiling again")
    import importlib

    dispatcher = importlib.import_module(module)
    for part in qualname.split("."):
        dispatcher = getattr(dispatcher, part)
    dispatcher.compile(argtypes)
    if dispatcher.overloads[argtypes].fndesc.mangled_name != name:
        raise StaleKernelCache(f"{qualname} was compiled again under another symbol: compiling its caller again")
    return _Link(module, qualname, argtypes, name, digest)


def _native_call():
    """An intrinsic ``native_call(kernel, args)`` calling ``kernel(*args)``'s own compiled code,
    or None (then ``kernel(*args)``, numba's linked copy)."""
    if not RELOAD or numba.config.DISABLE_JIT:
        return None
    try:
        from numba.core import types
        from numba.extending import intrinsic
    except ImportError:
        return None

    @intrinsic
    def native_call(typingctx, kernel, args):
        if not isinstance(kernel, types.Dispatcher) or not isinstance(args, types.BaseTuple):
            return None
        dispatcher = kernel.dispatcher
        argtypes = tuple(types.unliteral(a) for a in args.types)
        dispatcher.compile(argtypes)
        cres = dispatcher.overloads.get(argtypes)
        fndesc = getattr(cres, "fndesc", None)
        if fndesc is None or getattr(cres, "objectmode", True):
            return None
        py_func = dispatcher.py_func
        link = _Link(py_func.__module__, py_func.__qualname__, argtypes, fndesc.mangled_name, stamp_digest())

        def codegen(context, builder, signature, llargs):
            library = context.active_code_library
            library._reload_init.add(link)
            values = [context.cast(builder, builder.extract_value(llargs[1], i), args.types[i], argtypes[i])
                      for i in range(len(argtypes))]
            return context.call_internal(builder, fndesc, cres.signature, values)

        return cres.signature.return_type(kernel, args), codegen

    return native_call


native_call = _native_call()
if native_call is None:
    from numba.extending import overload

    def native_call(kernel, args):
        """``kernel(*args)`` (numba's linked copy of the kernel: the fallback)."""
        return kernel(*args)

    @overload(native_call, inline="always")
    def _native_call_fallback(kernel, args):
        # The kernel by reference, not the argument's value: a dispatcher value is a dynamic
        # address, which would make every caller uncacheable (inlined, the argument is dead).
        dispatcher = kernel.dispatcher
        return lambda kernel, args: dispatcher(*args)


# --------------------------------------------------------------------------------------------
# The thread count in jitted code
# --------------------------------------------------------------------------------------------
native_num_threads = _native_num_threads()
if native_num_threads is None:
    from numba.extending import register_jitable

    @register_jitable
    def native_num_threads():
        return 1


# --------------------------------------------------------------------------------------------
# An array's values as a tuple of a length known at compile time (njit overloads' np.transpose)
# --------------------------------------------------------------------------------------------
try:
    from numba.np.unsafe.ndarray import to_fixed_tuple
except ImportError:  # moved or gone in a future numba: the njit axis moves then fail to type
    to_fixed_tuple = None
