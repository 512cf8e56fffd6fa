"""numbanorm: fast, numerically stable Batch/Layer Normalization with Numba kernels."""

from ._arena import arena_info, set_arena_limit
from .family import add_layer_norm, fold_batch_norm, group_norm, instance_norm, rms_norm
from .functional import batch_norm, layer_norm
from .moments import MOMENTS_DTYPE, Moments, merge_moments, moments, standardize

__all__ = [
    "batch_norm", "layer_norm", "Moments", "MOMENTS_DTYPE", "moments", "merge_moments", "standardize",
    "rms_norm", "group_norm", "instance_norm", "add_layer_norm", "fold_batch_norm",
]
__version__ = "0.1.0"

from .backward import batch_norm_backward, group_norm_backward, layer_norm_backward, rms_norm_backward  # noqa: E402
from .layers import BatchNorm, GroupNorm, LayerNorm, RMSNorm  # noqa: E402

__all__ += ["batch_norm_backward", "layer_norm_backward", "BatchNorm", "LayerNorm"]
__all__ += ["rms_norm_backward", "group_norm_backward", "RMSNorm", "GroupNorm"]
__all__ += ["set_arena_limit", "arena_info"]
