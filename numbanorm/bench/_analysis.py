"""From timings to report cells: roofline, fraction of floor, unstable cells (pure functions).

A *cell* is one peer (or roofline copy) on one case. Its time is the ``stat`` (median, or min) of
its samples. A cell is *suspect* when

- its median is more than :data:`SPREAD` times its min (the samples disagree), or
- its GB/s is more than :data:`NEIGHBOUR_FACTOR` times below the median of its own GB/s on the
  neighbouring sizes of the same op and layout (only below: noise makes a cell slower, and a
  larger size is often much faster per byte than a µs-sized one, which is no outlier);

suspect cells are measured again (:func:`to_remeasure`), after waiting for a quiet machine. A
cell is *unstable* (``~``) when the second measurement is still spread, or, for a neighbour
outlier, disagrees with the first by more than :data:`SPREAD`, or repeats only on a busy machine
(both measurements with threads waiting for a CPU more than :data:`BUSY_STALL` of the time: on
2 cores, torch's per-channel parallel regions then took 8-24 ms a call for a 12 KB BatchNorm, in
every sample, where they take 12-18 µs with a free core). An outlier that repeats on a quiet
machine is a property of the peer, not noise.

The roofline of a case is its fastest copy by the same statistic as the ops (median by
default), sampled in the same rounds: load that slows every library slows the copies alike and
cancels in the fraction of floor. (The copies' min would not cancel: under a load average of 6
on 2 cores it put numbanorm at 0.01-0.4 of its floor where median over median gave 0.01-0.7.)
Copies are not re-measured; when the copy used is spread (median > :data:`SPREAD` x min), the
roofline is marked unstable, and so is every fraction of floor of that case.
"""

from __future__ import annotations

import statistics
from typing import Any

from ._cases import Case
from ._floors import FLOOR_SUSPECT, case_floor, fraction
from ._registry import COPIES

#: Median over min above which a cell's samples disagree. Measured on the 2-core machine while
#: another agent's tests kept one core busy: cells of single-threaded calls spread 1.25-1.6,
#: cells whose 2-thread parallel regions were preempted 3-60.
SPREAD = 2.0
#: A peer this many times slower (in GB/s) than on the neighbouring sizes of the same op and
#: layout is measured again.
NEIGHBOUR_FACTOR = 10.0
#: Share of the sampling time during which some runnable thread waited for a CPU above which the
#: machine counts as busy (``stall_share`` of a cell). It marks only repeated neighbour outliers:
#: on a 2-core machine with one other runnable process it is 0.4-1.0 for every 2-thread cell, most
#: of which are fine.
BUSY_STALL = 0.25


def cell_time(entry: dict, stat: str) -> float | None:
    return entry.get(f"{stat}_s")


def assemble(case: Case, entries: dict[str, dict], llc_bytes: int, stat: str) -> dict[str, Any]:
    """The JSON result of one case from its peers' and copies' entries."""
    fl = case_floor(case, llc_bytes)
    result: dict[str, Any] = {
        "group": case.group, "op": case.op, "layout": case.layout, "shape": list(case.shape),
        "dtype": case.spec.dtype, "category": case.spec.category, "x_bytes": case.x_nbytes,
        "floor": fl.as_json(case.x_nbytes),
        "roofline": {"copies": {p: e for p, e in entries.items() if p in COPIES}},
        "peers": {p: e for p, e in entries.items() if p not in COPIES},
    }
    derive(result, stat)
    return result


def derive(result: dict, stat: str) -> None:
    """(Re)compute time, GB/s, the roofline, every fraction of floor and the marks of re-measured
    cells (:func:`recheck`) of ``result``."""
    nbytes = result["floor"]["bytes"]
    roof = result["roofline"]
    for entry in result["peers"].values():
        recheck(entry)
    for entry in [*roof["copies"].values(), *result["peers"].values()]:
        t = cell_time(entry, stat)
        if t:
            entry["time_s"] = t
            entry["gbps"] = nbytes / t / 1e9
    timed = {p: e["time_s"] for p, e in roof["copies"].items() if e.get("time_s")}
    for key in ("used", "time_s", "gbps", "unstable"):
        roof.pop(key, None)
    if timed:
        used = min(timed, key=timed.get)
        roof.update(used=used, time_s=timed[used], gbps=nbytes / timed[used] / 1e9)
        if spread_flag(roof["copies"][used]):
            roof["unstable"] = True
    for entry in result["peers"].values():
        frac = fraction(roof.get("time_s"), entry.get("time_s"))
        entry.pop("floor_suspect", None)
        if frac is None:
            entry.pop("floor_fraction", None)
            continue
        entry["floor_fraction"] = frac
        if frac > FLOOR_SUSPECT:
            entry["floor_suspect"] = True


def cells(result: dict):
    """(peer, entry) of every peer and copy of a result."""
    yield from result["peers"].items()
    yield from result["roofline"]["copies"].items()


def busy_share(results: list[dict]) -> float | None:
    """Median over the peers' cells of the share of time threads waited for a CPU."""
    shares = sorted(e["stall_share"] for r in results for e in r["peers"].values() if "stall_share" in e)
    return statistics.median(shares) if shares else None


def spread_flag(entry: dict) -> str | None:
    """Why a cell's samples disagree, or None."""
    lo, mid = entry.get("min_s"), entry.get("median_s")
    if lo and mid and mid > SPREAD * lo:
        return f"median {mid / lo:.1f}x the min (> {SPREAD:g}x)"
    return None


def neighbour_flags(results: list[dict]) -> dict[tuple[str, str], str]:
    """(group, peer) -> why, for peers more than :data:`NEIGHBOUR_FACTOR` times below the median of
    their GB/s on the neighbouring sizes (up to two smaller and two larger x) of the same op and
    layout."""
    series: dict[tuple[str, str, str], list[tuple[int, str, float]]] = {}
    for res in results:
        for peer, entry in res["peers"].items():
            if entry.get("gbps"):
                series.setdefault((res["op"], res["layout"], peer), []).append(
                    (res["x_bytes"], res["group"], entry["gbps"]))
    out: dict[tuple[str, str], str] = {}
    for (_, _, peer), pts in series.items():
        pts.sort()
        for i, (_, group, gbps) in enumerate(pts):
            near = [p[2] for p in pts[max(0, i - 2):i] + pts[i + 1:i + 3]]
            if not near:
                continue
            ref = statistics.median(near)
            if ref > NEIGHBOUR_FACTOR * gbps:
                out[(group, peer)] = (f"{gbps:.3g} GB/s, {ref / gbps:.0f}x below its {ref:.3g} GB/s on the "
                                      f"neighbouring sizes")
    return out


def to_remeasure(results: list[dict]) -> dict[str, dict[str, str]]:
    """group -> {peer: why} of every suspect peer cell (not the copies)."""
    out: dict[str, dict[str, str]] = {}
    for res in results:
        for peer, entry in res["peers"].items():
            why = spread_flag(entry)
            if why:
                out.setdefault(res["group"], {})[peer] = why
    for (group, peer), why in neighbour_flags(results).items():
        out.setdefault(group, {}).setdefault(peer, why)
    return out


def settle(first: dict, second: dict, why: str) -> dict:
    """The entry kept for a cell measured twice: the second measurement (the first kept as
    ``first``), marked ``unstable`` (with the reason) by :func:`recheck`."""
    if "median_s" not in second:  # the re-measure failed: keep the first, unstable
        return first | {"unstable": True, "unstable_why": f"{why}; re-measure failed"}
    keep = dict(second, remeasured=True, suspect_why=why,
                first={k: first.get(k) for k in ("median_s", "min_s", "stall_share")})
    recheck(keep)
    return keep


def recheck(entry: dict) -> None:
    """Mark a re-measured cell ``unstable`` when the second measurement is still spread, when its
    median is more than :data:`SPREAD` times off the first's, or when a neighbour outlier repeated
    only on a busy machine (both measurements with ``stall_share`` above :data:`BUSY_STALL`).
    Pure: derived from what the entry stores."""
    if not entry.get("remeasured") or entry.get("unstable"):
        return
    first, why = entry["first"], entry.get("suspect_why", "")
    m1, m2 = first.get("median_s"), entry["median_s"]
    still = spread_flag(entry)
    if still:
        entry.update(unstable=True, unstable_why=f"{why}; again: {still}")
    elif m1 and max(m1 / m2, m2 / m1) > SPREAD:
        entry.update(unstable=True, unstable_why=f"{why}; re-measure {m2 / m1:.2f}x the first median")
    elif "below its" in why and min(first.get("stall_share") or 0.0, entry.get("stall_share", 0.0)) > BUSY_STALL:
        entry.update(unstable=True, unstable_why=f"{why}; repeated, but on a busy machine (threads waited for "
                                                 f"a CPU {entry['stall_share']:.0%} of the time)")


def merge(result: dict, second: dict[str, dict], whys: dict[str, str], stat: str) -> None:
    """Put the re-measured cells ``second`` (peer -> entry) into ``result``."""
    for peer, why in whys.items():
        if peer in result["peers"]:
            result["peers"][peer] = settle(result["peers"][peer], second.get(peer, {}), why)
    derive(result, stat)


def unstable(entry: dict) -> bool:
    return bool(entry.get("unstable"))
