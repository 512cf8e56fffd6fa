"""numba.cuda kernels that GroupNorm / InstanceNorm add to the BatchNorm ones.

GroupNorm reuses ``bn_partials_kernel`` / ``bn_partials_cl_kernel`` batched over samples
(grid.z = N) for per-(n, c) partial moments, then ``group_finalize_kernel`` merges them per
(n, g) with Chan's formula in float64 and writes per-(n, c) normalize coefficients, which the
batched ``bn_normalize_kernel`` / ``bn_normalize_cl_kernel`` apply. InstanceNorm is GroupNorm
with G = C, plus ``instance_running_kernel`` for torch's running-stat update.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from ._kernels import _chan_add, _coefficients, _jit_device, _loader, _merge_partials, _np_float, _storer
from ._kernels_backward import _grad_sums


@_jit_device
def _group_channels(t, C, G):
    """Sample ``n`` and channels ``[c0, c1)`` of the (n, g) slot ``t = n*G + g``."""
    n = t // G
    cpg = C // G
    c0 = (t - n * G) * cpg
    return n, c0, c0 + cpg


@functools.cache
def group_finalize_kernel(acc: int, pio: str, has_w: bool, has_b: bool):
    """One thread per (n, g): merge the P partials of each of the group's channels, then the
    channels; write the group's mean/rstd (stats), the per-(n, c) float64 mean and M2 (for the
    InstanceNorm running stats) and the coefficients ``y = (x - shift)·scale + offset``."""
    ld_p = _loader(64, pio)
    A = _np_float(acc)

    @cuda.jit
    def kernel(part_n, part_mean, part_m2, P, C, G, w, b, eps, gmean_out, grstd_out, cmean, cm2,
               shift, scale, offset):
        t = cuda.grid(1)
        if t >= gmean_out.shape[0]:
            return
        n, c0, c1 = _group_channels(t, C, G)
        cnt = 0.0
        m = 0.0
        m2 = 0.0
        for c in range(c0, c1):  # each channel's partials, then the channel into the group (Chan)
            k = n * C + c
            cn, cmu, cv = _merge_partials(part_n, part_mean, part_m2, k, P)
            cmean[k] = cmu
            cm2[k] = cv
            cnt, m, m2 = _chan_add(cnt, m, m2, cn, cmu, cv)
        rstd = 1.0 / math.sqrt(m2 / cnt + eps)
        gmean_out[t] = m
        grstd_out[t] = rstd
        hi = A(m)
        for c in range(c0, c1):
            _coefficients(m, rstd, w, b, c, n * C + c, ld_p, hi, shift, scale, offset, has_w, has_b)

    return kernel


@functools.cache
def instance_running_kernel(rio: str):
    """One thread per channel: running = (1 - momentum)·running + momentum·(batch value averaged
    over the N samples), with the unbiased per-(n, c) variance, as torch's InstanceNorm."""
    ld_r, st_r = _loader(64, rio), _storer(rio)

    @cuda.jit
    def kernel(cmean, cm2, N, C, count, momentum, rmean, rvar):
        c = cuda.grid(1)
        if c >= C:
            return
        sm = 0.0
        sv = 0.0
        for n in range(N):
            sm += cmean[n * C + c]
            sv += cm2[n * C + c] / (count - 1.0)
        st_r(rmean, c, (1.0 - momentum) * ld_r(rmean, c) + momentum * (sm / N))
        st_r(rvar, c, (1.0 - momentum) * ld_r(rvar, c) + momentum * (sv / N))

    return kernel


@functools.cache
def group_grad_finalize_kernel(acc: int, pio: str, sio: str, has_w: bool):
    """GroupNorm backward, one thread per (n, g), after ``bn_grad_partials_kernel`` batched over
    samples: sum each channel's P partials (Σdy, Σdy·(x - hi)) in float64, write its grad_weight /
    grad_bias contributions ``pw``/``pb`` (per (n, c); ``ln_param_reduce_kernel`` sums them over
    n) and the coefficients of ``grad_x = p·dy - q·(x - hi) + r``. With g = dy·γ and M values per
    group: grad_x = rstd·(g - Σg/M - x̂·Σ(g·x̂)/M), as ``_engine_family.group_grad_coefficients``."""
    ld_p, ld_s = _loader(64, pio), _loader(64, sio)
    A = _np_float(acc)

    @cuda.jit
    def kernel(part_dy, part_dyx, P, C, G, mean, rstd, w, count, pw, pb, cp, chi, cq, cr):
        t = cuda.grid(1)
        if t >= mean.shape[0]:
            return
        n, c0, c1 = _group_channels(t, C, G)
        m = ld_s(mean, t)
        hi = np.float64(A(m))
        lo = m - hi  # the partials are centred on hi: Σdy·(x - m) = Σdy·(x - hi) - lo·Σdy
        s = ld_s(rstd, t)
        a = 0.0  # Σ γ·dy over the group
        b = 0.0  # Σ γ·dy·(x - mean) over the group
        for c in range(c0, c1):
            k = n * C + c
            s_dy, s_dyx = _grad_sums(part_dy, part_dyx, k, P, lo)
            pw[k] = s_dyx * s
            pb[k] = s_dy
            wc = 1.0
            if has_w:
                wc = ld_p(w, c)
            a += wc * s_dy
            b += wc * s_dyx
        M = count * (c1 - c0)
        q = s * s * s * b / M
        r = -s * a / M + q * lo  # -q·(x - mean) = -q·(x - hi) + q·lo
        for c in range(c0, c1):
            k = n * C + c
            wc = 1.0
            if has_w:
                wc = ld_p(w, c)
            cp[k] = s * wc
            chi[k] = hi
            cq[k] = q
            cr[k] = r

    return kernel
