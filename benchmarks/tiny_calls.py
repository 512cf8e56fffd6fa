"""Tiny-call timings side by side in one process: torch, this numbanorm, and a baseline copy.

Usage: ``python benchmarks/tiny_calls.py THREADS REPS [CASES] [wall]``

The baseline is another checkout's package copied as ``numbanorm_main`` into the folder
``$NUMBANORM_BASELINE`` (``cp -r /work/main/numbanorm $DIR/numbanorm_main``; its imports are all
relative). CASES: comma-separated substrings of the case names ("" for all). Per case, REPS
interleaved samples of 300 calls each, thread CPU time (``wall``: perf_counter); median and min.
"""

import os
import statistics
import sys
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F

import numbanorm as nb

sys.path.insert(0, os.environ["NUMBANORM_BASELINE"])
import numbanorm_main as nm  # noqa: E402

nt = int(sys.argv[1]) if len(sys.argv) > 1 else 1
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 21
only = sys.argv[3].split(",") if len(sys.argv) > 3 else [""]
wall = len(sys.argv) > 4 and sys.argv[4] == "wall"
torch.set_num_threads(nt)
numba.set_num_threads(nt)

rng = np.random.default_rng(0)
x = (rng.standard_normal((1, 16, 768)) * 2 + 3).astype(np.float32)
w, b = rng.standard_normal(768).astype(np.float32), rng.standard_normal(768).astype(np.float32)
xb = (rng.standard_normal((1, 64, 7, 7)) * 2 + 3).astype(np.float32)
xc = np.ascontiguousarray(xb.transpose(0, 2, 3, 1))
c, z = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
g = rng.standard_normal(x.shape).astype(np.float32)
gb = rng.standard_normal(xb.shape).astype(np.float32)
gc = np.ascontiguousarray(gb.transpose(0, 2, 3, 1))
_, lm, lr = nb.layer_norm(x, 768, w, b, return_stats=True)
_, bm, bi = nb.batch_norm(xb, None, None, c, z, training=True, return_stats=True)
_, cm, ci = nb.batch_norm(xc, None, None, c, z, training=True, channel_axis=-1, return_stats=True)
tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
txb, txc = torch.from_numpy(xb), torch.from_numpy(xc).permute(0, 3, 1, 2)
tc, tz = torch.from_numpy(c), torch.from_numpy(z)
trm, trv = torch.zeros(64), torch.ones(64)


def torch_grad(fn, t, params, tg):
    """torch.autograd.grad of fn(t, *params) with retain_graph, as numbanorm.bench times it."""
    t = t.detach().requires_grad_(True)
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    ty = fn(t, *ps)
    return lambda: torch.autograd.grad(ty, (t, *ps), tg, retain_graph=True)


tgc = torch.from_numpy(gc).permute(0, 3, 1, 2)
t_ln_bwd = torch_grad(lambda a, p, q: F.layer_norm(a, (768,), p, q), tx, (tw, tb), torch.from_numpy(g))
t_bn_bwd = torch_grad(lambda a, p, q: F.batch_norm(a, None, None, p, q, True), txb, (tc, tz), torch.from_numpy(gb))
t_bc_bwd = torch_grad(lambda a, p, q: F.batch_norm(a, None, None, p, q, True), txc, (tc, tz), tgc)
layers = {m: (m.LayerNorm(768), m.BatchNorm(64), m.BatchNorm(64).eval()) for m in (nb, nm)}
tln, tbn, tbne = torch.nn.LayerNorm(768), torch.nn.BatchNorm2d(64), torch.nn.BatchNorm2d(64).eval()

CASES = {  # name: (numbanorm call for module m, torch call)
    "LN fwd": (lambda m: lambda: m.layer_norm(x, 768, w, b), lambda: F.layer_norm(tx, (768,), tw, tb)),
    "LN fwd stats": (lambda m: lambda: m.layer_norm(x, 768, w, b, return_stats=True),
                     lambda: F.layer_norm(tx, (768,), tw, tb)),
    "BN train NCHW": (lambda m: lambda: m.batch_norm(xb, rm, rv, c, z, training=True),
                      lambda: F.batch_norm(txb, trm, trv, tc, tz, training=True)),
    "BN train NHWC": (lambda m: lambda: m.batch_norm(xc, rm, rv, c, z, training=True, channel_axis=-1),
                      lambda: F.batch_norm(txc, trm, trv, tc, tz, training=True)),
    "BN eval NCHW": (lambda m: lambda: m.batch_norm(xb, rm, rv, c, z), lambda: F.batch_norm(txb, trm, trv, tc, tz)),
    "BN eval NHWC": (lambda m: lambda: m.batch_norm(xc, rm, rv, c, z, channel_axis=-1),
                     lambda: F.batch_norm(txc, trm, trv, tc, tz)),
    "LN bwd": (lambda m: lambda: m.layer_norm_backward(g, x, 768, lm, lr, w), t_ln_bwd),
    "BN bwd NCHW": (lambda m: lambda: m.batch_norm_backward(gb, xb, bm, bi, c, True), t_bn_bwd),
    "BN bwd NHWC": (lambda m: lambda: m.batch_norm_backward(gc, xc, cm, ci, c, True, channel_axis=-1), t_bc_bwd),
    "LayerNorm layer": (lambda m: lambda: layers[m][0](x), lambda: tln(tx)),
    "BatchNorm layer train": (lambda m: lambda: layers[m][1](xb), lambda: tbn(txb)),
    "BatchNorm layer eval": (lambda m: lambda: layers[m][2](xb), lambda: tbne(txb)),
}
N = 300
clock = time.perf_counter_ns if wall else time.thread_time_ns


def sample(f) -> float:
    t0 = clock()
    for _ in range(N):
        f()
    return (clock() - t0) / N / 1e3


print(f"threads={nt} reps={reps} N={N} ({'wall' if wall else 'thread CPU'} µs per call: median / min)")
for name, (make, torch_fn) in CASES.items():
    if not any(o in name for o in only):
        continue
    fns = {"this": make(nb), "main": make(nm), "torch": torch_fn}
    with torch.enable_grad() if "bwd" in name else torch.no_grad():
        for f in fns.values():
            for _ in range(50):
                f()
        res = {k: [] for k in fns}
        for _ in range(reps):
            for k, f in fns.items():
                res[k].append(sample(f))
    med = {k: statistics.median(v) for k, v in res.items()}
    low = {k: min(v) for k, v in res.items()}
    print(f"{name:22s} this {med['this']:6.2f}/{low['this']:6.2f}  main {med['main']:6.2f}/{low['main']:6.2f}  "
          f"torch {med['torch']:6.2f}/{low['torch']:6.2f}   x torch (median): this "
          f"{med['torch'] / med['this']:.2f} main {med['torch'] / med['main']:.2f}")
