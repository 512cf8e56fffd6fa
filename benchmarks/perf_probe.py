"""Quick side-by-side probe: numbanorm vs torch vs np.copyto (and NumPy), interleaved, medians.

Usage: PYTHONPATH=$PWD python benchmarks/perf_probe.py [--quick] [--only SUBSTR] [--half]
Every case runs its contenders round-robin in one process, so a noisy (shared) machine
affects all of them alike; the ratios are what to read. Not a test, not the full suite
(that is ``python -m numbanorm.bench``). ``--half``: LayerNorm and BatchNorm (training, NCHW) in
float16 and bfloat16 against torch's half kernels, ``np.copyto`` of the same half bytes and
numbanorm's float32 kernel.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import numbanorm as nb

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None


#: With one thread everything runs on the calling thread, so its CPU time is a clock that a busy
#: shared machine barely disturbs (time slices lost to other processes are not counted); with
#: more threads only wall time is meaningful.
CLOCK = time.perf_counter
REDUCE = np.median


def torch_bn_backward(x, g, w, b, axis):
    """torch autograd's training BatchNorm backward of (x, w, b) for ``dy = g``, timed as
    numbanorm.bench does: the forward graph is built here, the closure only runs ``autograd.grad``.
    Channels-last arrays (``axis=-1``) go in as permuted views, so torch sees its NHWC layout."""
    def logical(a):
        t = torch.from_numpy(a)
        return t.permute(0, a.ndim - 1, *range(1, a.ndim - 1)) if axis == -1 else t
    tx = logical(x).detach().requires_grad_(True)
    tw, tb = torch.from_numpy(w).requires_grad_(True), torch.from_numpy(b).requires_grad_(True)
    ty = F.batch_norm(tx, None, None, tw, tb, True)
    tg = logical(g)
    return lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True)

def timeit(fns: dict, repeats: int, inner: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = CLOCK()
            for _ in range(inner):
                f()
            times[k].append((CLOCK() - t0) / inner)
    return {k: float(REDUCE(v)) for k, v in times.items()}


def np_ln(x, w, b, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    v = x.var(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def np_bn(x, axis, eps=1e-5):
    ax = tuple(i for i in range(x.ndim) if i != axis)
    m = x.mean(ax, keepdims=True)
    v = x.var(ax, keepdims=True)
    return (x - m) / np.sqrt(v + eps)


# The benchmark grid of numbanorm.bench (logical NCHW shapes for BN; CL = stored N,H,W,C).
LN_SHAPES = ((32, 512, 768), (8, 128, 1024), (64, 196, 384), (4, 4096, 4096), (1, 16, 768))
BN_SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 3, 224, 224), (256, 64, 8, 8), (1, 64, 7, 7))
QUICK = ((32, 512, 768), (1, 16, 768), (32, 64, 56, 56), (1, 64, 7, 7))


def cases(quick: bool):
    for s in LN_SHAPES:
        if not quick or s in QUICK:
            yield f"LN {s}", "ln", s, None
    for kind, label in (("bn", "BN train"), ("bne", "BN eval"), ("bnb", "BN backward")):
        for s in BN_SHAPES:
            if quick and s not in QUICK:
                continue
            yield f"{label} NCHW {s}", kind, s, 1
            yield f"{label} CL {s}", kind, (s[0], *s[2:], s[1]), -1


def one_case(name, kind, shape, axis, rng, a) -> None:
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    out = np.empty_like(x)
    dst = np.empty_like(x)
    fns = {"copy": lambda: np.copyto(dst, x)}
    if kind == "ln":
        D = shape[-1]
        w = rng.standard_normal(D).astype(np.float32)
        b = rng.standard_normal(D).astype(np.float32)
        fns["nb"] = lambda: nb.layer_norm(x, D, w, b)
        fns["nb_out"] = lambda: nb.layer_norm(x, D, w, b, out=out)
        if torch is not None:
            tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            fns["torch"] = lambda: F.layer_norm(tx, (D,), tw, tb)
        if a.numpy:
            fns["numpy"] = lambda: np_ln(x, w, b)
    elif kind == "bnb":  # training backward; torch: autograd.grad of F.batch_norm (as numbanorm.bench)
        C = shape[axis]
        g = rng.standard_normal(shape).astype(np.float32)
        w = rng.standard_normal(C).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        _, mean, invstd = nb.batch_norm(x, None, None, w, b, training=True, channel_axis=axis, return_stats=True)
        fns["nb"] = lambda: nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis)
        fns["nb_out"] = lambda: nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis, out=out)
        if torch is not None:
            fns["torch"] = torch_bn_backward(x, g, w, b, axis)
    else:
        C = shape[axis]
        train = kind == "bn"
        w = rng.standard_normal(C).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        fns["nb"] = lambda: nb.batch_norm(x, rm, rv, w, b, training=train, channel_axis=axis)
        fns["nb_out"] = lambda: nb.batch_norm(x, rm, rv, w, b, training=train, channel_axis=axis, out=out)
        if torch is not None:
            tx = torch.from_numpy(x)
            if axis == -1:  # same memory, seen as NCHW channels_last
                tx = tx.permute(0, x.ndim - 1, *range(1, x.ndim - 1))
            trm, trv = torch.zeros(C), torch.ones(C)
            tw, tb = torch.from_numpy(w), torch.from_numpy(b)
            fns["torch"] = lambda: F.batch_norm(tx, trm, trv, tw, tb, training=train)
        if a.numpy:
            fns["numpy"] = lambda: np_bn(x, axis % x.ndim)
    small = x.nbytes < 1 << 20
    r = timeit(fns, repeats=31 if small else 15, inner=200 if small else 3)
    ms = {k: v * 1e3 for k, v in r.items()}
    tt = ms.get("torch", float("nan"))
    line = (f"{name:28s} {ms['nb']:8.4f} {ms['nb_out']:8.4f} {tt:8.4f} {ms['copy']:7.4f} "
            f"{tt / ms['nb']:8.2f} {100 * ms['copy'] / ms['nb_out']:9.0f}%")
    if a.numpy:
        line += f" {ms.get('numpy', float('nan')) / ms['nb']:8.1f}"
    print(line, flush=True)


def half_case(kind, shape, rng) -> None:
    """float16 / bfloat16 LayerNorm or BatchNorm training NCHW (float32 weight/bias for LN, as
    torch's mixed-type LayerNorm; half weight/bias for BN, as torch's half BatchNorm needs)."""
    import ml_dtypes

    C = shape[-1] if kind == "LN" else shape[1]
    x32 = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)

    def op(x, out, w, b):
        if kind == "LN":
            return lambda: nb.layer_norm(x, C, w, b, out=out)
        return lambda: nb.batch_norm(x, None, None, w, b, training=True, out=out)

    fns = {"f32": op(x32, np.empty_like(x32), w, b)}
    for name, dt, tdt in (("f16", np.float16, "float16"), ("bf16", ml_dtypes.bfloat16, "bfloat16")):
        x = x32.astype(dt)
        pw, pb = (w, b) if kind == "LN" else (w.astype(dt), b.astype(dt))
        fns[name] = op(x, np.empty_like(x), pw, pb)
        if torch is not None:
            t = getattr(torch, tdt)
            tx, tw, tb = (torch.from_numpy(a).to(t) for a in (x32, w, b))
            if kind == "LN":
                fns["torch_" + name] = lambda tx=tx, tw=tw, tb=tb: F.layer_norm(tx, (C,), tw, tb)
            else:
                fns["torch_" + name] = lambda tx=tx, tw=tw, tb=tb: F.batch_norm(tx, None, None, tw, tb, training=True)
    src = x32.astype(np.float16)
    dst = np.empty_like(src)
    fns["copy"] = lambda: np.copyto(dst, src)
    small = x32.nbytes < 1 << 20
    r = timeit(fns, repeats=31 if small else 15, inner=200 if small else 3)
    nan = float("nan")
    print(f"{kind} {str(shape):22s} " + " ".join(
        f"{r['f32'] / r[h] / 2:7.2f} {r.get('torch_' + h, nan) / r[h]:8.2f} {100 * r['copy'] / r[h]:7.0f}%"
        for h in ("f16", "bf16")), flush=True)


_STARTUP = """
import time, sys
t0 = time.perf_counter()
import numpy as np
import numbanorm as nb
t1 = time.perf_counter()
x = np.random.default_rng(0).standard_normal(%s).astype(np.float32)
C = x.shape[1]
w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
%s
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""
_FIRST_CALLS = {
    "layer_norm": ("(8, 128, 64)", "nb.layer_norm(x, 64, np.ones(64, np.float32), np.zeros(64, np.float32))"),
    "batch_norm train": ("(64, 32, 8, 8)", "nb.batch_norm(x, rm, rv, w, b, training=True)"),
    "batch_norm eval": ("(64, 32, 8, 8)", "nb.batch_norm(x, rm, rv, w, b)"),
}


def startup() -> None:
    """Import + first call of each op in a fresh process: cold (empty cache) then warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for state in ("cold", "warm", "warm"):
            for op, (shape, call) in _FIRST_CALLS.items():
                code = _STARTUP % (shape, call)
                r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True)
                imp, first = map(float, r.stdout.split())
                print(f"{state:5s} {op:18s} import {imp:6.3f} s  first call {first:6.3f} s  "
                      f"total {imp + first:6.3f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--numpy", action="store_true", help="also time plain NumPy")
    ap.add_argument("--startup", action="store_true", help="time import + first calls instead")
    ap.add_argument("--half", action="store_true", help="float16/bfloat16 LN and BN train instead")
    a = ap.parse_args()
    if a.startup:
        startup()
        return
    global CLOCK, REDUCE
    threads = __import__("numba").get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    if threads == 1:
        CLOCK, REDUCE = time.thread_time, np.min
    clock = "thread CPU time, min" if threads == 1 else "wall time, median"
    print(f"threads={threads} nproc={os.cpu_count()} load={os.getloadavg()[0]:.2f} ({clock})")
    rng = np.random.default_rng(0)
    if a.half:
        # useful GB/s vs f32: (f32 time / half time) / 2, since a half element is half the bytes
        print(f"{'case':25s} {'f16 GB/s vs f32':>15s} {'x torch':>8s} {'% copy':>7s} "
              f"{'bf16 GB/s vs f32':>16s} {'x torch':>8s} {'% copy':>7s}")
        for kind, shapes in (("LN", LN_SHAPES), ("BN", BN_SHAPES)):
            for s in shapes:
                if (not a.quick or s in QUICK) and a.only in f"{kind} {s}":
                    half_case(kind, s, rng)
        return
    print(f"{'case':28s} {'nb ms':>8s} {'out= ms':>8s} {'torch':>8s} {'copy':>7s} "
          f"{'x torch':>8s} {'%copy out=':>10s}" + ("  x numpy" if a.numpy else ""))
    for name, kind, shape, axis in cases(a.quick):
        if a.only and a.only not in name:
            continue
        one_case(name, kind, shape, axis, rng, a)


if __name__ == "__main__":
    main()
