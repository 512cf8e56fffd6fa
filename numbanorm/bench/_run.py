"""One run of ``python -m numbanorm.bench``: the grid through the worker pool, suspect cells measured
again, and the report dict (format ``numbanorm-bench/2``)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from . import _analysis, _cases, _driver, _report
from ._floors import llc_bytes
from ._registry import COPIES, LIBRARY, missing_module

#: Longest wait for a quiet machine before a re-measured case, in multiples of the wait before a
#: case (``wait_s``), and in all per pass.
REMEASURE_WAIT = 3.0
RUN_WAIT_S = 60.0


def _progress(total: int) -> tuple[Any, Callable[[str], None], Callable[[], None]]:
    """(context, show(label), step()) with a rich progress bar on a terminal (rich installed), else
    one line per case on stderr."""
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        if not sys.stderr.isatty():
            raise ImportError("not a terminal")
    except Exception:  # noqa: BLE001 - rich is optional
        count, last = [0], [""]

        def show_plain(label: str) -> None:
            last[0] = label

        def step_plain() -> None:
            count[0] += 1
            print(f"[{count[0]}/{total}] {last[0].rsplit(' ', 1)[0]}", file=sys.stderr, flush=True)

        return contextlib.nullcontext(), show_plain, step_plain
    progress = Progress(TextColumn("{task.description:<56}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), transient=True)
    task = progress.add_task("starting", total=total)
    return (progress, lambda label: progress.update(task, description=label),
            lambda: progress.advance(task))


def _header(which: str, cases: list, peers: list[str], threads: int, budget: float, infos: dict) -> str:
    m = _cases.machine_info(threads)
    used = ", ".join(f"{lib} {info.get('threads')}" for lib, info in infos.items())
    return (f"numbanorm.bench: {which} grid, {len(cases)} cases x {len(peers)} peers ({', '.join(peers)}) + "
            f"roofline copies, {budget:g} s per case and peer, one process per library\n"
            f"threads: {threads} ({used})\n"
            f"machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores ({m['cores_usable']} usable), "
            f"LLC {m['llc_bytes'] >> 20} MiB, load {m['load_avg_1m']}, {m['system']}, Python {m['python']}")


def _isolation(results: list[dict], ledger: _driver.Ledger, quiesce: bool) -> dict[str, Any]:
    others = [e["others_cores"] for r in results for _, e in _analysis.cells(r) if "others_cores" in e]
    return {"quiesce": quiesce, "workers": ledger.summary(),
            "max_others_cores": max(others, default=0.0),
            "mean_others_cores": sum(others) / len(others) if others else 0.0,
            "busy_share": _analysis.busy_share(results),
            "load_avg_1m_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def run(cases: list[_cases.Case], peers: list[str], which: str, threads: int, budget: float, stat: str,
        remeasure: bool = True, quiesce: bool = True, wait_s: float = 2.0) -> dict[str, Any]:
    """Measure ``cases`` on ``peers`` (+ the roofline copies); the report dict."""
    missing = {p: why for p in peers if (why := missing_module(LIBRARY[p]))}
    run_peers = [p for p in peers if p not in missing]
    llc = llc_bytes()
    results: list[dict] = []
    ledger = _driver.Ledger()
    layer = None
    machine = _cases.machine_info(threads)  # at the start: the load average before the run
    waits: list[float] = []
    with _driver.Pool(threads, quiesce) as pool:
        infos = pool.start(sorted({LIBRARY[p] for p in run_peers + list(COPIES)}))
        for lib, info in infos.items():
            if info.get("broken"):
                missing.update({p: info["broken"] for p in run_peers if LIBRARY[p] == lib})
        run_peers = [p for p in run_peers if p not in missing]
        print(_header(which, cases, run_peers, threads, budget, infos), flush=True)
        context, show, step = _progress(len(cases))
        with context:
            for case in cases:
                show(f"{case.group}: waiting for a quiet machine")
                waits.append(_driver.wait_quiet(wait_s if sum(waits) < RUN_WAIT_S else 0.0))
                entries, info = _driver.measure_case(pool, case, run_peers + list(COPIES), budget, ledger,
                                                     on_sample=lambda p, c=case: show(f"{c.group} {p}"))
                layer = layer or info.get("threading_layer")
                results.append(_analysis.assemble(case, entries, llc, stat))
                step()
            if remeasure:
                waits += _remeasure(pool, cases, results, budget, ledger, stat, show, REMEASURE_WAIT * wait_s)
    machine["numba_threading_layer"] = layer
    report = {"format": _report.FORMAT, "machine": machine,
              "config": {"grid": which, "ops": sorted({c.op for c in cases}), "peers": peers, "threads": threads,
                         "budget_s": budget, "stat": stat, "remeasure": remeasure, "wait_s": wait_s,
                         "spread_factor": _analysis.SPREAD, "neighbour_factor": _analysis.NEIGHBOUR_FACTOR},
              "missing_peers": missing, "results": results,
              "isolation": _isolation(results, ledger, quiesce) | {"waited_for_quiet_s": sum(waits)}}
    report["machine"]["threads_reported"] = {lib: info.get("threads") for lib, info in infos.items()}
    return report


def _remeasure(pool: _driver.Pool, cases: list[_cases.Case], results: list[dict], budget: float,
               ledger: _driver.Ledger, stat: str, show: Callable[[str], None], wait_s: float) -> list[float]:
    """Measure the suspect cells of each case again (those peers only, in turn, after waiting for a
    quiet machine) and settle them. The seconds waited."""
    by_group = {c.group: c for c in cases}
    res_of = {r["group"]: r for r in results}
    waits: list[float] = []
    for group, whys in _analysis.to_remeasure(results).items():
        case = by_group[group]
        show(f"again: {group}: waiting for a quiet machine")
        waits.append(_driver.wait_quiet(wait_s if sum(waits) < RUN_WAIT_S else 0.0))
        entries, _ = _driver.measure_case(pool, case, list(whys), budget, ledger,
                                          on_sample=lambda p, g=group: show(f"again: {g} {p}"))
        _analysis.merge(res_of[group], entries, whys, stat)
    return waits
