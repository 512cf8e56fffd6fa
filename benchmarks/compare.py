"""Fail on a regression of roofline-normalized throughput against a baseline.

    python benchmarks/compare.py BASELINE.json CURRENT.json [--tolerance 0.30] [--peers numbanorm,numbanorm-out]

Raw times on shared CI runners swing by 2x from run to run, but a kernel's throughput *relative to
``np.copyto`` of the same bytes in the same run* is far steadier: both suffer the same machine.
So for every case (``group``) and checked peer, this compares

    normalized = copy_time / peer_time        (= peer GB/s / copy GB/s; 1.0 = at the roofline)

(for an op that moves k x-sized arrays instead of 2, this is k/2 times its fraction of the
roofline: a constant factor that cancels against the baseline)

and fails (exit 1) when ``current < baseline * (1 - tolerance)``. Default tolerance: 0.30, i.e. a
drop of more than 30% of the normalized throughput; improvements never fail. Cases or peers that
only one file has are listed and ignored; exit 2 if nothing could be compared at all.

Reads both ``python -m numbanorm.bench`` JSON (format ``numbanorm-bench/1``) and pytest-benchmark
``--benchmark-json`` output of ``benchmarks/`` (group ``op|layout|shape``, ``extra_info.peer``,
median time).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_TOLERANCE = 0.30
DEFAULT_PEERS = ("numbanorm", "numbanorm-out")
ROOFLINE = "copy"


def load_times(doc: dict) -> dict[str, dict[str, float]]:
    """group -> peer -> seconds per call, from either supported JSON format."""
    times: dict[str, dict[str, float]] = {}
    if doc.get("format", "").startswith("numbanorm-bench/"):
        for res in doc["results"]:
            for peer, entry in res["peers"].items():
                t = entry.get("time_s", entry.get("median_s"))
                if t:
                    times.setdefault(res["group"], {})[peer] = float(t)
    elif "benchmarks" in doc:  # pytest-benchmark
        for bench in doc["benchmarks"]:
            peer = (bench.get("extra_info") or {}).get("peer")
            t = (bench.get("stats") or {}).get("median")
            if peer and bench.get("group") and t:
                times.setdefault(bench["group"], {})[peer] = float(t)
    else:
        raise ValueError("not a numbanorm-bench or pytest-benchmark JSON document")
    return times


def normalized(times: dict[str, dict[str, float]]) -> dict[tuple[str, str], float]:
    """(group, peer) -> copy_time / peer_time, for groups that timed the roofline."""
    out = {}
    for group, peers in times.items():
        copy = peers.get(ROOFLINE)
        if not copy:
            continue
        for peer, t in peers.items():
            if peer != ROOFLINE and t > 0:
                out[(group, peer)] = copy / t
    return out


def compare(baseline: dict, current: dict, tolerance: float = DEFAULT_TOLERANCE,
            peers: Sequence[str] = DEFAULT_PEERS) -> tuple[list[dict], list[str]]:
    """Rows ``{group, peer, baseline, current, change, regressed}`` and notes on what was skipped."""
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    base, cur = normalized(load_times(baseline)), normalized(load_times(current))
    rows, notes = [], []
    for key in sorted(k for k in base if k[1] in peers):
        if key not in cur:
            notes.append(f"{key[0]} {key[1]}: in the baseline only")
            continue
        b, c = base[key], cur[key]
        rows.append({"group": key[0], "peer": key[1], "baseline": b, "current": c, "change": c / b - 1,
                     "regressed": c < b * (1 - tolerance)})
    notes += [f"{g} {p}: not in the baseline" for g, p in sorted(cur) if p in peers and (g, p) not in base]
    return rows, notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("current", type=Path)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="allowed relative drop of normalized throughput (default: %(default)s)")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS), help="peers checked (default: %(default)s)")
    args = parser.parse_args(argv)
    rows, notes = compare(json.loads(args.baseline.read_text()), json.loads(args.current.read_text()),
                          args.tolerance, tuple(args.peers.split(",")))
    print(f"{'case':<40} {'peer':<14} {'baseline':>9} {'current':>9} {'change':>8}")
    for r in rows:
        flag = "  REGRESSION" if r["regressed"] else ""
        print(f"{r['group']:<40} {r['peer']:<14} {r['baseline']:>9.3f} {r['current']:>9.3f} {r['change']:>+8.1%}{flag}")
    for n in notes:
        print(f"note: {n}")
    if not rows:
        print("error: nothing to compare (no common case with a copy roofline)", file=sys.stderr)
        return 2
    bad = [r for r in rows if r["regressed"]]
    print(f"{len(bad)} of {len(rows)} regressed beyond {args.tolerance:.0%} of roofline-normalized throughput")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
