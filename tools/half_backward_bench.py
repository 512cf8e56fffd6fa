"""Half-precision backward benchmark: numbanorm's float16/bfloat16 backward vs torch's half
autograd (``torch.autograd.grad`` of a graph built once, as the benchmark's torch peer), and vs
numbanorm's float32 backward on the same shape.

    PYTHONPATH=. python tools/half_backward_bench.py [--threads 2] [--ops ln,rms,bn,gn]
                                                     [--dtypes f16,bf16] [--rounds 5] [--clock wall]

Inputs as the benchmark's ``make_data`` (x with mean 0.5 and std 2, dy standard normal, float32
weight and bias: torch's mixed-precision form for LayerNorm/BatchNorm/GroupNorm; RMSNorm's weight
in x's dtype, which torch's ``rms_norm`` wants). Statistics come from the forward, untimed. Each
round calls every peer ``reps`` times, interleaved; a peer's time is its minimum per-call time
(``--clock thread --threads 1``: the thread's CPU time, robust on a loaded machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from half_bench import cpu_flags, to_torch  # noqa: E402

LN_SHAPES = ((32, 512, 768), (8, 128, 1024), (64, 196, 384), (1, 16, 768))
RMS_SHAPES = ((8, 128, 4096), (32, 512, 768), (1, 16, 4096))
BN_SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 3, 224, 224), (1, 64, 7, 7))
GN_SHAPES = ((32, 64, 56, 56), (4, 256, 64, 64))
GROUPS = 32
EPS = 1e-5


def cases(ops):
    for op in ops:
        if op in ("ln", "rms"):
            for shape in LN_SHAPES if op == "ln" else RMS_SHAPES:
                yield op, "NLC", shape
        else:
            for layout in ("NCHW", "NHWC"):
                for shape in BN_SHAPES if op == "bn" else GN_SHAPES:
                    yield op, layout, shape


def inputs(op, layout, shape, dtype):
    rng = np.random.default_rng(0)
    stored = shape if layout != "NHWC" else (shape[0], *shape[2:], shape[1])
    x = (rng.standard_normal(stored, dtype=np.float32) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(stored, dtype=np.float32).astype(dtype)
    n = shape[-1] if op in ("ln", "rms") else shape[1]
    w = rng.uniform(0.5, 1.5, n).astype(np.float32 if op != "rms" else dtype)
    b = rng.standard_normal(n).astype(np.float32)
    return x, dy, w, b


def nb_backward(nb, op, layout, x, dy, w, b):
    axis = -1 if layout == "NHWC" else 1
    d = x.shape[-1]
    if op == "ln":
        _, m, r = nb.layer_norm(x, d, w, b, EPS, return_stats=True)
        return lambda: nb.layer_norm_backward(dy, x, d, m, r, w)
    if op == "rms":
        _, r = nb.rms_norm(x, d, w, EPS, return_stats=True)
        return lambda: nb.rms_norm_backward(dy, x, d, r, w)
    if op == "gn":
        _, m, r = nb.group_norm(x, GROUPS, w, b, EPS, channel_axis=axis, return_stats=True)
        return lambda: nb.group_norm_backward(dy, x, GROUPS, m, r, w, channel_axis=axis)
    _, m, r = nb.batch_norm(x, None, None, w, b, True, 0.1, EPS, channel_axis=axis, return_stats=True)
    return lambda: nb.batch_norm_backward(dy, x, m, r, w, True, channel_axis=axis)


def torch_backward(torch, op, layout, x, dy, w, b):
    F = torch.nn.functional

    def logical(a):
        t = to_torch(torch, a)
        return t.permute(0, 3, 1, 2) if layout == "NHWC" else t

    tx = logical(x).detach().requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True) if w.dtype.kind == "f" else to_torch(torch, w).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)
    d = (x.shape[-1],)
    if op == "ln":
        ty, params = F.layer_norm(tx, d, tw, tb, EPS), (tx, tw, tb)
    elif op == "rms":
        ty, params = F.rms_norm(tx, d, tw, EPS), (tx, tw)
    elif op == "gn":
        ty, params = F.group_norm(tx, GROUPS, tw, tb, EPS), (tx, tw, tb)
    else:
        ty, params = F.batch_norm(tx, None, None, tw, tb, True, 0.1, EPS), (tx, tw, tb)
    tg = logical(dy)
    return lambda: torch.autograd.grad(ty, params, tg, retain_graph=True)


def time_peers(peers, rounds, budget_s, clock):
    for fn in peers.values():
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
    ap.add_argument("--ops", default="ln,rms,bn,gn")
    ap.add_argument("--dtypes", default="f16,bf16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=1.5, help="seconds per case")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall")
    args = ap.parse_args(argv)

    import ml_dtypes
    import numba
    import torch

    import numbanorm as nb

    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    dts = {"f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}
    print(f"# {cpu_flags()}")
    print(f"# threads {args.threads}, clock {args.clock}, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'op':4} {'layout':6} {'shape':16} {'dt':5} {'half us':>9} {'torch us':>9} {'f32 us':>9} "
          f"{'vs torch':>8} {'half/f32':>8}")
    rows = []
    for op, layout, shape in cases(args.ops.split(",")):
        name = "x".join(map(str, shape))
        x32, dy32, w32, b32 = inputs(op, layout, shape, np.float32)
        f32 = nb_backward(nb, op, layout, x32, dy32, w32, b32)
        for dk in args.dtypes.split(","):
            x, dy, w, b = inputs(op, layout, shape, dts[dk])
            peers = {"half": nb_backward(nb, op, layout, x, dy, w, b),
                     "torch": torch_backward(torch, op, layout, x, dy, w, b), "f32": f32}
            best = time_peers(peers, args.rounds, args.budget, clock)
            r = dict(op=op, layout=layout, shape=name, dtype=dk, **{k: v * 1e6 for k, v in best.items()})
            r["vs_torch"], r["half_f32"] = best["torch"] / best["half"], best["half"] / best["f32"]
            rows.append(r)
            print(f"{op:4} {layout:6} {name:16} {dk:5} {r['half']:9.1f} {r['torch']:9.1f} {r['f32']:9.1f} "
                  f"{r['vs_torch']:8.2f} {r['half_f32']:8.2f}", flush=True)
    print("\n# median vs torch per op and dtype (min in brackets)")
    for op in args.ops.split(","):
        for dk in args.dtypes.split(","):
            v = [r["vs_torch"] for r in rows if r["op"] == op and r["dtype"] == dk]
            if v:
                print(f"{op:4} {dk:5} {statistics.median(v):5.2f} (min {min(v):4.2f})")


if __name__ == "__main__":
    sys.exit(main())
