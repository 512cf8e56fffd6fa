"""The benchmark grid (numbanorm.bench._cases): forward and backward LN/BN, float16/bfloat16, and
the norm family, against torch, ONNX Runtime, NumPy and the np.copyto roofline.

Groups are ``op|layout|shape``; setup (inputs, tensors, autograd graphs, sessions, ``out``
buffers) is outside the timed region. Before timing, each peer's result is checked against a
float64 reference, with a bound that fits the dtype (``_cases.agree_tol``).
"""

from __future__ import annotations

from functools import lru_cache

import pytest

from numbanorm.bench import _cases


@lru_cache(maxsize=1)
def _inputs(case: _cases.Case):
    data = _cases.make_data(case)
    return data, _cases.reference(case, data)


def test_bench(benchmark, case, peer, threads):
    reason = _cases.availability()[peer]
    if reason:
        pytest.skip(reason)
    try:
        data, ref = _inputs(case)
        prepared = _cases.prepare(peer, case, data, threads)
    except _cases.Unsupported as exc:
        pytest.skip(str(exc))
    # One untimed call: compiles/warms, and checks the peer agrees with the reference.
    err = _cases.agreement(peer, prepared, case, data, prepared.run(), ref)
    tol = _cases.agree_tol(case)
    assert err <= tol, f"{peer} disagrees on {case.group}: rel L2 error {err:.2e} > {tol:.1e}"
    benchmark.group = case.group
    benchmark.extra_info.update(peer=peer, op=case.op, layout=case.layout, shape=list(case.shape),
                                dtype=case.spec.dtype, bytes=case.nbytes, threads=threads)
    benchmark(prepared.run)
