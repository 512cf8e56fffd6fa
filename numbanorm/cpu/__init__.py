"""The CPU backend: numba kernels over the canonical ``(outer, C, inner)`` views.

The fronts reach it through ``numbanorm._backend``; nothing here imports a front. Modules:

* ``plan``: the one planning rule (tasks, serial or parallel), threads, the launch lock, fork;
* ``jit``: how every kernel is compiled; ``simd``: hand-written LLVM loops; ``halfio``: float16 /
  bfloat16 I/O; ``arena``: big output arrays from cached blocks;
* ``moments``: the moments engine and the one partial merge; ``affine``: the normalize pass;
* ``batch_norm``, ``layer_norm`` (LayerNorm, RMSNorm, add+LN, and their backward), ``family``
  (GroupNorm, InstanceNorm), ``backward`` (BatchNorm's and GroupNorm's backward).
"""

from __future__ import annotations

from .affine import channel_affine, channel_scale_offset
from .arena import arena_info, empty, set_arena_limit
from .backward import (
    batch_norm_backward_serial,
    channel_grad_input,
    channel_grad_sums,
    group_grad_coefficients,
    sample_channel_grad_input,
    sample_channel_grad_sums,
)
from .batch_norm import (
    batch_norm_eval_cl,
    batch_norm_eval_forward,
    batch_norm_eval_nd_cl,
    batch_norm_eval_nd_rows,
    batch_norm_eval_rows,
    batch_norm_train_cl,
    batch_norm_train_forward,
    batch_norm_train_nd_cl,
    batch_norm_train_nd_rows,
    batch_norm_train_rows,
    no_stats,
    none_of,
)
from .family import group_norm_fused, group_scale_offset, sample_channel_affine, sample_channel_moments
from .halfio import is_bfloat16, is_half, kernel_array
from .layer_norm import (
    LN_PIPELINE_ELEMENTS,
    add_layer_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    layer_norm_serial_cached,
    layer_norm_serial_nd,
    layer_norm_serial_pipelined,
    rms_norm_forward,
)
from .moments import channel_moments, merge_groups
from .plan import NEEDS_CALL_LOCK, SERIAL_SIZE, kernel_guard, num_threads

__all__ = [
    "LN_PIPELINE_ELEMENTS", "NEEDS_CALL_LOCK", "SERIAL_SIZE", "add_layer_norm_forward", "arena_info",
    "batch_norm_backward_serial", "batch_norm_eval_cl", "batch_norm_eval_forward", "batch_norm_eval_nd_cl",
    "batch_norm_eval_nd_rows", "batch_norm_eval_rows", "batch_norm_train_cl", "batch_norm_train_forward",
    "batch_norm_train_nd_cl", "batch_norm_train_nd_rows", "batch_norm_train_rows", "channel_affine",
    "channel_grad_input", "channel_grad_sums", "channel_moments", "channel_scale_offset", "empty",
    "group_grad_coefficients", "group_norm_fused", "group_scale_offset", "is_bfloat16", "is_half",
    "kernel_array", "kernel_guard", "layer_norm_backward", "layer_norm_forward", "layer_norm_serial_cached",
    "layer_norm_serial_nd", "layer_norm_serial_pipelined", "merge_groups", "no_stats", "none_of", "num_threads",
    "rms_norm_forward", "sample_channel_affine", "sample_channel_grad_input", "sample_channel_grad_sums",
    "sample_channel_moments", "set_arena_limit",
]
