"""The roofline of ``python -m numbanorm.bench``: copies at the peers' thread count.

Two copies of a byte buffer, both numba ``prange`` loops over one contiguous slice per thread, so
they use the same threads (numba's pool, ``numba.set_num_threads``) as numbanorm and the count
every peer is given (a third, ``copy-1t``, is one memcpy on one thread: on small buffers it beats
the parallel launch):

- ``copy``: each slice is one ``llvm.memcpy`` (libc's ``memcpy``, what ``np.copyto`` calls, on one
  thread only);
- ``copy-nt``: each slice is 64-byte loads and *non-temporal* (streaming) stores of whole cache
  lines, then ``sfence``: the written lines go to memory without being read first
  (no read-for-ownership) and without evicting the cache. It only wins when the data does not
  fit in the last-level cache (x86-64 only).

Each copy moves the bytes of the case's traffic floor (half read, half written; see _floors).
The roofline of a case is the fastest of the copies, timed in the same run as the peers. Only
numba's public extension API is used (``numba.extending.intrinsic`` and ``numba.core.cgutils``),
no numbanorm internals.
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

#: Alignment of the buffers (a cache line; also what a 64-byte non-temporal store needs).
LINE = 64


def streaming_supported() -> bool:
    """Non-temporal stores + ``sfence`` are emitted for x86-64 only."""
    return platform.machine().lower() in ("x86_64", "amd64")


def aligned_bytes(nbytes: int, fill: int | None = None) -> np.ndarray:
    """A ``uint8`` buffer of ``nbytes`` starting on a :data:`LINE` boundary, every page touched
    (``fill`` or a byte pattern): an untouched buffer would read the shared zero page, from cache."""
    raw = np.empty(nbytes + LINE, dtype=np.uint8)
    off = (-raw.ctypes.data) % LINE
    buf = raw[off:off + nbytes]
    if fill is None:
        buf[:] = np.arange(nbytes, dtype=np.uint64).astype(np.uint8) if nbytes < (1 << 16) else 0x5A
        buf[::4096] = 1  # a non-constant pattern on the big ones too
    else:
        buf[:] = fill
    return buf


@intrinsic
def _memcpy(typingctx, dst, src, start, stop):
    """dst[start:stop] = src[start:stop] as one ``llvm.memcpy`` (libc's memcpy)."""
    sig = types.none(dst, src, start, stop)

    def codegen(context, builder, sig, args):
        d = context.make_array(sig.args[0])(context, builder, args[0]).data
        s = context.make_array(sig.args[1])(context, builder, args[1]).data
        a, b = args[2], args[3]
        cgutils.raw_memcpy(builder, builder.gep(d, [a]), builder.gep(s, [a]), builder.sub(b, a), 1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _nt_copy(typingctx, dst, src, start, stop):
    """dst[start:stop] = src[start:stop] with non-temporal stores of whole 64-byte lines (memcpy for
    the unaligned head and the tail), then sfence."""
    sig = types.none(dst, src, start, stop)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        vty = ir.VectorType(i64, 8)
        nt_md = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        d = context.make_array(sig.args[0])(context, builder, args[0]).data
        s = context.make_array(sig.args[1])(context, builder, args[1]).data
        a, b = args[2], args[3]
        n = builder.sub(b, a)
        addr = builder.add(builder.ptrtoint(d, i64), a)
        head = builder.and_(builder.sub(ir.Constant(i64, 0), addr), ir.Constant(i64, LINE - 1))
        head = builder.select(builder.icmp_signed("<", head, n), head, n)
        cgutils.raw_memcpy(builder, builder.gep(d, [a]), builder.gep(s, [a]), head, 1)
        a0 = builder.add(a, head)
        lines = builder.sdiv(builder.sub(b, a0), ir.Constant(i64, LINE))
        with cgutils.for_range(builder, lines) as loop:
            k = builder.add(a0, builder.mul(loop.index, ir.Constant(i64, LINE)))
            v = builder.load(builder.bitcast(builder.gep(s, [k]), vty.as_pointer()), align=1)
            st = builder.store(v, builder.bitcast(builder.gep(d, [k]), vty.as_pointer()), align=LINE)
            st.set_metadata("nontemporal", nt_md)
        t0 = builder.add(a0, builder.mul(lines, ir.Constant(i64, LINE)))
        cgutils.raw_memcpy(builder, builder.gep(d, [t0]), builder.gep(s, [t0]), builder.sub(b, t0), 1)
        fence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                               "llvm.x86.sse.sfence")
        builder.call(fence, [])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True)
def _bounds(n, k, parts):
    """Slice ``k`` of ``parts`` of ``n`` bytes, its boundaries on cache lines."""
    lines = (n + LINE - 1) // LINE
    return min(n, (k * lines // parts) * LINE), min(n, ((k + 1) * lines // parts) * LINE)


@numba.njit(parallel=True, cache=True)
def copy_parallel(dst, src, parts):
    for k in prange(parts):
        a, b = _bounds(src.size, k, parts)
        if b > a:
            _memcpy(dst, src, a, b)


@numba.njit(parallel=True, cache=True)
def copy_streaming(dst, src, parts):
    for k in prange(parts):
        a, b = _bounds(src.size, k, parts)
        if b > a:
            _nt_copy(dst, src, a, b)


@numba.njit(cache=True)
def copy_one_thread(dst, src, parts):
    _memcpy(dst, src, 0, src.size)


class Copy:
    """A ready copy of ``nbytes``: ``run()`` is timed. ``streaming``: non-temporal stores;
    ``one_thread``: one memcpy on the calling thread (what ``np.copyto`` does)."""

    def __init__(self, nbytes: int, streaming: bool = False, one_thread: bool = False):
        if streaming and not streaming_supported():
            raise RuntimeError(f"no streaming-store copy on {platform.machine()}")
        self.nbytes = nbytes
        self.src = aligned_bytes(nbytes)
        self.dst = aligned_bytes(nbytes, fill=0)
        self._fn = copy_streaming if streaming else (copy_one_thread if one_thread else copy_parallel)
        self._parts = numba.get_num_threads()  # one slice per thread of the run (get_num_threads
        # inside the kernel would make it uncacheable)

    def run(self) -> np.ndarray:
        self._fn(self.dst, self.src, self._parts)
        return self.dst

    def check(self) -> bool:
        """The copy is exact (after at least one ``run``)."""
        return bool(np.array_equal(self.dst, self.src))
