"""The one place that maps (array, layout, axes) to the canonical ``(outer, C, inner)`` view."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._arena import empty


class CanonicalView(NamedTuple):
    """A C-contiguous 3-D view of an array, plus how it was obtained.

    ``channels_moved`` is True when the channel axis of a non-C-contiguous array was moved last
    to find a contiguous view (e.g. an NCHW array stored NHWC, like torch's channels_last).
    """

    x3: np.ndarray
    channels_moved: bool


def split_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


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
        return CanonicalView(moved.reshape(-1, a.shape[axis], 1), True)
    return None


def input_view(x: np.ndarray, axis: int) -> CanonicalView:
    """Canonical view of ``x``, copying only when no copy-free view exists."""
    view = canonical_view(x, axis)
    if view is None:
        view = canonical_view(np.ascontiguousarray(x), axis)
    return view


def output_view(
    out: np.ndarray | None, x: np.ndarray, x_view: CanonicalView, axis: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(array to return, 3-D view the kernel writes, whether a copy back is needed).

    The kernel writes straight into ``out`` when its layout matches the input's view; otherwise
    into scratch that ``copy_back`` moves over. Allocated outputs keep the input's memory
    layout (a channels-last input gives a channels-last output, as torch does).
    """
    if out is not None:
        view = canonical_view(out, axis)
        if view is not None and view.channels_moved == x_view.channels_moved:
            return out, view.x3, False
        return out, empty(x_view.x3.shape, x.dtype), True
    if x_view.channels_moved:
        result = np.moveaxis(empty(np.moveaxis(x, axis, -1).shape, x.dtype), -1, axis)
        return result, canonical_view(result, axis).x3, False
    result = empty(x.shape, x.dtype)
    return result, result.reshape(x_view.x3.shape), False


def copy_back(result: np.ndarray, scratch: np.ndarray, axis: int, channels_moved: bool) -> None:
    """Copy a scratch result, laid out like the input's canonical view, into ``result``."""
    target = np.moveaxis(result, axis, -1) if channels_moved else result
    np.copyto(target, scratch.reshape(target.shape))


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
