"""The benchmark grid (numbanorm.bench._cases): forward and backward LN/BN, float16/bfloat16, and
the norm family, against torch, ONNX Runtime, JAX, OpenVINO, NumPy and the roofline copies.

Groups are ``op|layout|shape``; setup (inputs, tensors, autograd graphs, sessions, ``out``
buffers) is outside the timed region. Before timing, each peer's result is checked against a
float64 reference, with a bound that fits the dtype (``_cases.agree_tol``). The copies move the
case's floor bytes (``extra_info.floor_bytes``), so ``benchmarks/compare.py`` reads the fraction of
floor as the fastest copy's time over a peer's. All peers run in this one process, one after the
other: for side-by-side numbers on a busy machine use ``python -m numbanorm.bench`` (one process
per library, samples alternated).
"""

from __future__ import annotations

from functools import lru_cache

import pytest

from numbanorm.bench import _cases, _registry
from numbanorm.bench._floors import case_floor, llc_bytes


@lru_cache(maxsize=1)
def _inputs(case: _cases.Case):
    data = _cases.make_data(case)
    return data, _cases.reference(case, data)


def test_bench(benchmark, case, peer, threads):
    reason = _registry.availability()[peer]
    if reason:
        pytest.skip(reason)
    try:
        data, ref = _inputs(case)
        prepared = _registry.prepare(peer, case, data, threads)
    except _cases.Unsupported as exc:
        pytest.skip(str(exc))
    # One untimed call: compiles/warms, and checks the peer agrees with the reference.
    err = _registry.agreement(peer, prepared, case, data, prepared.run(), ref)
    tol = _cases.agree_tol(case)
    assert err <= tol, f"{peer} disagrees on {case.group}: rel L2 error {err:.2e} > {tol:.1e}"
    benchmark.group = case.group
    benchmark.extra_info.update(peer=peer, op=case.op, layout=case.layout, shape=list(case.shape),
                                dtype=case.spec.dtype, floor_bytes=case_floor(case, llc_bytes()).nbytes(case.x_nbytes),
                                threads=threads)
    benchmark(prepared.run)
