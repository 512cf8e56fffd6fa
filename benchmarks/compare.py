"""Fail on a regression of the fraction of floor against a baseline.

    python benchmarks/compare.py BASELINE.json CURRENT.json [--tolerance 0.30] [--peers numbanorm,numbanorm-out]

Raw times on shared CI runners swing by 2x from run to run, but an op's time relative to a copy
of the bytes it must move, in the same run, is far steadier: both suffer the same machine. So for
every case (``group``) and checked peer this compares the **fraction of floor**

    fraction = roofline time / peer time     (1.0 = moving only the op's floor bytes at copy speed)

where the roofline is the fastest copy of the case's floor bytes (``copy``, ``copy-nt``,
``copy-1t``; see numbanorm/bench/_roofline.py), and fails (exit 1) when
``current < baseline * (1 - tolerance)``. Default tolerance: 0.30. Improvements never fail.
Cells marked unstable or above their floor (a wrong floor) in either file are listed, not
checked; so are cases or peers only one file has. Exit 2 if nothing could be compared.

Reads ``python -m numbanorm.bench`` JSON (format ``numbanorm-bench/2``: ``floor_fraction``) and
pytest-benchmark ``--benchmark-json`` output of ``benchmarks/test_bench.py`` (group
``op|layout|shape``, ``extra_info.peer``, median times; the copies move the floor's bytes there
too).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_TOLERANCE = 0.30
DEFAULT_PEERS = ("numbanorm", "numbanorm-out")
COPIES = ("copy", "copy-nt", "copy-1t")
FORMAT = "numbanorm-bench/2"


def fractions(doc: dict) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], str]]:
    """((group, peer) -> fraction of floor, (group, peer) -> why a cell is not comparable)."""
    out: dict[tuple[str, str], float] = {}
    skip: dict[tuple[str, str], str] = {}
    if doc.get("format") == FORMAT:
        for res in doc["results"]:
            for peer, e in res["peers"].items():
                if "floor_fraction" not in e:
                    continue
                key = (res["group"], peer)
                if e.get("unstable"):
                    skip[key] = "unstable"
                elif e.get("floor_suspect"):
                    skip[key] = "above its floor"
                else:
                    out[key] = float(e["floor_fraction"])
    elif "benchmarks" in doc:  # pytest-benchmark: the fastest copy over the peer's median
        times: dict[str, dict[str, float]] = {}
        for bench in doc["benchmarks"]:
            peer = (bench.get("extra_info") or {}).get("peer")
            t = (bench.get("stats") or {}).get("median")
            if peer and bench.get("group") and t:
                times.setdefault(bench["group"], {})[peer] = float(t)
        for group, peers in times.items():
            roof = min((peers[c] for c in COPIES if c in peers), default=None)
            for peer, t in peers.items():
                if roof and peer not in COPIES and t > 0:
                    out[(group, peer)] = roof / t
    elif str(doc.get("format", "")).startswith("numbanorm-bench/"):
        raise ValueError(f"format {doc['format']!r} has no fraction of floor; expected {FORMAT!r}")
    else:
        raise ValueError("not a numbanorm-bench or pytest-benchmark JSON document")
    return out, skip


def compare(baseline: dict, current: dict, tolerance: float = DEFAULT_TOLERANCE,
            peers: Sequence[str] = DEFAULT_PEERS) -> tuple[list[dict], list[str]]:
    """Rows ``{group, peer, baseline, current, change, regressed}`` and notes on what was skipped."""
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    (base, base_skip), (cur, cur_skip) = fractions(baseline), fractions(current)
    rows, notes = [], []
    for key in sorted(k for k in set(base) | set(base_skip) if k[1] in peers):
        if key in base_skip or key in cur_skip:
            why = f"{base_skip[key]} in the baseline" if key in base_skip else f"{cur_skip[key]} now"
            notes.append(f"{key[0]} {key[1]}: {why}, not checked")
            continue
        if key not in cur:
            notes.append(f"{key[0]} {key[1]}: in the baseline only")
            continue
        b, c = base[key], cur[key]
        rows.append({"group": key[0], "peer": key[1], "baseline": b, "current": c, "change": c / b - 1,
                     "regressed": c < b * (1 - tolerance)})
    known = set(base) | set(base_skip)
    notes += [f"{g} {p}: not in the baseline" for g, p in sorted(set(cur) | set(cur_skip))
              if p in peers and (g, p) not in known]
    return rows, notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("current", type=Path)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="allowed relative drop of the fraction of floor (default: %(default)s)")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS), help="peers checked (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        rows, notes = compare(json.loads(args.baseline.read_text()), json.loads(args.current.read_text()),
                              args.tolerance, tuple(args.peers.split(",")))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'case':<44} {'peer':<14} {'baseline':>9} {'current':>9} {'change':>8}   (fraction of floor)")
    for r in rows:
        flag = "  REGRESSION" if r["regressed"] else ""
        print(f"{r['group']:<44} {r['peer']:<14} {r['baseline']:>9.3f} {r['current']:>9.3f} {r['change']:>+8.1%}{flag}")
    for n in notes:
        print(f"note: {n}")
    if not rows:
        print("error: nothing to compare (no common, stable case)", file=sys.stderr)
        return 2
    bad = [r for r in rows if r["regressed"]]
    print(f"{len(bad)} of {len(rows)} regressed beyond {args.tolerance:.0%} of their fraction of floor")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
