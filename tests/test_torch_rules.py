"""Where torch has a rule for degenerate input, numbanorm follows it: on every path (serial and
parallel sizes, both layouts), with the answer torch gives.

* a group (GroupNorm) or a channel's spatial extent (InstanceNorm) of one value is refused;
* a channel holding ±inf gets a running mean of ±inf and a running variance of NaN.
"""

from __future__ import annotations

import numpy as np
import pytest

import numbanorm as nb


@pytest.mark.parametrize("shape,groups", [((1, 3), 3), ((2, 3), 3), ((1, 4, 1), 4), ((3, 6, 1, 1), 6)])
def test_group_norm_one_value_per_group_is_refused(shape, groups):
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per group"):
        nb.group_norm(x, groups)
    with pytest.raises(ValueError, match="Expected more than 1 value per group"):
        nb.GroupNorm(groups, shape[1])(x)


def test_group_norm_two_values_per_group_is_fine():
    x = np.array([[1.0, 3.0, 5.0, 9.0]], np.float32)
    np.testing.assert_allclose(nb.group_norm(x, 2), [[-1.0, 1.0, -1.0, 1.0]], atol=1e-4)


def test_torch_refuses_the_same_group_norm_case():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="more than 1 value"):
        torch.nn.functional.group_norm(torch.ones(1, 3), 3)


@pytest.mark.parametrize("shape", [(2, 3, 1), (4, 3, 1, 1)])
def test_instance_norm_one_spatial_value_is_refused(shape):
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        nb.instance_norm(x)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y = nb.instance_norm(x, rm, rv, use_input_stats=False)  # normalizing with the running stats is fine
    np.testing.assert_allclose(y, np.full(shape, 1 / np.sqrt(1 + 1e-5)), rtol=1e-6)


#: (N, C, H, W) sizes on the tiny entry, the serial path, and the parallel path (>= 2**16).
SIZES = [(2, 3, 8, 8), (8, 3, 32, 32), (64, 3, 32, 32)]
POSITIONS = {"first": (0, 1, 0, 0), "middle": (1, 1, 3, 5), "last": (-1, 1, -1, -1)}


def _with_inf(rng, shape, where, sign):
    x = rng.standard_normal(shape).astype(np.float32)
    x[POSITIONS[where]] = sign * np.inf
    return x


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["+inf", "-inf"])
@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("shape", SIZES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_running_stats_of_an_infinite_channel(rng, shape, where, sign, channels_last):
    x = _with_inf(rng, shape, where, sign)
    xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if channels_last else x
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, mean, _ = nb.batch_norm(xin, rm, rv, training=True, channel_axis=-1 if channels_last else 1,
                               return_stats=True)
    assert rm[1] == sign * np.inf and np.isnan(rv[1])
    assert mean[1] == sign * np.inf
    assert np.isfinite(rm[[0, 2]]).all() and np.isfinite(rv[[0, 2]]).all()
    y = np.moveaxis(y, -1, 1) if channels_last else y
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    torch = pytest.importorskip("torch")
    trm, trv = torch.zeros(3), torch.ones(3)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, training=True)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (16, 3, 64, 64)], ids=str)
def test_instance_norm_running_stats_of_an_infinite_channel(rng, shape, where):
    x = _with_inf(rng, shape, where, 1.0)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    nb.instance_norm(x, rm, rv)
    assert rm[1] == np.inf and np.isnan(rv[1]) and np.isfinite(rm[[0, 2]]).all()
    torch = pytest.importorskip("torch")
    trm, trv = torch.zeros(3), torch.ones(3)
    torch.nn.functional.instance_norm(torch.from_numpy(x), trm, trv, use_input_stats=True)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [4, 512])
def test_layer_norm_mean_of_a_row_starting_with_inf(rows, rng):
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    x[1, 0] = np.inf
    y, mean, rstd = nb.layer_norm(x, 256, return_stats=True)
    assert mean[1] == np.inf and np.isnan(rstd[1]) and np.isnan(y[1]).all()
    assert np.isfinite(mean[[0, 2]]).all()
    m = nb.moments(x, axis=1)
    assert m.mean[1] == np.inf and np.isnan(m.m2[1])


def test_merge_moments_with_an_infinite_part():
    a = nb.Moments(4.0, [np.inf, 1.0, np.inf], [np.nan, 0.5, np.nan])
    b = nb.Moments(4.0, [2.0, 3.0, -np.inf], [1.0, 0.5, np.nan])
    m = nb.merge_moments(a, b)
    assert m.mean[0] == np.inf and np.isnan(m.m2[0])
    assert m.mean[1] == 2.0 and m.m2[1] == 0.5 + 0.5 + 2.0 ** 2 * 4.0 * 4.0 / 8.0
    assert np.isnan(m.mean[2])
