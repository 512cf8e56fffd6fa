"""A worker process of ``python -m numbanorm.bench``: one library, one case at a time.

Each library (numbanorm, torch, ONNX Runtime, JAX, OpenVINO, NumPy, and the roofline copies) runs
in its own process, so their thread pools never share one: the driver (:mod:`._driver`) sends
``setup`` (build the case's peers, warm up, check against the float64 reference; every worker at
once), ``calibrate`` (calls per sample; one peer at a time), then ``sample`` requests for one peer
at a time, alternating between workers, then ``drop``.

After each request the worker waits until its own threads have gone idle before it answers
(:func:`_quiesce`): OpenMP and ONNX Runtime pools spin for a while after a call (measured on the
2-core machine, CPU a process burned in the 200 ms after one LayerNorm call: torch 6 ms, numba's
OpenMP layer 10 ms, ONNX Runtime 46 ms), and that spinning would otherwise land in the next
library's sample. Every answer reports the CPU the process used since its previous answer, while
other workers were sampled (``idle_cpu_s``): the evidence that no sample was disturbed by
another library's threads.
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from typing import Any

import numpy as np

try:
    import resource
except ImportError:  # not POSIX
    resource = None

from . import _cases, _registry

#: Poll interval of the wait for idle threads, and (without /proc) the share of one core below
#: which the process counts as idle (spinning pools burn 100-200%).
QUIET_WINDOW_S = 5e-4
QUIET_SHARE = 0.1
#: Longest wait for the threads to go idle; a library that never stops is reported, not waited for.
QUIESCE_MAX_S = 0.5
#: Calls shorter than this get one untimed call at the start of each sample, to wake the pool the
#: quiet wait let sleep (a futex wake-up, tens of µs, is a large share of a µs-sized call).
WAKE_BELOW_S = 5e-3


def _pin(threads: int) -> None:
    """Run on ``threads`` of the usable CPUs (the same ones for every worker); every library, JAX's
    XLA pool included, then sees the run's thread count."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return
    if threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])


def _init_library(library: str, threads: int) -> dict[str, Any]:
    """Import and configure ``library`` for ``threads``; what it reports about itself."""
    info: dict[str, Any] = {"pid": os.getpid(), "library": library}
    if library in ("numbanorm", "roofline"):
        os.environ.setdefault("NUMBA_NUM_THREADS", str(max(threads, os.cpu_count() or 1)))
        import numba

        numba.set_num_threads(threads)
        info["threads"] = numba.get_num_threads()
    elif library == "torch":
        torch = _cases.require("torch")
        torch.set_num_threads(threads)
        info["threads"] = torch.get_num_threads()
    elif library == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        _cases.require("jax")
        info["threads"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    elif library in ("onnxruntime", "openvino"):
        _cases.require(library)
        info["threads"] = threads  # per session / compiled model
    else:  # numpy: its elementwise loops and reductions are single-threaded
        info["threads"] = 1
    _registry.load_setups(library)
    return info


def _runnable_threads() -> int | None:
    """How many of this process's threads, other than the calling one, are running or runnable
    (state ``R`` in ``/proc/self/task/*/stat``); None where there is no such file (not Linux)."""
    me = threading.get_native_id()
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    busy = 0
    for tid in tids:
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread just ended
            continue
        busy += stat[stat.rindex(")") + 2] == "R"
    return busy


def _quiesce() -> tuple[float, bool]:
    """Wait until this process's other threads are idle; (seconds waited, whether they went idle).

    Idle means asleep (no thread in state ``R``, twice in a row): a spinning thread that the
    scheduler has taken off its core still counts as busy, which a CPU-time test would miss on a
    loaded machine. Without ``/proc``, idle means burning < :data:`QUIET_SHARE` of a core."""
    t0 = time.perf_counter()
    c_prev, w_prev = time.process_time(), t0
    calm = 0
    while True:
        time.sleep(QUIET_WINDOW_S)
        c, w = time.process_time(), time.perf_counter()
        busy = _runnable_threads()
        quiet = busy == 0 if busy is not None else c - c_prev < QUIET_SHARE * (w - w_prev)
        calm = calm + 1 if quiet else 0
        if calm >= 2:
            return w - t0, True
        if w - t0 > QUIESCE_MAX_S:
            return w - t0, False
        c_prev, w_prev = c, w


class _Case:
    """The peers of one case, built and checked."""

    def __init__(self, case: _cases.Case, peers: list[str], threads: int, ref_path: str | None):
        self.case = case
        self.ready: dict[str, tuple[_registry.Prepared, int, bool]] = {}
        self.entries: dict[str, dict] = {}
        data = _cases.make_data(case)
        ref = _load_ref(ref_path) if ref_path else None
        for peer in peers:
            self.entries[peer] = self._prepare(peer, data, ref, threads)

    def _prepare(self, peer: str, data: _cases.Data, ref: Any, threads: int) -> dict:
        case = self.case
        try:
            prepared = _registry.prepare(peer, case, data, threads)
            err = _registry.agreement(peer, prepared, case, data, prepared.run(), ref)  # warm-up + check
        except _cases.Unsupported as exc:
            return {"skipped": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a peer's failure must not end the report
            return {"error": f"{type(exc).__name__}: {exc}"}
        entry: dict[str, Any] = {"rel_l2_error": err}
        tol = _cases.agree_tol(case)
        if not err <= tol:
            entry["note"] = f"disagrees with the float64 reference: rel L2 error {err:.2e} > {tol:.1e}"
        if prepared.caveat:
            entry["caveat"] = prepared.caveat
        self.ready[peer] = (prepared, 0, False)
        return entry

    def calibrate(self, peer: str, sample_s: float) -> dict[str, Any]:
        """Calls per sample of ``peer`` (a sample lasts about ``sample_s``). Asked by the driver
        once every worker has built its case, one peer at a time: on a machine where other workers
        still compile, one call of a parallel op takes a scheduler slice, and the samples of a
        µs-sized op would shrink to one call each."""
        prepared = self.ready[peer][0]
        single = _calibrate(prepared.run)
        inner = max(1, math.ceil(sample_s / max(single, 1e-9)))
        self.ready[peer] = (prepared, inner, single < WAKE_BELOW_S)
        return {"inner_loops": inner, "single_s": single}

    def sample(self, peer: str) -> dict[str, float]:
        """One sample: seconds per call over ``inner`` calls, and the CPU the process used."""
        prepared, inner, wake = self.ready[peer]
        run = prepared.run
        if wake:
            run()
        gc.disable()
        try:
            s0, p0 = cpu_stall_s(), _preemptions()
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner):
                run()
            t1, c1 = time.perf_counter(), time.process_time()
            s1, p1 = cpu_stall_s(), _preemptions()
        finally:
            gc.enable()
        out = {"t": (t1 - t0) / inner, "wall": t1 - t0, "cpu": c1 - c0, "preempted": p1 - p0}
        if s0 is not None and s1 is not None:
            out["stall"] = s1 - s0
        return out


def _preemptions() -> int:
    """Involuntary context switches of this process's threads so far (a thread taken off its core
    for another runnable thread: another process's, on a busy machine)."""
    if resource is None:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def cpu_stall_s() -> float | None:
    """Seconds (cumulative, system-wide) during which some runnable task waited for a CPU: Linux's
    pressure stall information, ``some ... total=`` of ``/proc/pressure/cpu`` (µs). None where
    there is none. During a sample it is the time the machine had more runnable threads than
    cores (the sampled library's threads or other processes'; every other worker is asleep)."""
    try:
        with open("/proc/pressure/cpu") as f:
            line = f.readline()
        return int(line.rsplit("total=", 1)[1]) * 1e-6
    except (OSError, IndexError, ValueError):
        return None


def _calibrate(fn, calls: int = 5, spend_s: float = 2e-3, cap_s: float = 1.0) -> float:
    """Seconds of one warm call: the fastest of at least ``calls`` calls and ``spend_s`` seconds
    (at most ``cap_s``); the fastest, as one slow call (a preempted thread) must not shrink the
    samples of a fast op to a single call."""
    best, t_start = math.inf, time.perf_counter()
    n = 0
    while n < calls or (time.perf_counter() - t_start < spend_s):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        best, n = min(best, t1 - t0), n + 1
        if t1 - t_start > cap_s:
            break
    return best


def _load_ref(path: str) -> Any:
    """The float64 reference the driver wrote (``ref_<k>.npy``, one file per result), memory-mapped."""
    files = sorted(f for f in os.listdir(path) if f.startswith("ref_"))
    refs = tuple(np.load(os.path.join(path, f), mmap_mode="r") for f in files)
    return refs[0] if len(refs) == 1 else refs


def main(conn, library: str, threads: int, quiesce: bool = True) -> None:
    """Serve the driver's requests on ``conn`` until ``exit`` (or the pipe closes)."""
    _pin(threads)
    try:
        state: dict[str, Any] = {"info": _init_library(library, threads), "broken": None}
    except _cases.Unsupported as exc:
        state = {"info": {"pid": os.getpid(), "library": library}, "broken": str(exc)}
    state.update(library=library, threads=threads, case=None)
    last_w, last_c = time.perf_counter(), time.process_time()
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        w, c = time.perf_counter(), time.process_time()
        reply: dict[str, Any] = {"idle_wall_s": w - last_w, "idle_cpu_s": c - last_c}
        if msg[0] == "exit":
            conn.send(reply)
            return
        try:
            reply.update(_handle(msg, state))
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which goes on
            reply["error"] = f"{type(exc).__name__}: {exc}"
        if quiesce:
            reply["quiesce_s"], reply["quiet"] = _quiesce()
        last_w, last_c = time.perf_counter(), time.process_time()
        conn.send(reply)


def _handle(msg: tuple, state: dict[str, Any]) -> dict[str, Any]:
    """The answer to one request (``hello``, ``setup``, ``calibrate``, ``sample`` or ``drop``)."""
    kind = msg[0]
    if kind == "hello":
        return state["info"] | {"broken": state["broken"]}
    if kind == "setup":
        case, peers, ref_path = msg[1:]
        if state["broken"]:
            return {"entries": {p: {"skipped": state["broken"]} for p in peers}}
        state["case"] = _Case(case, peers, state["threads"], ref_path)
        return {"entries": state["case"].entries, "threading_layer": _threading_layer(state["library"])}
    if kind == "calibrate":
        return state["case"].calibrate(msg[1], msg[2])
    if kind == "sample":
        return state["case"].sample(msg[1])
    if kind == "drop":
        state["case"] = None
        gc.collect()
        return {}
    raise ValueError(f"unknown request {kind!r}")


def _threading_layer(library: str) -> str | None:
    if library not in ("numbanorm", "roofline"):
        return None
    import numba

    try:
        return numba.threading_layer()
    except Exception:  # noqa: BLE001 - only known after a parallel kernel ran
        return None
