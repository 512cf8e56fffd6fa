"""Benchmark report: ``python -m numbanorm.bench [--full] [--ops ...] [--threads N] [--out DIR]``.

Times numbanorm (allocating and ``out=``) against torch CPU, ONNX Runtime, plain NumPy and an
``np.copyto`` roofline of x, on the grid in :mod:`numbanorm.bench._cases` (the same one the
pytest-benchmark suite in ``benchmarks/`` uses): float32 forward and backward LayerNorm and
BatchNorm, float16 / bfloat16 forward, RMSNorm, GroupNorm and residual-add LayerNorm. Needs only
numba and numpy: a missing peer is a missing column with a note. Timing: one untimed warm-up call
(which is also checked against a float64 reference), then the median of repeated samples within
``--budget`` seconds per case and peer (at least 3 samples; fast calls are looped within a
sample). ``--interleave`` samples the peers of a case in turn instead of one after the other, so
that load from other processes hits them alike (for side-by-side ratios on a busy machine).

Writes to ``--out`` (default ``bench-results/``): ``bench.json``, ``bench.md``, ``bench.png``.

JSON format ``numbanorm-bench/1``::

    {"format": "numbanorm-bench/1",
     "machine": {"date", "cpu", "machine", "system", "cores", "cores_usable", "threads",
                 "numba_threading_layer", "python", "versions": {package: version or null}},
     "config": {"grid": "quick" | "full" | "smoke", "ops": [...], "peers": [...],
                "threads": int, "budget_s": float, "stat": "median" | "min", "interleave": bool},
     "missing_peers": {peer: reason},               # peers not installed here
     "results": [{"group": "op|layout|shape", "op", "layout", "shape": [logical dims, NCHW for BN],
                  "dtype": "float32" | "float16" | "bfloat16",
                  "traffic": int,                    # x-sized arrays the op must read + write
                  "x_bytes": int,                    # x.nbytes
                  "bytes": int,                      # traffic * x_bytes (copy moves 2 * x_bytes)
                  "peers": {peer: {"median_s", "min_s", "max_s", "repeats", "inner_loops",
                                   "time_s",         # median_s or min_s, as config.stat says
                                   "gbps",           # bytes / time_s / 1e9
                                   "roofline_fraction",  # gbps / copy's gbps
                                   "rel_l2_error",   # vs the float64 reference (max over results)
                                   "note"?,          # it disagrees with the reference
                                   "caveat"?}        # how the peer differs (NumPy on half: float32)
                                | {"skipped": reason} | {"error": message}}}]}

``benchmarks/compare.py`` reads this format (and pytest-benchmark's ``--benchmark-json``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from . import _cases, _report, _run

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m numbanorm.bench", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="run the whole grid (default: the quick subset)")
    p.add_argument("--smoke", action="store_true", help="the whole grid on tiny shapes (a functional check)")
    p.add_argument("--ops", default="all",
                   help=f"comma-separated ops or aliases (default: all): {', '.join(_cases.OPS)}; "
                        f"aliases: {', '.join(_cases.CATEGORIES)}")
    p.add_argument("--peers", default=",".join(_cases.PEERS), help="comma-separated peers (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads for every peer (default: all cores)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timing per case and peer (default: 0.2, or 0.5 with --full)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the repeats reported (default: %(default)s; min resists a busy machine)")
    p.add_argument("--interleave", action="store_true",
                   help="sample a case's peers in turn (noise hits all alike; holds all their buffers at once)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory (default: %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def _progress(total: int):
    """(context, advance(label)) with a rich progress bar when installed, else plain lines."""
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except Exception:  # noqa: BLE001 - rich is optional
        count = [0]

        def advance(label: str) -> None:
            count[0] += 1
            print(f"[{count[0]}/{total}] {label}", file=sys.stderr, flush=True)

        return contextlib.nullcontext(), advance
    progress = Progress(TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), transient=True)
    task = progress.add_task("starting", total=total)
    started = [False]

    def advance(label: str) -> None:  # called before each step: the bar shows what runs now
        if started[0]:
            progress.advance(task)
        started[0] = True
        progress.update(task, description=label)

    return progress, advance


def _header(which: str, cases: list, peers: list[str], threads: int, budget: float) -> str:
    """What runs where: grid, peers, the thread count each library really uses, and the machine."""
    import numba

    used = [f"numba {numba.get_num_threads()}"]
    if "torch" in peers:
        import torch

        used.append(f"torch {torch.get_num_threads()}")
    if "onnxruntime" in peers:
        used.append(f"onnxruntime {threads} (per session)")
    m = _cases.machine_info(threads)
    return (f"numbanorm.bench: {which} grid, {len(cases)} cases x {len(peers)} peers ({', '.join(peers)}), "
            f"{budget:g} s per case and peer\n"
            f"threads: {threads} ({', '.join(used)})\n"
            f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['system']}, "
            f"Python {m['python']}, numba {m['versions']['numba']}, numpy {m['versions']['numpy']}"
            + (f", torch {m['versions']['torch']}" if "torch" in peers else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report; returns the exit status (2 for bad arguments, else 0)."""
    args = _parser().parse_args(argv)
    which = "smoke" if args.smoke else ("full" if args.full else "quick")
    try:
        ops = tuple(o for o in args.ops.split(",") if o and o != "all")
        cases = _cases.grid(which, ops)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(_cases.PEERS)
    if unknown:
        print(f"error: unknown peers {sorted(unknown)}; expected some of {list(_cases.PEERS)}", file=sys.stderr)
        return 2
    threads = _cases.set_threads(args.threads or _cases.default_threads())
    budget = args.budget if args.budget is not None else (0.5 if args.full else 0.2)
    avail = _cases.availability()
    missing = {p: avail[p] for p in peers if avail[p]}
    run_peers = [p for p in peers if p not in missing]
    print(_header(which, cases, run_peers, threads, budget), flush=True)

    results = []
    context, advance = _progress(len(cases) * len(run_peers))
    with context:
        for case in cases:
            results.append(_run.run_case(case, run_peers, threads, budget, args.stat,
                                         on_peer=lambda p, c=case: advance(f"{c.group} {p}"),
                                         interleave=args.interleave))
    report = {"format": _report.FORMAT, "machine": _cases.machine_info(threads),
              "config": {"grid": which, "ops": sorted({c.op for c in cases}), "peers": peers,
                         "threads": threads, "budget_s": budget, "stat": args.stat,
                         "interleave": args.interleave},
              "missing_peers": missing, "results": results}
    _report.print_table(report)
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_json(report, args.out / "bench.json")
    (args.out / "bench.md").write_text(_report.markdown(report))
    written = ["bench.json", "bench.md"]
    if not args.no_plot:
        why = _report.plot(report, args.out / "bench.png")
        if why:
            print(f"note: {why}")
        else:
            written.append("bench.png")
    print(f"wrote {', '.join(str(args.out / w) for w in written)}")
    return 0
