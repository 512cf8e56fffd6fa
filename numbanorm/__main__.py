"""``python -m numbanorm precompile [--ops ...] [--dtypes ...] [--jobs N]``: fill numba's kernel
cache ahead of time (in a Docker image build, or once per CI cache key)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._precompile import DEFAULT_DTYPES, DTYPES, OPS, precompile


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m numbanorm", description="numbanorm command-line tools.")
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("precompile", help="compile the common kernel signatures into numba's on-disk cache",
                         description="Compile the common signatures of the chosen ops into numba's on-disk cache "
                                     "(NUMBA_CACHE_DIR if set), in parallel worker processes, so that later "
                                     "processes load them instead of compiling.")
    pre.add_argument("--ops", default=",".join(OPS), help=f"comma-separated ops (default: all): {', '.join(OPS)}")
    pre.add_argument("--dtypes", default=",".join(DEFAULT_DTYPES),
                     help=f"comma-separated dtypes (default: float32): {', '.join(DTYPES)}")
    pre.add_argument("--jobs", type=int, default=None, help="worker processes (default: the CPU count)")
    pre.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    try:
        precompile(ops, dtypes, jobs=args.jobs, progress=not args.quiet)
    except ValueError as exc:
        print(f"python -m numbanorm precompile: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
