"""Output arena: big output arrays from cached, already-mapped memory blocks.

A fresh ``np.empty`` over glibc's largest mmap threshold (32 MiB) comes from ``mmap`` and goes
back to the kernel on free, so the kernel that writes it pays a page fault and the kernel's
zeroing of every page on first touch: LayerNorm on (32,512,768) float32 (50 MB) took 14.4 ms of
CPU allocating against 8.4 ms with ``out=`` (one thread; 536 faults, 8.5 ms of system time per
call). Here outputs of at least ``THRESHOLD`` bytes are carved from blocks kept in a small free
list. Smaller ones stay with ``np.empty``: glibc raises its mmap threshold to the size of a freed
mapping (up to 32 MiB) and then serves them from its heap without faults (measured: 1-16 MiB
allocating = ``out=``), and a lease costs a few microseconds, which is 5-25% of a 1 MiB call.

Lifetime: each lease is a small ``_Lease`` object that exposes the block through
``__array_interface__``; NumPy keeps it as the ``base`` of the returned array, and every view,
slice or reshape keeps that array (hence the lease) alive. The block goes back to the free list
only in ``_Lease.__del__``, i.e. when the last array using it is gone, so a cached block is never
handed out while anything can still reach it. Free blocks beyond the limit are released to the
allocator (oldest first). Thread-safe; a finalizer that runs inside the arena's own critical
section (a garbage collection triggered there) defers its block to a pending list.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

__all__ = ["empty", "set_arena_limit", "arena_info"]

#: Outputs smaller than this many bytes use ``np.empty`` (a lease costs ~0.3% of a 16 MiB call).
THRESHOLD = 16 << 20
#: Blocks start on a page boundary (≥ 64 bytes for SIMD loads/stores, a whole page for the OS).
_ALIGN = 4096
_ENV = "NUMBANORM_ARENA_BYTES"


#: Default bytes of freed outputs kept for reuse. A service that embeds numbanorm must not look
#: like it leaks: with 1 GiB, twelve deleted 32-56 MiB outputs left a process 648 MiB bigger.
#: 256 MiB still holds the few blocks of a steady loop over the big shapes (LayerNorm's
#: (32,512,768) float32 output is 48 MiB: five of them).
DEFAULT_LIMIT = 256 << 20


def _default_limit() -> int:
    """``DEFAULT_LIMIT``, or an eighth of physical memory when that is smaller."""
    try:
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        phys = 8 << 30
    return min(DEFAULT_LIMIT, phys // 8)


def _parse_bytes(text: str) -> int:
    """``"0"``, ``"268435456"``, ``"512M"``, ``"2G"`` (binary units) -> bytes."""
    text = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    value = float(text[:-1] if scale > 1 else text)
    if not value >= 0:
        raise ValueError
    return int(value * scale)


def _capacity(nbytes: int) -> int:
    """Size class of a request: rounded up to 1/8 of its power of two (≤ 12.5% slack), so
    outputs of one shape, and of nearly equal shapes, share blocks."""
    step = max(_ALIGN, 1 << (nbytes.bit_length() - 4))
    return -(-nbytes // step) * step


class _Block:
    __slots__ = ("buf", "addr", "capacity")

    def __init__(self, capacity: int) -> None:
        self.buf = np.empty(capacity + _ALIGN, np.uint8)  # never written here: no zeroing
        self.addr = -(-self.buf.ctypes.data // _ALIGN) * _ALIGN
        self.capacity = capacity


class _Lease:
    """The ``base`` of one arena array: returns its block when the last array using it dies."""

    __slots__ = ("__array_interface__", "_block", "_arena")

    def __del__(self) -> None:
        try:
            self._arena._put(self._block)
        except Exception:  # pragma: no cover - interpreter shutdown: nothing left to return to
            pass


class _Arena:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._reset_lock()
        self._free: list[_Block] = []  # in the order they came back; taken newest first
        self._free_bytes = 0
        self.hits = self.misses = 0

    def _reset_lock(self) -> None:
        self._lock = threading.RLock()
        self._busy = False  # set inside the critical section (RLock: same-thread re-entry)
        self._pending: list[_Block] = []

    def take(self, nbytes: int) -> _Block:
        cap = _capacity(nbytes)
        with self._lock:
            self._busy = True
            try:
                free = self._free
                for i in range(len(free) - 1, -1, -1):  # newest first: the likeliest still in cache
                    if free[i].capacity == cap:
                        self._free_bytes -= cap
                        self.hits += 1
                        return free.pop(i)
                self.misses += 1
            finally:
                self._busy = False
                if self._pending:
                    self._drain()
        return _Block(cap)  # outside the lock: the allocation may take a while

    def _put(self, block: _Block) -> None:
        with self._lock:
            self._pending.append(block)
            if not self._busy:  # else: re-entered from a finalizer inside our own critical section
                self._drain()

    def _drain(self) -> None:
        """Move pending blocks to the free list and trim it to the limit (lock held)."""
        self._busy = True
        try:
            while self._pending:
                block = self._pending.pop()
                self._free.append(block)
                self._free_bytes += block.capacity
            while self._free_bytes > self.limit:
                self._free_bytes -= self._free.pop(0).capacity
        finally:
            self._busy = False

    def set_limit(self, limit: int) -> int:
        with self._lock:
            old, self.limit = self.limit, limit
            self._drain()
        return old

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"limit": self.limit, "free_bytes": self._free_bytes, "free_blocks": len(self._free),
                    "hits": self.hits, "misses": self.misses}


def _initial_limit() -> int:
    text = os.environ.get(_ENV)
    if text is None or not text.strip():
        return _default_limit()
    try:
        return _parse_bytes(text)
    except (ValueError, OverflowError):
        raise ValueError(f"{_ENV} must be a byte count such as 0, 268435456, 512M or 2G, got {text!r}") from None


_ARENA = _Arena(_initial_limit())
if hasattr(os, "register_at_fork"):  # a lock held by another thread at fork() stays held in the child
    os.register_at_fork(after_in_child=_ARENA._reset_lock)


def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` (C order, uninitialized), from the arena when big enough.
    ``dtype`` must be a ``np.dtype`` instance (``x.dtype``): no conversion on the tiny-call path."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < THRESHOLD or not _ARENA.limit:
        return np.empty(shape, dtype)
    block = _ARENA.take(nbytes)
    lease = _Lease()
    lease._block, lease._arena = block, _ARENA
    typestr = _TYPESTR.get(dtype)
    if typestr is None:  # ml_dtypes' bfloat16 is '<V2' to NumPy: lease it as uint16 and view it
        typestr = _TYPESTR[dtype] = dtype.str if np.dtype(dtype.str) == dtype else f"|u{dtype.itemsize}"
    lease.__array_interface__ = {"data": (block.addr, False), "shape": tuple(shape), "typestr": typestr,
                                 "version": 3}
    result = np.asarray(lease)
    return result if result.dtype == dtype else result.view(dtype)


_TYPESTR: dict[np.dtype, str] = {}


def set_arena_limit(nbytes: int) -> int:
    """Set how many bytes of freed big outputs numbanorm keeps for reuse; return the old limit.

    Outputs of at least 16 MiB are taken from cached blocks, which avoids the page faults and
    zeroing of fresh memory (the allocating call then runs about as fast as with ``out=``). Memory
    still used by arrays is never counted nor reclaimed.

    Parameters
    ----------
    nbytes : int
        The new limit, in bytes; ``0`` disables the cache and releases what it holds. Default
        (before any call): ``$NUMBANORM_ARENA_BYTES``, else 256 MiB or 1/8 of physical memory,
        whichever is smaller.

    Returns
    -------
    int
        The previous limit.

    Raises
    ------
    ValueError
        ``nbytes`` is not a non-negative integer.

    Examples
    --------
    >>> import numbanorm as nb
    >>> old = nb.set_arena_limit(0)  # no cache: every big output is a fresh allocation
    >>> nb.arena_info()["limit"], nb.arena_info()["free_bytes"]
    (0, 0)
    >>> _ = nb.set_arena_limit(old)
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative integer, got {nbytes!r}")
    return _ARENA.set_limit(int(nbytes))


def arena_info() -> dict[str, int]:
    """The output arena's state: its limit, what it caches now, and its hits and misses so far.

    Returns
    -------
    dict of str to int
        ``limit`` (bytes), ``free_bytes`` and ``free_blocks`` cached now, and ``hits``/``misses``
        (outputs served from a cached block / freshly allocated).

    Examples
    --------
    >>> import numbanorm as nb
    >>> sorted(nb.arena_info())
    ['free_blocks', 'free_bytes', 'hits', 'limit', 'misses']
    """
    return _ARENA.info()
