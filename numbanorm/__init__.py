"""numbanorm: fast, numerically stable Batch/Layer Normalization with Numba kernels."""

from .family import add_layer_norm, fold_batch_norm, group_norm, instance_norm, rms_norm
from .functional import batch_norm, layer_norm

__all__ = ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "add_layer_norm", "fold_batch_norm"]
__version__ = "0.1.0"
