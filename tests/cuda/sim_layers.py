"""Layers on the GPU (``layer.to("cuda")``) under the simulator, side by side with the CPU layer:
a few training steps then eval, with running statistics, grads and state dicts; numba device
arrays only (no CuPy, no torch on the GPU).

Run by ``tests/test_cuda.py`` in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (see sim_kernels.py).
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported", allow_module_level=True)

import numpy as np  # noqa: E402
from simtools import close, dev, host, side_by_side, small_blocks  # noqa: E402, F401

import numbanorm as nb  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis,momentum", [((5, 3, 7), 1, 0.1), ((6, 5, 3), -1, None), ((9, 4), 1, 0.1)])
def test_batch_norm_layer_on_gpu(rng, dtype, shape, axis, momentum):
    C = shape[axis]
    cpu_layer = nb.BatchNorm(C, momentum=momentum, channel_axis=axis, dtype=dtype)
    gpu_layer = nb.BatchNorm(C, momentum=momentum, channel_axis=axis, dtype=dtype).to("cuda")
    assert gpu_layer.device == "cuda" and not isinstance(gpu_layer.running_mean, np.ndarray)
    side_by_side(rng, cpu_layer, gpu_layer, shape, dtype, offset=100.0)
    assert int(gpu_layer.num_batches_tracked) == int(cpu_layer.num_batches_tracked) == 2


def test_batch_norm_layer_without_affine_or_running_stats(rng):
    for kwargs in (dict(affine=False), dict(track_running_stats=False), dict(bias=False)):
        side_by_side(rng, nb.BatchNorm(3, **kwargs), nb.BatchNorm(3, **kwargs).cuda(), (6, 3, 5), np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", [((3, 2, 9), (9,)), ((2, 3, 5), (3, 5))])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_layer_on_gpu(rng, dtype, shape, ns, affine):
    side_by_side(rng, nb.LayerNorm(ns, elementwise_affine=affine, dtype=dtype),
                  nb.LayerNorm(ns, elementwise_affine=affine, dtype=dtype).to("cuda"), shape, dtype, offset=1e3)


def test_moving_back_and_forth_keeps_values(rng):
    layer = nb.BatchNorm(4)
    x = rng.standard_normal((8, 4, 3)).astype(np.float32)
    layer(x)
    layer.backward(np.ones_like(x))
    before = layer.state_dict()
    grad_w = layer.grad_weight.copy()
    assert layer.to("cuda:0") is layer and layer.device == "cuda"
    close(layer.grad_weight, grad_w, 0)  # grads move with their parameters
    with pytest.raises(RuntimeError, match="needs a forward call first"):  # the saved forward is dropped
        layer.backward(dev(np.ones_like(x)))
    assert layer.cpu() is layer and layer.device == "cpu" and type(layer.running_var) is np.ndarray
    for k, v in layer.state_dict().items():
        assert np.array_equal(v, before[k])
    layer.to("cpu")  # a no-op
    with pytest.raises(ValueError, match="device must be"):
        layer.to("cuda:1")


def test_reset_and_load_state_dict_on_gpu(rng):
    layer = nb.BatchNorm(3).to("cuda")
    layer(dev(rng.standard_normal((4, 3, 5)).astype(np.float32) + 3))
    assert not np.all(host(layer.running_mean) == 0)
    state = {k: rng.standard_normal(np.shape(v)).astype(np.float64) for k, v in layer.state_dict().items()}
    state["num_batches_tracked"] = np.array(7)
    layer.load_state_dict(state)  # float64 values cast to the layer's float32
    for k in ("weight", "bias", "running_mean", "running_var"):
        close(getattr(layer, k), state[k].astype(np.float32), 0)
    assert int(layer.num_batches_tracked) == 7
    layer.reset_parameters()
    assert np.all(host(layer.weight) == 1) and np.all(host(layer.bias) == 0)
    assert np.all(host(layer.running_mean) == 0) and np.all(host(layer.running_var) == 1)


def test_host_and_device_mixing_is_a_clear_error(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    with pytest.raises(TypeError, match=r"x is a CUDA array.*layer.to\('cuda'\)"):
        nb.BatchNorm(3)(dev(x))
    with pytest.raises(TypeError, match=r"x is a host array.*layer.to\('cpu'\)"):
        nb.LayerNorm(5).to("cuda")(x)
    layer = nb.LayerNorm(5).to("cuda")
    layer(dev(x))
    with pytest.raises(TypeError, match="host and device arrays cannot be mixed"):
        layer.backward(np.ones_like(x))
    with pytest.raises(TypeError, match="layer's dtype float32, got float64"):
        layer(dev(x.astype(np.float64)))


def test_failed_calls_leave_the_gpu_layer_unchanged(rng):
    layer = nb.BatchNorm(3).to("cuda")
    layer(dev(rng.standard_normal((4, 3, 5)).astype(np.float32)))
    before = layer.state_dict()
    for bad in (rng.standard_normal((4, 2, 5)), rng.standard_normal((1, 3))):  # wrong C; one value per channel
        with pytest.raises(ValueError):
            layer(dev(bad.astype(np.float32)))
    with pytest.raises(ValueError, match="shape"):
        layer.load_state_dict({**before, "running_var": np.ones(4, np.float32)})
    with pytest.raises(TypeError, match="floating point"):
        layer.load_state_dict({**before, "weight": np.ones(3, np.int32)})
    for k, v in layer.state_dict().items():
        assert np.array_equal(v, before[k]), k
