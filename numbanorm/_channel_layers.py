"""BatchNorm and GroupNorm, the channel layers of ``numbanorm.layers`` (documented there)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._checks import check_eps, check_momentum
from .backward import batch_norm_backward, group_norm_backward
from .family import group_norm
from .functional import batch_norm

if TYPE_CHECKING:
    pass

from ._layer_base import _check_dtype, _int_axis, _Norm, _positive_int


class BatchNorm(_Norm):
    """Batch normalization layer, as ``torch.nn.BatchNorm{1,2,3}d`` (any rank; ``channel_axis=-1`` for channels-last).

    In eval the running statistics are used, unless ``track_running_stats=False``: then there are
    none and batch statistics are used in both modes.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
        Added to the variance; positive and finite.
    momentum : float or None, default 0.1
        Weight of the batch statistics in the running-stats update, in [0, 1]; None uses the
        cumulative moving average (``1 / num_batches_tracked``).
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool, default True
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``.
    channel_axis : int, default 1
        The channel axis of the inputs (``-1``: channels-last).
    dtype : dtype_like, default numpy.float32
        float32, float64, float16 or bfloat16 (trains in half precision): the dtype of the
        parameters, statistics and inputs.
    bias : bool, default True
        With ``affine``, ``bias=False`` (keyword, as in torch >= 2.13) keeps ``weight`` without
        ``bias``.

    Attributes
    ----------
    weight, bias : numpy.ndarray or None
        The affine parameters, shape (C,) (None where absent).
    running_mean, running_var : numpy.ndarray or None
        The running statistics, shape (C,) (None without ``track_running_stats``).
    num_batches_tracked : numpy.ndarray or None
        A 0-d int64 counter of training forwards.
    grad_weight, grad_bias : numpy.ndarray or None
        Set by ``backward``.
    training : bool
        Training mode (``train()``, ``eval()``).

    Raises
    ------
    ValueError
        ``num_features`` is not a positive int; ``eps`` or ``momentum`` is out of range.
    TypeError
        ``channel_axis`` is not an int; ``dtype`` is not float32, float64, float16 or bfloat16.

    Notes
    -----
    The forward keeps a reference to its input for the backward: do not modify it in place between
    the two. ``layer.backward(grad_out)`` returns grad_x and stores ``grad_weight``/``grad_bias``
    (overwritten, not accumulated).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> bn = nb.BatchNorm(3, dtype=np.float64)
    >>> x = np.arange(12.0).reshape(2, 3, 2)
    >>> y = bn(x)  # training: batch statistics, running stats updated
    >>> print(bn.running_mean.round(4), int(bn.num_batches_tracked))
    [0.35 0.55 0.75] 1
    >>> print(bn.eval()(x)[0].round(3))
    [[-0.24   0.445]
     [ 0.993  1.677]
     [ 2.225  2.91 ]]
    >>> print(sorted(bn.state_dict()))
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, channel_axis: int = 1, dtype: DTypeLike = np.float32,
                 bias: bool = True) -> None:
        self.num_features = _positive_int(num_features, "num_features")
        self.channel_axis = _int_axis(channel_axis)
        self.eps = check_eps(eps)
        self.momentum = None if momentum is None else check_momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = _check_dtype(dtype)
        C = self.num_features
        self._init_affine((C,), self.affine, bias)
        self.running_mean: np.ndarray | None
        self.running_var: np.ndarray | None
        self.num_batches_tracked: np.ndarray | None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, self.dtype)
            self.running_var = np.ones(C, self.dtype)
            self.num_batches_tracked = np.zeros((), np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    _moved = _Norm._moved + ("running_mean", "running_var")

    def reset_running_stats(self) -> None:
        """Reset the running statistics (mean 0, variance 1, no batches tracked), in place."""
        rm, rv, tracked = self.running_mean, self.running_var, self.num_batches_tracked
        if self.track_running_stats and rm is not None and rv is not None and tracked is not None:
            self._fill(rm, 0)
            self._fill(rv, 1)
            tracked[...] = 0

    def reset_parameters(self) -> None:
        """Reset the running statistics and the parameters (weight 1, bias 0), in place."""
        self.reset_running_stats()
        super().reset_parameters()

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Normalize ``x``; in training also update the running statistics (torch's rule).

        Parameters
        ----------
        x : array_like
            ``(N, C, ...)`` (channels on ``channel_axis``) of the layer's dtype: a NumPy array, or a
            CUDA array once the layer is on the GPU.

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
        x = self._checked_input(x, "num_features")
        # the counter updated by this call (None: none; it exists when track_running_stats)
        tracked = self.num_batches_tracked if self.training and self.track_running_stats else None
        factor = 0.0
        if tracked is not None:
            n = int(tracked) + 1
            factor = 1.0 / n if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        # Counted only after batch_norm succeeded (it validates before it mutates anything).
        y, mean, invstd = batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                     training=use_batch_stats, momentum=factor, eps=self.eps,
                                     channel_axis=self.channel_axis, return_stats=True)
        if tracked is not None:
            tracked += 1
            self.num_batches_tracked = tracked
        weight = self._snapshot(self.weight)
        self._saved = (x, mean, invstd, weight, use_batch_stats)
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
        x, mean, invstd, weight, use_batch_stats = self._saved_or_raise()
        gx, gw, gb = batch_norm_backward(grad_out, x, mean, invstd, weight, use_batch_stats,
                                         channel_axis=self.channel_axis)
        return self._store_grads(gx, gw, gb)

    def _state_names(self) -> list[str]:
        names = super()._state_names()
        if self.track_running_stats:
            names += ["running_mean", "running_var", "num_batches_tracked"]
        return names

    def __repr__(self) -> str:
        extra = f", channel_axis={self.channel_axis}" if self.channel_axis != 1 else ""
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}{extra})")


class GroupNorm(_Norm):
    """Group normalization layer, as ``torch.nn.GroupNorm``.

    Per sample over each group of ``num_channels / num_groups`` channels; per-channel
    ``weight``/``bias``. Same in train and eval (no running statistics).

    Parameters
    ----------
    num_groups : int
        The number of groups: a positive divisor of ``num_channels``.
    num_channels : int
        C, the number of channels.
    eps : float, default 1e-5
        Added to the variance; positive and finite.
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros), shape (C,).
    channel_axis : int, default 1
        The channel axis of the inputs (``-1``: channels-last).
    dtype : dtype_like, default numpy.float32
        float32, float64, float16 or bfloat16 (trains in half precision): the dtype of the parameters and inputs.
    bias : bool, default True
        With ``affine``, ``bias=False`` keeps ``weight`` without ``bias``.

    Attributes
    ----------
    weight, bias : numpy.ndarray or None
        The affine parameters (None where absent).
    grad_weight, grad_bias : numpy.ndarray or None
        Set by ``backward``.

    Raises
    ------
    ValueError
        ``num_groups`` or ``num_channels`` is not a positive int, or does not divide it; ``eps``
        is out of range.
    TypeError
        ``channel_axis`` is not an int; ``dtype`` is not float32, float64, float16 or bfloat16.

    Notes
    -----
    The forward keeps a reference to its input for the backward: do not modify it in place between
    the two. ``layer.backward(grad_out)`` returns grad_x and stores ``grad_weight``/``grad_bias``
    (overwritten, not accumulated).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nb
    >>> layer = nb.GroupNorm(2, 4, dtype=np.float64)
    >>> print(layer(np.arange(16.0).reshape(2, 4, 2))[0].round(4))
    [[-1.3416 -0.4472]
     [ 0.4472  1.3416]
     [-1.3416 -0.4472]
     [ 0.4472  1.3416]]
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 channel_axis: int = 1, dtype: DTypeLike = np.float32, bias: bool = True) -> None:
        self.num_groups = _positive_int(num_groups, "num_groups")
        self.num_channels = _positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels must be divisible by num_groups, got {num_channels} and {num_groups}")
        self.channel_axis = _int_axis(channel_axis)
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        self.dtype = _check_dtype(dtype)
        self._init_affine((self.num_channels,), self.affine, bias)

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Normalize ``x`` per sample and group.

        Parameters
        ----------
        x : array_like
            ``(N, C, ...)`` (channels on ``channel_axis``) of the layer's dtype: a NumPy array, or a
            CUDA array once the layer is on the GPU.

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
        x = self._checked_input(x, "num_channels")
        y, mean, rstd = group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                   channel_axis=self.channel_axis, return_stats=True)
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
        return self._store_grads(*group_norm_backward(grad_out, x, self.num_groups, mean, rstd, weight,
                                                      channel_axis=self.channel_axis))

    def __repr__(self) -> str:
        extra = f", channel_axis={self.channel_axis}" if self.channel_axis != 1 else ""
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}{extra})")
