"""numbanorm: fast, numerically stable normalization ops (Batch/Layer/RMS/Group/Instance norm,
residual-add LayerNorm; forward and backward) with Numba kernels for the CPU and CUDA GPUs."""

from . import _njit, _njit_backward, _njit_channels  # noqa: F401 - register the numba overloads (the ops in @njit code)
from ._numba import CacheUnavailableWarning
from ._precompile import precompile
from .backward import batch_norm_backward, group_norm_backward, layer_norm_backward, rms_norm_backward
from .cpu.arena import arena_info, set_arena_limit
from .family import add_layer_norm, fold_batch_norm, group_norm, instance_norm, rms_norm
from .functional import batch_norm, layer_norm
from .layers import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from .moments import MOMENTS_DTYPE, Moments, merge_moments
from .stats import moments, standardize

__all__ = [
    "layer_norm", "batch_norm",
    "rms_norm", "group_norm", "instance_norm", "add_layer_norm", "fold_batch_norm",
    "layer_norm_backward", "batch_norm_backward", "rms_norm_backward", "group_norm_backward",
    "LayerNorm", "BatchNorm", "RMSNorm", "GroupNorm",
    "Moments", "MOMENTS_DTYPE", "moments", "merge_moments", "standardize",
    "set_arena_limit", "arena_info", "CacheUnavailableWarning", "precompile",
]
__version__ = "0.1.0"
