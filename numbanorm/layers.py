"""Stateful layers with torch's attributes, behaviour and state-dict keys, on NumPy arrays.

``BatchNorm`` mirrors ``torch.nn.BatchNorm{1,2,3}d``, ``LayerNorm`` ``torch.nn.LayerNorm``,
``RMSNorm`` ``torch.nn.RMSNorm`` and ``GroupNorm`` ``torch.nn.GroupNorm``: parameters
``weight``/``bias``, buffers ``running_mean``/``running_var``/``num_batches_tracked`` (BatchNorm),
``train()``/``eval()``, and ``state_dict()``/``load_state_dict()`` that
exchange checkpoints with torch (``load_state_dict(torch_module.state_dict())`` works without
numbanorm importing torch). ``layer(x)`` runs the forward; ``layer.backward(grad_out)`` returns
grad_x and stores ``grad_weight``/``grad_bias`` (overwritten, not accumulated).

The forward keeps a reference to its input for the backward: do not modify it in place between
the two.

On the GPU: ``layer.to("cuda")`` (or ``layer.cuda()``) moves the parameters, running statistics and
grads to numba device arrays, after which the layer takes CUDA arrays (numba, CuPy, torch) and runs
forward/backward through the CUDA functional ops; ``layer.to("cpu")`` (``layer.cpu()``) moves them
back. ``num_batches_tracked`` stays a host counter (it only picks the momentum). ``state_dict()``
always returns host NumPy arrays and ``load_state_dict`` accepts host values on either device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._channel_layers import BatchNorm, GroupNorm
from ._checks import check_eps
from ._layer_base import _check_dtype, _Norm, _shape_arg
from .backward import layer_norm_backward, rms_norm_backward
from .family import rms_norm
from .functional import layer_norm

__all__ = ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm"]
BatchNorm.__module__ = GroupNorm.__module__ = __name__  # (defined in _channel_layers: module size)


class LayerNorm(_Norm):
    """Layer normalization layer, as ``torch.nn.LayerNorm``, over the trailing ``normalized_shape``.

    Parameters
    ----------
    normalized_shape : int or sequence of int
        The trailing dims normalized over.
    eps : float, default 1e-5
        Added to the variance; positive and finite.
    elementwise_affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros) of shape ``normalized_shape``.
    bias : bool, default True
        With ``elementwise_affine``, ``bias=False`` keeps ``weight`` without ``bias``.
    dtype : dtype_like, default numpy.float32
        float32, float64, float16 or bfloat16 (trains in half precision): the dtype of the parameters and inputs.

    Attributes
    ----------
    weight, bias : numpy.ndarray or None
        The affine parameters (None where absent).
    grad_weight, grad_bias : numpy.ndarray or None
        Set by ``backward``.

    Raises
    ------
    TypeError
        ``normalized_shape`` is not an int or a non-empty sequence of ints >= 0; ``dtype`` is not
        float32, float64, float16 or bfloat16.
    ValueError
        ``eps`` is out of range.

    Notes
    -----
    The forward keeps a reference to its input for the backward: do not modify it in place between
    the two. ``layer.backward(grad_out)`` returns grad_x and stores ``grad_weight``/``grad_bias``
    (overwritten, not accumulated).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> layer = nb.LayerNorm(3, dtype=np.float64)
    >>> print(layer(np.array([[1.0, 2.0, 4.0]])).round(4))
    [[-1.069  -0.2673  1.3363]]
    >>> grad_x = layer.backward(np.array([[1.0, 2.0, 3.0]]))
    >>> print(grad_x.round(4), layer.grad_bias)
    [[-0.1145  0.1718 -0.0573]] [1. 2. 3.]
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype: DTypeLike = np.float32) -> None:
        self.normalized_shape = _shape_arg(normalized_shape)
        self.eps = check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self._init_affine(self.normalized_shape, self.elementwise_affine, bias)

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Normalize ``x`` over its trailing ``normalized_shape`` dims.

        Parameters
        ----------
        x : array_like
            The input, of the layer's dtype, ending in ``normalized_shape``: a NumPy array, or a CUDA
            array once the layer is on the GPU.

        Returns
        -------
        numpy.ndarray
            x normalized (a CUDA array of x's kind on the GPU).

        Raises
        ------
        TypeError
            x is None, not floating point, of another dtype than the layer's, or on another device.
        ValueError
            x has the wrong shape (or is 0-d), as the functional op reports it.
        """
        x = self._checked_input(x)
        y, mean, rstd = layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, return_stats=True)
        weight = self._snapshot(self.weight)
        self._saved = (x, mean, rstd, weight)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        """grad_x for the last forward; stores ``grad_weight``/``grad_bias`` (None without them).

        Parameters
        ----------
        grad_out : array_like
            dL/dy of the last forward: its output's shape and dtype.

        Returns
        -------
        numpy.ndarray
            grad_x, dL/dx.

        Raises
        ------
        RuntimeError
            No forward since the layer was created or moved.
        TypeError, ValueError
            ``grad_out`` has the wrong dtype or shape.
        """
        x, mean, rstd, weight = self._saved_or_raise()
        gx, gw, gb = layer_norm_backward(grad_out, x, self.normalized_shape, mean, rstd, weight)
        return self._store_grads(gx, gw, gb)

    def __repr__(self) -> str:
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None})")


class RMSNorm(_Norm):
    """RMS normalization layer, as ``torch.nn.RMSNorm``, over the trailing ``normalized_shape``.

    ``y = x / sqrt(mean(x²) + eps) * weight``, no bias.

    Parameters
    ----------
    normalized_shape : int or sequence of int
        The trailing dims normalized over.
    eps : float or None, default None
        Added to ``mean(x²)``; None: the machine epsilon of the compute type (float32's, float64's
        for float64), as torch.
    elementwise_affine : bool, default True
        A learnable ``weight`` (ones) of shape ``normalized_shape``.
    dtype : dtype_like, default numpy.float32
        float32, float64, float16 or bfloat16 (trains in half precision): the dtype of the parameters and inputs.

    Attributes
    ----------
    weight : numpy.ndarray or None
        The scale (None without ``elementwise_affine``); ``bias`` is always None.
    grad_weight : numpy.ndarray or None
        Set by ``backward``.

    Raises
    ------
    TypeError
        ``normalized_shape`` is not an int or a non-empty sequence of ints >= 0; ``dtype`` is not
        float32, float64, float16 or bfloat16.
    ValueError
        ``eps`` is out of range.

    Notes
    -----
    The forward keeps a reference to its input for the backward: do not modify it in place between
    the two. ``layer.backward(grad_out)`` returns grad_x and stores ``grad_weight``/``grad_bias``
    (overwritten, not accumulated).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> layer = nb.RMSNorm(2, dtype=np.float64)
    >>> print(layer(np.array([[3.0, 4.0]])).round(4))
    [[0.8485 1.1314]]
    >>> print(layer.backward(np.array([[1.0, 0.0]])).round(4), layer.grad_weight.round(4))
    [[ 0.181  -0.1358]] [0.8485 0.    ]
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, *, dtype: DTypeLike = np.float32) -> None:
        self.normalized_shape = _shape_arg(normalized_shape)
        self.eps = None if eps is None else check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self._init_affine(self.normalized_shape, self.elementwise_affine, False)

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Normalize ``x`` over its trailing ``normalized_shape`` dims.

        Parameters
        ----------
        x : array_like
            The input, of the layer's dtype, ending in ``normalized_shape``: a NumPy array, or a CUDA
            array once the layer is on the GPU.

        Returns
        -------
        numpy.ndarray
            x normalized (a CUDA array of x's kind on the GPU).

        Raises
        ------
        TypeError
            x is None, not floating point, of another dtype than the layer's, or on another device.
        ValueError
            x has the wrong shape (or is 0-d), as the functional op reports it.
        """
        x = self._checked_input(x)
        y, rstd = rms_norm(x, self.normalized_shape, self.weight, self.eps, return_stats=True)
        weight = self._snapshot(self.weight)
        self._saved = (x, rstd, weight)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        """grad_x for the last forward; stores ``grad_weight`` (None without it; ``grad_bias`` is always None).

        Parameters
        ----------
        grad_out : array_like
            dL/dy of the last forward: its output's shape and dtype.

        Returns
        -------
        numpy.ndarray
            grad_x, dL/dx.

        Raises
        ------
        RuntimeError
            No forward since the layer was created or moved.
        TypeError, ValueError
            ``grad_out`` has the wrong dtype or shape.
        """
        x, rstd, weight = self._saved_or_raise()
        return self._store_grads(*rms_norm_backward(grad_out, x, self.normalized_shape, rstd, weight))

    def __repr__(self) -> str:
        return f"RMSNorm({self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine})"
