"""The public API's type hints: mypy (with the project's strict configuration) is clean, and the
``return_stats`` overloads give each call its real return type. Skipped without mypy."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest

import numbanorm as nb

ROOT = Path(__file__).resolve().parents[1]

#: Calls and the type mypy must infer for each (``assert_type`` fails the check otherwise).
SNIPPET = '''
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import numbanorm as nb

x = np.zeros((4, 3), np.float32)
A = np.ndarray[tuple[Any, ...], np.dtype[Any]]
flag: bool = bool(x.size)

assert_type(nb.layer_norm(x, 3), A)
assert_type(nb.layer_norm(x, 3, return_stats=True), tuple[A, A, A])
assert_type(nb.layer_norm(x, 3, return_stats=flag), A | tuple[A, A, A])
assert_type(nb.batch_norm(x, training=True), A)
assert_type(nb.batch_norm(x, training=True, return_stats=True), tuple[A, A, A])
assert_type(nb.rms_norm(x, 3), A)
assert_type(nb.rms_norm(x, 3, return_stats=True), tuple[A, A])
assert_type(nb.group_norm(x, 1), A)
assert_type(nb.group_norm(x, 1, return_stats=True), tuple[A, A, A])
assert_type(nb.instance_norm(x), A)
assert_type(nb.add_layer_norm(x, x, 3), tuple[A, A])
assert_type(nb.fold_batch_norm(x, None, x[0], x[0], None, None), tuple[A, A])
assert_type(nb.layer_norm_backward(x, x, 3, x[:, 0], x[:, 0]), tuple[A, A | None, A | None])
assert_type(nb.rms_norm_backward(x, x, 3, x[:, 0]), tuple[A, A | None])
assert_type(nb.batch_norm_backward(x, x, x[0], x[0]), tuple[A, A | None, A | None])
assert_type(nb.group_norm_backward(x, x, 1, x[:, :1], x[:, :1]), tuple[A, A | None, A | None])
assert_type(nb.moments(x, 0), nb.Moments)
assert_type(nb.merge_moments(nb.moments(x, 0), nb.moments(x, 0)), nb.Moments)
assert_type(nb.standardize(x), A)
assert_type(nb.LayerNorm(3)(x), A)
assert_type(nb.BatchNorm(3).eval(), nb.BatchNorm)
assert_type(nb.GroupNorm(1, 3).train(), nb.GroupNorm)
assert_type(nb.RMSNorm(3).backward(x), A)
assert_type(nb.set_arena_limit(0), int)
assert_type(nb.arena_info(), dict[str, int])
assert_type(nb.precompile(["moments"], progress=False), list[nb._precompile.Compiled])

import dask.array as da
import numbanorm.dask as nbd

d = da.zeros((8, 3), chunks=4)
assert_type(nbd.moments(d, 0), nb.Moments)
assert_type(nbd.moments(d, 0, compute=False), da.Array)
assert_type(nbd.standardize(d), da.Array)
assert_type(nbd.standardize(d, return_stats=True), tuple[da.Array, nb.Moments])
assert_type(nbd.layer_norm(d, 3), da.Array)
'''


def _mypy(*args: str) -> tuple[str, int]:
    api = pytest.importorskip("mypy.api")
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), *args])
    return stdout + stderr, status


@pytest.mark.slow
def test_mypy_strict_on_the_public_api():
    out, status = _mypy()
    assert status == 0, out


@pytest.mark.slow
def test_return_types_follow_return_stats(tmp_path):
    path = tmp_path / "calls.py"
    path.write_text(textwrap.dedent(SNIPPET))
    out, status = _mypy(str(path))
    assert status == 0, out


def test_signatures_are_annotated():
    """help() shows the annotations (``from __future__ import annotations``: as strings)."""
    for name in nb.__all__:
        obj = getattr(nb, name)
        if not inspect.isfunction(obj):
            continue
        sig = inspect.signature(obj)
        assert sig.return_annotation is not inspect.Signature.empty, name
        missing = [p.name for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty]
        assert not missing, (name, missing)
    assert "x: 'ArrayLike'" in str(inspect.signature(nb.batch_norm))
