"""How every CPU kernel is compiled: three decorators over ``numbanorm._numba.jit``.

``FASTMATH`` is a restricted set: ``reassoc`` lets LLVM vectorize the reductions, while leaving out
``nnan``/``ninf`` keeps NaN and Inf propagating exactly as torch does. ``error_model="numpy"``:
x/0 gives inf/nan as in torch (and NumPy) instead of raising, and spares a zero test per division.
"""

from __future__ import annotations

from .._numba import jit

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: A kernel that runs on the calling thread.
serial = jit(fastmath=FASTMATH, error_model="numpy", nogil=True)
#: A kernel with a ``prange`` loop (a parfor).
parallel = jit(fastmath=FASTMATH, error_model="numpy", nogil=True, parallel=True)
#: Glue shared by a serial and a parallel entry point, inlined at numba-IR level: typed in its
#: caller instead of compiled, optimized and cached as one more jitted function (each jitted
#: layer re-optimizes everything under it when compiled cold).
glue = jit(fastmath=FASTMATH, error_model="numpy", nogil=True, inline="always")
