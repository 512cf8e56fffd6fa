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


def measure(fn: Callable[[], Any], budget_s: float, min_repeats: int = 3, max_repeats: int = 1000) -> dict:
    """Median seconds per call of ``fn`` (already warm), sampling until ``budget_s`` is spent.

    Each sample loops ``inner`` calls so that it lasts at least :data:`MIN_SAMPLE_S`; at least
    ``min_repeats`` samples are taken whatever the budget. GC is off while sampling.
    """
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    inner = max(1, math.ceil(MIN_SAMPLE_S / max(single, 1e-9)))
    samples: list[float] = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        deadline = time.perf_counter() + budget_s
        while len(samples) < min_repeats or (time.perf_counter() < deadline and len(samples) < max_repeats):
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t) / inner)
    finally:
        if was_enabled:
            gc.enable()
    samples.sort()
    n = len(samples)
    median = samples[n // 2] if n % 2 else 0.5 * (samples[n // 2 - 1] + samples[n // 2])
    return {"median_s": median, "min_s": samples[0], "max_s": samples[-1], "repeats": n, "inner_loops": inner}


def run_case(case: _cases.Case, peers: Iterable[str], threads: int, budget_s: float, stat: str = "median",
             on_peer: Callable[[str], None] | None = None) -> dict:
    """Time every peer on one case (``stat``: ``median`` or ``min`` of the samples).

    Never raises for a peer: failures are recorded as ``error``, unsupported cases as ``skipped``.
    """
    data = _cases.make_data(case)
    ref = _cases.reference(case, data)
    result: dict[str, Any] = {"group": case.group, "op": case.op, "layout": case.layout,
                              "shape": list(case.shape), "bytes": case.nbytes, "peers": {}}
    for peer in peers:
        if on_peer:
            on_peer(peer)
        entry: dict[str, Any]
        try:
            prepared = _cases.prepare(peer, case, data, threads)
            err = _cases.agreement(peer, prepared, case, data, prepared.run(), ref)  # warm-up + check
            entry = measure(prepared.run, budget_s)
            entry["time_s"] = entry[f"{stat}_s"]
            entry["gbps"] = (case.copy_nbytes if peer == "copy" else case.nbytes) / entry["time_s"] / 1e9
            entry["rel_l2_error"] = err
            if not err <= _cases.AGREE_TOL:
                entry["note"] = f"disagrees with the float64 reference: rel L2 error {err:.2e}"
            del prepared
        except _cases.Unsupported as exc:
            entry = {"skipped": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a peer's failure must not end the report
            entry = {"error": f"{type(exc).__name__}: {exc}"}
        result["peers"][peer] = entry
    copy = result["peers"].get("copy", {}).get("gbps")
    for entry in result["peers"].values():
        if copy and "gbps" in entry:
            entry["roofline_fraction"] = entry["gbps"] / copy
    del data, ref
    if case.nbytes > 1 << 26:  # give big inputs back before the next case; small ones are not worth a full GC
        gc.collect()
    return result
