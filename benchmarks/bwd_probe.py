"""Backward probe: this checkout vs another numbanorm (e.g. main) vs torch vs np.copyto, interleaved.

Usage: PYTHONPATH=$PWD python benchmarks/bwd_probe.py [--base /path/to/pkgcopy:name] [--only SUBSTR]
    [--phases] [--repeats N]

One thread for every peer (``--threads N``: N, and wall time), thread CPU time (a busy shared
machine barely disturbs it), the contenders of a case sampled round-robin; prints the min and the
median. ``--base`` imports a
copy of another checkout's package under another name (``cp -r /work/main/numbanorm
/tmp/x/nbmain`` then ``--base /tmp/x:nbmain``). ``--phases``: also times the read floor of two
tensors (a float64 sum over x and dy) next to the copy. Only numbanorm's public API is used (the
timing of the backward's internal passes went with the move of the kernels to numbanorm/cpu/).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import numba
import numpy as np
from perf_probe import torch_bn_backward  # run as a script: benchmarks/ is on sys.path

import numbanorm as nb

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None

LN_SHAPES = ((32, 512, 768), (8, 128, 1024), (64, 196, 384), (4, 4096, 4096), (1, 16, 768))
BN_SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 3, 224, 224), (256, 64, 8, 8), (1, 64, 7, 7))


@numba.njit(fastmath={"reassoc", "contract", "nsz"}, nogil=True, cache=True)
def read2(a, b):
    """Reads two float32 arrays once (the floor of the grad-sums pass)."""
    s = 0.0
    t = 0.0
    for i in range(np.uint64(a.size)):
        s += a[i]
        t += b[i]
    return s + t


#: One thread: thread CPU time; more: wall time (``--threads``).
CLOCK = time.thread_time


def timeit(fns: dict, repeats: int, inner: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    items = list(fns.items())
    for i in range(repeats):  # the order rotates: no contender always runs right after the copy
        for k, f in items[i % len(items):] + items[:i % len(items)]:
            t0 = CLOCK()
            for _ in range(inner):
                f()
            times[k].append((CLOCK() - t0) / inner)
    return {k: (float(np.min(v)), float(np.median(v))) for k, v in times.items()}


def bn_case(mods, shape, axis, rng, phases):
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    C = shape[axis]
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    _, mean, invstd = nb.batch_norm(x, None, None, w, b, training=True, channel_axis=axis, return_stats=True)
    out = np.empty_like(x)
    dst = np.empty_like(x)
    fns = {"copy": lambda: np.copyto(dst, x)}
    for name, m in mods.items():
        fns[name] = (lambda m=m: m.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis))
        fns[name + "_out"] = (lambda m=m: m.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis,
                                                                out=out))
    if torch is not None:
        fns["torch"] = torch_bn_backward(x, g, w, b, axis)
    if phases:
        fns["read2"] = lambda: read2(x.reshape(-1), g.reshape(-1))
    return x, fns


def ln_case(mods, shape, rng, phases):
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    D = shape[-1]
    w = rng.standard_normal(D).astype(np.float32)
    b = rng.standard_normal(D).astype(np.float32)
    _, mean, rstd = nb.layer_norm(x, D, w, b, return_stats=True)
    out = np.empty_like(x)
    dst = np.empty_like(x)
    fns = {"copy": lambda: np.copyto(dst, x)}
    for name, m in mods.items():
        fns[name] = (lambda m=m: m.layer_norm_backward(g, x, D, mean, rstd, w))
        fns[name + "_out"] = (lambda m=m: m.layer_norm_backward(g, x, D, mean, rstd, w, out=out))
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_(True)
        tw, tb = torch.from_numpy(w).requires_grad_(True), torch.from_numpy(b).requires_grad_(True)
        ty = F.layer_norm(tx, (D,), tw, tb)
        tg = torch.from_numpy(g)
        fns["torch"] = lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True)
    if phases:
        fns["read2"] = lambda: read2(x.reshape(-1), g.reshape(-1))
    return x, fns


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", action="append", default=[], help="DIR:PKGNAME of another numbanorm copy")
    ap.add_argument("--only", default="")
    ap.add_argument("--phases", action="store_true")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="threads for every peer (>1: wall time)")
    a = ap.parse_args()
    global CLOCK
    if a.threads > 1:
        CLOCK = time.perf_counter
    numba.set_num_threads(a.threads)
    if torch is not None:
        torch.set_num_threads(a.threads)
    mods = {"nb": nb}
    for spec in a.base:
        d, name = spec.split(":")
        sys.path.insert(0, d)
        mods[name] = importlib.import_module(name)
    rng = np.random.default_rng(0)
    cases = [(f"LN {s}", "ln", s, None) for s in LN_SHAPES]
    for s in BN_SHAPES:
        cases.append((f"BN NCHW {s}", "bn", s, 1))
        cases.append((f"BN NHWC {s}", "bn", (s[0], *s[2:], s[1]), -1))
    for label, kind, shape, axis in cases:
        if a.only and a.only not in label:
            continue
        x, fns = ln_case(mods, shape, rng, a.phases) if kind == "ln" else bn_case(mods, shape, axis, rng, a.phases)
        small = x.nbytes < 1 << 20
        big = x.nbytes > 1 << 27
        r = timeit(fns, repeats=31 if small else (5 if big else a.repeats), inner=200 if small else 2)
        unit, f = ("us", 1e6) if small else ("ms", 1e3)
        cp = r["copy"][0]
        print(f"{label}  [{unit}, min/median; x/copy = min time / copy min]")
        for k, (mn, md) in r.items():
            extra = ""
            if "torch" in r and k in mods:
                extra = f"  torch/this {r['torch'][0] / mn:5.2f}x (median {r['torch'][1] / md:5.2f}x)"
            print(f"   {k:12s} {mn * f:9.3f} {md * f:9.3f}  {mn / cp:5.2f} copies{extra}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
