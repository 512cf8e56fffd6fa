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
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._backend import device_backend, is_device_array
from ._checks import as_float_array, check_channel_axis, check_eps, check_momentum, is_supported
from .backward import batch_norm_backward, group_norm_backward, layer_norm_backward, rms_norm_backward
from .family import group_norm, rms_norm
from .functional import batch_norm, layer_norm

__all__ = ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm"]


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, like torch: keys it did not find / did not expect."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class _Norm:
    """Shared state handling: train/eval, backward bookkeeping, state dicts."""

    training: bool
    dtype: np.dtype
    #: "cpu" (NumPy arrays) or "cuda" (numba device arrays); see ``to``.
    device: str = "cpu"
    #: The arrays that move with the layer (subclasses add their running statistics).
    _moved: tuple[str, ...] = ("weight", "bias", "grad_weight", "grad_bias")

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: ArrayLike) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def train(self, mode: bool = True) -> _Norm:
        self.training = bool(mode)
        return self

    def eval(self) -> _Norm:
        return self.train(False)

    def to(self, device: object) -> _Norm:
        """Move parameters, running statistics and grads to ``device``, in place, and return the
        layer (as torch's ``Module.to``): "cuda" (or "cuda:0", a torch.device) gives numba device
        arrays, "cpu" NumPy arrays. The saved forward is dropped: backward needs a new forward."""
        target = _device_name(device)
        if target != self.device:
            cuda = device_backend()  # a clear error without numba-cuda or a GPU
            move = cuda.to_device if target == "cuda" else cuda.to_host
            moved = {n: move(getattr(self, n)) for n in self._moved if getattr(self, n) is not None}
            for name, value in moved.items():  # assigned only once every copy succeeded
                setattr(self, name, value)
            self.device = target
            self._saved = None
        return self

    def cuda(self) -> _Norm:
        """``self.to("cuda")``."""
        return self.to("cuda")

    def cpu(self) -> _Norm:
        """``self.to("cpu")``."""
        return self.to("cpu")

    def _checked_input(self, x: ArrayLike, channels: str | None = None) -> np.ndarray:
        """x, on the layer's device with its dtype; with ``channels`` (the attribute holding the
        channel count) also that many channels on ``channel_axis`` (fewer than 2 dims: the
        functional op raises the error)."""
        x = self._placed_input(x)
        if channels is not None and x.ndim >= 2:
            axis = check_channel_axis(self.channel_axis, x.ndim)
            if x.shape[axis] != getattr(self, channels):
                raise ValueError(f"x has {x.shape[axis]} channels on axis {self.channel_axis} (shape {x.shape}), "
                                 f"expected {channels}={getattr(self, channels)}")
        return x

    def _placed_input(self, x: ArrayLike) -> np.ndarray:
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
            raise TypeError(f"x must have the layer's dtype {self.dtype}, got {x.dtype} "
                            f"(create the layer with dtype={x.dtype.name} or convert x)")
        return x

    def _snapshot(self, a):
        """A copy of parameter ``a`` for the backward (an update between the two must not leak in)."""
        if a is None:
            return None
        return device_backend().clone(a) if self.device == "cuda" else a.copy()

    def _fill(self, a, value: float) -> None:
        if self.device == "cuda" and is_device_array(a):
            device_backend().write(a, np.full(a.shape, value, a.dtype))
        else:
            a[...] = value

    def _init_affine(self, shape: tuple[int, ...], weight: bool, bias: bool) -> None:
        """Parameters weight = 1 / bias = 0 of ``shape`` (None where absent), and no grads yet."""
        self.weight = np.ones(shape, self.dtype) if weight else None
        self.bias = np.zeros(shape, self.dtype) if weight and bias else None
        self.training = True
        self.grad_weight: np.ndarray | None = None
        self.grad_bias: np.ndarray | None = None
        self._saved: tuple | None = None

    def reset_parameters(self) -> None:
        if self.weight is not None:
            self._fill(self.weight, 1)
        if self.bias is not None:
            self._fill(self.bias, 0)

    def _store_grads(self, gx: np.ndarray, gw: np.ndarray | None, gb: np.ndarray | None = None) -> np.ndarray:
        self.grad_weight = gw
        self.grad_bias = gb if self.bias is not None else None
        return gx

    def _saved_or_raise(self) -> tuple:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a forward call first: "
                               "call the layer on an input, then backward(grad_out)")
        return self._saved

    # ---- state dicts ------------------------------------------------------------------------
    def _state_names(self) -> list[str]:
        """Parameter names present (subclasses add their buffers)."""
        return [n for n in ("weight", "bias") if getattr(self, n) is not None]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers under torch's key names, as NumPy copies (on either device)."""
        return {name: self._host_copy(getattr(self, name)) for name in self._state_names()}

    def _host_copy(self, a) -> np.ndarray:
        if type(a) is not np.ndarray and is_device_array(a):
            return device_backend().to_host(a)
        return np.array(a)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values from ``state_dict`` (NumPy arrays, torch tensors, anything with ``__array__``).

        Shapes must match exactly. Floating values are cast to the layer's dtype, as torch's
        ``load_state_dict`` does; non-floating ones (integer ``num_batches_tracked`` aside) are a
        TypeError. With ``strict`` a missing or unexpected key is a ValueError. Everything is
        checked before anything is written, so a failed load leaves the layer as it was.
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
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
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
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0 for d in normalized_shape
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
    """Batch normalization layer, as ``torch.nn.BatchNorm{1,2,3}d`` (any rank; ``channel_axis=-1``
    for channels-last).

    ``momentum=None`` uses the cumulative moving average (``1 / num_batches_tracked``). In eval
    the running statistics are used, unless ``track_running_stats=False``: then there are none and
    batch statistics are used in both modes. ``bias=False`` (keyword, as in torch ≥ 2.13) keeps
    ``weight`` without ``bias``.
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
        if self.track_running_stats:
            self.running_mean = np.zeros(C, self.dtype)
            self.running_var = np.ones(C, self.dtype)
            self.num_batches_tracked = np.zeros((), np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    _moved = _Norm._moved + ("running_mean", "running_var")

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self._fill(self.running_mean, 0)
            self._fill(self.running_var, 1)
            self.num_batches_tracked[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        super().reset_parameters()

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Normalize ``x``; in training also update the running statistics (torch's rule)."""
        x = self._checked_input(x, "num_features")
        update = self.training and self.track_running_stats
        factor = 0.0
        if update:
            n = int(self.num_batches_tracked) + 1
            factor = 1.0 / n if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        # Counted only after batch_norm succeeded (it validates before it mutates anything).
        y, mean, invstd = batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                     training=use_batch_stats, momentum=factor, eps=self.eps,
                                     channel_axis=self.channel_axis, return_stats=True)
        if update:
            self.num_batches_tracked += 1
        weight = self._snapshot(self.weight)
        self._saved = (x, mean, invstd, weight, use_batch_stats)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        """grad_x for the last forward; stores ``grad_weight``/``grad_bias`` (None without them)."""
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
    """Layer normalization layer, as ``torch.nn.LayerNorm``, over the trailing ``normalized_shape``."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype: DTypeLike = np.float32) -> None:
        self.normalized_shape = _shape_arg(normalized_shape)
        self.eps = check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self._init_affine(self.normalized_shape, self.elementwise_affine, bias)

    def forward(self, x: ArrayLike) -> np.ndarray:
        x = self._checked_input(x)
        y, mean, rstd = layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, return_stats=True)
        weight = self._snapshot(self.weight)
        self._saved = (x, mean, rstd, weight)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        """grad_x for the last forward; stores ``grad_weight``/``grad_bias`` (None without them)."""
        x, mean, rstd, weight = self._saved_or_raise()
        gx, gw, gb = layer_norm_backward(grad_out, x, self.normalized_shape, mean, rstd, weight)
        return self._store_grads(gx, gw, gb)

    def __repr__(self) -> str:
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None})")


class RMSNorm(_Norm):
    """RMS normalization layer, as ``torch.nn.RMSNorm``, over the trailing ``normalized_shape``:
    ``y = x / sqrt(mean(x²) + eps) * weight``, no bias. ``eps=None``: the machine epsilon of the
    compute type (float32's, float64's for float64), as torch."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, *, dtype: DTypeLike = np.float32) -> None:
        self.normalized_shape = _shape_arg(normalized_shape)
        self.eps = None if eps is None else check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self._init_affine(self.normalized_shape, self.elementwise_affine, False)

    def forward(self, x: ArrayLike) -> np.ndarray:
        x = self._checked_input(x)
        y, rstd = rms_norm(x, self.normalized_shape, self.weight, self.eps, return_stats=True)
        weight = self._snapshot(self.weight)
        self._saved = (x, rstd, weight)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        """grad_x for the last forward; stores ``grad_weight`` (None without it; ``grad_bias`` is
        always None)."""
        x, rstd, weight = self._saved_or_raise()
        return self._store_grads(*rms_norm_backward(grad_out, x, self.normalized_shape, rstd, weight))

    def __repr__(self) -> str:
        return f"RMSNorm({self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine})"


class GroupNorm(_Norm):
    """Group normalization layer, as ``torch.nn.GroupNorm``: per sample over each group of
    ``num_channels / num_groups`` channels; per-channel ``weight``/``bias``. Same in train and eval
    (no running statistics). ``channel_axis=-1`` for channels-last input."""

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
        x = self._checked_input(x, "num_channels")
        y, mean, rstd = group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                   channel_axis=self.channel_axis, return_stats=True)
        weight = self._snapshot(self.weight)
        self._saved = (x, mean, rstd, weight)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        """grad_x for the last forward; stores ``grad_weight``/``grad_bias`` (None without them)."""
        x, mean, rstd, weight = self._saved_or_raise()
        return self._store_grads(*group_norm_backward(grad_out, x, self.num_groups, mean, rstd, weight,
                                                      channel_axis=self.channel_axis))

    def __repr__(self) -> str:
        extra = f", channel_axis={self.channel_axis}" if self.channel_axis != 1 else ""
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}{extra})")
