"""One-shot GPU check of numbanorm's CUDA backend against torch (finishes in < 3 minutes).

    python tools/gpu_check.py            # on a machine with an NVIDIA GPU and CUDA torch
    NUMBA_ENABLE_CUDASIM=1 python tools/gpu_check.py --sim   # tiny smoke run, no GPU

1. device and library versions;
2. correctness of every op and layout (LN over 1 and 2 dims; BN train/eval NCHW, torch
   channels_last, NHWC via channel_axis=-1, NC) on torch CUDA tensors in float32, float64,
   float16 and bfloat16, against float64 references computed by torch on the GPU, with
   large-offset data (1e4 + N(0, 1)) and running-stat updates; a numba device array and (if
   installed) a CuPy array check that outputs come back as the input's kind;
3. device-to-device copy bandwidth (the roofline: bytes read + written);
4. numbanorm vs torch timings with CUDA events (warm-up, then the median of repeated calls) for
   the LN and BN shapes of issue #6 in fp32 and bf16;
5. the opt-in lean launch path (NUMBANORM_CUDA_FAST_LAUNCH=1) against numba's, bitwise; and
   host wall time per call on a tiny input (launch overhead), for torch and numbanorm with
   torch, numba and CuPy arguments, through both launch paths;
6. one table: GB/s (x read once + y written once), ratio vs torch (torch time / numbanorm
   time), fraction of copy bandwidth;
7. backward ops (layer_norm_backward, batch_norm_backward) against torch float64 autograd, and
   timings vs ``torch.ops.aten.native_layer_norm_backward`` / ``native_batch_norm_backward`` (and
   group_norm_backward / rms_norm_backward vs ``native_group_norm_backward`` /
   ``_fused_rms_norm_backward``)
   (GB/s counts grad_out and x read once, grad_x written once);
8. the norm family (rms_norm, add_layer_norm, group_norm, instance_norm) against torch float64,
   and its backward (rms_norm_backward, group_norm_backward) against torch float64 autograd.

Under ``--sim`` the same code runs on tiny shapes with numba's simulated device arrays, torch
on the CPU as the float64 reference, and wall-clock timing (the numbers mean nothing there).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

LN_SHAPES = [(16384, 768), (16384, 4096), (4096, 8192), (65536, 1024), (8, 768)]
BN_SHAPES = [(32, 64, 56, 56), (64, 256, 14, 14), (128, 64, 112, 112), (8, 512, 7, 7)]
SIM_LN_SHAPES = [(3, 21)]
SIM_BN_SHAPES = [(3, 4, 3, 2)]

FAILURES: list[str] = []


def ops(sim: bool):
    """(layer_norm, batch_norm): the public API; under --sim the CUDA backend directly, since
    the simulated bfloat16 arrays are internal descriptors the public dispatch does not know."""
    import numbanorm

    if sim:
        import numbanorm.cuda

        return numbanorm.cuda.layer_norm, numbanorm.cuda.batch_norm
    return numbanorm.layer_norm, numbanorm.batch_norm


def check(name: str, err: float, tol: float) -> None:
    ok = err <= tol
    print(f"  {'ok  ' if ok else 'FAIL'} {name:<58} rel_l2={err:.2e} (tol {tol:.0e})")
    if not ok:
        FAILURES.append(name)


# --------------------------------------------------------------------------------------------
# Array plumbing: torch CUDA tensors on a GPU, numba simulated arrays under --sim
# --------------------------------------------------------------------------------------------
class Env:
    def __init__(self, sim: bool):
        import torch

        self.sim, self.torch = sim, torch
        self.dev = "cpu" if sim else "cuda"
        self.tdt = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                    "bfloat16": torch.bfloat16}

    def tensor(self, a: np.ndarray, dtype: str):
        """The test input as the kind numbanorm is called with (torch CUDA / simulated numba)."""
        t = self.torch.from_numpy(a).to(self.dev, self.tdt[dtype])
        if not self.sim:
            return t
        from numba import cuda

        from numbanorm.cuda import arrays

        if dtype == "bfloat16":
            d = arrays.wrap(cuda.to_device(t.view(self.torch.int16).numpy().copy()), "x")
            d.dtype = "bfloat16"
            return d
        return cuda.to_device(t.numpy().copy())

    def ref(self, a):
        """A float64 torch tensor (on the GPU, or the CPU under --sim) of any result."""
        torch = self.torch
        if isinstance(a, torch.Tensor):
            return a.double()
        if hasattr(a, "dtype") and str(getattr(a, "dtype", "")) == "bfloat16":
            a = a.obj
        host = a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)
        return torch.from_numpy(host.astype(np.float64))

    def ref_bf16(self, a):
        host = a.copy_to_host() if hasattr(a, "copy_to_host") else a.obj.copy_to_host()
        return self.torch.from_numpy(host.view(np.int16).copy()).view(self.torch.bfloat16).double()

    def sync(self):
        if not self.sim:
            self.torch.cuda.synchronize()


def rel(a, b) -> float:
    d = float((a - b).norm())
    n = float(b.norm())
    return d / (n if n else 1.0)


TOL = {"float64": 1e-12, "float32": 5e-6, "float16": 3e-3, "bfloat16": 2e-2}


def check_correctness(env: Env, sim: bool) -> None:
    import torch.nn.functional as F

    layer_norm, batch_norm = ops(sim)
    rng = np.random.default_rng(int(os.environ.get("NUMBANORM_TEST_SEED", "1234")))
    ln_cases = SIM_LN_SHAPES if sim else [(64, 768), (33, 1000), (16, 4096), (8, 8192), (4, 20000), (5, 3, 17)]
    print("correctness vs float64 torch references")
    for dtype in ["float32", "float64", "float16", "bfloat16"]:
        half = dtype in ("float16", "bfloat16")
        for shape in ln_cases:
            k = 2 if len(shape) == 3 else 1
            ns = shape[-k:]
            x = (rng.standard_normal(shape) * 2 + (1.0 if half else 1e4)).astype(np.float32)
            w = rng.standard_normal(ns).astype(np.float32)
            b = rng.standard_normal(ns).astype(np.float32)
            tx, tw, tb = env.tensor(x, dtype), env.tensor(w, dtype), env.tensor(b, dtype)
            y, mean, rstd = layer_norm(tx, ns, tw, tb, return_stats=True)
            xr = env.ref_bf16(tx) if (sim and dtype == "bfloat16") else env.ref(tx)
            wr = env.ref_bf16(tw) if (sim and dtype == "bfloat16") else env.ref(tw)
            br = env.ref_bf16(tb) if (sim and dtype == "bfloat16") else env.ref(tb)
            yr = F.layer_norm(xr, ns, wr, br, 1e-5)
            yy = env.ref_bf16(y) if (sim and dtype == "bfloat16") else env.ref(y)
            check(f"layer_norm {dtype} {shape}", rel(yy, yr), TOL[dtype])
            mr = xr.reshape(-1, int(np.prod(ns))).mean(1)
            check(f"layer_norm {dtype} {shape} mean", rel(env.ref(mean).reshape(-1), mr), TOL[dtype] / 10)

        for shape in SIM_BN_SHAPES if sim else BN_SHAPES[::3] + [(6, 5, 13, 9)]:
            C = shape[1]
            x = (rng.standard_normal(shape) * 2 + (1.0 if half else 1e4)).astype(np.float32)
            w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
            for layout in ["nchw", "channels_last", "nhwc", "nc"]:
                xs = x.reshape(shape[0] * 2, -1) if layout == "nc" else x
                if layout == "nc":
                    C2 = xs.shape[1]
                    w2, b2 = rng.standard_normal(C2).astype(np.float32), rng.standard_normal(C2).astype(np.float32)
                else:
                    w2, b2 = w, b
                if layout == "nhwc":
                    xs = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                axis = -1 if layout == "nhwc" else 1
                tx = env.tensor(xs, dtype)
                if layout == "channels_last":
                    if sim:
                        tx = env.tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), dtype)
                        if dtype == "bfloat16":
                            continue
                        tx = tx.transpose((0, 3, 1, 2))
                    else:
                        tx = tx.contiguous(memory_format=env.torch.channels_last)
                Cn = xs.shape[axis]
                sdt = "float32" if half else dtype
                for training in (True, False):
                    rm = env.tensor(rng.standard_normal(Cn).astype(np.float32), sdt)
                    rv = env.tensor((rng.random(Cn) + 0.5).astype(np.float32), sdt)
                    rm_r, rv_r = env.ref(rm).clone(), env.ref(rv).clone()
                    tw, tb = env.tensor(w2, dtype), env.tensor(b2, dtype)
                    y, mean, invstd = batch_norm(tx, rm, rv, tw, tb, training=training, channel_axis=axis,
                                                    return_stats=True)
                    bf = sim and dtype == "bfloat16"
                    xr = env.ref_bf16(tx) if bf else env.ref(tx)
                    wr = env.ref_bf16(tw) if bf else env.ref(tw)
                    br = env.ref_bf16(tb) if bf else env.ref(tb)
                    if axis == -1:
                        xr = xr.movedim(-1, 1)
                    yr = F.batch_norm(xr, rm_r, rv_r, wr, br, training, 0.1, 1e-5)
                    yy = env.ref_bf16(y) if bf else env.ref(y)
                    if axis == -1:
                        yy = yy.movedim(-1, 1)
                    name = f"batch_norm {'train' if training else 'eval '} {dtype} {layout} {shape}"
                    check(name, rel(yy, yr), TOL[dtype])
                    check(name + " running_var", rel(env.ref(rv), rv_r), TOL[sdt])
                    if not sim and layout == "channels_last":
                        assert y.is_contiguous(memory_format=env.torch.channels_last), "layout not kept"
    if not sim:
        _check_kinds(env, rng)


def _check_kinds(env: Env, rng) -> None:
    """Outputs come back as the input's kind: numba in -> numba out, CuPy in -> CuPy out."""
    from numba import cuda

    import numbanorm as nb

    x = rng.standard_normal((64, 300)).astype(np.float32)
    ref = env.torch.nn.functional.layer_norm(env.torch.from_numpy(x).double(), (300,)).numpy()
    y = nb.layer_norm(cuda.to_device(x), 300)
    assert cuda.is_cuda_array(y) and not isinstance(y, env.torch.Tensor)
    check("layer_norm numba device array", float(np.linalg.norm(y.copy_to_host() - ref) / np.linalg.norm(ref)),
          TOL["float32"])
    try:
        import cupy
    except ImportError:
        print("  (CuPy not installed: CuPy check skipped)")
        return
    y = nb.layer_norm(cupy.asarray(x), 300)
    assert isinstance(y, cupy.ndarray)
    check("layer_norm CuPy array", float(np.linalg.norm(cupy.asnumpy(y) - ref) / np.linalg.norm(ref)),
          TOL["float32"])


# --------------------------------------------------------------------------------------------
# Backward and family correctness
# --------------------------------------------------------------------------------------------
def backend(sim: bool):
    """The module whose functions take the test arrays (see ``ops``)."""
    import numbanorm

    if sim:
        import numbanorm.cuda

        return numbanorm.cuda
    return numbanorm


def _read(env: Env, a, dtype: str):
    return env.ref_bf16(a) if (env.sim and dtype == "bfloat16") else env.ref(a)


def _inputs(env: Env, rng, dtype: str, shape, offset: float):
    """(device array, float64 torch tensor of the same rounded values) of N(offset, 4) data."""
    a = env.tensor((rng.standard_normal(shape) * 2 + offset).astype(np.float32), dtype)
    return a, _read(env, a, dtype)


def check_backward(env: Env, sim: bool) -> None:
    import torch.nn.functional as F

    torch = env.torch
    nb = backend(sim)
    rng = np.random.default_rng(int(os.environ.get("NUMBANORM_TEST_SEED", "1235")))
    print("backward vs float64 torch autograd")
    ln_shapes = [(5, 21)] if sim else [(64, 768), (16, 5000), (8, 10000)]
    bn_shape = (3, 4, 3, 2) if sim else (6, 24, 13, 9)
    for dtype in ["float32", "bfloat16"] if sim else ["float32", "float64", "float16", "bfloat16"]:
        half = dtype in ("float16", "bfloat16")
        # float32: the saved stats are float32, which at a 1e3 offset moves x̂ by ~1e-5 relative
        tol = TOL[dtype] * (1 if half else 100)
        for shape in ln_shapes:
            D = shape[-1]
            x, xr = _inputs(env, rng, dtype, shape, 1.0 if half else 1e3)
            g, gr = _inputs(env, rng, dtype, shape, 0.0)
            w, wr = _inputs(env, rng, dtype, (D,), 1.0)
            _, mean, rstd = nb.layer_norm(x, D, w, None, return_stats=True)
            gx, gw, gb = nb.layer_norm_backward(g, x, D, mean, rstd, w)
            xr.requires_grad_(True)
            wr.requires_grad_(True)
            br = torch.zeros_like(wr, requires_grad=True)
            F.layer_norm(xr, (D,), wr, br, 1e-5).backward(gr)
            for name, got, ref in (("grad_x", gx, xr.grad), ("grad_weight", gw, wr.grad), ("grad_bias", gb, br.grad)):
                check(f"layer_norm_backward {dtype} {shape} {name}", rel(_read(env, got, dtype), ref), tol)
        layouts = ["nchw", "nhwc"] if sim else ["nchw", "channels_last", "nhwc"]
        for layout, training in ((lay, t) for lay in layouts for t in (True, False)):
            if half and layout == "channels_last":
                continue
            shape = bn_shape if layout != "nhwc" else (bn_shape[0], *bn_shape[2:], bn_shape[1])
            axis = -1 if layout == "nhwc" else 1
            C = shape[axis]
            x, xr = _inputs(env, rng, dtype, shape, 1.0 if half else 1e3)
            g, gr = _inputs(env, rng, dtype, shape, 0.0)
            if layout == "channels_last":
                x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
            sdt = "float32" if half else dtype
            w, wr = _inputs(env, rng, sdt, (C,), 1.0)
            rm, rmr = _inputs(env, rng, sdt, (C,), 1.0 if half else 1e3)
            rv = env.tensor((rng.random(C) + 3.0).astype(np.float32), sdt)
            rvr = env.ref(rv).clone()
            _, mean, invstd = nb.batch_norm(x, rm, rv, w, None, training, 0.0, channel_axis=axis, return_stats=True)
            gx, gw, gb = nb.batch_norm_backward(g, x, mean, invstd, w, training, channel_axis=axis)
            xm, gm = (t.movedim(-1, 1) if axis == -1 else t for t in (xr, gr))
            xm = xm.detach().requires_grad_(True)
            wr.requires_grad_(True)
            br = torch.zeros_like(wr, requires_grad=True)
            F.batch_norm(xm, rmr, rvr, wr, br, training, 0.0, 1e-5).backward(gm)
            gxr = xm.grad.movedim(1, -1) if axis == -1 else xm.grad
            tag = f"batch_norm_backward {'train' if training else 'eval '} {dtype} {layout}"
            check(f"{tag} grad_x", rel(_read(env, gx, dtype), gxr), tol)
            check(f"{tag} grad_weight", rel(env.ref(gw), wr.grad), tol)
            check(f"{tag} grad_bias", rel(env.ref(gb), br.grad), tol)


def check_family(env: Env, sim: bool) -> None:
    import torch.nn.functional as F

    torch = env.torch
    nb = backend(sim)
    rng = np.random.default_rng(int(os.environ.get("NUMBANORM_TEST_SEED", "1236")))
    print("norm family (and its backward, vs autograd) vs float64 torch")
    row_shape = (5, 21) if sim else (64, 1000)
    img_shape = (3, 4, 3, 2) if sim else (6, 32, 13, 9)
    for dtype in ["float32", "bfloat16"] if sim else ["float32", "float64", "bfloat16"]:
        half = dtype == "bfloat16"
        tol = TOL[dtype] * (1 if half else 10)
        D = row_shape[-1]
        x, xr = _inputs(env, rng, dtype, row_shape, 1.0 if half else 1e3)
        r, rr = _inputs(env, rng, dtype, row_shape, 0.0)
        w, wr = _inputs(env, rng, dtype, (D,), 1.0)
        b, bref = _inputs(env, rng, dtype, (D,), 0.0)
        check(f"rms_norm {dtype}", rel(_read(env, nb.rms_norm(x, D, w), dtype),
                                       xr * torch.rsqrt((xr * xr).mean(-1, keepdim=True) + torch.finfo(
                                           torch.float64 if dtype == "float64" else torch.float32).eps) * wr), tol)
        y, s = nb.add_layer_norm(x, r, D, w, b)
        sr = _read(env, s, dtype)
        check(f"add_layer_norm {dtype} sum", rel(sr, xr + rr), TOL[dtype] if not half else 8e-3)
        check(f"add_layer_norm {dtype}", rel(_read(env, y, dtype), F.layer_norm(sr, (D,), wr, bref, 1e-5)), tol)
        C = img_shape[1]
        for layout in ["nchw", "nhwc"]:
            shape = img_shape if layout == "nchw" else (img_shape[0], *img_shape[2:], C)
            axis = 1 if layout == "nchw" else -1
            x, xr = _inputs(env, rng, dtype, shape, 1.0 if half else 1e3)
            xm = xr.movedim(-1, 1) if axis == -1 else xr
            sdt = "float32" if half else dtype
            w, wr = _inputs(env, rng, dtype, (C,), 1.0)
            b, bref = _inputs(env, rng, dtype, (C,), 0.0)
            y = nb.group_norm(x, 2, w, b, channel_axis=axis)
            yr = F.group_norm(xm, 2, wr, bref, 1e-5)
            yr = yr.movedim(1, -1) if axis == -1 else yr
            check(f"group_norm {dtype} {layout}", rel(_read(env, y, dtype), yr), tol)
            rm, rmr = _inputs(env, rng, sdt, (C,), 0.0)
            rv = env.tensor((rng.random(C) + 0.5).astype(np.float32), sdt)
            rvr = env.ref(rv).clone()
            rmr = rmr.clone()
            y = nb.instance_norm(x, rm, rv, w, b, channel_axis=axis)
            yr = F.instance_norm(xm, rmr, rvr, wr, bref, True, 0.1, 1e-5)
            check(f"instance_norm {dtype} {layout}", rel(_read(env, y, dtype), yr.movedim(1, -1) if axis == -1 else yr),
                  tol)
            check(f"instance_norm {dtype} {layout} running_var", rel(env.ref(rv), rvr), TOL[sdt] * 10)
        _check_family_backward(env, nb, rng, dtype, row_shape, img_shape)


def _check_family_backward(env: Env, nb, rng, dtype: str, row_shape, img_shape) -> None:
    """rms_norm_backward and group_norm_backward (NCHW and NHWC) vs float64 torch autograd."""
    import torch.nn.functional as F

    torch = env.torch
    half = dtype == "bfloat16"
    tol = TOL[dtype] * (1 if half else 100)  # float32 saved stats, as check_backward
    D = row_shape[-1]
    x, xr = _inputs(env, rng, dtype, row_shape, 1.0)
    g, gr = _inputs(env, rng, dtype, row_shape, 0.0)
    w, wr = _inputs(env, rng, dtype, (D,), 1.0)
    _, rstd = nb.rms_norm(x, D, w, return_stats=True)
    gx, gw = nb.rms_norm_backward(g, x, D, rstd, w)
    xr.requires_grad_(True)
    wr.requires_grad_(True)
    eps = torch.finfo(torch.float64 if dtype == "float64" else torch.float32).eps
    (xr * torch.rsqrt((xr * xr).mean(-1, keepdim=True) + eps) * wr).backward(gr)
    check(f"rms_norm_backward {dtype} grad_x", rel(_read(env, gx, dtype), xr.grad), tol)
    check(f"rms_norm_backward {dtype} grad_weight", rel(_read(env, gw, dtype), wr.grad), tol)
    C = img_shape[1]
    for layout, axis in (("nchw", 1), ("nhwc", -1)):
        shape = img_shape if axis == 1 else (img_shape[0], *img_shape[2:], C)
        x, xr = _inputs(env, rng, dtype, shape, 1.0 if half else 1e3)
        g, gr = _inputs(env, rng, dtype, shape, 0.0)
        w, wr = _inputs(env, rng, dtype, (C,), 1.0)
        _, mean, rstd = nb.group_norm(x, 2, w, None, channel_axis=axis, return_stats=True)
        gx, gw, gb = nb.group_norm_backward(g, x, 2, mean, rstd, w, channel_axis=axis)
        xm, gm = (t.movedim(-1, 1) if axis == -1 else t for t in (xr, gr))
        xm = xm.detach().requires_grad_(True)
        wr.requires_grad_(True)
        br = torch.zeros_like(wr, requires_grad=True)
        F.group_norm(xm, 2, wr, br, 1e-5).backward(gm)
        gxr = xm.grad.movedim(1, -1) if axis == -1 else xm.grad
        for name, got, ref in (("grad_x", gx, gxr), ("grad_weight", gw, wr.grad), ("grad_bias", gb, br.grad)):
            check(f"group_norm_backward {dtype} {layout} {name}", rel(_read(env, got, dtype), ref), tol)


def time_backward(env: Env, sim: bool, copy_gbs: float) -> None:
    """LN, BN (train), GN and RMS backward vs torch's backward kernels (called directly: no autograd)."""
    torch = env.torch
    nb = backend(sim)
    rows = []
    reps = 3 if sim else 25
    aten = torch.ops.aten
    for dtype in ["float32", "bfloat16"]:
        for shape in SIM_LN_SHAPES if sim else LN_SHAPES:
            D = shape[-1]
            x = torch.randn(shape, device=env.dev).to(env.tdt[dtype])
            g = torch.randn(shape, device=env.dev).to(env.tdt[dtype])
            w = torch.randn(D, device=env.dev).to(env.tdt[dtype])
            b = torch.zeros_like(w)
            _, tm, tr = aten.native_layer_norm(x, (D,), w, b, 1e-5)
            t_torch = device_time_ms(env, partial(aten.native_layer_norm_backward, g, x, (D,), tm, tr, w, b,
                                                  [True, True, True]), reps)
            nx, ng, nw = (env.tensor(t.float().numpy(), dtype) for t in (x, g, w)) if sim else (x, g, w)
            _, m, r = nb.layer_norm(nx, D, nw, None, return_stats=True)
            t_nb = device_time_ms(env, partial(nb.layer_norm_backward, ng, nx, D, m, r, nw), reps)
            rows.append(("LN bwd", shape, dtype, x.numel() * x.element_size() * 3, t_torch, t_nb))
        for shape in SIM_BN_SHAPES if sim else BN_SHAPES:
            C = shape[1]
            x = torch.randn(shape, device=env.dev).to(env.tdt[dtype])
            g = torch.randn(shape, device=env.dev).to(env.tdt[dtype])
            w = torch.randn(C, device=env.dev)
            _, sm, si = aten.native_batch_norm(x, w, None, None, None, True, 0.1, 1e-5)
            t_torch = device_time_ms(env, partial(aten.native_batch_norm_backward, g, x, w, None, None, sm, si, True,
                                                  1e-5, [True, True, True]), reps)
            if sim:
                nx, ng = (env.tensor(t.float().numpy(), dtype) for t in (x, g))
                nw = env.tensor(w.numpy(), "float32")
            else:
                nx, ng, nw = x, g, w
            _, m, s = nb.batch_norm(nx, None, None, nw, None, True, return_stats=True)
            t_nb = device_time_ms(env, partial(nb.batch_norm_backward, ng, nx, m, s, nw, True), reps)
            rows.append(("BN bwd", shape, dtype, x.numel() * x.element_size() * 3, t_torch, t_nb))
        rows += _time_family_backward(env, nb, sim, dtype, reps)
    print()
    print("backward: GB/s counts grad_out and x read once + grad_x written once; ratio = torch time / numbanorm time")
    _table(rows, copy_gbs)


def _time_family_backward(env: Env, nb, sim: bool, dtype: str, reps: int) -> list[tuple]:
    """GroupNorm (and, on a GPU, RMSNorm) backward vs torch's backward kernels: table rows."""
    torch = env.torch
    aten = torch.ops.aten
    rows = []
    for shape in SIM_BN_SHAPES if sim else BN_SHAPES[:2]:
        N, C, G = shape[0], shape[1], (2 if sim else 32)
        HW = int(np.prod(shape[2:]))
        x, g, w = (torch.randn(s, device=env.dev).to(env.tdt[dtype]) for s in (shape, shape, (C,)))
        _, tm, tr = aten.native_group_norm(x, w, None, N, C, HW, G, 1e-5)
        t_torch = device_time_ms(env, partial(aten.native_group_norm_backward, g, x, tm, tr, w, N, C, HW, G,
                                              [True, True, True]), reps)
        nx, ng, nw = (env.tensor(t.float().numpy(), dtype) for t in (x, g, w)) if sim else (x, g, w)
        _, m, r = nb.group_norm(nx, G, nw, None, return_stats=True)
        t_nb = device_time_ms(env, partial(nb.group_norm_backward, ng, nx, G, m, r, nw), reps)
        rows.append(("GN bwd", shape, dtype, x.numel() * x.element_size() * 3, t_torch, t_nb))
    if sim:  # torch has no CPU kernel for _fused_rms_norm_backward
        return rows
    for shape in LN_SHAPES[:2]:
        D = shape[-1]
        x, g, w = (torch.randn(s, device=env.dev).to(env.tdt[dtype]) for s in (shape, shape, (D,)))
        _, tr = aten._fused_rms_norm(x, [D], w, None)
        t_torch = device_time_ms(env, partial(aten._fused_rms_norm_backward, g, x, [D], tr, w, [True, True]), reps)
        _, r = nb.rms_norm(x, D, w, return_stats=True)
        t_nb = device_time_ms(env, partial(nb.rms_norm_backward, g, x, D, r, w), reps)
        rows.append(("RMS bwd", shape, dtype, x.numel() * x.element_size() * 3, t_torch, t_nb))
    return rows


def _table(rows, copy_gbs: float) -> None:
    print(f"{'op':<9}{'shape':<22}{'dtype':<10}{'torch ms':>9}{'nb ms':>9}{'torch GB/s':>11}{'nb GB/s':>9}"
          f"{'ratio':>7}{'nb/copy':>9}")
    for op, shape, dtype, nbytes, tt, tn in rows:
        g_t, g_n = nbytes / tt / 1e6, nbytes / tn / 1e6
        print(f"{op:<9}{str(shape):<22}{dtype:<10}{tt:>9.3f}{tn:>9.3f}{g_t:>11.0f}{g_n:>9.0f}{tt / tn:>7.2f}"
              f"{g_n / copy_gbs:>9.2f}")


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def device_time_ms(env: Env, fn, reps: int = 25, warmup: int = 3) -> float:
    if env.sim:  # a smoke run: the numbers mean nothing in the simulator
        reps, warmup = 1, 1
    for _ in range(warmup):
        fn()
    env.sync()
    if env.sim:
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            t.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(t)
    torch = env.torch
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends, strict=True):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def copy_bandwidth(env: Env, sim: bool) -> float:
    torch = env.torch
    n = (1 << 10) if sim else (1 << 28)  # 1 GiB of float32 on a GPU
    a = torch.empty(n, dtype=torch.float32, device=env.dev).normal_()
    b = torch.empty_like(a)
    ms = device_time_ms(env, lambda: b.copy_(a), reps=5 if sim else 20)
    gbs = 2 * a.numel() * 4 / ms / 1e6
    print(f"device copy bandwidth: {gbs:.0f} GB/s (read + write, {a.numel() * 4 >> 20} MiB)")
    return gbs


def timings(env: Env, sim: bool, copy_gbs: float) -> list[tuple]:
    import torch.nn.functional as F

    layer_norm, batch_norm = ops(sim)
    rows = []
    reps = 3 if sim else 25
    for dtype in ["float32", "bfloat16"]:
        for shape in SIM_LN_SHAPES if sim else LN_SHAPES:
            rows.append(_time_ln(env, sim, layer_norm, F, shape, dtype, reps))
        for shape in SIM_BN_SHAPES if sim else BN_SHAPES:
            for training in (True, False):
                rows.append(_time_bn(env, sim, batch_norm, F, shape, dtype, training, reps))
    print()
    print("GB/s counts x read once + y written once; ratio = torch time / numbanorm time (>1: numbanorm faster)")
    _table(rows, copy_gbs)
    return rows


def _time_ln(env, sim, layer_norm, F, shape, dtype, reps):
    torch = env.torch
    D = shape[-1]
    x, w, b = (torch.randn(s, device=env.dev).to(env.tdt[dtype]) for s in (shape, D, D))
    nx, nw, nbias = (env.tensor(t.float().cpu().numpy(), dtype) for t in (x, w, b)) if sim else (x, w, b)
    t_torch = device_time_ms(env, lambda: F.layer_norm(x, (D,), w, b, 1e-5), reps)
    t_nb = device_time_ms(env, lambda: layer_norm(nx, D, nw, nbias), reps)
    return "LN", shape, dtype, x.numel() * x.element_size() * 2, t_torch, t_nb


def _time_bn(env, sim, batch_norm, F, shape, dtype, training, reps):
    """fp32 affine and running stats for both dtypes (torch's mixed-precision BatchNorm)."""
    torch = env.torch
    C = shape[1]
    x = torch.randn(shape, device=env.dev).to(env.tdt[dtype])
    rm, rv, w, b = torch.zeros(C, device=env.dev), torch.ones(C, device=env.dev), *torch.randn(2, C, device=env.dev)
    if sim:
        nx = env.tensor(x.float().numpy(), dtype)
        nrm, nrv, nw, nbias = (env.tensor(t.numpy().copy(), "float32") for t in (rm, rv, w, b))
    else:
        nx, nrm, nrv, nw, nbias = x, rm.clone(), rv.clone(), w, b
    t_torch = device_time_ms(env, lambda: F.batch_norm(x, rm, rv, w, b, training), reps)
    t_nb = device_time_ms(env, lambda: batch_norm(nx, nrm, nrv, nw, nbias, training), reps)
    return "BN train" if training else "BN eval", shape, dtype, x.numel() * x.element_size() * 2, t_torch, t_nb


def host_overhead(env: Env, sim: bool) -> None:
    """Wall time per call on a tiny input, calls issued back to back (no sync in between)."""
    import torch.nn.functional as F
    from numba import cuda

    import numbanorm as nb

    torch = env.torch
    n, D, C = (2, 16, 3) if sim else (2000, 768, 64)
    x = torch.randn(8 if not sim else 2, D, device=env.dev)
    w, b = torch.randn(D, device=env.dev), torch.randn(D, device=env.dev)
    xb = torch.randn(8 if not sim else 2, C, 7 if not sim else 2, 7 if not sim else 2, device=env.dev)
    rm, rv = torch.zeros(C, device=env.dev), torch.ones(C, device=env.dev)
    cases = {"torch F.layer_norm": lambda: F.layer_norm(x, (D,), w, b),
             "torch F.batch_norm train": lambda: F.batch_norm(xb, rm, rv, None, None, True)}
    if sim:
        nx, nw, nbias, nxb = (cuda.to_device(t.numpy()) for t in (x, w, b, xb))
        cases["numbanorm layer_norm (numba arrays)"] = lambda: nb.layer_norm(nx, D, nw, nbias)
        cases["numbanorm batch_norm train (numba arrays)"] = lambda: nb.batch_norm(nxb, training=True)
    else:
        cases["numbanorm layer_norm (torch)"] = lambda: nb.layer_norm(x, D, w, b)
        nrm, nrv = rm.clone(), rv.clone()
        cases["numbanorm batch_norm train (torch)"] = lambda: nb.batch_norm(xb, nrm, nrv, training=True)
        cases["numbanorm batch_norm eval (torch)"] = lambda: nb.batch_norm(xb, nrm, nrv)
        _, lm, lr = nb.layer_norm(x, D, w, b, return_stats=True)
        cases["numbanorm layer_norm_backward (torch)"] = lambda: nb.layer_norm_backward(x, x, D, lm, lr, w)
        _, bm, bs = nb.batch_norm(xb, training=True, return_stats=True)
        cases["numbanorm batch_norm_backward train (torch)"] = lambda: nb.batch_norm_backward(xb, xb, bm, bs)
        cases["numbanorm rms_norm (torch)"] = lambda: nb.rms_norm(x, D, w)
        nx, nw, nbias = (cuda.as_cuda_array(t) for t in (x, w, b))
        cases["numbanorm layer_norm (numba arrays)"] = lambda: nb.layer_norm(nx, D, nw, nbias)
        try:
            import cupy

            cx, cw, cb = (cupy.asarray(t) for t in (x, w, b))
            cases["numbanorm layer_norm (CuPy)"] = lambda: nb.layer_norm(cx, D, cw, cb)
        except ImportError:
            pass
    print()
    print("host wall time per call (tiny inputs, back-to-back calls):")
    modes = [False] if sim else [False, True]
    for name, fn in cases.items():
        for fast in modes if name.startswith("numbanorm") else [False]:
            _set_fast_launch(fast)
            for _ in range(3):
                fn()
            env.sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            per = (time.perf_counter() - t0) / n * 1e6
            env.sync()
            label = name + (" [fast launch]" if fast else "")
            print(f"  {label:<54} {per:8.1f} us")
    _set_fast_launch(False)


def _set_fast_launch(on: bool) -> None:
    from numbanorm.cuda import launch

    launch.FAST_LAUNCH[0] = on


def check_fast_launch(env: Env) -> None:
    """The opt-in lean launch path (NUMBANORM_CUDA_FAST_LAUNCH=1) gives bit-identical results."""
    import numbanorm as nb

    torch = env.torch
    print("fast launch path vs numba's launch path (bitwise)")
    x = torch.randn(64, 1000, device="cuda") * 3 + 7
    xb = torch.randn(8, 16, 9, 7, device="cuda").to(memory_format=torch.channels_last)
    w = torch.randn(1000, device="cuda")
    cases = {
        "layer_norm fp32": lambda: nb.layer_norm(x, 1000, w, None, return_stats=True),
        "layer_norm bf16": lambda: nb.layer_norm(x.bfloat16(), 1000, w.bfloat16(), w.bfloat16()),
        "batch_norm train NCHW": lambda: nb.batch_norm(xb.contiguous(), torch.zeros(16, device="cuda"),
                                                       torch.ones(16, device="cuda"), training=True),
        "batch_norm train channels_last": lambda: nb.batch_norm(xb, training=True, return_stats=True),
        "batch_norm eval bf16": lambda: nb.batch_norm(xb.bfloat16(), torch.zeros(16, device="cuda"),
                                                      torch.ones(16, device="cuda"), torch.ones(16, device="cuda")),
        "layer_norm_backward fp32": lambda: nb.layer_norm_backward(
            x, x, 1000, *nb.layer_norm(x, 1000, return_stats=True)[1:], w),
        "batch_norm_backward train channels_last": lambda: nb.batch_norm_backward(
            xb, xb, *nb.batch_norm(xb, training=True, return_stats=True)[1:], torch.ones(16, device="cuda")),
        "group_norm channels_last": lambda: nb.group_norm(xb, 4, return_stats=True),
        "add_layer_norm bf16": lambda: nb.add_layer_norm(x.bfloat16(), x.bfloat16(), 1000),
    }
    for name, fn in cases.items():
        _set_fast_launch(False)
        ref = fn()
        _set_fast_launch(True)
        fn()  # first call per kernel goes through numba's path and records the compiled kernel
        got = fn()
        _set_fast_launch(False)
        ref, got = (r if isinstance(r, tuple) else (r,) for r in (ref, got))
        same = all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
        print(f"  {'ok  ' if same else 'FAIL'} {name}")
        if not same:
            FAILURES.append(f"fast launch {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", action="store_true", help="tiny smoke run under NUMBA_ENABLE_CUDASIM=1")
    args = parser.parse_args()
    if args.sim and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        parser.error("--sim needs NUMBA_ENABLE_CUDASIM=1 in the environment (set before numba is imported)")
    t_start = time.perf_counter()
    import numba
    import torch
    from numba import cuda

    import numbanorm

    try:
        import numba_cuda

        nc_version = numba_cuda.__version__
    except ImportError:
        nc_version = "absent"
    env = Env(args.sim)
    gpu = "CUDA simulator" if args.sim else f"{torch.cuda.get_device_name()} (cc {torch.cuda.get_device_capability()})"
    print(f"device: {gpu}; driver/runtime: {None if args.sim else cuda.runtime.get_version()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, numba-cuda "
          f"{nc_version}, torch {torch.__version__}, numbanorm {numbanorm.__version__}")
    if args.sim:
        from numbanorm.cuda import plan  # tiny blocks, so tiny inputs span several blocks

        plan.MIN_THREADS, plan.MAX_THREADS, plan.LN_REGS = 2, 8, 2
        plan.BN_THREADS, plan.BN_TX, plan.BN_TY = 4, 2, 2
        plan.BN_TARGET_BLOCKS, plan.BN_MIN_PER_BLOCK = 6, 8
    check_correctness(env, args.sim)
    check_backward(env, args.sim)
    check_family(env, args.sim)
    if not args.sim:
        check_fast_launch(env)
    copy_gbs = copy_bandwidth(env, args.sim)
    timings(env, args.sim, copy_gbs)
    time_backward(env, args.sim, copy_gbs)
    host_overhead(env, args.sim)
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) FAILED: {FAILURES}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
