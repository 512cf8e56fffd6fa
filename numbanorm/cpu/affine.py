"""The normalize pass on the CPU: ``y = (x - shift[c]) * scale[c] + offset[c]`` over the canonical
view ``(outer, C, inner)``, and the per-channel coefficients it takes.

Every element write goes through ``store`` (``halfio.py``, inside ``simd.affine_rows``): identity
for float32/float64, the float16/bfloat16 rounding for the 16-bit views of half arrays.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from .halfio import HALF_LANES
from .jit import glue, parallel, serial
from .moments import cl_lanes
from .plan import block_bounds, plan
from .simd import affine_rows

#: Outputs of at least this many bytes are written with non-temporal stores by the normalize
#: pass (``affine_rows``), NCHW runs only when at least ``_STREAM_RUN_BYTES`` long (channels-last:
#: never, see ``block_affine``). Measured
#: (BN eval, one core, ms, normal -> streaming stores): (32,64,56,56) 3.1 -> 2.2-2.5, NHWC
#: 3.4 -> 2.3-2.8 (np.copyto 2.8-3.1, torch 2.9-3.5); but 4-13 MB outputs that a reused ``out=``
#: keeps in cache got up to 1.7x slower, and 8x8 or 14x14 planes 3-4x slower.
_STREAM_BYTES = 16 << 20
_STREAM_RUN_BYTES = 4096


# Statistics are always accumulated in float64. The normalize step ``(x - mean) * scale + offset``
# runs in float32 for float32 and half (float16/bfloat16) data (8 or 16 SIMD lanes instead of 4 or
# 8), with the mean split into a float32 head (subtracted from x: exact when x is near the mean)
# and the rest, which is folded into the offset in float64:
# ``(x - head) * scale + (offset - (mean - head) * scale)``. This stays accurate when
# |mean| >> std and gives exactly ``offset`` for constant input. (Written as ``(x - head) - tail``
# instead, ``reassoc`` would fold head + tail back into one float32.) float64 data computes in
# float64, where head == mean. For half outputs the float32 evaluation costs at most a few float32
# roundings of |x̂·γ| + |β| (the README's bound: 2**-21 of it), far below the half ulp.
def to_compute(v, like):
    """``v`` in the compute type of array ``like`` (jit-only helper)."""
    return np.float64(v)


#: Element types whose normalize computes in float32: float32 and the 16-bit views of half arrays.
_F32_COMPUTE = (types.float32, types.uint16, types.int16)


@overload(to_compute)
def _to_compute(v, like):
    if isinstance(like, types.Array) and like.dtype in _F32_COMPUTE:
        return lambda v, like: np.float32(v)
    return lambda v, like: np.float64(v)


def lane_multiple(like):
    """Lanes per vector of ``simd.affine_rows`` over array ``like`` (jit-only; a constant): the
    channels-last rows of ``cl_affine`` are a multiple of it, so that no row ends in a scalar tail
    (C = 3: 264 lanes were 16 vectors and 8 scalars of float16 per row on AVX-512)."""
    return 8


@overload(lane_multiple)
def _lane_multiple(like):
    lanes = HALF_LANES if isinstance(like, types.Array) and like.dtype in (types.uint16, types.int16) else 8
    return lambda like: lanes


def compute_empty(n, like):
    """``np.empty(n)`` in the compute type of array ``like`` (jit-only helper)."""
    return np.empty(n)


@overload(compute_empty)
def _compute_empty(n, like):
    if isinstance(like, types.Array) and like.dtype in _F32_COMPUTE:
        return lambda n, like: np.empty(n, np.float32)
    return lambda n, like: np.empty(n, np.float64)


@serial
def fold_affine(m, s, b, like):
    """(head, scale, offset) in the compute type of ``like`` such that
    ``(x - head) * scale + offset ~= (x - m) * s + b`` (see above)."""
    head = to_compute(m, like)
    return head, to_compute(s, like), to_compute(b - (m - np.float64(head)) * s, like)


@serial
def tile_lanes(shift, scale, offset, W, like):
    """Per-channel (shift, scale, offset) folded (``fold_affine``) and repeated to W lanes."""
    C = shift.shape[0]
    head = compute_empty(W, like)
    sc = compute_empty(W, like)
    of = compute_empty(W, like)
    for j in range(min(C, W)):  # fold each channel once (a tiny call spent ~1 us folding lanes)
        head[j], sc[j], of[j] = fold_affine(shift[j], scale[j], offset[j], like)
    for j in range(C, W):
        head[j] = head[j - C]
        sc[j] = sc[j - C]
        of[j] = of[j - C]
    return head, sc, of


@serial
def block_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3):
    """``out3 = (x3 - shift[c]) * scale[c] + offset[c]`` over ``x3[o0:o1, :, i0:i1]``."""
    if x3.shape[2] != 1:
        rows_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3)
    else:
        cl_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3)


# The two layouts' bodies of ``block_affine``, inlined at numba-IR level like ``rows_moments`` /
# ``cl_moments``: the entries choose one in Python, so a cold NCHW call does not compile the
# channels-last lane kernels and a channels-last call not the row loops.
@glue
def rows_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3):
    """``block_affine`` of a layout with contiguous runs (``inner > 1``)."""
    C = x3.shape[1]
    inner = x3.shape[2]
    src = x3.reshape(x3.size)
    dst = out3.reshape(out3.size)
    # Short runs stream badly: a line shared by two runs is written partly non-temporally.
    stream = dst.size * dst.itemsize >= _STREAM_BYTES and (i1 - i0) * dst.itemsize >= _STREAM_RUN_BYTES
    # Contiguous runs x3[o, c, i0:i1]: each channel folded once per block, not once per run
    # (8x8 planes spent about as long folding and setting up a loop as normalizing).
    head, sc, of = tile_lanes(shift, scale, offset, C, src)
    n = i1 - i0
    for o in range(o0, o1):
        for c in range(C):
            affine_rows(src, dst, (o * C + c) * inner + i0, 1, n, head[c], sc[c], of[c], stream)


@glue
def cl_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3):
    """``block_affine`` of the channels-last layout (``inner == 1``)."""
    C = x3.shape[1]
    src = x3.reshape(x3.size)
    dst = out3.reshape(out3.size)
    # Channels-last: rows of W lanes (k rows of C each), parameters tiled to the lanes (see
    # block_moments), all full rows in one loop, then the rest of the block as one short row.
    # Normal stores: streaming made BN eval (32,56,56,64) 1.3-1.5x faster but BN training,
    # whose normalize follows the moments pass, 1.2-1.3x slower (one core, not understood yet).
    stream = False
    W = cl_lanes(C, lane_multiple(src))
    k = W // C
    head, sc, of = tile_lanes(shift, scale, offset, W, src)
    nfull = (o1 - o0) // k
    affine_rows(src, dst, o0 * C, nfull, W, head, sc, of, stream)
    full = o0 + nfull * k
    affine_rows(src, dst, full * C, 1, (o1 - full) * C, head, sc, of, stream)


@parallel
def parallel_rows_affine(x3, shift, scale, offset, out3, n_o, n_i):
    outer, C, inner = x3.shape
    ntask = n_o * n_i
    for t in prange(ntask):
        # Last task first: right after channel_moments, the end of x is what is still in cache.
        u = ntask - 1 - t
        o0, o1 = block_bounds(outer, n_o, u // n_i)
        i0, i1 = block_bounds(inner, n_i, u % n_i)
        rows_affine(x3, o0, o1, i0, i1, shift, scale, offset, out3)


@parallel
def parallel_cl_affine(x3, shift, scale, offset, out3, n_o, n_i):
    outer = x3.shape[0]
    for t in prange(n_o):  # channels-last plans never cut inner (n_i == 1)
        u = n_o - 1 - t  # last task first (see parallel_rows_affine)
        o0, o1 = block_bounds(outer, n_o, u)
        cl_affine(x3, o0, o1, 0, 1, shift, scale, offset, out3)


def channel_affine(x3, shift, scale, offset, out3, nthreads):
    """``out3 = (x3 - shift[c]) * scale[c] + offset[c]``; safe in place (``out3 is x3``). The
    kernel of x3's layout and plan is chosen in Python (see ``moments.channel_moments``).

    The per-channel ``x - mean`` is kept (instead of folding it into the offset) so that the
    result stays exact for constant input and accurate when |mean| >> std.
    """
    if x3.size == 0:
        return
    rows = x3.shape[2] != 1
    n_o, n_i = plan(x3.shape[0], x3.shape[1], x3.shape[2], nthreads)
    if n_o * n_i == 1:
        (serial_rows_affine if rows else serial_cl_affine)(x3, shift, scale, offset, out3)
    else:
        (parallel_rows_affine if rows else parallel_cl_affine)(x3, shift, scale, offset, out3, n_o, n_i)


@serial
def serial_rows_affine(x3, shift, scale, offset, out3):
    rows_affine(x3, 0, x3.shape[0], 0, x3.shape[2], shift, scale, offset, out3)


@serial
def serial_cl_affine(x3, shift, scale, offset, out3):
    cl_affine(x3, 0, x3.shape[0], 0, 1, shift, scale, offset, out3)


@serial
def channel_scale_offset(mean, var, weight, bias, eps):
    """Per-channel (invstd, scale, offset) in float64 from statistics and the optional affine."""
    C = mean.shape[0]
    invstd = np.empty(C)
    scale = np.empty(C)
    offset = np.zeros(C)
    # A zero-length weight/bias means "none" too (see ``_absent``), a run-time test per channel.
    has_weight = weight is not None and weight.size > 0
    has_bias = bias is not None and bias.size > 0
    for c in range(C):
        invstd[c] = 1.0 / math.sqrt(var[c] + eps)
        scale[c] = invstd[c]
        if has_weight:
            scale[c] *= weight[c]
        if has_bias:
            offset[c] = bias[c]
    return invstd, scale, offset
