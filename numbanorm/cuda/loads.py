"""Element loads and stores of the CUDA kernels, and the compile-time keys that pick them.

The CPU's ``cpu/halfio.py`` (16-bit formats) and ``cpu/simd.py`` (wide accesses) in one module:

* ``acc``: the accumulation type, 64 (float64) for float64 input, 32 (float32) for everything
  else; float16 and bfloat16 are read and written in their own format, computed in float32;
* ``io``: how an array is stored, ``"f"`` a native float array, ``"b"`` bfloat16 held as int16
  bits (torch bf16 tensors viewed as int16: neither NumPy nor ``__cuda_array_interface__`` knows
  bfloat16), rounded to nearest even on store;
* wide loads / stores: 4 float32 in one 16-byte access (``ld.global.v4.f32``). numba has no
  vector loads, so these are intrinsics emitting an aligned ``<4 x float>`` load/store; the
  caller guarantees 16-byte alignment. The simulator gets plain Python.

Kernel factories take ``acc``/``io`` and pick their loaders with ``loader``/``storer`` at build
time, so the dtype costs no run-time branch.
"""

from __future__ import annotations

import functools

import numpy as np

from .compat import SIM, jit_device, types

if not SIM:  # pragma: no cover - hardware only
    from .compat import cgutils, intrinsic, ir, libdevice


def acc_of(dtype: str) -> int:
    """The accumulation type of x's dtype: 64 for float64, 32 otherwise."""
    return 64 if dtype == "float64" else 32


def io_of(dtype: str) -> str:
    """How an array of ``dtype`` is stored for the kernels: "b" bfloat16 bits, "f" a native float."""
    return "b" if dtype == "bfloat16" else "f"


def stats_dtype(dtype: str) -> str:
    """float64 stats for float64 input, float32 otherwise (like torch and the CPU path)."""
    return "float64" if dtype == "float64" else "float32"


def coeff_dtype(acc: int) -> str:
    """The dtype of per-channel normalize coefficients: the accumulation type."""
    return "float64" if acc == 64 else "float32"


def numba_float(acc: int):
    """The numba type of the accumulation type (shared and local arrays)."""
    return types.float64 if acc == 64 else types.float32


def np_float(acc: int):
    """The NumPy scalar type of the accumulation type (casts in the kernels)."""
    return np.float64 if acc == 64 else np.float32


# --------------------------------------------------------------------------------------------
# Scalar loads and stores: native floats, and bfloat16 as int16 bits (round-to-nearest-even)
# --------------------------------------------------------------------------------------------
if SIM:

    def _int_as_float(i):
        return np.int32(i).view(np.float32)

    def _float_as_int(f):
        return int(np.float32(f).view(np.int32))

else:  # pragma: no cover - hardware only

    @jit_device
    def _int_as_float(i):
        return libdevice.int_as_float(np.int32(i))

    @jit_device
    def _float_as_int(f):
        return libdevice.float_as_int(np.float32(f))


@jit_device
def ld_f32(a, i):
    return np.float32(a[i])


@jit_device
def ld_f64(a, i):
    return np.float64(a[i])


@jit_device
def ld_bf16(a, i):
    return _int_as_float(np.int32(a[i]) << 16)


@jit_device
def st_plain(a, i, v):
    a[i] = v


@jit_device
def st_bf16(a, i, v):
    u = np.int64(_float_as_int(v)) & 0xFFFFFFFF
    if v != v:
        r = 0x7FC0
    else:
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    if r >= 0x8000:
        r -= 0x10000
    a[i] = np.int16(r)


def loader(acc: int, io: str):
    """The load of an element as the accumulation type (``acc``) from storage ``io``."""
    if io == "b":
        return ld_bf16
    return ld_f64 if acc == 64 else ld_f32


def storer(io: str):
    """The store of a value into storage ``io`` (bfloat16 bits rounded to nearest even)."""
    return st_bf16 if io == "b" else st_plain


# --------------------------------------------------------------------------------------------
# Units of a row: one element, or four float32 in one 16-byte access
# --------------------------------------------------------------------------------------------
if SIM:

    def ld4_f32(a, u):
        k = 4 * u
        return np.float32(a[k]), np.float32(a[k + 1]), np.float32(a[k + 2]), np.float32(a[k + 3])

    def st4_f32(a, u, v0, v1, v2, v3):
        k = 4 * u
        a[k], a[k + 1], a[k + 2], a[k + 3] = v0, v1, v2, v3

else:  # pragma: no cover - hardware only

    def _vec4_pointer(context, builder, aryty, ary_value, u):
        ary = context.make_array(aryty)(context, builder, ary_value)
        k = builder.mul(u, ir.Constant(u.type, 4))
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [k])
        return builder.bitcast(ptr, ir.PointerType(ir.VectorType(ir.FloatType(), 4)))

    @intrinsic
    def ld4_f32(typingctx, a, u):
        """Elements 4u .. 4u+3 of a float32 array as a 4-tuple, in one 16-byte load."""
        sig = types.UniTuple(types.float32, 4)(a, u)

        def codegen(context, builder, sig, args):
            vec = builder.load(_vec4_pointer(context, builder, sig.args[0], args[0], args[1]), align=16)
            items = [builder.extract_element(vec, ir.Constant(ir.IntType(32), q)) for q in range(4)]
            return context.make_tuple(builder, sig.return_type, items)

        return sig, codegen

    @intrinsic
    def st4_f32(typingctx, a, u, v0, v1, v2, v3):
        """Store four float32 values at 4u .. 4u+3 in one 16-byte store."""
        sig = types.void(a, u, types.float32, types.float32, types.float32, types.float32)

        def codegen(context, builder, sig, args):
            vec = ir.Constant(ir.VectorType(ir.FloatType(), 4), ir.Undefined)
            for q in range(4):
                v = context.cast(builder, args[2 + q], sig.args[2 + q], types.float32)
                vec = builder.insert_element(vec, v, ir.Constant(ir.IntType(32), q))
            builder.store(vec, _vec4_pointer(context, builder, sig.args[0], args[0], args[1]), align=16)
            return context.get_dummy_value()

        return sig, codegen


@jit_device
def ld1(a, u):
    """``(a[u],)``: the one-element unit of the scalar row kernel (float32 or float64 storage)."""
    return (a[u],)


@functools.cache
def unit_loader(ld):
    """``(ld(a, u),)``: a one-element unit through a converting loader (bfloat16 bits)."""

    @jit_device
    def ld_unit(a, u):
        return (ld(a, u),)

    return ld_unit
