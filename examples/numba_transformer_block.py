"""A pre-norm transformer MLP block written entirely in ``@njit``, calling numbanorm from jitted code.

    h = rms_norm(x) · g                      (numbanorm.rms_norm)
    u = silu(h @ W1) @ W2                    (matmuls and the activation: plain numba loops)
    y, x' = add_layer_norm(u, x) · γ + β     (numbanorm.add_layer_norm: y = LN(u + x), x' = u + x)

numbanorm's ops are numba overloads, so ``numbanorm.rms_norm(...)`` inside a jitted function runs
its serial kernel directly: no Python round trip per norm, which costs ~5-10 µs per call at decode
sizes (batch 1, hidden 4096). The block is checked against the same block in torch float64 (when
torch is installed), then a decode-style loop (one token at a time, each output the next input) is
timed three ways: everything in one jitted loop, the same block with the norms called from Python
(the matmuls still jitted), and torch.

Run: ``python examples/numba_transformer_block.py [--hidden 4096] [--ffn 1024] [--tokens 64]``.
The jitted functions are cached on disk (``cache=True``): the first run compiles them.
"""

from __future__ import annotations

import argparse
import math
import time

import numba
import numpy as np

import numbanorm as nb

EPS_RMS = 1e-6
EPS_LN = 1e-5


@numba.njit(cache=True, fastmath=True)
def matvec(h, w):
    """``h @ w`` for h (B, K) and w (K, N): rows of w accumulated (the inner loop vectorizes)."""
    B, K = h.shape
    N = w.shape[1]
    out = np.zeros((B, N), h.dtype)
    for b in range(B):
        for k in range(K):
            hk = h[b, k]
            for j in range(N):
                out[b, j] += hk * w[k, j]
    return out


@numba.njit(cache=True, fastmath=True)
def silu(u):
    """``u * sigmoid(u)``, computed in float64 and stored in u's dtype."""
    out = np.empty_like(u)
    for i in range(u.shape[0]):
        for j in range(u.shape[1]):
            v = np.float64(u[i, j])
            out[i, j] = v / (1.0 + math.exp(-v))
    return out


@numba.njit(cache=True)
def block(x, g_rms, w1, w2, g_ln, b_ln):
    """One pre-norm MLP block: returns (LN(x + mlp(x)), x + mlp(x)); x is (batch, hidden)."""
    h = nb.rms_norm(x, x.shape[-1], g_rms, EPS_RMS)
    u = matvec(silu(matvec(h, w1)), w2)
    return nb.add_layer_norm(u, x, x.shape[-1], g_ln, b_ln, EPS_LN)


@numba.njit(cache=True)
def decode_njit(x, g_rms, w1, w2, g_ln, b_ln, tokens):
    """``tokens`` steps, each block's normalized output the next step's input."""
    for _ in range(tokens):
        x, _ = block(x, g_rms, w1, w2, g_ln, b_ln)
    return x


def decode_python(x, g_rms, w1, w2, g_ln, b_ln, tokens):
    """The same loop with the norms called from Python (the matmuls are the jitted ones)."""
    for _ in range(tokens):
        h = nb.rms_norm(x, x.shape[-1], g_rms, EPS_RMS)
        u = matvec(silu(matvec(h, w1)), w2)
        x, _ = nb.add_layer_norm(u, x, x.shape[-1], g_ln, b_ln, EPS_LN)
    return x


@numba.njit(cache=True)
def norms_njit(x, u, g_rms, g_ln, b_ln, tokens):
    """Only the block's two norms, ``tokens`` times, in jitted code."""
    s = 0.0
    for _ in range(tokens):
        h = nb.rms_norm(x, x.shape[-1], g_rms, EPS_RMS)
        y, _ = nb.add_layer_norm(u, x, x.shape[-1], g_ln, b_ln, EPS_LN)
        s += h[0, 0] + y[0, 0]
    return s


def norms_python(x, u, g_rms, g_ln, b_ln, tokens):
    for _ in range(tokens):
        nb.rms_norm(x, x.shape[-1], g_rms, EPS_RMS)
        nb.add_layer_norm(u, x, x.shape[-1], g_ln, b_ln, EPS_LN)


def weights(hidden: int, ffn: int, seed: int = 0):
    """(g_rms, w1, w2, g_ln, b_ln) in float32, scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return ((1 + 0.1 * rng.standard_normal(hidden)).astype(f32),
            (rng.standard_normal((hidden, ffn)) / np.sqrt(hidden)).astype(f32),
            (rng.standard_normal((ffn, hidden)) / np.sqrt(ffn)).astype(f32),
            (1 + 0.1 * rng.standard_normal(hidden)).astype(f32), (0.1 * rng.standard_normal(hidden)).astype(f32))


def torch_block(torch, x, g_rms, w1, w2, g_ln, b_ln):
    """The block in torch (any dtype): what ``block`` computes."""
    F = torch.nn.functional
    h = F.rms_norm(x, (x.shape[-1],), g_rms, EPS_RMS)
    s = F.silu(h @ w1) @ w2 + x
    return F.layer_norm(s, (x.shape[-1],), g_ln, b_ln, EPS_LN), s


def check_against_torch(hidden: int, ffn: int, batch: int = 3, seed: int = 1) -> float | None:
    """Max relative error (normalized by the reference's scale) of the jitted float32 block
    against torch float64 on the same float32 weights; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    params = weights(hidden, ffn, seed)
    x = np.random.default_rng(seed + 1).standard_normal((batch, hidden)).astype(np.float32)
    y, s = block(x, *params)
    t64 = [torch.from_numpy(a.astype(np.float64)) for a in (x, *params)]
    ry, rs = (r.numpy() for r in torch_block(torch, *t64))
    return max(float(np.max(np.abs(y - ry)) / np.max(np.abs(ry))), float(np.max(np.abs(s - rs)) / np.max(np.abs(rs))))


def _best(run, repeats: int) -> float:
    """Best wall time of ``repeats`` runs (s)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def time_decode(hidden: int = 4096, ffn: int = 1024, tokens: int = 64, repeats: int = 5) -> dict[str, float]:
    """µs per token of the decode loop, and of its two norms alone: all in njit, norms from
    Python, torch (one thread each; the caller's thread counts are restored afterwards)."""
    numba_threads = numba.get_num_threads()
    try:
        import torch
    except ImportError:
        torch = None
    torch_threads = torch.get_num_threads() if torch is not None else None
    numba.set_num_threads(1)
    try:
        return _time_decode(hidden, ffn, tokens, repeats)
    finally:
        numba.set_num_threads(numba_threads)
        if torch is not None:
            torch.set_num_threads(torch_threads)


def _time_decode(hidden: int, ffn: int, tokens: int, repeats: int) -> dict[str, float]:
    g_rms, w1, w2, g_ln, b_ln = params = weights(hidden, ffn)
    x0 = np.random.default_rng(2).standard_normal((1, hidden)).astype(np.float32)
    u = np.random.default_rng(3).standard_normal((1, hidden)).astype(np.float32)
    decode_njit(x0, *params, 1)  # compile (or load from the cache)
    norms_njit(x0, u, g_rms, g_ln, b_ln, 1)
    per_token = 1e6 / tokens
    result = {
        "block njit": _best(lambda: decode_njit(x0, *params, tokens), repeats) * per_token,
        "block, norms from Python": _best(lambda: decode_python(x0, *params, tokens), repeats) * per_token,
        "norms njit": _best(lambda: norms_njit(x0, u, g_rms, g_ln, b_ln, tokens), repeats) * per_token,
        "norms from Python": _best(lambda: norms_python(x0, u, g_rms, g_ln, b_ln, tokens), repeats) * per_token,
    }
    try:
        import torch
    except ImportError:
        return result
    torch.set_num_threads(1)
    tx, tu, *tp = (torch.from_numpy(a) for a in (x0, u, *params))
    F = torch.nn.functional

    def torch_decode():
        x = tx
        for _ in range(tokens):
            x, _ = torch_block(torch, x, *tp)

    def torch_norms():
        for _ in range(tokens):
            F.rms_norm(tx, (hidden,), tp[0], EPS_RMS)
            F.layer_norm(tu + tx, (hidden,), tp[3], tp[4], EPS_LN)

    with torch.inference_mode():
        result["block torch"] = _best(torch_decode, repeats) * per_token
        result["norms torch (add + LN)"] = _best(torch_norms, repeats) * per_token
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    err = check_against_torch(min(args.hidden, 512), min(args.ffn, 256))
    print("torch not installed: float64 check skipped" if err is None else
          f"block vs torch float64: max relative error {err:.2e}")
    if err is not None and err > 1e-4:
        raise SystemExit(f"the jitted block does not match torch float64 (error {err:.2e})")
    timings = time_decode(args.hidden, args.ffn, args.tokens, args.repeats)
    print(f"decode loop, batch 1, hidden {args.hidden}, ffn {args.ffn}, one thread, µs per token:")
    for name, us in timings.items():
        print(f"  {name:28s} {us:10.1f}")
    return {"error": err, **timings}


if __name__ == "__main__":
    main()
