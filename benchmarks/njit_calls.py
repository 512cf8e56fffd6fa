"""Per-call cost of numbanorm ops called from inside ``@njit`` code (issue #20), next to the
kernel's own time, the Python-level call and torch, in one process.

Usage, from the repository root (so that its ``numbanorm`` is the one imported):
``python -m benchmarks.njit_calls [SAMPLES] [CALLS]``; ``njit_call_costs()`` returns the
numbers (µs per call) for the benchmark CLI. ``python -m benchmarks.njit_calls large``:
``serial_cost()``, what the overloads' serial-only rule costs on large inputs against the
Python-level call's parallel plan. Each sample times CALLS calls in a loop (the njit
rows: a jitted loop, so no Python in between) with ``time.thread_time`` (CPU time of the calling
thread, steadier than wall time on a shared machine); the median and the minimum of SAMPLES
interleaved samples are reported. One numba thread.

* ``njit``: the op called from jitted code (its numba overload: checks, output allocation, kernel);
* ``kernel``: the same serial kernel entry called from jitted code on preallocated buffers;
* ``python``: the Python-level call (``numbanorm.layer_norm(...)``);
* ``torch``: ``torch.nn.functional`` on CPU tensors (absent without torch).
"""

from __future__ import annotations

import statistics
import sys
import time

import numba
import numpy as np

import numbanorm as nb
from numbanorm import cpu
from numbanorm.cpu.layer_norm import rms_norm_rows

CASES = ("LN (1,16,768)", "RMSNorm (1,4096)", "BN eval (1,64,7,7)")


@numba.njit(cache=True)
def _ln_njit(x, w, b, n):
    s = 0.0
    for _ in range(n):
        s += nb.layer_norm(x, 768, w, b)[0, 0, 0]
    return s


@numba.njit(cache=True)
def _ln_kernel(x, w, b, n):
    x2 = x.reshape(16, 768)
    out = np.empty_like(x2)
    stats = np.empty(16, np.float32)
    s = 0.0
    for _ in range(n):
        cpu.layer_norm_serial_cached(x2, w, b, 1e-5, out, stats, stats)
        s += out[0, 0]
    return s


@numba.njit(cache=True)
def _rms_njit(x, w, n):
    s = 0.0
    for _ in range(n):
        s += nb.rms_norm(x, 4096, w, 1e-6)[0, 0]
    return s


@numba.njit(cache=True)
def _rms_kernel(x, w, n):
    out = np.empty_like(x)
    rstd = np.empty(1, np.float32)
    s = 0.0
    for _ in range(n):
        rms_norm_rows(x, 0, 1, w, 1e-6, out, rstd)
        s += out[0, 0]
    return s


@numba.njit(cache=True)
def _bn_njit(x, rm, rv, w, b, n):
    s = 0.0
    for _ in range(n):
        s += nb.batch_norm(x, rm, rv, w, b)[0, 0, 0, 0]
    return s


@numba.njit(cache=True)
def _bn_kernel(x, rm, rv, w, b, n):
    x3 = x.reshape(1, 64, 49)
    out = np.empty_like(x3)
    no_stats = np.empty((0, 0), np.float32)
    s = 0.0
    for _ in range(n):
        cpu.batch_norm_eval_rows(x3, rm, rv, w, b, 1e-5, out, no_stats)
        s += out[0, 0, 0]
    return s


def _inputs(rng):
    f32 = np.float32
    x = (rng.standard_normal((1, 16, 768)) * 2 + 3).astype(f32)
    w, b = rng.standard_normal(768).astype(f32), rng.standard_normal(768).astype(f32)
    xr, wr = rng.standard_normal((1, 4096)).astype(f32), rng.standard_normal(4096).astype(f32)
    xb = (rng.standard_normal((1, 64, 7, 7)) * 2 + 3).astype(f32)
    c, z = rng.standard_normal(64).astype(f32), rng.standard_normal(64).astype(f32)
    rm, rv = rng.standard_normal(64).astype(f32), (rng.random(64) + 0.5).astype(f32)
    return x, w, b, xr, wr, xb, c, z, rm, rv


def _timers(rng):
    """{case: {kind: f(n) -> runs the call n times}}."""
    x, w, b, xr, wr, xb, c, z, rm, rv = _inputs(rng)

    def python_loop(call):
        def run(n):
            for _ in range(n):
                call()
        return run

    timers = {
        CASES[0]: {"njit": lambda n: _ln_njit(x, w, b, n), "kernel": lambda n: _ln_kernel(x, w, b, n),
                   "python": python_loop(lambda: nb.layer_norm(x, 768, w, b))},
        CASES[1]: {"njit": lambda n: _rms_njit(xr, wr, n), "kernel": lambda n: _rms_kernel(xr, wr, n),
                   "python": python_loop(lambda: nb.rms_norm(xr, 4096, wr, 1e-6))},
        CASES[2]: {"njit": lambda n: _bn_njit(xb, rm, rv, c, z, n), "kernel": lambda n: _bn_kernel(xb, rm, rv, c, z, n),
                   "python": python_loop(lambda: nb.batch_norm(xb, rm, rv, c, z))},
    }
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return timers
    torch.set_num_threads(1)
    tx, tw, tb, txr, twr = (torch.from_numpy(a) for a in (x, w, b, xr, wr))
    txb, tc, tz, trm, trv = (torch.from_numpy(a) for a in (xb, c, z, rm, rv))
    timers[CASES[0]]["torch"] = python_loop(lambda: F.layer_norm(tx, (768,), tw, tb))
    timers[CASES[1]]["torch"] = python_loop(lambda: F.rms_norm(txr, (4096,), twr, 1e-6))
    timers[CASES[2]]["torch"] = python_loop(lambda: F.batch_norm(txb, trm, trv, tc, tz))
    return timers


def njit_call_costs(samples: int = 11, calls: int = 2000, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """{case: {kind: {"median": µs, "min": µs}}} for the kinds njit, kernel, python, torch (see
    the module docstring), and "njit - kernel" (median of the per-sample differences)."""
    numba.set_num_threads(1)
    timers = _timers(np.random.default_rng(seed))
    for kinds in timers.values():  # compile (or load) and warm up
        for run in kinds.values():
            run(10)
    times = {case: {kind: [] for kind in kinds} for case, kinds in timers.items()}
    for _ in range(samples):
        for case, kinds in timers.items():
            for kind, run in kinds.items():
                t0 = time.thread_time_ns()
                run(calls)
                times[case][kind].append((time.thread_time_ns() - t0) / calls / 1e3)
    result = {}
    for case, kinds in times.items():
        row = {kind: {"median": statistics.median(v), "min": min(v)} for kind, v in kinds.items()}
        diff = [a - k for a, k in zip(kinds["njit"], kinds["kernel"], strict=True)]
        row["njit - kernel"] = {"median": statistics.median(diff), "min": min(kinds["njit"]) - min(kinds["kernel"])}
        result[case] = row
    return result


@numba.njit(cache=True)
def _ln_big(x, w, b, out):
    return nb.layer_norm(x, x.shape[-1], w, b, out=out)


@numba.njit(cache=True)
def _rms_big(x, w, out):
    return nb.rms_norm(x, x.shape[-1], w, 1e-6, out=out)


@numba.njit(cache=True)
def _bn_train_big(x, rm, rv, w, b, out):
    return nb.batch_norm(x, rm, rv, w, b, True, out=out)


@numba.njit(cache=True)
def _gn_big(x, w, b, out):
    return nb.group_norm(x, 8, w, b, out=out)


def serial_cost(repeats: int = 7, seed: int = 0) -> dict[str, dict[str, float]]:
    """Large inputs called from jitted code (serial, always) against the Python-level call (its
    plan for numba's threads): {case: {"njit ms", "njit out= ms", "python ms", "python out= ms"}},
    best of ``repeats`` wall times, interleaved. ``njit``: the output allocated by numba (malloc
    maps a block above its mmap threshold afresh each call, so a 64 MB output pays a fault per
    4 KiB page, where the Python-level call reuses a touched block of numbanorm's arena);
    ``out=``: a preallocated output."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    x = rng.standard_normal((4096, 4096)).astype(f32)
    w, b = rng.standard_normal(4096).astype(f32), rng.standard_normal(4096).astype(f32)
    xb = rng.standard_normal((32, 64, 56, 56)).astype(f32)
    c, z = rng.standard_normal(64).astype(f32), rng.standard_normal(64).astype(f32)
    rm, rv = np.zeros(64, f32), np.ones(64, f32)
    o, ob = np.empty_like(x), np.empty_like(xb)
    cases = {
        "LN (4096,4096)": (lambda out: _ln_big(x, w, b, out), lambda out: nb.layer_norm(x, 4096, w, b, out=out), o),
        "RMSNorm (4096,4096)": (lambda out: _rms_big(x, w, out), lambda out: nb.rms_norm(x, 4096, w, 1e-6, out=out), o),
        "BN train (32,64,56,56)": (lambda out: _bn_train_big(xb, rm, rv, c, z, out),
                                   lambda out: nb.batch_norm(xb, rm, rv, c, z, True, out=out), ob),
        "GroupNorm (32,64,56,56) G=8": (lambda out: _gn_big(xb, c, z, out),
                                        lambda out: nb.group_norm(xb, 8, c, z, out=out), ob),
    }
    result = {}
    for case, (jitted, python, out) in cases.items():
        runs = {"njit ms": lambda j=jitted: j(None), "njit out= ms": lambda j=jitted, o=out: j(o),
                "python ms": lambda p=python: p(None), "python out= ms": lambda p=python, o=out: p(o)}
        best = dict.fromkeys(runs, float("inf"))
        for run in runs.values():  # compile / warm up
            run()
        for _ in range(repeats):
            for kind, run in runs.items():
                t0 = time.perf_counter()
                run()
                best[kind] = min(best[kind], (time.perf_counter() - t0) * 1e3)
        result[case] = best
    return result


def format_table(costs: dict) -> str:
    kinds = ("njit", "kernel", "njit - kernel", "python", "torch")
    lines = ["| call | " + " | ".join(f"{k} (µs)" for k in kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for case, row in costs.items():
        cells = [f"{row[k]['median']:.2f} ({row[k]['min']:.2f})" if k in row else "-" for k in kinds]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nmedian (min) of the samples, µs per call, one thread"


if __name__ == "__main__":
    if sys.argv[1:2] == ["large"]:
        print(f"large inputs, {numba.get_num_threads()} numba threads (njit: serial; python: its plan), best ms:")
        for case, row in serial_cost().items():
            print(f"  {case:30s} " + "  ".join(f"{k} {v:7.2f}" for k, v in row.items()))
    else:
        args = [int(a) for a in sys.argv[1:3]]
        print(format_table(njit_call_costs(*args)))
