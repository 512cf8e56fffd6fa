"""Half-precision (float16 / bfloat16) I/O for the CPU kernels.

Numba has no float16 array type on the CPU, so a half array reaches a kernel as a 16-bit integer
view of the same memory, and the kernels read and write elements through two hooks:

* ``load(v)``: an element as a float. Floats are returned unchanged (so float32/float64 kernels
  compile to exactly what they were); 16-bit bit patterns decode exactly to float32.
* ``store(v, dst)``: a float64 result as an element of ``dst``'s dtype. Float arrays get ``v``
  unchanged (the assignment rounds as before); 16-bit views get the half bit pattern, rounded to
  nearest-even to float32 and then to nearest-even to the half format. That differs from one
  correct rounding of the float64 value only when the float32 value lands exactly on a half tie
  (about 1 value in 8192 for float16, 1 in 65536 for bfloat16), and then by one ulp; torch rounds
  its float32 result the same way. A correctly rounded variant (round-to-odd to float32 first)
  was measured: it made float16 LayerNorm 2.3x slower out of DRAM, slower than float32.

Both are resolved at compile time from the element type, so there is no run-time dispatch. The two
formats need two distinct numba types, and the kernels only see the element type: float16 travels
as ``uint16`` and bfloat16 as ``int16``. These integer views exist only between ``kernel_array``
and the kernel (``_checks`` refuses integer inputs), so the marker cannot be confused with user
data, and it costs nothing, unlike a record dtype or an extra flag argument on every engine kernel.
"""

from __future__ import annotations

import typing

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload, register_jitable

F16_VIEW = np.dtype(np.uint16)  # float16 bits
BF16_VIEW = np.dtype(np.int16)  # bfloat16 bits


def _target_has_f16c() -> bool:
    """Whether numba compiles for a CPU with F16C (x86 half <-> float conversion instructions).
    Without it LLVM would lower a half conversion to a libcall that numba cannot link, so the
    integer code below is used instead (also when the target CPU is overridden, e.g. generic)."""
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        return False
    try:
        return bool(llvm.get_host_cpu_features().get("f16c", False))
    except Exception:  # noqa: BLE001 - feature detection unavailable: take the portable path
        return False


#: float16 conversions use the F16C instructions (vectorized by LLVM) when True.
HW_F16 = _target_has_f16c()


def _target_has_avx512bf16() -> bool:
    """Whether numba compiles for a CPU with AVX512_BF16 (``vcvtneps2bf16``); False when the
    target CPU is overridden, as for F16C."""
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        return False
    try:
        features = llvm.get_host_cpu_features()
        return all(features.get(f, False) for f in ("avx512bf16", "avx512dq", "avx512vl"))
    except Exception:  # noqa: BLE001 - feature detection unavailable: take the portable path
        return False


#: The SIMD loops round float32 vectors to bfloat16 with ``vcvtneps2bf16`` when True.
HW_BF16 = _target_has_avx512bf16()


class _BFloat(ir.Type):
    """LLVM's ``bfloat`` type (llvmlite has no class for it): ``fptrunc`` to it is
    ``vcvtneps2bf16`` on AVX512_BF16."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _BFloat)

    def __hash__(self) -> int:
        return hash("bfloat")


def is_bfloat16(dtype: np.dtype) -> bool:
    """ml_dtypes' bfloat16, recognized without importing ml_dtypes (it is never required)."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def is_half(dtype: np.dtype) -> bool:
    return dtype == np.float16 or is_bfloat16(dtype)


@typing.overload
def kernel_array(a: np.ndarray) -> np.ndarray: ...
@typing.overload
def kernel_array(a: None) -> None: ...
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


@intrinsic
def _f16_bits_to_f32_hw(typingctx, v):
    """float16 bits to float32 with LLVM's fpext (vcvtph2ps under F16C)."""
    if v != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(v), codegen


@intrinsic
def _f32_to_f16_bits_hw(typingctx, v):
    """float32 to float16 bits, rounded to nearest even, with LLVM's fptrunc (vcvtps2ph)."""
    if v != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(v), codegen


# --------------------------------------------------------------------------------------------
# Decode: exact
# --------------------------------------------------------------------------------------------
@register_jitable
def f16_bits_to_f32(h):
    if HW_F16:
        return _f16_bits_to_f32_hw(np.uint16(h))
    return f16_bits_to_f32_int(h)


@register_jitable
def f16_bits_to_f32_int(h):
    """Portable integer version of the float16 decode (no F16C)."""
    h = np.int64(h) & 0xFFFF
    sign = (h & 0x8000) << 16
    mag = h & 0x7FFF
    if mag >= 0x7C00:  # inf / nan: all-ones exponent, mantissa kept
        return _bits_to_f32(sign | 0x7F800000 | ((mag & 0x3FF) << 13))
    # Normal and subnormal alike: put the 15 bits where float32's are, then rescale by 2**112
    # (a power of two, so exact).
    return _bits_to_f32(sign | (mag << 13)) * np.float32(5.192296858534828e33)


@intrinsic
def _bf16_bits_to_f32(typingctx, v):
    """bfloat16 bits (any 16-bit integer) to float32: the bits are float32's upper half. Done in
    32-bit IR so that LLVM vectorizes it 8 lanes wide."""
    if not (isinstance(v, types.Integer) and v.bitwidth == 16):
        return None

    def codegen(context, builder, sig, args):
        i32 = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(i32, ir.FloatType())

    return types.float32(v), codegen


@intrinsic
def _f32_to_bf16_bits(typingctx, v):
    """float32 to bfloat16 bits (int16), rounded to nearest even; a NaN is quieted and keeps its
    sign; an overflow carries into inf. 32-bit IR, so that it vectorizes 8 lanes wide."""
    if v != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        x = builder.bitcast(args[0], i32)
        hi = builder.lshr(x, ir.Constant(i32, 16))
        lsb = builder.and_(hi, ir.Constant(i32, 1))
        rounded = builder.lshr(builder.add(builder.add(x, ir.Constant(i32, 0x7FFF)), lsb), ir.Constant(i32, 16))
        quiet_nan = builder.or_(hi, ir.Constant(i32, 0x40))
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        return builder.trunc(builder.select(is_nan, quiet_nan, rounded), ir.IntType(16))

    return types.int16(v), codegen


@register_jitable
def bf16_bits_to_f32(h):
    return _bf16_bits_to_f32(h)


# --------------------------------------------------------------------------------------------
# Encode: float64 -> float32 -> half, each rounded to nearest even
# --------------------------------------------------------------------------------------------
@register_jitable
def f64_to_f16_bits(d):
    if HW_F16:
        return _f32_to_f16_bits_hw(np.float32(d))
    return np.uint16(f64_to_f16_bits_int(d))


@register_jitable
def f64_to_f16_bits_int(d):
    """Portable integer version of the float16 encode (no F16C)."""
    x = _f32_to_bits(np.float32(d))
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
    return _f32_to_bf16_bits(np.float32(d))


# --------------------------------------------------------------------------------------------
# Vector conversions for the hand-written LLVM loops (``simd.py``, ``simd_rows.py``)
# --------------------------------------------------------------------------------------------
def _target_has_avx512f() -> bool:
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        return False
    try:
        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # noqa: BLE001 - feature detection unavailable: assume none
        return False


#: Lanes of the float32 vectors the SIMD loops over half data use: 16 (one zmm, and the 16-bit
#: elements one ymm load or store) on AVX-512, else 8 (one ymm; 16 lanes would need 16 ymm
#: registers for the float64 sums of ``simd_rows``, which AVX2 has in all).
HALF_LANES = 16 if _target_has_avx512f() else 8


def half_kind(t) -> str | None:
    """"f16" / "bf16" for the numba element type of a half array's 16-bit view, else None."""
    if t == types.uint16:
        return "f16"
    if t == types.int16:
        return "bf16"
    return None


def _splat_i32(vty, value):
    return ir.Constant(vty, [ir.Constant(ir.IntType(32), value)] * vty.count)


def emit_decode(builder, bits, kind):
    """float32 vector of the 16-bit vector ``bits`` (``kind`` "f16" or "bf16"), exact.
    float16: ``fpext`` (``vcvtph2ps``) when the target has F16C, else integer ops on 32-bit lanes
    (``f16_bits_to_f32_int``'s, branch-free). bfloat16: the bits are float32's upper half."""
    n = bits.type.count
    i32v = ir.VectorType(ir.IntType(32), n)
    f32v = ir.VectorType(ir.FloatType(), n)
    if kind == "f16" and HW_F16:
        return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), n)), f32v)
    h = builder.zext(bits, i32v)
    if kind == "bf16":
        return builder.bitcast(builder.shl(h, _splat_i32(i32v, 16)), f32v)
    sign = builder.shl(builder.and_(h, _splat_i32(i32v, 0x8000)), _splat_i32(i32v, 16))
    mag = builder.and_(h, _splat_i32(i32v, 0x7FFF))
    special = builder.or_(builder.or_(sign, _splat_i32(i32v, 0x7F800000)),
                          builder.shl(builder.and_(mag, _splat_i32(i32v, 0x3FF)), _splat_i32(i32v, 13)))
    scaled = builder.fmul(builder.bitcast(builder.or_(sign, builder.shl(mag, _splat_i32(i32v, 13))), f32v),
                          ir.Constant(f32v, [ir.Constant(ir.FloatType(), 2.0 ** 112)] * n))
    is_special = builder.icmp_unsigned(">=", mag, _splat_i32(i32v, 0x7C00))
    return builder.select(is_special, builder.bitcast(special, f32v), scaled)


def emit_encode(builder, v, kind):
    """16-bit vector (i16 lanes) of the float32 vector ``v`` rounded to nearest even to
    ``kind`` ("f16" or "bf16"): the bits ``store`` gives each element. float16: ``fptrunc``
    (``vcvtps2ph``) with F16C, else integer ops (overflow to inf, subnormals by one float add of
    a magic constant, NaN quieted with its sign). bfloat16: ``_f32_to_bf16_bits`` on every lane."""
    n = v.type.count
    if kind == "f16" and HW_F16:
        return builder.bitcast(builder.fptrunc(v, ir.VectorType(ir.HalfType(), n)), ir.VectorType(ir.IntType(16), n))
    x = builder.bitcast(v, ir.VectorType(ir.IntType(32), n))
    if kind == "bf16":
        if HW_BF16 and n > 1:
            return _encode_bf16_hw(builder, v, x)
        return _encode_bf16_int(builder, v, x)
    return _encode_f16_int(builder, x)


def _encode_bf16_int(builder, v, x):
    """``_f32_to_bf16_bits`` on every lane of ``v`` (``x``: its bits as i32 lanes)."""
    i32v = x.type
    hi = builder.lshr(x, _splat_i32(i32v, 16))
    lsb = builder.and_(hi, _splat_i32(i32v, 1))
    rounded = builder.lshr(builder.add(builder.add(x, _splat_i32(i32v, 0x7FFF)), lsb), _splat_i32(i32v, 16))
    is_nan = builder.fcmp_unordered("uno", v, v)
    quiet = builder.or_(hi, _splat_i32(i32v, 0x40))
    return builder.trunc(builder.select(is_nan, quiet, rounded), ir.VectorType(ir.IntType(16), i32v.count))


def _encode_bf16_hw(builder, v, x):
    """``vcvtneps2bf16``, which rounds to nearest even but flushes float32 subnormals to zero:
    a vector holding one (0 < |v| < 2**-126, never seen in a normalized output but possible) takes
    the integer rounding instead, on a branch that is almost never taken."""
    n = v.type.count
    i32v = x.type
    i16v = ir.VectorType(ir.IntType(16), n)
    fast = builder.bitcast(builder.fptrunc(v, ir.VectorType(_BFloat(), n)), i16v)
    if n in (8, 16):  # vfpclassps, classes 0x20 (denormal): LLVM expands llvm.is.fpclass into 3 ops
        name = f"llvm.x86.avx512.fpclass.ps.{32 * n}"
        fpclass = builder.module.globals.get(name) or ir.Function(
            builder.module, ir.FunctionType(ir.VectorType(ir.IntType(1), n), [v.type, ir.IntType(32)]), name)
        tiny = builder.call(fpclass, [v, ir.Constant(ir.IntType(32), 0x20)])
    else:
        mag = builder.and_(x, _splat_i32(i32v, 0x7FFFFFFF))
        tiny = builder.icmp_unsigned("<", builder.sub(mag, _splat_i32(i32v, 1)), _splat_i32(i32v, 0x7FFFFF))
    mask = builder.bitcast(tiny, ir.IntType(n))
    any_tiny = builder.icmp_unsigned("!=", mask, ir.Constant(ir.IntType(n), 0))
    entry = builder.block
    with builder.if_then(any_tiny, likely=False):
        slow_block = builder.block
        slow = _encode_bf16_int(builder, v, x)
    phi = builder.phi(i16v)
    phi.add_incoming(fast, entry)
    phi.add_incoming(slow, slow_block)
    return phi


def _encode_f16_int(builder, x):
    """float16 bits of the float32 lanes with bits ``x``, without F16C (the method of F.
    Giesen's float_to_half_fast3_rtne)."""
    i32v = x.type
    n = i32v.count
    f32v = ir.VectorType(ir.FloatType(), n)
    i16v = ir.VectorType(ir.IntType(16), n)
    sign = builder.and_(builder.lshr(x, _splat_i32(i32v, 16)), _splat_i32(i32v, 0x8000))
    a = builder.and_(x, _splat_i32(i32v, 0x7FFFFFFF))
    special = builder.select(builder.icmp_unsigned(">", a, _splat_i32(i32v, 0x7F800000)),
                             _splat_i32(i32v, 0x7E00), _splat_i32(i32v, 0x7C00))  # nan, inf (and overflow)
    # Subnormal or zero results: adding 0.5 puts the 10 mantissa bits at the bottom, rounded to
    # nearest even by the float add itself (no fast-math flags on it).
    magic = ir.Constant(f32v, [ir.Constant(ir.FloatType(), 0.5)] * n)
    sub = builder.sub(builder.bitcast(builder.fadd(builder.bitcast(a, f32v), magic), i32v),
                      _splat_i32(i32v, 0x3F000000))
    odd = builder.and_(builder.lshr(a, _splat_i32(i32v, 13)), _splat_i32(i32v, 1))
    normal = builder.lshr(builder.add(builder.add(a, _splat_i32(i32v, ((15 - 127) << 23) + 0xFFF)), odd),
                          _splat_i32(i32v, 13))
    h = builder.select(builder.icmp_unsigned("<", a, _splat_i32(i32v, 113 << 23)), sub, normal)
    h = builder.select(builder.icmp_unsigned(">=", a, _splat_i32(i32v, (127 + 16) << 23)), special, h)
    return builder.trunc(builder.or_(h, sign), i16v)


# --------------------------------------------------------------------------------------------
# The hooks the engine kernels call
# --------------------------------------------------------------------------------------------
def load(v):
    """An array element as a float (see the module docstring)."""
    return v


def store(v, dst):
    """A float result as an element for the array ``dst`` (see the module docstring)."""
    return v


def compute(v, a):
    """A row constant in the precision of a product-only elementwise loop over ``a`` (RMSNorm's
    ``x * rstd * w``): unchanged (float64) for float arrays, float32 for half views, where a few
    float32 roundings of a product stay far below half an ulp of the half result and the loop
    runs 8 lanes wide. Not for ``+ bias`` loops: near cancellation float32 would cost ulps."""
    return v


def is_half_view(a):
    """Whether ``a`` is the 16-bit view of a half array (jit-only; a compile-time constant, so a
    branch on it compiles to one side only)."""
    return False


@overload(is_half_view)
def _is_half_view_impl(a):
    half = isinstance(a, types.Array) and a.dtype in (types.uint16, types.int16)
    return lambda a: half


def hw_bf16_view(a):
    """Whether ``a`` is a bfloat16 view and the SIMD loops round with ``vcvtneps2bf16`` (jit-only;
    a constant). numba's loops round bfloat16 with the integer code of ``store`` (8 more ops per
    vector), so the row kernels take the SIMD loop for these rows; float16's ``vcvtps2ph`` is one
    instruction in either, and there numba's loop was as fast or faster (LayerNorm rows,
    (16384, 768) float16, one core: 0.25 vs 0.30 ns per element pipelined; bfloat16 0.38 vs 0.31)."""
    return False


@overload(hw_bf16_view)
def _hw_bf16_view_impl(a):
    ok = isinstance(a, types.Array) and a.dtype == types.int16 and HW_BF16
    return lambda a: ok


def row_scratch(out, n):
    """Per-task scratch for ``row_target`` (jit-only): a float32 row of ``n`` for a bfloat16
    ``out``, None otherwise (no allocation). Allocate it once per task, outside the row loop."""
    return None


def row_target(scratch, dst):
    """Where a row loop writes its results, each through ``store(v, target)`` (jit-only): the
    float32 ``scratch`` for bfloat16, converted by ``flush_row`` once the row is done, and
    ``dst`` itself for every other dtype (``flush_row`` then does nothing).

    Why: a float64 loop that stores each element through ``store`` vectorizes only 4 lanes wide,
    and bfloat16's integer rounding costs about as much as the rest of the LayerNorm loop at 4
    lanes (0.62-0.71 ns per element on Zen 3); writing float32 first and converting the row in an
    8-lane loop gives the same bits in 0.38-0.47 ns. The float32 rounding is the one ``store``
    does first anyway. float16 gains nothing (F16C's ``vcvtps2ph`` is one instruction: the
    direct store measured 0.27 ns per element against 0.33 through the scratch), so it stores
    directly."""
    return dst


def flush_row(target, dst):
    """Convert a row written to ``row_target`` into ``dst`` (jit-only; nothing unless bfloat16)."""
    return None


@overload(row_scratch)
def _row_scratch_impl(out, n):
    return lambda out, n: None


@overload(row_target)
def _row_target_impl(scratch, dst):
    if isinstance(dst.dtype, types.Float) or dst.dtype in (types.uint16, types.int16):
        return lambda scratch, dst: dst
    return None


@overload(flush_row)
def _flush_row_impl(target, dst):
    if isinstance(dst.dtype, types.Float) or dst.dtype in (types.uint16, types.int16):
        return lambda target, dst: None
    return None


@overload(load)
def _load_impl(v):
    if isinstance(v, types.Float):
        return lambda v: v
    if v == types.uint16:
        return lambda v: f16_bits_to_f32(v)
    if v == types.int16:
        return lambda v: bf16_bits_to_f32(v)
    return None


@overload(compute)
def _compute_impl(v, a):
    if isinstance(a.dtype, types.Float):
        return lambda v, a: v
    if a.dtype in (types.uint16, types.int16):
        return lambda v, a: np.float32(v)
    return None


@overload(store)
def _store_impl(v, dst):
    dtype = dst.dtype
    if isinstance(dtype, types.Float):
        return lambda v, dst: v
    if dtype == types.uint16:
        return lambda v, dst: f64_to_f16_bits(v)
    if dtype == types.int16:
        return lambda v, dst: f64_to_bf16_bits(v)
    return None
