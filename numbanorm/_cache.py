"""numba's on-disk cache, invalidated when *any* numbanorm source file changes.

numba stamps a cached kernel with the modification time and size of the one file that defines
it. A kernel links in the code of the jitted helpers it calls, and those often live in another
module (``_simd.py``, ``_engine.py``): after an edit there (a ``git pull`` into an editable
install, a patched file) numba would keep loading the old machine code of every caller, which
gave wrong results and once a segfault during development. Adding a stamp of all the package's
own modules to each index makes such an entry obsolete, so it is compiled again.
"""

from __future__ import annotations

import functools
import pathlib

from numba.core.caching import FunctionCache

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


@functools.cache
def package_stamp() -> tuple[tuple[str, int, int], ...]:
    """(name, mtime in ns, size) of every module of the package's top level, where all CPU
    kernels live; computed once per process (~30 ``stat`` calls)."""
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in _PACKAGE_DIR.glob("*.py")))


class PackageCache(FunctionCache):
    """numba's per-function cache whose index is also stamped with :func:`package_stamp`."""

    def __init__(self, py_func):
        super().__init__(py_func)
        cache_file = self._cache_file  # numba's IndexDataCacheFile: compares the stamp on load
        cache_file._source_stamp = (cache_file._source_stamp, package_stamp())
