"""Allocating calls with and without the output arena, side by side with ``out=`` and the peers.

Usage: PYTHONPATH=$PWD python tools/arena_probe.py [--threads 1 2] [--repeats 15] [--only TEXT]

Per case, round-robin in one process: numbanorm allocating (arena on), numbanorm allocating with
the arena bypassed (limit 0 for that one call: a fresh ``np.empty`` per call, the old behaviour),
numbanorm ``out=``, torch, onnxruntime (LN, BN eval NCHW) and ``np.copyto``. One thread: the calling
thread's CPU time (``time.thread_time``, which counts page faults and kernel zeroing but not time
slices lost to other processes); more threads: wall time. Medians (``--stat min``: minima).
Not a test.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

import numbanorm as nb

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None
try:
    import onnx
    import onnxruntime as ort
except ImportError:  # pragma: no cover
    ort = None

CASES = (("LN", (32, 512, 768), None), ("LN", (4, 4096, 4096), None), ("LN", (64, 196, 384), None),
         ("LN", (8, 128, 1024), None),
         ("BN eval NCHW", (32, 64, 56, 56), 1), ("BN eval NHWC", (32, 56, 56, 64), -1),
         ("BN eval NCHW", (64, 256, 14, 14), 1), ("BN eval NHWC", (64, 14, 14, 256), -1),
         ("BN train NCHW", (32, 64, 56, 56), 1), ("BN train NHWC", (32, 56, 56, 64), -1))


def ort_session(kind, x, w, b, rm, rv, threads):
    h = onnx.helper
    xs = list(x.shape)
    init = [onnx.numpy_helper.from_array(w, "scale"), onnx.numpy_helper.from_array(b, "B")]
    if kind == "LN":
        node = h.make_node("LayerNormalization", ["X", "scale", "B"], ["Y"], axis=-1, epsilon=1e-5)
        opset = 17
    else:
        init += [onnx.numpy_helper.from_array(rm, "mean"), onnx.numpy_helper.from_array(rv, "var")]
        node = h.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], ["Y"], epsilon=1e-5)
        opset = 15
    vi = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, xs) for n in ("X", "Y")]
    model = h.make_model(h.make_graph([node], "g", vi[:1], vi[1:], init), opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"X": x})[0]


def contenders(label, shape, axis, threads, rng):
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    out, dst = np.empty_like(x), np.empty_like(x)
    C = shape[-1] if axis is None else shape[axis]
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    rm, rv = rng.standard_normal(C).astype(np.float32), (rng.random(C) + 0.5).astype(np.float32)
    if label == "LN":
        def op(**k):
            return nb.layer_norm(x, C, w, b, **k)
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        peer = lambda: F.layer_norm(tx, (C,), tw, tb)  # noqa: E731
    else:
        train = "train" in label

        def op(**k):
            return nb.batch_norm(x, rm, rv, w, b, training=train, momentum=0.0, channel_axis=axis, **k)
        tx = torch.from_numpy(x)
        if axis == -1:
            tx = tx.permute(0, 3, 1, 2)
        trm, trv, tw, tb = (torch.from_numpy(a.copy()) for a in (rm, rv, w, b))
        peer = lambda: F.batch_norm(tx, trm, trv, tw, tb, training=train, momentum=0.0)  # noqa: E731

    def arena_off():  # what the allocating call does without the arena: fresh np.empty pages each call
        return op(out=np.empty_like(x))

    fns = {"arena": op, "no arena": arena_off, "out=": lambda: op(out=out), "torch": peer}
    if ort is not None and (label == "LN" or label == "BN eval NCHW"):
        fns["onnxruntime"] = ort_session(label[:2], x, w, b, rm, rv, threads)
    fns["copy"] = lambda: np.copyto(dst, x)
    return fns


def measure(fns, repeats, clock, stat):
    times = {k: [] for k in fns}
    keep = {}
    for k, f in fns.items():  # warm up; keep one result alive, as `y = op(x)` in a loop does
        keep[k] = f()
        keep[k] = f()  # the arena's second block (the kept output holds the first)
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = clock()
            keep[k] = f()
            times[k].append(clock() - t0)
    return {k: float(stat(v)) * 1e3 for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--only", default="")
    p.add_argument("--stat", choices=("median", "min"), default="median")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    for threads in a.threads:
        numba.set_num_threads(threads)
        torch.set_num_threads(threads)
        clock = time.thread_time if threads == 1 else time.perf_counter
        print(f"\n{threads} thread(s), {'thread CPU' if threads == 1 else 'wall'} time, {a.stat} ms; "
              "ratios: peer time / numbanorm allocating (arena on)")
        print(f"{'case':34s} {'arena':>7s} {'no-arena':>8s} {'out=':>7s} {'torch':>7s} {'ort':>7s} {'copy':>6s}"
              f" {'xtorch':>6s} {'xort':>6s} {'xtorch-na':>9s} {'xort-na':>7s}")
        for label, shape, axis in CASES:
            name = f"{label} {shape}"
            if a.only not in name:
                continue
            fns = contenders(label, shape, axis, threads, rng)
            ms = measure(fns, a.repeats, clock, getattr(np, a.stat))
            nan = float("nan")
            t, o = ms["torch"], ms.get("onnxruntime", nan)
            print(f"{name:34s} {ms['arena']:7.2f} {ms['no arena']:8.2f} {ms['out=']:7.2f} {t:7.2f} {o:7.2f}"
                  f" {ms['copy']:6.2f} {t / ms['arena']:6.2f} {o / ms['arena']:6.2f}"
                  f" {t / ms['no arena']:9.2f} {o / ms['no arena']:7.2f}", flush=True)
            del fns


if __name__ == "__main__":
    main()
