"""SyncBatchNorm across processes with numbanorm's mergeable moments and an MPI custom op.

Each rank holds a shard of the batch (shards may differ in size). It computes its per-channel
``Moments`` (count, mean, M2) in one pass, an ``Allreduce`` with a custom op merges them exactly
(Chan's formula), and every rank normalizes its shard with the global statistics and updates its
running stats from them: the result equals BatchNorm over the whole batch on one machine.

The moments travel as records of three float64 (``numbanorm.MOMENTS_DTYPE``) with a matching
MPI datatype, so an MPI library that splits a large reduction into segments still hands the op
whole per-channel records.

Run with MPI (OpenMPI as root also needs ``--allow-run-as-root``)::

    mpiexec -n 2 python examples/sync_batch_norm_mpi.py

Without MPI, the same op runs over spawned processes connected by pipes::

    python examples/sync_batch_norm_mpi.py --simulate 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
import time

import numpy as np

import numbanorm as nb

SHAPE = (23, 5, 4, 3)  # the global batch (N, C, H, W); N splits unevenly over ranks
SEED = 2026


def merge_records(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The custom reduction: merge two arrays of per-channel moment records."""
    return nb.merge_moments(nb.Moments.from_records(a), nb.Moments.from_records(b)).to_records()


def mpi_merge_op(inbuf, inoutbuf, datatype) -> None:
    """``MPI.Op.Create`` callback: ``inout = in (+) inout`` on raw buffers of records."""
    a = np.frombuffer(inbuf, dtype=nb.MOMENTS_DTYPE)
    b = np.frombuffer(inoutbuf, dtype=nb.MOMENTS_DTYPE)
    b[...] = merge_records(a, b)


def global_batch() -> np.ndarray:
    """Same data on every rank (seeded), with a large offset to make the statistics non-trivial."""
    return 1e3 + np.random.default_rng(SEED).standard_normal(SHAPE)


def shard_bounds(n: int, size: int, rank: int) -> tuple[int, int]:
    return n * rank // size, n * (rank + 1) // size


def sync_batch_norm(x_local, allreduce, running_mean, running_var, momentum=0.1, eps=1e-5):
    """BatchNorm of a shard with statistics ``allreduce``-d over all shards; returns (y, stats)."""
    local = nb.moments(x_local, channel_axis=1).to_records()
    stats = nb.Moments.from_records(allreduce(local))
    y = nb.batch_norm(x_local, running_mean, running_var, training=True, momentum=momentum, eps=eps,
                      stats=stats)
    return y, stats


def check_against_whole(y_parts, running_mean, running_var) -> float:
    """Compare with BatchNorm of the whole batch in one process; returns the max abs error."""
    x = global_batch()
    rm, rv = np.zeros(SHAPE[1]), np.ones(SHAPE[1])
    expected = nb.batch_norm(x, rm, rv, training=True)
    err = float(np.max(np.abs(np.concatenate(y_parts) - expected)))
    err = max(err, float(np.max(np.abs(running_mean - rm))), float(np.max(np.abs(running_var - rv))))
    return err


# --------------------------------------------------------------------------------------------
# With MPI
# --------------------------------------------------------------------------------------------
def run_mpi() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    record = MPI.DOUBLE.Create_contiguous(3).Commit()  # one (count, mean, m2) record
    merge = MPI.Op.Create(mpi_merge_op, commute=True)

    def allreduce(local: np.ndarray) -> np.ndarray:
        result = np.empty_like(local)
        comm.Allreduce([local, local.size, record], [result, result.size, record], op=merge)
        return result

    x = global_batch()
    lo, hi = shard_bounds(SHAPE[0], comm.size, comm.rank)
    rm, rv = np.zeros(SHAPE[1]), np.ones(SHAPE[1])
    y, stats = sync_batch_norm(x[lo:hi], allreduce, rm, rv)
    parts = comm.gather(y, root=0)
    merge.Free()
    record.Free()
    if comm.rank == 0:
        err = check_against_whole(parts, rm, rv)
        ok = err < 1e-9
        print(f"{'OK' if ok else 'MISMATCH'} ranks={comm.size} count={stats.count[0]:g} max_abs_err={err:.3g}")
        return 0 if ok else 1
    return 0


# --------------------------------------------------------------------------------------------
# Without MPI: the same op over processes and pipes (reduce to rank 0, then broadcast)
# --------------------------------------------------------------------------------------------
def _rank_main(rank: int, size: int, links: dict, results) -> None:
    """One simulated rank. ``links[(i, j)]`` is the pipe end rank ``i`` uses to talk to ``j``."""

    def allreduce(local: np.ndarray) -> np.ndarray:
        buf = bytearray(local.tobytes())
        if rank == 0:
            for src in range(1, size):  # in rank order: inout = received (+) inout
                mpi_merge_op(links[(0, src)].recv_bytes(), memoryview(buf), None)
            for dst in range(1, size):
                links[(0, dst)].send_bytes(bytes(buf))
        else:
            links[(rank, 0)].send_bytes(bytes(buf))
            buf = links[(rank, 0)].recv_bytes()
        return np.frombuffer(bytes(buf), dtype=nb.MOMENTS_DTYPE).copy()

    x = global_batch()
    lo, hi = shard_bounds(SHAPE[0], size, rank)
    rm, rv = np.zeros(SHAPE[1]), np.ones(SHAPE[1])
    y, stats = sync_batch_norm(x[lo:hi], allreduce, rm, rv)
    results.put((rank, y, stats.to_records(), rm, rv))


def simulate(size: int, timeout: float = 120.0) -> list[tuple]:
    """Run ``size`` ranks as spawned processes; returns each rank's (rank, y, stats, rm, rv)."""
    ctx = mp.get_context("spawn")  # not fork: a forked OpenMP runtime can hang
    links = {}
    for r in range(1, size):
        a, b = ctx.Pipe()
        links[(0, r)], links[(r, 0)] = a, b
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, size, links, results)) for r in range(size)]
    for p in procs:
        p.start()
    out = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < size:
            try:
                out.append(results.get(timeout=0.5))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(f"simulated ranks failed (exit codes {failed}) or timed out") from None
        out.sort(key=lambda t: t[0])
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulate", type=int, metavar="RANKS", help="no MPI: spawn RANKS processes")
    args = parser.parse_args(argv)
    if args.simulate is None:
        return run_mpi()
    out = simulate(args.simulate)
    err = check_against_whole([t[1] for t in out], out[0][3], out[0][4])
    print(f"{'OK' if err < 1e-9 else 'MISMATCH'} simulated ranks={args.simulate} max_abs_err={err:.3g}")
    return 0 if err < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
