"""Compile every CUDA kernel specialization for real hardware, without a GPU.

    CUDA_HOME=/path/to/cuda python tools/ptx_check.py [--cc 9.0]

The simulator runs the kernels' Python, not numba-cuda's compiler, so a kernel can pass every
simulator test and still fail to compile for a GPU (typing, shuffles, libdevice). This script
drives the real host code of every CUDA op (dtypes, layouts, affine or not, training or eval,
rows longer than the registers hold) on fake ``__cuda_array_interface__`` arrays, with the
launch replaced by ``cuda.compile_ptx`` of the kernel for the argument types the launch would
pass. It needs NVVM (e.g. ``pip install nvidia-cuda-nvcc nvidia-cuda-nvrtc`` and ``CUDA_HOME``
pointing at it), not a GPU. If ``ptxas`` is found (``$CUDA_HOME/bin``), each kernel's register
count and spill bytes are reported, and spills fail the check.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

_NEXT_PTR = [1 << 30]


class FakeDev:
    """Metadata of a GPU array, at a fresh fake address (never dereferenced)."""

    def __init__(self, shape, dtype, strides=None, ptr=None):
        dt = np.dtype(np.int16 if str(dtype) == "bfloat16" else dtype)
        shape = tuple(int(n) for n in shape)
        if strides is None:
            strides, acc = [], dt.itemsize
            for n in reversed(shape):
                strides.append(acc)
                acc *= max(n, 1)
            strides = tuple(reversed(strides))
        if ptr is None:
            ptr = _NEXT_PTR[0]
            _NEXT_PTR[0] += (int(np.prod(shape)) * dt.itemsize + 4095) // 4096 * 4096 + 4096
        self.shape, self.dtype, self.strides, self.ptr = shape, dt, tuple(strides), ptr
        self.__cuda_array_interface__ = {"shape": shape, "typestr": dt.str, "strides": self.strides,
                                         "data": (ptr, False), "version": 3}

    def reshape(self, shape):
        return FakeDev(shape, self.dtype, None, self.ptr)


def _install_fakes(record):
    import numbanorm.cuda  # noqa: F401 - every module of the backend, so that all are patched below
    from numbanorm.cuda import arrays, launch

    arrays._numba_empty = lambda shape, dtype: FakeDev(shape, dtype)

    def permuted(buf, axes):
        return FakeDev(tuple(buf.shape[k] for k in axes), buf.dtype, tuple(buf.strides[k] for k in axes), buf.ptr)

    arrays._numba_permuted = permuted
    arrays.from_host = lambda like, values: arrays.wrap(FakeDev(values.shape, values.dtype), "stats")
    real_launch, real_stream_for = launch.launch, launch.stream_for
    for name, mod in list(sys.modules.items()):  # every module that imported launch / stream_for
        if name.startswith("numbanorm.cuda."):
            if getattr(mod, "launch", None) is real_launch:
                mod.launch = record
            if getattr(mod, "stream_for", None) is real_stream_for:
                mod.stream_for = lambda x: 0


def dev(shape, dtype, channels_last_of=None):
    """A fake device array; bfloat16 as the DevArray a torch bf16 tensor becomes."""
    from numbanorm.cuda import arrays

    if channels_last_of is not None:  # NCHW logical shape stored NHWC (torch's channels_last)
        n, c, *rest = shape
        mem = FakeDev((n, *rest, c), dtype)
        order = [0, len(shape) - 1, *range(1, len(shape) - 1)]
        obj = FakeDev(shape, dtype, tuple(mem.strides[k] for k in order), mem.ptr)
    else:
        obj = FakeDev(shape, dtype)
    d = arrays.wrap(obj, "x")
    if dtype == "bfloat16":
        d.dtype = "bfloat16"
    return d


def calls():
    """Every op on every dtype / layout / option combination worth a specialization."""
    import numbanorm.cuda as K

    for dt in ["float32", "float64", "float16", "bfloat16"]:
        half = dt in ("float16", "bfloat16")
        pdts = [dt, "float32"] if half else [dt]
        sdt = "float64" if dt == "float64" else "float32"
        # 771: a row length without 16-byte units (the scalar float32 LN / RMS kernels)
        for pdt, affine, D in itertools.product(pdts, [True, False], [768, 771, 10000]):
            x, w, b = dev((4, D), dt), dev((D,), pdt) if affine else None, dev((D,), pdt) if affine else None
            yield f"layer_norm {dt} p={pdt} affine={affine} D={D}", partial(K.layer_norm, x, D, w, b)
            yield f"rms_norm {dt} p={pdt}", partial(K.rms_norm, x, D, w)
            yield f"add_layer_norm {dt} p={pdt}", partial(K.add_layer_norm, x, dev((4, D), dt), D, w, b)
            m, r = dev((4,), sdt), dev((4,), sdt)
            yield f"layer_norm_backward {dt} p={pdt} affine={affine} D={D}", \
                partial(K.layer_norm_backward, dev((4, D), dt), x, D, m, r, w)
            yield f"rms_norm_backward {dt} p={pdt} affine={affine} D={D}", \
                partial(K.rms_norm_backward, dev((4, D), dt), x, D, r, w)
        for pdt, layout, training, affine in itertools.product(pdts, ["nchw", "nhwc", "cl"], [True, False],
                                                               [True, False]):
            shape = (8, 16, 5, 7) if layout != "nhwc" else (8, 5, 7, 16)
            axis = -1 if layout == "nhwc" else 1
            x = dev(shape, dt, channels_last_of=True if layout == "cl" else None)
            g = dev(shape, dt, channels_last_of=True if layout == "cl" else None)
            C = shape[axis]
            w = dev((C,), pdt) if affine else None
            b = dev((C,), pdt) if affine else None
            rm, rv = dev((C,), pdt), dev((C,), pdt)
            tag = f"{dt} p={pdt} {layout} training={training} affine={affine}"
            yield f"batch_norm {tag}", partial(K.batch_norm, x, rm, rv, w, b, training, channel_axis=axis)
            m, s = dev((C,), sdt), dev((C,), sdt)
            yield f"batch_norm_backward {tag}", \
                partial(K.batch_norm_backward, g, x, m, s, w, training, channel_axis=axis)
            if training:
                yield f"group_norm {tag}", partial(K.group_norm, x, 4, w, b, channel_axis=axis)
                gm, gs = dev((shape[0], 4), sdt), dev((shape[0], 4), sdt)
                yield f"group_norm_backward {tag}", \
                    partial(K.group_norm_backward, g, x, 4, gm, gs, w, channel_axis=axis)
                yield f"instance_norm {tag}", partial(K.instance_norm, x, rm, rv, w, b, channel_axis=axis)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0)")
    args = parser.parse_args()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        parser.error("run without NUMBA_ENABLE_CUDASIM: this compiles for hardware")
    cc = tuple(int(v) for v in args.cc.split("."))
    from numba import cuda, types
    from numba.np.numpy_support import from_dtype

    from numbanorm.cuda.arrays import Flat

    compiled: dict = {}
    failures: list[str] = []

    def argtype(a):
        if isinstance(a, Flat):
            return types.Array(from_dtype(a.dtype), 1, "C")
        return types.float64 if isinstance(a, float) else types.int64

    current = [""]

    threads: dict = {}

    def record(kernel, grid, block, stream, *a):
        sig = tuple(argtype(v) for v in a)
        key = (kernel, sig)
        threads[key] = max(threads.get(key, 0), int(np.prod(block)))
        if key in compiled:
            return
        name = kernel.py_func.__qualname__.split(".")[0]
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            compiled[key] = (name, current[0], ptx)
        except Exception as exc:  # noqa: BLE001 - reported, then the check fails
            compiled[key] = (name, current[0], None)
            failures.append(f"{name} ({current[0]}): {type(exc).__name__}: {str(exc)[:400]}")

    _install_fakes(record)
    for label, fn in calls():
        current[0] = label
        fn()
    # CUDA_HOME's ptxas first: it matches the NVVM that wrote the PTX (an older one on PATH
    # refuses a newer PTX version).
    ptxas = os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "ptxas")
    if not (os.environ.get("CUDA_HOME") and os.path.exists(ptxas)):
        ptxas = shutil.which("ptxas")
    print(f"{len(compiled)} kernel specializations compiled for sm_{cc[0]}{cc[1]}"
          + ("" if ptxas else " (ptxas not found: no register/spill report)"))
    worst: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, (name, label, ptx) in compiled.items():
            if ptx is None or not ptxas:
                continue
            path = os.path.join(tmp, "k.ptx")
            Path(path).write_text(ptx)
            out = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", path, "-o", os.devnull],
                                 capture_output=True, text=True)
            regs = [int(v) for v in re.findall(r"Used (\d+) registers", out.stderr)]
            spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)]
            if out.returncode:
                failures.append(f"ptxas {name} ({label}): {out.stderr[:400]}")
                continue
            stack = [int(v) for v in re.findall(r"(\d+) bytes stack frame", out.stderr)]
            r, s, st = max(regs or [0]), max(spills or [0]), max(stack or [0])
            if s:
                failures.append(f"{name} ({label}) spills {s} bytes")
            # registers are allocated per thread in multiples of 8; a block must fit the SM's 64K
            need = -(-r // 8) * 8 * threads[key]
            if need > 65536:
                failures.append(f"{name} ({label}): {r} registers x {threads[key]} threads > 65536")
            w = worst.get(name, (0, 0, 0, 0))
            worst[name] = (max(w[0], r), max(w[1], s), max(w[2], st), max(w[3], threads[key]))
    for name, (r, s, st, t) in sorted(worst.items()):
        print(f"  {name:<32} max registers {r:>4}  spill bytes {s}  stack bytes {st:>4}  max block {t:>4}")
    if failures:
        print(f"{len(failures)} FAILED:")
        for f in failures:
            print("  " + f)
        return 1
    print("all kernels compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
