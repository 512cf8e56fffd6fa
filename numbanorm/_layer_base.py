"""The layers' common machinery: parameters, buffers, train/eval, devices and state dicts
(torch's keys and loading rules), behind the public classes of ``numbanorm.layers``."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._backend import device_backend, is_device_array
from ._checks import as_float_array, check_channel_axis, is_supported

if TYPE_CHECKING:
    from typing_extensions import Self


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
