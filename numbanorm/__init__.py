"""numbanorm: fast, numerically stable Batch/Layer Normalization with Numba kernels."""

from .functional import batch_norm, layer_norm

__all__ = ["batch_norm", "layer_norm"]
__version__ = "0.1.0"
