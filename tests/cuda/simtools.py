"""What the simulator tests (``tests/cuda/sim_*.py``) share: the small-block fixtures, device
arrays and bfloat16 bits, the host-vs-device error check and the layer side-by-side run.

Imported only by those files, after their ``NUMBA_ENABLE_CUDASIM=1`` check: it imports
numba.cuda, which must see the simulator switched on. Autouse fixtures take effect in each test
module that imports them.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda
from reference import rel_l2

from numbanorm.cuda import arrays, plan

torch = pytest.importorskip("torch")  # bfloat16 rounding reference (CPU torch)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Tiny blocks so that tiny inputs span several blocks and every code path runs (register
    slots and the re-read tail in LN, several partials per BN channel, partial column tiles)."""
    for name, value in dict(MIN_THREADS=2, MAX_THREADS=8, LN_REGS=2, BN_THREADS=4, BN_TX=2, BN_TY=2,
                            BN_TARGET_BLOCKS=6, BN_MIN_PER_BLOCK=8).items():
        monkeypatch.setattr(plan, name, value)


@pytest.fixture(autouse=True)
def few_ln_blocks(monkeypatch):
    """Fewer LN backward blocks than rows: each block walks several rows and its partials add up;
    tiny register budgets, so rows use the cached, the register-accumulated and the global paths."""
    for name, value in dict(LN_BWD_BLOCKS=2, LN_BWD_REGS=1, LN_BWD_WREGS=2, LN_BWD_MAX_THREADS=8).items():
        monkeypatch.setattr(plan, name, value)


# ---------------------------------------------------------------------------------- arrays
def to_bf16_bits(a) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) as int16 bits, by torch on the CPU."""
    return torch.from_numpy(np.asarray(a, np.float32)).to(torch.bfloat16).view(torch.int16).numpy().copy()


def bits_to_f64(bits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(bits, np.int16)).view(torch.bfloat16).double().numpy()


def round_bf16(a) -> np.ndarray:
    return bits_to_f64(to_bf16_bits(a))


def host(a) -> np.ndarray:
    return a.copy_to_host()


def dev(a: np.ndarray):
    return cuda.to_device(np.ascontiguousarray(a))


def bf16_dev(a: np.ndarray) -> arrays.DevArray:
    """A bfloat16 GPU array as a torch bf16 tensor reaches the kernels: int16 bits."""
    d = arrays.wrap(dev(to_bf16_bits(a)), "x")
    d.dtype = "bfloat16"
    return d


def from_bf16(a) -> np.ndarray:
    return bits_to_f64(host(a))


# ---------------------------------------------------------------------------------- errors
def assert_same_error_as_cpu(fn, kwargs: dict) -> None:
    """``fn(**kwargs)`` fails on the host; with every array argument on the device it fails with
    the same exception type and message, and leaves every device argument unchanged."""
    with pytest.raises((TypeError, ValueError)) as cpu:
        fn(**kwargs)
    dkw = {k: (dev(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    with pytest.raises(cpu.type) as gpu:
        fn(**dkw)
    assert str(gpu.value) == str(cpu.value)
    for k, v in dkw.items():
        if hasattr(v, "copy_to_host"):
            assert np.array_equal(host(v), kwargs[k])


# ---------------------------------------------------------------------------------- layers
LR = 0.1


def close(d, ref, tol):
    got = host(d)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert rel_l2(got, ref) <= tol, rel_l2(got, ref)


def _sgd(cpu_layer, gpu_layer):
    """One plain SGD step on the CPU layer, copied into the GPU layer through load_state_dict."""
    for name in ("weight", "bias"):
        p = getattr(cpu_layer, name)
        if p is not None:
            p -= LR * getattr(cpu_layer, f"grad_{name}")
    gpu_layer.load_state_dict(cpu_layer.state_dict())


def side_by_side(rng, cpu_layer, gpu_layer, shape, dtype, steps=3, offset=0.0):
    """A CPU layer and its ``.to("cuda")`` twin: forward, backward, grads and state dicts compared
    over a few SGD steps, the last in eval mode."""
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for step in range(steps):
        if step == steps - 1:  # the last step in eval: running statistics (BatchNorm) normalize
            cpu_layer.eval()
            assert gpu_layer.eval() is gpu_layer and not gpu_layer.training
        x = (rng.standard_normal(shape) * (1 + step) + step + offset).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        y, dy = cpu_layer(x), gpu_layer(dev(x))
        close(dy, y, tol)
        gx, dgx = cpu_layer.backward(g), gpu_layer.backward(dev(g))
        close(dgx, gx, tol * 10)
        for name in ("grad_weight", "grad_bias"):
            ref = getattr(cpu_layer, name)
            assert (getattr(gpu_layer, name) is None) == (ref is None)
            if ref is not None:
                close(getattr(gpu_layer, name), ref, tol * 10)
        state, dstate = cpu_layer.state_dict(), gpu_layer.state_dict()
        assert state.keys() == dstate.keys()
        for k, v in state.items():
            assert type(dstate[k]) is np.ndarray and dstate[k].dtype == v.dtype
            assert rel_l2(dstate[k], v) <= tol, k
        _sgd(cpu_layer, gpu_layer)
