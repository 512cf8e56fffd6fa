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

import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._backend import device_backend, is_device_array
from ._checks import as_float_array, check_channel_axis, check_eps, check_momentum, is_supported
from .backward import batch_norm_backward, group_norm_backward, layer_norm_backward, rms_norm_backward
from .family import group_norm, rms_norm
from .functional import batch_norm, layer_norm

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm"]


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, like torch: keys it did not find / did not expect."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class _Norm:
    """Shared state handling: train/eval, backward bookkeeping, state dicts."""

    training: bool
    dtype: np.dtype[Any]
    #: "cpu" (NumPy arrays) or "cuda" (numba device arrays); see ``to``.
    device: str = "cpu"
    #: The arrays that move with the layer (subclasses add their running statistics).
    _moved: tuple[str, ...] = ("weight", "bias", "grad_weight", "grad_bias")
    # Annotations only. The arrays are typed as on the host: after ``to("cuda")`` they are numba
    # device arrays (typed too as ndarrays, since NumPy's stubs are the types the API has).
    weight: np.ndarray | None
    bias: np.ndarray | None
    grad_weight: np.ndarray | None
    grad_bias: np.ndarray | None
    #: The channel axis (the layers that have one).
    channel_axis: int
    #: What the last forward saved for the backward (None: no forward since the last ``to``).
    _saved: tuple[Any, ...] | None

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """``self.forward(x)``.

        Parameters
        ----------
        x : array_like
            The input, as ``forward`` takes it.

        Returns
        -------
        numpy.ndarray
            ``forward(x)``.
        """
        return self.forward(x)

    def forward(self, x: ArrayLike) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def train(self, mode: bool = True) -> Self:
        """Set training mode (``mode=True``) or eval mode, as torch's ``Module.train``.

        Parameters
        ----------
        mode : bool, default True
            Training (batch statistics, running stats updated) or eval.

        Returns
        -------
        Self
            The layer.
        """
        self.training = bool(mode)
        return self

    def eval(self) -> Self:
        """``self.train(False)``: eval mode.

        Returns
        -------
        Self
            The layer.
        """
        return self.train(False)

    def to(self, device: object) -> Self:
        """Move the parameters, running statistics and grads to ``device``, in place, as torch's ``Module.to``.

        "cuda" gives numba device arrays, after which the layer takes CUDA arrays (numba, CuPy, torch);
        "cpu" gives NumPy arrays. The saved forward is dropped: backward needs a new forward.
        ``num_batches_tracked`` stays a host counter.

        Parameters
        ----------
        device : str or torch.device
            "cpu", "cuda" or "cuda:0" (numbanorm uses the current CUDA device), or a ``torch.device``
            that prints as one of them.

        Returns
        -------
        Self
            The layer.

        Raises
        ------
        ValueError
            ``device`` is not one of those.
        TypeError
            "cuda" without numba-cuda installed.
        RuntimeError
            "cuda" without a usable GPU.
        """
        target = _device_name(device)
        if target != self.device:
            cuda = device_backend(f"{type(self).__name__}.to({device!r})")  # a clear error without numba-cuda or a GPU
            move = cuda.to_device if target == "cuda" else cuda.to_host
            moved = {n: move(getattr(self, n)) for n in self._moved if getattr(self, n) is not None}
            for name, value in moved.items():  # assigned only once every copy succeeded
                setattr(self, name, value)
            self.device = target
            self._saved = None
        return self

    def cuda(self) -> Self:
        """``self.to("cuda")``.

        Returns
        -------
        Self
            The layer.

        Raises
        ------
        TypeError
            numba-cuda is not installed.
        RuntimeError
            No usable GPU.
        """
        return self.to("cuda")

    def cpu(self) -> Self:
        """``self.to("cpu")``.

        Returns
        -------
        Self
            The layer.
        """
        return self.to("cpu")

    def _checked_input(self, x: ArrayLike, channels: str | None = None) -> Any:
        """x, on the layer's device with its dtype; with ``channels`` (the attribute holding the
        channel count) also that many channels on ``channel_axis`` (fewer than 2 dims: the
        functional op raises the error)."""
        placed = self._placed_input(x)
        if channels is not None and placed.ndim >= 2:
            axis = check_channel_axis(self.channel_axis, placed.ndim)
            if placed.shape[axis] != getattr(self, channels):
                raise ValueError(f"x has {placed.shape[axis]} channels on axis {self.channel_axis} "
                                 f"(shape {placed.shape}), expected {channels}={getattr(self, channels)}")
        return placed

    def _placed_input(self, x: ArrayLike) -> Any:
        """x on the layer's device: a float ndarray of the layer's dtype, or the CUDA array as given
        (``Any``: no type covers both)."""
        on_device = type(x) is not np.ndarray and is_device_array(x)
        if on_device != (self.device == "cuda"):
            name = type(self).__name__
            if on_device:
                raise TypeError(f"x is a CUDA array but this {name}'s parameters are host arrays; move the "
                                f"layer first with layer.to('cuda'), or pass a NumPy array")
            raise TypeError(f"x is a host array but this {name} is on the GPU; pass a CUDA array, or move the "
                            f"layer back with layer.to('cpu')")
        if on_device:
            dtype = device_backend().dtype_name(x)
            if dtype != self.dtype.name:
                raise TypeError(f"x must have the layer's dtype {self.dtype}, got {dtype} "
                                f"(create the layer with dtype={dtype} or convert x)")
            return x
        x = as_float_array(x)
        if x.dtype != self.dtype:
            if x.ndim == 0:  # (a Python float is a float64 scalar: say what is wrong with it first)
                raise ValueError(f"x must have at least 1 dim, got a 0-d array (a scalar) for {type(self).__name__}")
            raise TypeError(f"x must have the layer's dtype {self.dtype}, got {x.dtype} "
                            f"(create the layer with dtype={x.dtype.name} or convert x)")
        return x

    def _snapshot(self, a: np.ndarray | None) -> np.ndarray | None:
        """A copy of parameter ``a`` for the backward (an update between the two must not leak in)."""
        if a is None:
            return None
        copy: np.ndarray = device_backend().clone(a) if self.device == "cuda" else a.copy()
        return copy

    def _fill(self, a: np.ndarray, value: float) -> None:
        if self.device == "cuda" and is_device_array(a):
            device_backend().write(a, np.full(a.shape, value, a.dtype))
        else:
            a[...] = value

    def _init_affine(self, shape: tuple[int, ...], weight: bool, bias: bool) -> None:
        """Parameters weight = 1 / bias = 0 of ``shape`` (None where absent), and no grads yet."""
        self.weight = np.ones(shape, self.dtype) if weight else None
        self.bias = np.zeros(shape, self.dtype) if weight and bias else None
        self.training = True
        self.grad_weight = None
        self.grad_bias = None
        self._saved = None

    def reset_parameters(self) -> None:
        """Reset ``weight`` to 1 and ``bias`` to 0 (and a BatchNorm's running statistics), in place."""
        if self.weight is not None:
            self._fill(self.weight, 1)
        if self.bias is not None:
            self._fill(self.bias, 0)

    def _store_grads(self, gx: np.ndarray, gw: np.ndarray | None, gb: np.ndarray | None = None) -> np.ndarray:
        self.grad_weight = gw
        self.grad_bias = gb if self.bias is not None else None
        return gx

    def _saved_or_raise(self) -> tuple[Any, ...]:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a forward call first: "
                               "call the layer on an input, then backward(grad_out)")
        return self._saved

    # ---- state dicts ------------------------------------------------------------------------
    def _state_names(self) -> list[str]:
        """Parameter names present (subclasses add their buffers)."""
        return [n for n in ("weight", "bias") if getattr(self, n) is not None]

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters and buffers under torch's key names, as NumPy copies (on either device).

        Returns
        -------
        dict of str to numpy.ndarray
            ``weight``, ``bias`` (those present) and, for a BatchNorm that tracks them,
            ``running_mean``, ``running_var`` and ``num_batches_tracked``.
        """
        return {name: self._host_copy(getattr(self, name)) for name in self._state_names()}

    def _host_copy(self, a: np.ndarray) -> np.ndarray:
        if type(a) is not np.ndarray and is_device_array(a):
            host: np.ndarray = device_backend().to_host(a)
            return host
        return np.array(a)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values from ``state_dict`` (NumPy arrays, torch tensors, anything with ``__array__``).

        Shapes must match exactly. Floating values are cast to the layer's dtype, as torch's
        ``load_state_dict`` does. Everything is checked before anything is written, so a failed load
        leaves the layer as it was. ``load_state_dict(torch_module.state_dict())`` works without
        numbanorm importing torch.

        Parameters
        ----------
        state_dict : mapping of str to array_like
            Values under torch's key names (``state_dict()``'s).
        strict : bool, default True
            Refuse a missing or unexpected key (a checkpoint without ``num_batches_tracked``, from
            before torch had it, still loads).

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, as torch returns them.

        Raises
        ------
        TypeError
            ``state_dict`` is not a mapping; a value cannot be converted, or is not floating point
            (``num_batches_tracked``: not an integer).
        ValueError
            With ``strict``, a missing or unexpected key; a value of the wrong shape.
        """
        if not isinstance(state_dict, Mapping) and not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
        names = self._state_names()
        keys = list(state_dict.keys())
        missing = [n for n in names if n not in keys]
        # Like torch, a checkpoint from before num_batches_tracked existed still loads.
        tolerated = [n for n in missing if n == "num_batches_tracked"]
        missing = [n for n in missing if n not in tolerated]
        unexpected = [k for k in keys if k not in names]
        if strict and (missing or unexpected):
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        staged = {}
        for name in names:
            if name in keys:
                staged[name] = self._converted(name, state_dict[name])
        for name, value in staged.items():
            target = getattr(self, name)
            if type(target) is not np.ndarray and is_device_array(target):
                device_backend().write(target, value)
            else:
                np.copyto(target, value, casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    def _converted(self, name: str, value: Any) -> np.ndarray:
        try:
            arr = np.asarray(value)
        except Exception as exc:  # e.g. a torch bfloat16 or CUDA tensor
            raise TypeError(f"state_dict[{name!r}] cannot be converted to a NumPy array: {exc}") from exc
        target = getattr(self, name)
        if arr.shape != target.shape:
            raise ValueError(f"state_dict[{name!r}] must have shape {target.shape}, got {arr.shape}")
        if name == "num_batches_tracked":
            if arr.dtype.kind not in "iu":
                raise TypeError(f"state_dict[{name!r}] must be an integer, got dtype {arr.dtype}")
        elif arr.dtype.kind != "f" and not is_supported(arr.dtype):  # (bfloat16's kind is "V")
            raise TypeError(f"state_dict[{name!r}] must be floating point (cast to {target.dtype}), "
                            f"got dtype {arr.dtype}")
        return arr.astype(target.dtype)


def _device_name(device: object) -> str:
    """"cpu" or "cuda" for a device given as a string or a torch.device (numbanorm uses the
    current CUDA device, so "cuda:N" is accepted for N = 0 only)."""
    name = str(device)
    if name == "cpu":
        return "cpu"
    if name in ("cuda", "cuda:0"):
        return "cuda"
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:0', got {device!r}")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _int_axis(channel_axis: object) -> int:
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
        raise TypeError(f"channel_axis must be an int, got {type(channel_axis).__name__}")
    return int(channel_axis)


def _shape_arg(normalized_shape: object) -> tuple[int, ...]:
    """A layer's ``normalized_shape`` (an int or a non-empty sequence of ints) as a tuple."""
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    if not isinstance(normalized_shape, Sequence) or not normalized_shape or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) >= 0 for d in normalized_shape
    ):
        raise TypeError(f"normalized_shape must be an int or a non-empty tuple of ints >= 0, "
                        f"got {normalized_shape!r}")
    return tuple(int(d) for d in normalized_shape)


def _check_dtype(dtype: DTypeLike) -> np.dtype:
    """A layer's dtype (of its parameters, buffers and inputs): float32, float64, float16, or
    ml_dtypes' bfloat16 (a half layer trains in half precision: its forward and backward compute
    in float32 with float64 sums, as the functional ops do)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not is_supported(dt):
        raise TypeError(f"dtype must be float32, float64, float16 or bfloat16, got {dtype!r}")
    return dt


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
        float32 or float64: the dtype of the parameters, statistics and inputs.
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
        ``channel_axis`` is not an int; ``dtype`` is not float32 or float64.

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
        float32 or float64: the dtype of the parameters and inputs.

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
        float32 or float64.
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
        float32 or float64: the dtype of the parameters and inputs.

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
        float32 or float64.
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
        float32 or float64: the dtype of the parameters and inputs.
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
        ``channel_axis`` is not an int; ``dtype`` is not float32 or float64.

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
