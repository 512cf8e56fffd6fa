"""The one place that maps (array, layout, axes) to the canonical ``(outer, C, inner)`` view."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .cpu.arena import empty
from .cpu.halfio import kernel_array


class CanonicalView(NamedTuple):
    """A C-contiguous 3-D view of an array, plus how it was obtained.

    ``channels_moved`` is True when the channel axis of a non-C-contiguous array was moved last
    to find a contiguous view (e.g. an NCHW array stored NHWC, like torch's channels_last).
    """

    x3: np.ndarray
    channels_moved: bool


_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)


def stats_dtype(dtype: np.dtype) -> np.dtype:
    """dtype of returned mean/rstd: float64 for float64 input, else float32 (like torch)."""
    return _F64 if dtype == _F64 else _F32


def split_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


# --------------------------------------------------------------------------------------------
# The same decisions on array metadata (shape, byte strides, itemsize): what the CUDA backend
# uses for device arrays, which have no NumPy flags.
# --------------------------------------------------------------------------------------------
def dense(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    """Whether (shape, strides) is C-contiguous (axes of length 1 may have any stride)."""
    expected = itemsize
    for n, s in zip(reversed(shape), reversed(strides), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def move_last(t: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """``t`` (a shape or strides) with entry ``axis`` moved last, as ``np.moveaxis(a, axis, -1)``."""
    return t[:axis] + t[axis + 1 :] + (t[axis],)


def memory_order(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int, axis: int) -> str | None:
    """"c" when C-contiguous, "moved" when moving ``axis`` last is (an NCHW array stored
    channels-last), else None: ``canonical_view``'s test on metadata."""
    if dense(shape, strides, itemsize):
        return "c"
    return "moved" if dense(move_last(shape, axis), move_last(strides, axis), itemsize) else None


def canonical_shape(shape: tuple[int, ...], axis: int, order: str) -> tuple[int, int, int]:
    """(outer, C, inner) of the canonical view of a dense array in memory order ``order``."""
    if order == "c":
        return split_shape(shape, axis)
    C = shape[axis]
    return (math.prod(shape) // C if C else 0), C, 1


def contiguous_shape3(shape: tuple[int, ...], size: int, axis: int, C: int) -> tuple[int, int, int]:
    """``split_shape`` for a C-contiguous array of ``size`` elements whose channel axis has C
    entries, with the two common layouts (channels at axis 1 or last) done without ``math.prod``:
    per-call Python is most of a tiny call's time."""
    if C and axis == len(shape) - 1:
        return size // C, C, 1
    if C and axis == 1 and shape[0]:
        return shape[0], C, size // (shape[0] * C)
    return split_shape(shape, axis)


def canonical_view(a: np.ndarray, axis: int) -> CanonicalView | None:
    """A copy-free ``(outer, C, inner)`` view with channel axis ``axis``, or None."""
    if a.flags.c_contiguous:
        return CanonicalView(a.reshape(split_shape(a.shape, axis)), False)
    moved = np.moveaxis(a, axis, -1)
    if moved.flags.c_contiguous:
        return CanonicalView(moved.reshape(canonical_shape(a.shape, axis, "moved")), True)
    return None


def input_view(x: np.ndarray, axis: int) -> CanonicalView:
    """Canonical view of ``x``, copying only when no copy-free view exists."""
    view = canonical_view(x, axis)
    if view is None:  # (what canonical_view gives for the contiguous copy)
        c = np.ascontiguousarray(x)
        view = CanonicalView(c.reshape(split_shape(c.shape, axis)), False)
    return view


class Output:
    """Where a kernel writes an op's result, and the one way that result reaches the caller.

    ``kernel``: the C-contiguous array the kernel writes, already in the kernel's element type
    (``_halfio.kernel_array``: the 16-bit view of a half array). It is ``result``'s own memory
    when ``result`` has the layout of the input's canonical view, else ``scratch`` of that
    layout. ``finish()`` copies the scratch into ``dest`` (``result``, or a view of it), in the
    result's dtype, never as the kernel's 16-bit integer values, and returns ``result``.
    """

    __slots__ = ("result", "kernel", "_scratch", "_dest")

    def __init__(self, result: np.ndarray, target: np.ndarray, dest: np.ndarray | None = None) -> None:
        """``target``: the C-contiguous array (of ``result``'s dtype) the kernel writes; with
        ``dest``, it is scratch that ``finish`` copies there."""
        self.result = result
        self._scratch = target  # (read only with a dest)
        self._dest = dest
        self.kernel = kernel_array(target)

    def finish(self) -> np.ndarray:
        dest = self._dest
        if dest is not None:
            np.copyto(dest, self._scratch.reshape(dest.shape))
        return self.result


def rows_output(out: np.ndarray | None, x: np.ndarray, shape2: tuple[int, int]) -> Output:
    """The ``Output`` of a row op (LayerNorm, RMSNorm, their backward): written as C-contiguous
    ``(rows, D)``, straight into ``out`` when it is C-contiguous."""
    result = empty(x.shape, x.dtype) if out is None else out
    if result.flags.c_contiguous:
        return Output(result, result.reshape(shape2))
    return Output(result, empty(shape2, x.dtype), result)


def channel_output(out: np.ndarray | None, x: np.ndarray, x_view: CanonicalView, axis: int) -> Output:
    """The ``Output`` of a channel op. The kernel writes straight into ``out`` when its layout
    matches the input's view, else into scratch of the view's layout. Allocated outputs keep the
    input's memory layout (a channels-last input gives a channels-last output, as torch does)."""
    shape3 = x_view.x3.shape
    if out is not None:
        view = canonical_view(out, axis)
        if view is not None and view.channels_moved == x_view.channels_moved:
            return Output(out, view.x3)
        dest = np.moveaxis(out, axis, -1) if x_view.channels_moved else out
        return Output(out, empty(shape3, x.dtype), dest)
    if x_view.channels_moved:
        moved = empty(np.moveaxis(x, axis, -1).shape, x.dtype)
        return Output(np.moveaxis(moved, -1, axis), moved.reshape(shape3))
    result = empty(x.shape, x.dtype)
    return Output(result, result.reshape(shape3))


def rows_view(a: np.ndarray, k: int) -> np.ndarray:
    """``(rows, D)`` C-contiguous view over the last ``k`` dims, copying only if needed."""
    rows = math.prod(a.shape[: a.ndim - k])
    return np.ascontiguousarray(a).reshape(rows, math.prod(a.shape[a.ndim - k :]))


def reduction_view(a: np.ndarray, keep: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """``(outer, C, inner)`` C-contiguous view of ``a`` whose ``C`` enumerates the kept axes
    ``keep`` (sorted, C order) and whose ``outer``/``inner`` hold the reduced axes.

    Kept axes that form one block of a C-contiguous array give a copy-free view (BN's channel,
    LN's leading rows, column statistics of an ``(N, F)`` table). Otherwise the kept axes are
    moved last (``moved=True``: the view is ``(R, C, 1)`` over ``np.moveaxis(a, keep, last)``),
    copying only when that is not contiguous either.
    """
    ndim, k = a.ndim, len(keep)
    lo, hi = (keep[0], keep[-1] + 1) if keep else (0, 0)
    block = hi - lo == k
    C = math.prod(a.shape[i] for i in keep)
    if block and a.flags.c_contiguous:
        return a.reshape(math.prod(a.shape[:lo]), C, math.prod(a.shape[hi:])), False
    moved = np.moveaxis(a, keep, tuple(range(ndim - k, ndim)))
    if not moved.flags.c_contiguous:
        if block:
            return reduction_view(np.ascontiguousarray(a), keep)
        moved = np.ascontiguousarray(moved)
    return moved.reshape(math.prod(moved.shape[: ndim - k]), C, 1), True


def reduction_output(a: np.ndarray, keep: tuple[int, ...], moved: bool) -> tuple[np.ndarray, np.ndarray]:
    """(result shaped like ``a``, the 3-D view of it that matches ``reduction_view(a, keep)``)."""
    ndim, k = a.ndim, len(keep)
    last = tuple(range(ndim - k, ndim))
    if not moved:
        result = empty(a.shape, a.dtype)
        lo, hi = (keep[0], keep[-1] + 1) if keep else (0, 0)
        shape3 = (math.prod(a.shape[:lo]), math.prod(a.shape[lo:hi]), math.prod(a.shape[hi:]))
        return result, result.reshape(shape3)
    scratch = empty(np.moveaxis(a, keep, last).shape, a.dtype)
    C = math.prod(scratch.shape[ndim - k :])
    return np.moveaxis(scratch, last, keep), scratch.reshape(math.prod(scratch.shape[: ndim - k]), C, 1)
