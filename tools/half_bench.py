"""Half-precision forward benchmark: numbanorm float16/bfloat16 vs torch's op in the same dtype,
and vs numbanorm's float32 op on the same shape (issue #19's targets).

    PYTHONPATH=. python tools/half_bench.py [--threads 2] [--ops ln,rms,bn_train,bn_eval,gn]
                                            [--dtypes f16,bf16] [--rounds 7] [--json out.json]

Every case builds its inputs once (x with mean 0.5 and std 2, float32 parameters, as the
benchmark's ``make_data``), then runs rounds in which each peer (numbanorm half, torch half,
numbanorm float32) is called ``reps`` times back to back, interleaved; a peer's time is the
minimum over all calls of the per-call wall time (2 threads: thread CPU time would not count the
second thread), or with ``--clock thread --threads 1`` of the thread's CPU time (robust on a
loaded machine). Allocating calls, as the benchmark's ``numbanorm``/``torch`` peers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

LN_SHAPES = ((32, 512, 768), (8, 128, 1024), (64, 196, 384), (4, 4096, 4096), (1, 16, 768))
RMS_SHAPES = ((8, 128, 4096), (32, 512, 768), (1, 16, 4096))
BN_SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 3, 224, 224), (256, 64, 8, 8), (1, 64, 7, 7))
GN_SHAPES = ((32, 64, 56, 56), (4, 256, 64, 64))
GROUPS = 32
EPS = 1e-5
MOMENTUM = 0.1


def cpu_flags() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "?"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("Flags")), [])
    keep = [f for f in flags if f.startswith(("avx512", "avx2", "f16c", "fma"))]
    return f"{model}; {' '.join(keep)}"


def cases(ops):
    for op in ops:
        if op in ("ln", "rms"):
            for shape in LN_SHAPES if op == "ln" else RMS_SHAPES:
                yield op, "NLC", shape
        else:
            for layout in ("NCHW", "NHWC"):
                for shape in BN_SHAPES if op.startswith("bn") else GN_SHAPES:
                    yield op, layout, shape


def make_inputs(op, layout, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    stored = shape if layout != "NHWC" else (shape[0], *shape[2:], shape[1])
    x = rng.standard_normal(stored, dtype=np.float32)
    x *= 2.0
    x += 0.5
    x = x.astype(dtype)
    nparam = shape[-1] if op in ("ln", "rms") else shape[1]
    w = rng.uniform(0.5, 1.5, nparam).astype(np.float32)
    b = rng.standard_normal(nparam).astype(np.float32)
    rm = rng.uniform(0.0, 1.0, nparam).astype(np.float32)
    rv = rng.uniform(3.0, 5.0, nparam).astype(np.float32)
    return x, w, b, rm, rv


def nb_call(nb, op, layout, x, w, b, rm, rv):
    axis = -1 if layout == "NHWC" else 1
    d = x.shape[-1]
    if op == "ln":
        return lambda: nb.layer_norm(x, d, w, b, EPS)
    if op == "rms":
        return lambda: nb.rms_norm(x, d, w, EPS)
    if op == "gn":
        return lambda: nb.group_norm(x, GROUPS, w, b, EPS, channel_axis=axis)
    rm, rv = rm.copy(), rv.copy()
    training = op == "bn_train"
    return lambda: nb.batch_norm(x, rm, rv, w, b, training, MOMENTUM, EPS, channel_axis=axis)


def to_torch(torch, a):
    if a.dtype.kind == "V":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def torch_call(torch, op, layout, x, w, b, rm, rv):
    F = torch.nn.functional
    xt = to_torch(torch, x)
    if layout == "NHWC":
        xt = xt.permute(0, 3, 1, 2)
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    if op == "rms":  # torch's rms_norm wants the weight in x's dtype
        tw = tw.to(xt.dtype)
    d = (x.shape[-1],)
    if op == "ln":
        fn = lambda: F.layer_norm(xt, d, tw, tb, EPS)  # noqa: E731
    elif op == "rms":
        fn = lambda: F.rms_norm(xt, d, tw, EPS)  # noqa: E731
    elif op == "gn":
        fn = lambda: F.group_norm(xt, GROUPS, tw, tb, EPS)  # noqa: E731
    else:
        rmt, rvt = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
        training = op == "bn_train"
        fn = lambda: F.batch_norm(xt, rmt, rvt, tw, tb, training, MOMENTUM, EPS)  # noqa: E731

    def run():
        with torch.inference_mode():
            return fn()
    return run


def time_peers(peers: dict, rounds: int, budget_s: float, clock=time.perf_counter) -> dict:
    """min per-call time (``clock``) of each peer over ``rounds`` interleaved rounds."""
    for fn in peers.values():  # warm up (compile, arena)
        fn()
        fn()
    t0 = time.perf_counter()
    next(iter(peers.values()))()
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, min(200, int(budget_s / (rounds * len(peers) * one))))
    best = {k: float("inf") for k in peers}
    for _ in range(rounds):
        for k, fn in peers.items():
            for _ in range(reps):
                t0 = clock()
                fn()
                best[k] = min(best[k], clock() - t0)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ops", default="ln,rms,bn_train,bn_eval,gn")
    ap.add_argument("--dtypes", default="f16,bf16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--budget", type=float, default=1.5, help="seconds per case")
    ap.add_argument("--shapes", default="", help="only shapes containing this text, e.g. 1x16x768")
    ap.add_argument("--json", default="")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: the calling thread's CPU time (only meaningful with --threads 1)")
    args = ap.parse_args(argv)

    import ml_dtypes
    import numba
    import torch

    import numbanorm as nb

    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    dts = {"f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}
    print(f"# {cpu_flags()}")
    print(f"# threads {args.threads}, clock {args.clock}, numbanorm {nb.__file__}, torch {torch.__version__}, python "
          f"{platform.python_version()}, load {os.getloadavg()[0]:.1f}")
    print(f"{'op':9} {'layout':6} {'shape':16} {'dt':5} {'MB':>7} {'half us':>9} {'torch us':>9} {'f32 us':>9} "
          f"{'vs torch':>8} {'half/f32':>8}")
    rows = []
    for op, layout, shape in cases(args.ops.split(",")):
        name = "x".join(map(str, shape))
        if args.shapes and args.shapes not in name:
            continue
        x32, w, b, rm, rv = make_inputs(op, layout, shape, np.float32)
        f32 = nb_call(nb, op, layout, x32, w, b, rm, rv)
        for dk in args.dtypes.split(","):
            dt = dts[dk]
            x = x32.astype(dt)
            peers = {"half": nb_call(nb, op, layout, x, w, b, rm, rv),
                     "torch": torch_call(torch, op, layout, x, w, b, rm, rv), "f32": f32}
            best = time_peers(peers, args.rounds, args.budget,
                              time.thread_time if args.clock == "thread" else time.perf_counter)
            mb = x.nbytes / 1e6
            row = dict(op=op, layout=layout, shape=name, dtype=dk, MB=mb, **{k: v * 1e6 for k, v in best.items()})
            row["vs_torch"] = best["torch"] / best["half"]
            row["half_f32"] = best["half"] / best["f32"]
            rows.append(row)
            print(f"{op:9} {layout:6} {name:16} {dk:5} {mb:7.2f} {row['half']:9.1f} {row['torch']:9.1f} "
                  f"{row['f32']:9.1f} {row['vs_torch']:8.2f} {row['half_f32']:8.2f}", flush=True)
    print("\n# median vs torch per op and dtype (min over the grid in brackets); half/f32 on >=16 MB inputs")
    for op in args.ops.split(","):
        for dk in args.dtypes.split(","):
            sel = [r for r in rows if r["op"] == op and r["dtype"] == dk]
            if not sel:
                continue
            vt = [r["vs_torch"] for r in sel]
            big = [r["half_f32"] for r in sel if r["MB"] >= 16]  # the half input >= 16 MB
            mid = [r["half_f32"] for r in sel if r["MB"] < 16 <= 2 * r["MB"]]  # only its float32 twin is
            small = [r["half_f32"] for r in sel if 2 * r["MB"] < 16]

            def worst(v):
                return f"{max(v):4.2f}" if v else "  - "
            print(f"{op:9} {dk:5} vs torch median {statistics.median(vt):5.2f} (min {min(vt):4.2f}); "
                  f"half/f32 max: half >=16 MB {worst(big)}, f32 >=16 MB {worst(mid)}, smaller {worst(small)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
