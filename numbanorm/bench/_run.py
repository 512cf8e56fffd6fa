"""Timing for ``python -m numbanorm.bench``: warm up, then the median of repeats within a budget."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import _cases

#: Shortest timed sample; calls faster than this are looped so timer resolution does not matter.
MIN_SAMPLE_S = 2e-4


def _calibrate(fn: Callable[[], Any]) -> tuple[int, float]:
    """(calls per sample, seconds of one call): one timed call of the warm ``fn``."""
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    return max(1, math.ceil(MIN_SAMPLE_S / max(single, 1e-9))), single


def _sample(fn: Callable[[], Any], inner: int) -> float:
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) / inner


def _stats(samples: list[float], inner: int) -> dict:
    samples = sorted(samples)
    n = len(samples)
    median = samples[n // 2] if n % 2 else 0.5 * (samples[n // 2 - 1] + samples[n // 2])
    return {"median_s": median, "min_s": samples[0], "max_s": samples[-1], "repeats": n, "inner_loops": inner}


class _NoGC:
    def __enter__(self):
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was_enabled:
            gc.enable()


def measure(fn: Callable[[], Any], budget_s: float, min_repeats: int = 3, max_repeats: int = 1000) -> dict:
    """Median seconds per call of ``fn`` (already warm), sampling until ``budget_s`` is spent.

    Each sample loops ``inner`` calls so that it lasts at least :data:`MIN_SAMPLE_S`; at least
    ``min_repeats`` samples are taken whatever the budget (a slow call's calibration call counts as
    the first). GC is off while sampling.
    """
    inner, single = _calibrate(fn)
    samples = [single] if inner == 1 else []
    with _NoGC():
        deadline = time.perf_counter() + budget_s
        while len(samples) < min_repeats or (time.perf_counter() < deadline and len(samples) < max_repeats):
            samples.append(_sample(fn, inner))
    return _stats(samples, inner)


def measure_interleaved(fns: dict[str, Callable[[], Any]], budget_s: float, min_repeats: int = 3,
                        max_repeats: int = 1000) -> dict[str, dict]:
    """Like :func:`measure` for several peers at once, taking one sample of each in turn, so that
    a burst of load from other processes hits every peer alike. ``budget_s`` is per peer."""
    calib = {name: _calibrate(fn) for name, fn in fns.items()}
    samples = {name: ([single] if inner == 1 else []) for name, (inner, single) in calib.items()}
    with _NoGC():
        deadline = time.perf_counter() + budget_s * len(fns)
        rounds = 0
        while rounds < min_repeats or (time.perf_counter() < deadline and rounds < max_repeats):
            for name, fn in fns.items():
                if len(samples[name]) <= rounds:
                    samples[name].append(_sample(fn, calib[name][0]))
            rounds += 1
    return {name: _stats(samples[name], calib[name][0]) for name in fns}


def run_case(case: _cases.Case, peers: Iterable[str], threads: int, budget_s: float, stat: str = "median",
             on_peer: Callable[[str], None] | None = None, interleave: bool = False) -> dict:
    """Time every peer on one case (``stat``: ``median`` or ``min`` of the samples).

    Never raises for a peer: failures are recorded as ``error``, unsupported cases as ``skipped``.
    With ``interleave``, all peers are prepared first and sampled in turn (more memory at once).
    """
    spec = case.spec
    result: dict[str, Any] = {"group": case.group, "op": case.op, "layout": case.layout,
                              "shape": list(case.shape), "dtype": spec.dtype, "traffic": spec.traffic,
                              "x_bytes": case.x_nbytes, "bytes": case.nbytes, "peers": {}}
    peers = list(peers)
    try:
        data = _cases.make_data(case)
    except _cases.Unsupported as exc:  # the dtype itself is not available here
        for peer in peers:
            if on_peer:
                on_peer(peer)
            result["peers"][peer] = {"skipped": str(exc)}
        return result
    ref = _cases.reference(case, data)
    tol = _cases.agree_tol(case)
    ready: dict[str, _cases.Prepared] = {}
    for peer in peers:
        if on_peer:
            on_peer(peer)
        entry: dict[str, Any]
        try:
            prepared = _cases.prepare(peer, case, data, threads)
            err = _cases.agreement(peer, prepared, case, data, prepared.run(), ref)  # warm-up + check
            entry = {"rel_l2_error": err}
            if not err <= tol:
                entry["note"] = f"disagrees with the float64 reference: rel L2 error {err:.2e} > {tol:.1e}"
            if prepared.caveat:
                entry["caveat"] = prepared.caveat
            if interleave:
                ready[peer] = prepared
            else:
                entry.update(measure(prepared.run, budget_s))
            del prepared
        except _cases.Unsupported as exc:
            entry = {"skipped": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a peer's failure must not end the report
            entry = {"error": f"{type(exc).__name__}: {exc}"}
        result["peers"][peer] = entry
    if ready:
        try:
            timed = measure_interleaved({p: r.run for p, r in ready.items()}, budget_s)
        except Exception as exc:  # noqa: BLE001
            timed = {}
            for peer in ready:
                result["peers"][peer] = {"error": f"{type(exc).__name__}: {exc}"}
        for peer, stats in timed.items():
            result["peers"][peer].update(stats)
        ready.clear()
    for peer, entry in result["peers"].items():
        if f"{stat}_s" in entry:
            entry["time_s"] = entry[f"{stat}_s"]
            entry["gbps"] = (case.copy_nbytes if peer == "copy" else case.nbytes) / entry["time_s"] / 1e9
    copy = result["peers"].get("copy", {}).get("gbps")
    for entry in result["peers"].values():
        if copy and "gbps" in entry:
            entry["roofline_fraction"] = entry["gbps"] / copy
    del data, ref
    if case.x_nbytes > 1 << 25:  # give big inputs back before the next case; small ones are not worth a full GC
        gc.collect()
    return result
