"""Outputs that share memory with other arguments: the tests behind ``_checks.check_disjoint``.

The kernels read their inputs while they write their outputs, so any overlap between an output and
another argument gives a silent wrong answer, except an output that *is* one of the inputs (``out=x``:
each element is read before it is written). ``np.may_share_memory`` costs ~0.2 us a pair, a lot on a
~6 us call, so two arrays with different owners (the common case) are told apart first, by ownership.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: np.shares_memory's search budget; a harder question (rare, odd strides) counts as an overlap.
_SHARES_MEMORY_WORK = 1 << 16
#: (NumPy's stubs admit only max_work=-1 or 0; the function takes any positive bound.)
_shares_memory: Callable[..., bool] = np.shares_memory
_TooHardError = getattr(np, "exceptions", np).TooHardError


def _owner(a: np.ndarray) -> np.ndarray | None:
    """The array that owns ``a``'s memory (NumPy makes every view's ``base`` its owner), or None
    when that cannot be told (memory of a buffer object, or of foreign code)."""
    base = a.base
    if base is None:
        return a if a.flags.owndata else None
    if type(base) is np.ndarray and base.base is None and base.flags.owndata:
        return base
    return None


def arrays_overlap(a: object, b: object) -> bool:
    """Whether two host arrays share memory (array-likes that were converted never do)."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    oa, ob = _owner(a), _owner(b)
    if oa is not None and ob is not None and oa is not ob:
        return False  # two allocations: the common case, decided without NumPy's bounds test
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(_shares_memory(a, b, max_work=_SHARES_MEMORY_WORK))
    except _TooHardError:
        return True


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` and ``b`` are the same elements in the same places (``out=x``, in place)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides
            and a.shape == b.shape)


def owned_apart(outputs: Sequence[Any], others: Sequence[Any]) -> bool:
    """True when ownership alone shows that no output shares memory with another output or with
    one of ``others``: each output owns its memory (or is a view of an array that does) and no
    other argument is, or views, that owner. False means "not shown": run ``check_disjoint``.
    A few attribute tests, for the tiny-call paths (``np.may_share_memory`` costs ~0.2 us a pair).
    ``outputs`` are ndarrays and ``others`` ndarrays or None, as the callers' type tests admitted
    them (typed ``Any``: the callers' arguments are ``object`` until those tests, which mypy cannot
    follow into a tuple)."""
    owners: list[np.ndarray] = []
    for a in outputs:
        o = _owner(a)
        if o is None or any(o is p for p in owners):
            return False
        owners.append(o)
    for a in others:
        if a is None:
            continue
        base = a.base
        if base is None:
            o = a
        elif type(base) is np.ndarray:
            o = base
        else:
            return False
        if any(o is p for p in owners):
            return False
    return True


def check_disjoint(outputs: Sequence[tuple[str, object, tuple[str, ...]]], inputs: Sequence[tuple[str, object]],
                   overlaps: Callable[[Any, Any], bool] = arrays_overlap,
                   same: Callable[[Any, Any], bool] = same_memory) -> None:
    """Refuse an output that shares memory with an input or with another output: the kernels read
    the inputs while they write, so any overlap gives a silent wrong answer. The one exception is
    an output that *is* one of the inputs its ``in_place`` names (``out=x``: each element is read
    before it is written). ``outputs``: ``(name, array or None, in_place)``; ``inputs``:
    ``(name, array or None)``. Runs after every other check, so a refused call mutates nothing."""
    for k, (name, a, in_place) in enumerate(outputs):
        if a is None:
            continue
        for other, b in inputs:
            if b is not None and overlaps(a, b):
                if other in in_place:
                    if same(a, b):
                        continue
                    raise ValueError(f"{name} overlaps {other} without being {other} itself; pass {name}={other} "
                                     "for in place, or a separate array")
                raise ValueError(f"{name} overlaps {other}: an output must not share memory with an input; "
                                 "pass a separate array")
        for other, b, _ in outputs[k + 1:]:
            if b is not None and overlaps(a, b):
                raise ValueError(f"{name} and {other} must not overlap: both are outputs")
