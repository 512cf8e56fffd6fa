"""Workarounds for upstream bugs, each removable on its own.

numba-cuda 0.30.4 + NumPy >= 2.5 (the lent GPU machines: numpy 2.5.2, numba 0.68.0,
numba-cuda 0.30.4): ``numba/cuda/np/arrayobj.py`` runs ``overload(np.row_stack)`` for every
NumPy >= 2.0, but NumPy 2.5 removed ``row_stack``. That module is imported lazily when the first
kernel compiles, which then fails with
``AttributeError: module 'numpy' has no attribute 'row_stack'``. numba itself guards the same
line with ``numpy_version < (2, 5)``.

Fix: import that module once with ``np.row_stack`` aliased to ``np.vstack`` (what it always
was), then remove the alias so NumPy's namespace is left as it was. REMOVE this shim once
numba-cuda guards the overload (check: ``grep row_stack numba_cuda/numba/cuda/np/arrayobj.py``).
"""

from __future__ import annotations

import numpy as np


def patch_row_stack() -> None:
    if hasattr(np, "row_stack"):
        return  # NumPy < 2.5: nothing to do
    np.row_stack = np.vstack
    try:
        import numba.cuda.np.arrayobj  # noqa: F401 - registers its overloads, then stays imported
    finally:
        del np.row_stack
