"""How work is cut into tasks and threads: the one planning rule, the thread count, the launch
lock, and what a forked child may do.

Every entry point plans its call with ``plan`` (Python, so that a call compiles only the path it
takes: a small input never compiles a parfor) or, inside jitted code, ``plan_tasks``; a plan of
one task runs the serial kernel and never wakes the thread pool.
"""

from __future__ import annotations

import os
import threading

import numba

from .. import _numba
from .jit import serial

#: Smallest number of elements one parallel task gets. Below two tasks' worth a call runs
#: serially, so tiny tensors never wake the thread pool.
MIN_TASK_ELEMENTS = 1 << 15
#: Below this many elements every plan is one task, whatever the thread count.
SERIAL_SIZE = 2 * MIN_TASK_ELEMENTS
#: Tasks per thread, so that uneven task sizes still balance.
TASKS_PER_THREAD = 4


@serial
def plan_tasks(outer, C, inner, nthreads):
    """Split (outer, inner) into n_outer x n_inner blocks; 1 x 1 means run serially."""
    total = outer * C * inner
    tasks = min(nthreads * TASKS_PER_THREAD, total // MIN_TASK_ELEMENTS)
    if tasks <= 1 or nthreads <= 1:  # one thread: the serial kernels (a forked child needs them)
        return 1, 1
    if inner == 1 or outer >= tasks:
        return min(tasks, outer), 1
    # Few outer slices (e.g. N=1..8 NCHW): also cut the contiguous runs, so C < threads still
    # keeps every core busy; the pieces merge by Chan's formula.
    return outer, min(inner, (tasks + outer - 1) // outer)


_plan_tasks = getattr(plan_tasks, "py_func", plan_tasks)


def plan(outer: int, C: int, inner: int, nthreads: int) -> tuple[int, int]:
    """``plan_tasks`` as plain Python, for the dispatch in Python (no compile, no cache load at
    start-up); (1, 1) at once for small inputs."""
    if outer * C * inner < SERIAL_SIZE:
        return 1, 1
    return _plan_tasks(outer, C, inner, nthreads)


@serial
def block_bounds(length, nblocks, b):
    """Block ``b`` of ``length`` items cut into ``nblocks`` near-equal blocks."""
    return (length * b) // nblocks, (length * (b + 1)) // nblocks


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------
#: Only ``workqueue`` could be loaded: kernel launches are serialized (it aborts on concurrent ones).
NEEDS_CALL_LOCK = _numba.choose_threading_layer()


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


#: Context manager around every parallel kernel launch: a real lock only under ``workqueue``.
kernel_guard = _CallLock() if NEEDS_CALL_LOCK else _NoLock()

#: Set in a child forked after the parent started numba's thread pool: the child then runs
#: every kernel serially. GNU OpenMP kills a child that starts a parallel region after its parent
#: ran one ("fork() called from a process already using GNU OpenMP"), and workqueue's worker
#: threads do not exist in the child; the serial kernels need neither.
_SERIAL_ONLY = False


def _after_fork_in_child() -> None:
    global _SERIAL_ONLY
    kernel_guard.renew()
    if _numba.thread_pool_started():
        _SERIAL_ONLY = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def num_threads() -> int:
    """The thread count a kernel may use: numba's for the calling thread, 1 in a forked child
    (see ``_SERIAL_ONLY``); with 1 every plan is serial."""
    return 1 if _SERIAL_ONLY else numba.get_num_threads()
