"""Cold (empty cache) and warm first-call times per op, in fresh processes, with a compile profile.

    PYTHONPATH=$PWD python tools/compile_probe.py [--root DIR ...] [--reps N] [--only SUBSTR]
                                                       [--warm] [--profile]

Each (rep, case, root) runs ``import numbanorm`` and one first call in a fresh interpreter with a
fresh ``NUMBA_CACHE_DIR`` (cold), then, with ``--warm``, the same in a second interpreter that
loads that cache. Prints wall and process CPU time of the first call (the machine may be shared:
CPU time is the steadier number). Several ``--root`` checkouts run interleaved, case by case, so
before/after comparisons see the same load. ``--profile`` also prints, per jitted function, the
inclusive and self compile time from numba's ``numba:compile`` events (top 12 by self time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter(); c0 = time.process_time()
import numpy as np
import numbanorm as nb
t1 = time.perf_counter(); c1 = time.process_time()
case, profile = sys.argv[1], sys.argv[2] == "1"
rng = np.random.default_rng(0)

def arr(*shape):
    return rng.standard_normal(shape).astype(np.float32)

def ln(shape):
    x = arr(*shape); D = shape[-1]
    return lambda: nb.layer_norm(x, D, arr(D), arr(D))

def bn(shape, training):
    x = arr(*shape); C = shape[1]
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    return lambda: nb.batch_norm(x, rm, rv, arr(C), arr(C), training=training)

def ln_bwd(shape):
    x = arr(*shape); g = arr(*shape); D = shape[-1]
    mean = x.mean(-1); rstd = (1.0 / np.sqrt(x.var(-1) + 1e-5)).astype(np.float32)
    return lambda: nb.layer_norm_backward(g, x, D, mean, rstd, arr(D))

def bn_bwd(shape, training):
    x = arr(*shape); g = arr(*shape); C = shape[1]
    mean = x.mean((0, 2, 3)); invstd = (1.0 / np.sqrt(x.var((0, 2, 3)) + 1e-5)).astype(np.float32)
    return lambda: nb.batch_norm_backward(g, x, mean, invstd, arr(C), training)

SMALL_ROWS, BIG_ROWS = (4, 128, 64), (8, 128, 64)
SMALL_BN, BIG_BN = (2, 32, 8, 8), (64, 32, 8, 8)
CASES = {
    "ln_serial": lambda: ln(SMALL_ROWS), "ln_parallel": lambda: ln(BIG_ROWS),
    "bn_train_serial": lambda: bn(SMALL_BN, True), "bn_train_parallel": lambda: bn(BIG_BN, True),
    "bn_eval_serial": lambda: bn(SMALL_BN, False), "bn_eval_parallel": lambda: bn(BIG_BN, False),
    "ln_bwd_serial": lambda: ln_bwd(SMALL_ROWS), "ln_bwd_parallel": lambda: ln_bwd(BIG_ROWS),
    "bn_bwd_serial": lambda: bn_bwd(SMALL_BN, True), "bn_bwd_parallel": lambda: bn_bwd(BIG_BN, True),
}
call = CASES[case]()
events = []
if profile:
    from numba.core import event
    class L(event.Listener):
        def on_start(self, ev):
            events.append((time.perf_counter(), 0, ev))
        def on_end(self, ev):
            events.append((time.perf_counter(), 1, ev))
    lst = L()
    event.register("numba:compile", lst)
t2 = time.perf_counter(); c2 = time.process_time()
call()
t3 = time.perf_counter(); c3 = time.process_time()
prof = {}
if profile:
    stack = []
    for ts, end, ev in events:
        d = ev.data["dispatcher"]
        name = getattr(d, "py_func", d).__name__
        if not end:
            stack.append([name, ts, 0.0])
        else:
            n, start, child = stack.pop()
            incl = ts - start
            p = prof.setdefault(n, [0.0, 0.0, 0])
            p[0] += incl; p[1] += incl - child; p[2] += 1
            if stack:
                stack[-1][2] += incl
print(json.dumps({"import": t1 - t0, "wall": t3 - t2, "cpu": c3 - c2, "prof": prof}))
"""

CASES = ("ln_serial", "ln_parallel", "bn_train_serial", "bn_train_parallel", "bn_eval_serial",
         "bn_eval_parallel", "ln_bwd_serial", "ln_bwd_parallel", "bn_bwd_serial", "bn_bwd_parallel")


def run(root: str, case: str, cache: str, profile: bool) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=root)
    r = subprocess.run([sys.executable, "-c", _CHILD, case, "1" if profile else "0"], env=env,
                       capture_output=True, text=True, cwd=root, timeout=600)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", action="append", default=[])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--only", default="")
    ap.add_argument("--warm", action="store_true")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    roots = a.root or [os.getcwd()]
    print(f"load {os.getloadavg()[0]:.2f}; times of the first call in s (wall / process CPU)")
    for rep in range(a.reps):
        for case in CASES:
            if a.only and not any(o in case for o in a.only.split(",")):
                continue
            for root in roots:
                with tempfile.TemporaryDirectory() as cache:
                    cold = run(root, case, cache, a.profile)
                    line = (f"rep {rep} {case:18s} {os.path.basename(root.rstrip('/')):10s} "
                            f"cold {cold['wall']:6.2f} / {cold['cpu']:6.2f}")
                    if a.warm:
                        warm = run(root, case, cache, False)
                        line += (f"   warm import+first {warm['import'] + warm['wall']:5.2f} / first call "
                                 f"{warm['wall']:5.2f} / {warm['cpu']:5.2f}")
                    print(line + f"   load {os.getloadavg()[0]:.1f}", flush=True)
                    if a.profile:
                        top = sorted(cold["prof"].items(), key=lambda kv: -kv[1][1])[:12]
                        print("    " + ", ".join(f"{n} {i:.2f}/{s:.2f}" + (f" x{k}" if k > 1 else "")
                                                 for n, (i, s, k) in top), flush=True)


if __name__ == "__main__":
    main()
