"""numbanorm.dask.batch_norm vs dask.array mean/var/normalize written the obvious way.

A chunked (N, F) float32 array (default 2 GiB) is generated on the workers and persisted, so
both contenders read it from worker memory; each chunk of the result is written to a sink that
drops it. Timed: statistics alone, and statistics + normalization of every chunk. Best of
``--repeat`` runs, contenders alternating; one process, one scheduler, side by side.

    python tools/dask_bench.py                      # LocalCluster: 2 workers x 1 thread
    python tools/dask_bench.py --gb 0.25 --repeat 1 # quick smoke run
    python tools/dask_bench.py --scheduler tcp://10.0.0.5:8786   # a real cluster

On a real cluster every worker needs numbanorm installed (the same version as the client).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


class Sink:
    """A ``da.store`` target that drops every chunk (so the result is computed, not kept)."""

    def __setitem__(self, key, value) -> None:
        pass


def obvious_dask(x, eps):
    """What one writes with dask.array alone."""
    import dask.array as da

    mean = x.mean(axis=0)
    var = x.var(axis=0)
    return (x - mean) / da.sqrt(var + eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="array size in GiB (float32)")
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--chunk-mb", type=float, default=64.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scheduler", help="address of a running dask scheduler (default: a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--processes", action="store_true", help="LocalCluster workers as processes")
    args = parser.parse_args()

    import dask
    import dask.array as da
    import distributed

    import numbanorm
    import numbanorm.dask as nd

    if args.scheduler:
        client, cluster = distributed.Client(args.scheduler), None
    else:
        cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker,
                                           processes=args.processes, dashboard_address=None)
        client = distributed.Client(cluster)
    F = args.features
    N = int(args.gb * 2**30 / 4 / F)
    rows = max(1, int(args.chunk_mb * 2**20 / 4 / F))
    x = (da.random.default_rng(0).standard_normal((N, F), chunks=(rows, F), dtype=np.float32) * 3 + 100).persist()
    distributed.wait(x)
    nbytes = x.nbytes
    print(f"numbanorm {numbanorm.__version__}, dask {dask.__version__}; workers: "
          f"{len(client.scheduler_info()['workers'])} x {args.threads_per_worker} thread(s)"
          f"{'' if args.scheduler else ' (LocalCluster, processes=' + str(args.processes) + ')'}")
    print(f"x: {x.shape} float32 = {nbytes / 2**30:.2f} GiB in {x.npartitions} chunks of {rows} x {F}")

    # Warm-up: compile/load numba kernels on the workers, and dask's graph code paths.
    small = x[: rows * 2]
    da.store(nd.batch_norm(small)[0], Sink(), lock=False)
    da.store(obvious_dask(small, 1e-5), Sink(), lock=False)

    contenders = {
        "stats: numbanorm.dask.moments": lambda: nd.moments(x, channel_axis=1),
        "stats: dask mean+var": lambda: dask.compute(x.mean(axis=0), x.var(axis=0)),
        "bn: numbanorm.dask.batch_norm": lambda: da.store(nd.batch_norm(x, training=True)[0], Sink(), lock=False),
        "bn: dask obvious": lambda: da.store(obvious_dask(x, 1e-5), Sink(), lock=False),
    }
    results = {name: float("inf") for name in contenders}
    for _ in range(args.repeat):  # interleaved, so a noisy neighbour hits both alike
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            results[name] = min(results[name], time.perf_counter() - t0)

    # Accuracy on the first chunk against float64 statistics of the whole array (float64 dask).
    x64 = x.astype(np.float64)
    mean, var = (np.asarray(a) for a in dask.compute(x64.mean(axis=0), x64.var(axis=0)))
    ref = (x[:rows].compute().astype(np.float64) - mean) / np.sqrt(var + 1e-5)
    err_nb = float(np.max(np.abs(nd.batch_norm(x, training=True)[0][:rows].compute() - ref)))
    err_da = float(np.max(np.abs(obvious_dask(x, 1e-5)[:rows].compute() - ref)))

    for name, t in results.items():
        # Bytes moved: stats read x once; BN reads x for stats, reads it again and writes y.
        moved = nbytes * (1 if name.startswith("stats") else 3)
        print(f"{name:34s} {t:8.3f} s  {moved / t / 1e9:6.2f} GB/s (x read + y written)")
    stats_ratio = results["stats: dask mean+var"] / results["stats: numbanorm.dask.moments"]
    bn_ratio = results["bn: dask obvious"] / results["bn: numbanorm.dask.batch_norm"]
    print(f"ratio stats (dask time / numbanorm time): {stats_ratio:.2f}x")
    print(f"ratio BN    (dask time / numbanorm time): {bn_ratio:.2f}x")
    print(f"max |y - float64 reference| on the first chunk: numbanorm {err_nb:.3g}, dask {err_da:.3g}")
    client.close()
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()
