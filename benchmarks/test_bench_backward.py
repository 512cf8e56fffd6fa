"""Backward passes: numbanorm vs torch autograd's backward of the same op, with ``np.copyto`` of x as
the roofline. Self-contained (fixtures here, no shared grid).

    pytest benchmarks/test_bench_backward.py --benchmark-enable --benchmark-group-by=group

Groups are ``op|layout|shape`` and ``extra_info["peer"]`` names the implementation, as in the rest
of benchmarks/. With ``--benchmark-disable`` each case runs once on a small shape and checks the
peers agree (a smoke test). Only the backward is timed: the forward and its autograd graph are
built once in setup. Both libraries use numba's thread count.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import numbanorm as nb

torch = pytest.importorskip("torch")
F = torch.nn.functional

#: op -> (layout, full shape, smoke shape, channel axis)
CASES = {
    "layer_norm_backward": ("NLC", (32, 512, 768), (4, 8, 96), -1),
    "batch_norm_backward_train": ("NCHW", (32, 64, 56, 56), (4, 8, 9, 10), 1),
    "batch_norm_backward_train_nhwc": ("NHWC", (32, 56, 56, 64), (4, 9, 10, 8), -1),
}
PEERS = ["numbanorm", "numbanorm-out", "torch", "copy"]


def _setup(op, shape, axis):
    """Inputs plus one ready-to-call closure per peer (setup is never timed)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    g = rng.standard_normal(shape, dtype=np.float32)
    C = shape[axis]
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    out = np.empty_like(x)
    tw, tb = torch.from_numpy(w).requires_grad_(True), torch.from_numpy(b).requires_grad_(True)
    if op == "layer_norm_backward":
        _, mean, rstd = nb.layer_norm(x, C, w, b, return_stats=True)
        tx = torch.from_numpy(x).requires_grad_(True)
        ty, tg = F.layer_norm(tx, (C,), tw, tb), torch.from_numpy(g)
        ours = lambda o=None: nb.layer_norm_backward(g, x, C, mean, rstd, w, out=o)  # noqa: E731
        to_ours = lambda t: t  # noqa: E731
    else:
        _, mean, invstd = nb.batch_norm(x, None, None, w, b, training=True, channel_axis=axis, return_stats=True)
        tx = torch.from_numpy(np.moveaxis(x, axis, 1)).requires_grad_(True)  # NHWC: torch channels_last
        ty, tg = F.batch_norm(tx, None, None, tw, tb, True), torch.from_numpy(np.moveaxis(g, axis, 1))
        ours = lambda o=None: nb.batch_norm_backward(g, x, mean, invstd, w, True, channel_axis=axis, out=o)  # noqa: E731
        to_ours = lambda t: np.moveaxis(t, 1, axis)  # noqa: E731
    run_torch = lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True)  # noqa: E731
    peers = {
        "numbanorm": ours,
        "numbanorm-out": lambda: ours(out),
        "torch": run_torch,
        "copy": lambda: np.copyto(out, x),
    }
    return peers, ours, run_torch, to_ours


def _group(op: str, layout: str, shape: tuple[int, ...]) -> str:
    """``op|layout|NxCxHxW`` like the shared grid: BN shapes in logical NCHW order."""
    if layout == "NHWC":
        shape = (shape[0], shape[-1], *shape[1:-1])
    return f"{op}|{layout}|{'x'.join(map(str, shape))}"


@pytest.fixture(scope="module", autouse=True)
def _same_threads():
    torch.set_num_threads(numba.get_num_threads())


@pytest.mark.parametrize("impl", PEERS)  # not "peer": the shared conftest parametrizes that
@pytest.mark.parametrize("op", list(CASES))
def test_backward(benchmark, request, op, impl):
    layout, full, small, axis = CASES[op]
    disabled = request.config.getoption("benchmark_disable", default=False)
    shape = small if disabled else full
    peers, ours, run_torch, to_ours = _setup(op, shape, axis)
    benchmark.group = _group(op, layout, shape)
    benchmark.extra_info["peer"] = impl
    if disabled:  # smoke: the peers must agree
        for mine, theirs in zip(ours(), run_torch(), strict=True):
            np.testing.assert_allclose(mine, to_ours(theirs.numpy()) if mine.ndim > 1 else theirs.numpy(),
                                       rtol=1e-4, atol=1e-4)
    benchmark(peers[impl])


def _interleaved_ratios(reps: int = 40) -> None:
    """One run, peers timed in turn (so machine noise hits all alike); min over ``reps``."""
    import time

    torch.set_num_threads(numba.get_num_threads())
    print(f"threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}")
    for op, (layout, full, _, axis) in CASES.items():
        peers = _setup(op, full, axis)[0]
        best = dict.fromkeys(peers, float("inf"))
        for _ in range(reps):
            for name, fn in peers.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        times = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in best.items())
        print(f"{_group(op, layout, full)}: {times}; numbanorm/torch {best['numbanorm'] / best['torch']:.2f}, "
              f"numbanorm-out/torch {best['numbanorm-out'] / best['torch']:.2f}")


if __name__ == "__main__":  # python benchmarks/test_bench_backward.py
    _interleaved_ratios()
