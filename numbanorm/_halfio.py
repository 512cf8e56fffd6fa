"""Half-precision (float16 / bfloat16) I/O for the CPU kernels.

Numba has no float16 array type on the CPU, so a half array reaches a kernel as a 16-bit integer
view of the same memory, and the kernels read and write elements through two hooks:

* ``load(v)``: an element as a float. Floats are returned unchanged (so float32/float64 kernels
  compile to exactly what they were); 16-bit bit patterns decode exactly to float32.
* ``store(v, dst)``: a float64 result as an element of ``dst``'s dtype. Float arrays get ``v``
  unchanged (the assignment rounds as before); 16-bit views get the half bit pattern rounded to
  nearest, ties to even, from the float64 value.

Both are resolved at compile time from the element type, so there is no run-time dispatch. The two
formats need two distinct numba types, and the kernels only see the element type: float16 travels
as ``uint16`` and bfloat16 as ``int16``. These integer views exist only between ``kernel_array``
and the kernel (``_checks`` refuses integer inputs), so the marker cannot be confused with user
data, and it costs nothing, unlike a record dtype or an extra flag argument on every engine kernel.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload, register_jitable

F16_VIEW = np.dtype(np.uint16)  # float16 bits
BF16_VIEW = np.dtype(np.int16)  # bfloat16 bits


def is_bfloat16(dtype: np.dtype) -> bool:
    """ml_dtypes' bfloat16, recognized without importing ml_dtypes (it is never required)."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def is_half(dtype: np.dtype) -> bool:
    return dtype == np.float16 or is_bfloat16(dtype)


def kernel_array(a: np.ndarray | None) -> np.ndarray | None:
    """The array the kernels take: half arrays as their 16-bit marker view, others unchanged."""
    if a is None:
        return None
    if a.dtype == np.float16:
        return a.view(F16_VIEW)
    if is_bfloat16(a.dtype):
        return a.view(BF16_VIEW)
    return a


# --------------------------------------------------------------------------------------------
# Bit casts (LLVM bitcast, no memory round trip)
# --------------------------------------------------------------------------------------------
@intrinsic
def _bits_to_f32(typingctx, v):
    """float32 whose bit pattern is the low 32 bits of the integer ``v``."""
    if not isinstance(v, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i32 = context.cast(builder, args[0], sig.args[0], types.uint32)
        return builder.bitcast(i32, ir.FloatType())

    return types.float32(v), codegen


@intrinsic
def _f32_to_bits(typingctx, v):
    """The bit pattern of the float32 ``v`` as an int64 in [0, 2**32)."""
    if v != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = builder.bitcast(args[0], ir.IntType(32))
        return builder.zext(i32, ir.IntType(64))

    return types.int64(v), codegen


# --------------------------------------------------------------------------------------------
# Decode: exact
# --------------------------------------------------------------------------------------------
@register_jitable
def f16_bits_to_f32(h):
    h = np.int64(h) & 0xFFFF
    sign = (h & 0x8000) << 16
    mag = h & 0x7FFF
    if mag >= 0x7C00:  # inf / nan: all-ones exponent, mantissa kept
        return _bits_to_f32(sign | 0x7F800000 | ((mag & 0x3FF) << 13))
    # Normal and subnormal alike: put the 15 bits where float32's are, then rescale by 2**112
    # (a power of two, so exact).
    return _bits_to_f32(sign | (mag << 13)) * np.float32(5.192296858534828e33)


@register_jitable
def bf16_bits_to_f32(h):
    return _bits_to_f32((np.int64(h) & 0xFFFF) << 16)


# --------------------------------------------------------------------------------------------
# Encode: round to nearest, ties to even, from float64
# --------------------------------------------------------------------------------------------
@register_jitable
def _f64_to_f32_odd(d):
    """float32 bits of ``d`` rounded to odd. Rounding that once more to a narrower format (to
    nearest even) equals rounding ``d`` directly: round-to-odd keeps the sticky information that
    a plain float32 rounding would lose, so there is no double-rounding error."""
    f = np.float32(d)
    bits = _f32_to_bits(f)
    if np.float64(f) != d and (bits & 1) == 0 and d == d:
        # Inexact and even: the odd neighbour on the side of d (bits count magnitude).
        bits = bits + 1 if abs(d) > abs(np.float64(f)) else bits - 1
    return bits


@register_jitable
def f64_to_f16_bits(d):
    x = _f64_to_f32_odd(np.float64(d))
    sign = (x >> 16) & 0x8000
    x &= 0x7FFFFFFF
    if x > 0x7F800000:  # nan: quiet it
        h = 0x7E00
    elif x >= 0x477FF000:  # >= 65520 rounds to inf
        h = 0x7C00
    elif x >= 0x38800000:  # normal half: rebias the exponent (127 -> 15), round 13 bits away
        x -= 0x38000000
        h = (x + 0xFFF + ((x >> 13) & 1)) >> 13
    elif x < 0x33000000:  # below 2**-25 (the tie at 2**-25 goes to the even 0)
        h = 0
    else:  # subnormal half: units of 2**-24
        shift = 126 - (x >> 23)
        m = (x & 0x7FFFFF) | 0x800000
        h = (m + ((1 << (shift - 1)) - 1) + ((m >> shift) & 1)) >> shift
    return h | sign


@register_jitable
def f64_to_bf16_bits(d):
    x = _f64_to_f32_odd(np.float64(d))
    if (x & 0x7FFFFFFF) > 0x7F800000:  # nan: keep sign, quiet it
        return (x >> 16) | 0x40
    return (x + 0x7FFF + ((x >> 16) & 1)) >> 16  # overflow carries into inf, as it should


# --------------------------------------------------------------------------------------------
# The hooks the engine kernels call
# --------------------------------------------------------------------------------------------
def load(v):
    """An array element as a float (see the module docstring)."""
    return v


def store(v, dst):
    """A float result as an element for the array ``dst`` (see the module docstring)."""
    return v


@overload(load)
def _load_impl(v):
    if isinstance(v, types.Float):
        return lambda v: v
    if v == types.uint16:
        return lambda v: f16_bits_to_f32(v)
    if v == types.int16:
        return lambda v: bf16_bits_to_f32(v)
    return None


@overload(store)
def _store_impl(v, dst):
    dtype = dst.dtype
    if isinstance(dtype, types.Float):
        return lambda v, dst: v
    if dtype == types.uint16:
        return lambda v, dst: np.uint16(f64_to_f16_bits(v))
    if dtype == types.int16:
        return lambda v, dst: np.int16(f64_to_bf16_bits(v))
    return None
