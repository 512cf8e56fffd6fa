"""Big LayerNorm outputs side by side: this tree vs another numbanorm (``--root``) vs torch vs
``np.copyto``, interleaved round-robin, wall-time medians (stream5, issue #5).

Usage: PYTHONPATH=$PWD python benchmarks/ln_stream_probe.py --threads 2 [--root /work/main]
       [--repeats 31] [--bn]

``--root``: a second numbanorm source tree, imported under another name (a copy of its package
in a temporary folder), so both run in this process. ``out=`` is timed into an ``np.empty``
buffer (16 bytes past a page boundary, as glibc's mmap gives it) and into a page-aligned
buffer (as the arena's blocks); the copy roofline is ``np.copyto`` into the same two buffers. ``--bn``: BatchNorm
training forward on ≥64 MB tensors (NCHW and channels-last) against the copy, for the record.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time


def load_copy(root: str, name: str):
    """``root``/numbanorm imported as package ``name`` (a copy without caches)."""
    tmp = tempfile.mkdtemp(prefix="lnprobe_")
    shutil.copytree(os.path.join(root, "numbanorm"), os.path.join(tmp, name),
                    ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, tmp)
    return importlib.import_module(name)


def bench(fns: dict, repeats: int, clock) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():  # compile / warm up
        f()
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = clock()
            f()
            times[k].append(clock() - t0)
    return times


def report(title: str, t: dict, nbytes: int) -> None:
    import numpy as np

    med = {k: float(np.median(v)) for k, v in t.items()}
    copy = med["copy empty"]
    print(f"{title} ({nbytes / 1e6:.0f} MB), {len(t['copy empty'])} rounds, load {os.getloadavg()[0]:.2f}")
    for k, v in t.items():
        q = np.percentile(v, [10, 90])
        print(f"  {k:16s} median {med[k] * 1e3:8.2f} ms  p10 {q[0] * 1e3:8.2f}  p90 {q[1] * 1e3:8.2f}"
              f"  copy/this {copy / med[k]:6.1%}  GB/s {2 * nbytes / med[k] / 1e9:5.1f}", flush=True)


def page_aligned(np, shape, dtype):
    """An empty array starting on a page boundary (like numbanorm's arena blocks), every page touched."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + 4096, np.uint8)
    off = (-raw.ctypes.data) % 4096
    return raw[off:off + nbytes].view(dtype).reshape(shape)


def ln_case(nb, other, np, F, torch, x, w, b) -> dict:
    """Contenders for one LayerNorm shape (closures over this call's arrays)."""
    D = x.shape[-1]
    buf = np.empty(x.shape, np.float32)  # np.empty: 16 bytes past a page (glibc mmap)
    blk = page_aligned(np, x.shape, np.float32)  # as the arena's blocks
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    keep = {}

    def alloc(mod, key):
        def f():
            keep[key] = mod.layer_norm(x, D, w, b)  # the previous output dies here, as in y = op(x)
        return f

    fns = {
        "copy empty": lambda: np.copyto(buf, x),
        "copy arena": lambda: np.copyto(blk, x),
        "new out empty": lambda: nb.layer_norm(x, D, w, b, out=buf),
        "new out arena": lambda: nb.layer_norm(x, D, w, b, out=blk),
        "new alloc": alloc(nb, "new"),
    }
    if other is not None:
        fns["main out empty"] = lambda: other.layer_norm(x, D, w, b, out=buf)
        fns["main out arena"] = lambda: other.layer_norm(x, D, w, b, out=blk)
        fns["main alloc"] = alloc(other, "main")
    fns["torch alloc"] = lambda: keep.__setitem__("t", F.layer_norm(xt, (D,), wt, bt))
    return fns


def bn_case(nb, other, np, F, torch, x, axis) -> dict:
    """Contenders for BatchNorm training forward (channel ``axis`` 1: NCHW, -1: NHWC storage)."""
    C = x.shape[axis]
    rng = np.random.default_rng(1)
    w = rng.standard_normal(C, dtype=np.float32)
    b = rng.standard_normal(C, dtype=np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    buf = np.empty(x.shape, np.float32)
    blk = page_aligned(np, x.shape, np.float32)
    xt = torch.from_numpy(x)
    if axis == -1:
        xt = xt.permute(0, 3, 1, 2)  # NHWC storage: torch's channels_last
    wt, bt = torch.from_numpy(w), torch.from_numpy(b)
    rmt, rvt = torch.zeros(C), torch.ones(C)
    keep = {}

    def ours(mod, out):
        return lambda: mod.batch_norm(x, rm, rv, w, b, training=True, channel_axis=axis, out=out)

    fns = {
        "copy empty": lambda: np.copyto(buf, x),
        "copy arena": lambda: np.copyto(blk, x),
        "new out empty": ours(nb, buf),
        "new out arena": ours(nb, blk),
    }
    if other is not None:
        fns["main out empty"] = ours(other, buf)
    fns["torch alloc"] = lambda: keep.__setitem__("t", F.batch_norm(xt, rmt, rvt, wt, bt, training=True))
    return fns


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", default=None)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--bn", action="store_true")
    ap.add_argument("--no-ln", action="store_true")
    ap.add_argument("--shapes", default="4,4096,4096;32,512,768")
    a = ap.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = str(a.threads)
    import numba
    import numpy as np
    import torch
    import torch.nn.functional as F

    import numbanorm as nb

    numba.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    other = load_copy(a.root, "nb_other") if a.root else None
    # One thread: the calling thread's CPU time (time slices lost to other processes on this
    # shared machine are not counted); more threads: wall time.
    clock = time.thread_time if a.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"threads {a.threads}, clock {clock.__name__}, load {os.getloadavg()}", flush=True)
    shapes = [] if a.no_ln else [tuple(int(v) for v in s.split(",")) for s in a.shapes.split(";") if s]
    for shape in shapes:
        x = rng.standard_normal(shape, dtype=np.float32)
        D = shape[-1]
        w = rng.standard_normal(D, dtype=np.float32)
        b = rng.standard_normal(D, dtype=np.float32)
        reps = a.repeats if x.nbytes > 100e6 else 3 * a.repeats
        report(f"LN {shape} float32", bench(ln_case(nb, other, np, F, torch, x, w, b), reps, clock), x.nbytes)
    if a.bn:
        for shape, axis in (((64, 64, 64, 64), 1), ((64, 64, 64, 64), -1)):
            x = rng.standard_normal(shape, dtype=np.float32)
            lay = "NCHW" if axis == 1 else "NHWC"
            report(f"BN train {lay} {shape} float32", bench(bn_case(nb, other, np, F, torch, x, axis),
                                                            2 * a.repeats, clock), x.nbytes)
    print(f"load at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
