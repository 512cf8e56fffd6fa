"""Benchmark report: ``python -m numbanorm.bench`` (``--help`` for the options).

Times numbanorm against torch, ONNX Runtime, JAX, OpenVINO and NumPy (each when installed) and a
roofline copy, on the grid of :mod:`numbanorm.bench._cases` (shared with the pytest-benchmark
suite in ``benchmarks/``). Every library runs in its own worker process (:mod:`._worker`); the
driver (:mod:`._driver`) alternates them sample by sample. Each op is credited with its traffic
floor (:mod:`._floors`) and measured as a fraction of it against the fastest copy of the same
bytes (:mod:`._roofline`). Suspect cells are measured again and marked unstable if they stay so
(:mod:`._analysis`).

Writes ``bench.json`` (format ``numbanorm-bench/2``, :data:`SCHEMA` in :mod:`._schema`),
``bench.md``, ``bench.png`` and ``dashboard.json`` (github-action-benchmark's
``customBiggerIsBetter`` input). ``benchmarks/compare.py`` gates CI on the fraction of floor.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import _analysis, _cases, _export, _report, _run
from ._registry import PEERS

__all__ = ["main"]

DESCRIPTION = """\
Time numbanorm against torch, ONNX Runtime, JAX, OpenVINO and NumPy (those that are installed;
the others are missing columns, with a note) and against a roofline copy measured in the same run.

Every library runs in its own process, with the same thread count; the driver takes one sample
of each in turn. Each op is credited with the bytes it must move (its traffic floor); "fraction
of floor" is the time of the fastest copy of those bytes divided by the op's time. Cells whose
samples disagree are measured again and marked "~" if they still do.

Writes bench.json, bench.md, bench.png and dashboard.json (for github-action-benchmark) to --out.
"""

EPILOG = """\
examples:
  python -m numbanorm.bench                      quick grid, all cores
  python -m numbanorm.bench --full --threads 2   every case, 2 threads
  python -m numbanorm.bench --ops backward --peers numbanorm,torch
  python -m numbanorm.bench --render bench.json  table, markdown, PNG, dashboard from a JSON file
  python -m numbanorm.bench --readme docs/bench/bench.json   update the summary in README.md
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m numbanorm.bench", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--full", action="store_true", help="run the whole grid (default: the quick subset)")
    grid.add_argument("--smoke", action="store_true", help="the whole grid on tiny shapes (a functional check)")
    p.add_argument("--ops", default="all",
                   help=f"comma-separated ops or aliases (default: all): {', '.join(_cases.OPS)}; "
                        f"aliases: {', '.join(_cases.CATEGORIES)}")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: all usable cores)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of samples per case and peer (default: 0.2, or 0.5 with --full)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the samples reported (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory (default: %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-remeasure", action="store_true", help="do not measure suspect cells again (faster)")
    p.add_argument("--wait", type=float, default=2.0, metavar="SECONDS",
                   help="before each case, wait up to this long for a quiet machine (no thread waiting for a "
                        "CPU; 3x as long before a re-measure, a minute in all per pass; 0: never wait; "
                        "default: %(default)s)")
    p.add_argument("--no-quiesce", action="store_true",
                   help="diagnostic: answer without waiting for a library's threads to go idle, so that "
                        "they may still spin while the next library is timed")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="write the outputs from this bench.json (roofline and fractions derived again), run nothing")
    p.add_argument("--readme", type=Path, metavar="JSON",
                   help="update the results summary in README.md (--readme-file) from this bench.json, run nothing")
    p.add_argument("--readme-file", type=Path, default=Path("README.md"), help="(default: %(default)s)")
    return p


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def write_outputs(report: dict, out: Path, plot: bool = True) -> list[Path]:
    """bench.json, bench.md, dashboard.json and (``plot``, matplotlib installed) bench.png."""
    from . import _plot

    out.mkdir(parents=True, exist_ok=True)
    _report.write_json(report, out / "bench.json")
    (out / "bench.md").write_text(_report.markdown(report))
    (out / "dashboard.json").write_text(json.dumps(_export.dashboard(report), indent=1) + "\n")
    written = [out / n for n in ("bench.json", "bench.md", "dashboard.json")]
    if plot:
        why = _plot.plot(report, out / "bench.png")
        if why:
            print(f"note: {why}")
        else:
            written.append(out / "bench.png")
    return written


def _exit_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C: the workers are stopped and the temporary files removed."""
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    except ValueError:  # not the main thread
        pass


def _readme(args: argparse.Namespace) -> int:
    report = json.loads(args.readme.read_text())
    try:
        changed = _export.update_readme(args.readme_file, report)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_export.readme_summary(report))
    print(f"{args.readme_file}: {'updated' if changed else 'already up to date'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report; returns the exit status (2 for bad arguments, else 0)."""
    args = _parser().parse_args(argv)
    if args.readme:
        return _readme(args)
    if args.render:
        report = json.loads(args.render.read_text())
        for res in report["results"]:  # roofline, GB/s, fractions and suspect marks by this version's rules
            _analysis.derive(res, report["config"]["stat"])
    else:
        which = "smoke" if args.smoke else ("full" if args.full else "quick")
        try:
            ops = tuple(o for o in args.ops.split(",") if o and o != "all")
            cases = _cases.grid(which, ops)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        peers = [p for p in args.peers.split(",") if p]
        unknown = set(peers) - set(PEERS)
        if unknown:
            print(f"error: unknown peers {sorted(unknown)}; expected some of {list(PEERS)}", file=sys.stderr)
            return 2
        budget = args.budget if args.budget is not None else (0.5 if args.full else 0.2)
        _exit_on_sigterm()
        report = _run.run(cases, peers, which, args.threads or default_threads(), budget, args.stat,
                          remeasure=not args.no_remeasure, quiesce=not args.no_quiesce, wait_s=args.wait)
    _report.print_table(report)
    written = write_outputs(report, args.out, plot=not args.no_plot)
    print(f"wrote {', '.join(map(str, written))}")
    return 0
