"""The public API's docstrings: each is numpydoc (summary, Parameters, Returns, Raises, Examples),
and every example runs as a doctest (``python -m pytest`` runs them; nothing to remember).

The examples print rounded numbers, so their output does not depend on the last bits of a
platform's arithmetic; NumPy's print options are reset to the defaults around each one.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import re

import numpy as np
import pytest

import numbanorm as nb

#: The modules whose docstrings hold the public API's examples.
MODULES = ["numbanorm.functional", "numbanorm.family", "numbanorm.backward", "numbanorm.layers",
           "numbanorm.moments", "numbanorm.stats", "numbanorm.cpu.arena", "numbanorm._numba",
           "numbanorm._precompile", "numbanorm.dask"]
#: Examples that start processes or compile for seconds: with the slow tests.
SLOW = {"numbanorm._precompile.precompile"}
HAVE_DASK = importlib.util.find_spec("dask") is not None


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in MODULES:
        if name == "numbanorm.dask" and not HAVE_DASK:
            continue
        module = importlib.import_module(name)
        tests += [t for t in finder.find(module) if t.examples]
    return sorted(tests, key=lambda t: t.name)


def _param(test: doctest.DocTest) -> object:
    marks = [pytest.mark.slow] if test.name in SLOW else []
    return pytest.param(test, id=test.name, marks=marks)


@pytest.mark.parametrize("test", [_param(t) for t in _doctests()])
def test_docstring_example(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    with np.printoptions(precision=8, threshold=1000, edgeitems=3, linewidth=75, suppress=False, nanstr="nan",
                         infstr="inf", sign="-", floatmode="maxprec", legacy=False):
        runner.run(test, out=report.append)
    assert not runner.failures, "".join(report)


# ---- every public object has a numpydoc docstring -------------------------------------------------
def _public() -> list[tuple[str, object]]:
    objs = [(name, getattr(nb, name)) for name in nb.__all__]
    if HAVE_DASK:
        import numbanorm.dask as nbd

        objs += [(f"dask.{name}", getattr(nbd, name)) for name in nbd.__all__]
    return [(n, o) for n, o in objs if inspect.isfunction(o) or inspect.isclass(o)]


def _sections(doc: str) -> set[str]:
    return set(re.findall(r"^(\w[\w ]*)\n-{3,}$", doc, re.MULTILINE))


def _raises(obj: object) -> bool:
    """Whether the function's source, or that of the checks it calls, can raise (all of them can,
    but warnings classes and ``arena_info``)."""
    return obj is not nb.arena_info


@pytest.mark.parametrize("name,obj", _public(), ids=[n for n, _ in _public()])
def test_numpydoc_sections(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    summary = doc.split("\n\n", 1)[0]
    assert summary.strip() and not summary.startswith(("Parameters", "Returns")), name
    sections = _sections(doc)
    assert "Examples" in sections and ">>> " in doc.split("Examples\n--------", 1)[1], name
    if inspect.isclass(obj):
        if issubclass(obj, Warning):
            return
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        ctor = obj.__new__ if "__new__" in obj.__dict__ else obj.__init__  # (Moments documents __new__)
        documented = sections | _sections(inspect.getdoc(ctor) or "")
        assert not params or "Parameters" in documented, name
        return
    sig = inspect.signature(obj)
    if sig.parameters:
        assert "Parameters" in sections, name
        documented = set(re.findall(r"^(\w+)(?:, \w+)* :", doc, re.MULTILINE)) | set(
            re.findall(r"^\w+, (\w+) :", doc, re.MULTILINE))
        missing = [p for p in sig.parameters if p not in documented and not p.startswith("*")]
        assert not missing, f"{name}: parameters not documented: {missing}"
    if sig.return_annotation not in ("None", None):
        assert "Returns" in sections, name
    if _raises(obj):
        assert "Raises" in sections, name


def test_every_example_module_is_listed():
    """The modules that define the public objects are the ones whose examples run here."""
    defined = {getattr(o, "__module__", "") for _, o in _public()}
    assert defined <= set(MODULES), defined - set(MODULES)
