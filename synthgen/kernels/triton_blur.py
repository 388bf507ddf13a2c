"""Per-sample 1D passes along one axis (Triton): Gaussian blur with replicate borders, thick-slice resampling.

Blur (``synthgen.ops.blur``): ``y[i] = sum_t k_b[t] * g(x[clamp(i - r_b + t, 0, n - 1)])`` with sample ``b``'s
sampled Gaussian ``k_b`` of radius ``r_b`` (zero-padded to the batch's widest kernel) and ``g`` the identity or,
folded in from the previous stage, the per-sample gamma ``g(v) = clamp((v - lo) / span, 0, 1) ** gamma * span + lo``.

Resample (``thick_slices`` after its slice-profile blur): low-resolution samples ``L[k] = lerp(y, k r)`` for
``k < n_low``, then ``out[i] = lerp(L, min(i / r, n_low - 1))``; samples with ``r <= 1`` are copied.
"""
from __future__ import annotations

import triton
import triton.language as tl

BLOCK = 512


@triton.jit
def _gamma(v, lo, span, gamma):
    u = tl.minimum(tl.maximum((v - lo) / span, 0.0), 1.0)
    p = tl.where(u > 0, tl.exp2(gamma * tl.log2(tl.maximum(u, 1e-38))), 0.0)
    return p * span + lo


@triton.jit
def _blur_axis_kernel(x_ptr, y_ptr, k_ptr, kmax, rad_ptr, gam_ptr, N, n, stride, ntaps,
                      GAMMA: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    i = (offs // stride) % n
    base = offs - i * stride
    r = tl.load(rad_ptr + b)
    xb = x_ptr + b.to(tl.int64) * N
    kb = k_ptr + b * kmax
    if GAMMA:
        lo = tl.load(gam_ptr + b * 3)
        span = tl.load(gam_ptr + b * 3 + 1)
        gamma = tl.load(gam_ptr + b * 3 + 2)
    acc = tl.zeros([BLOCK], tl.float32)
    for t in range(0, ntaps):
        j = tl.minimum(tl.maximum(i - r + t, 0), n - 1)
        v = tl.load(xb + base + j * stride, mask=mask, other=0.0).to(tl.float32)
        if GAMMA:
            v = _gamma(v, lo, span, gamma)
        acc += tl.load(kb + t) * v
    tl.store(y_ptr + b.to(tl.int64) * N + offs, acc, mask=mask)


@triton.jit
def _lowres(yb, base, k, r, n, stride, mask):
    p = tl.minimum(k.to(tl.float32) * r, (n - 1).to(tl.float32))
    a0 = tl.minimum(tl.floor(p).to(tl.int32), n - 1)
    a1 = tl.minimum(a0 + 1, n - 1)
    f = p - a0.to(tl.float32)
    v0 = tl.load(yb + base + a0 * stride, mask=mask, other=0.0)
    v1 = tl.load(yb + base + a1 * stride, mask=mask, other=0.0)
    return v0 * (1.0 - f) + v1 * f


@triton.jit
def _resample_axis_kernel(x_ptr, y_ptr, r_ptr, nlow_ptr, N, n, stride, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    i = (offs // stride) % n
    base = offs - i * stride
    r = tl.load(r_ptr + b)
    xb = x_ptr + b.to(tl.int64) * N
    if r > 1.0:
        nlow = tl.load(nlow_ptr + b)
        pos = tl.minimum(i.to(tl.float32) / r, (nlow - 1).to(tl.float32))
        i0 = tl.minimum(tl.floor(pos).to(tl.int32), nlow - 1)
        i1 = tl.minimum(i0 + 1, nlow - 1)
        w = pos - i0.to(tl.float32)
        out = _lowres(xb, base, i0, r, n, stride, mask) * (1.0 - w) + _lowres(xb, base, i1, r, n, stride, mask) * w
    else:
        out = tl.load(xb + offs, mask=mask, other=0.0)
    tl.store(y_ptr + b.to(tl.int64) * N + offs, out, mask=mask)


def blur_axis(x, y, kernels, radius, axis, gamma=None):
    """``y`` = per-sample blur of ``x`` ``(B, D, H, W)`` along spatial ``axis``.

    Args:
        kernels: ``(B, kmax)`` float32 taps (sample b's ``2 radius[b] + 1`` first, zeros after).
        radius: ``(B,)`` int32.
        gamma: ``(B, 3)`` float32 (lo, span, gamma) applied to every input tap, or None.
    """
    B = x.shape[0]
    shape = x.shape[1:]
    N = shape[0] * shape[1] * shape[2]
    stride = (shape[1] * shape[2], shape[2], 1)[axis]
    grid = (triton.cdiv(N, BLOCK), B)
    _blur_axis_kernel[grid](x, y, kernels, kernels.shape[1], radius, gamma if gamma is not None else kernels,
                            N, shape[axis], stride, kernels.shape[1], GAMMA=gamma is not None, BLOCK=BLOCK)
    return y


def resample_axis(x, y, spacing, n_low, axis):
    """``y`` = thick-slice down/up-sampling of ``x`` ``(B, D, H, W)`` along ``axis``; ``spacing`` (B,) float32,
    ``n_low`` (B,) int32 low-resolution sample counts."""
    B = x.shape[0]
    shape = x.shape[1:]
    N = shape[0] * shape[1] * shape[2]
    stride = (shape[1] * shape[2], shape[2], 1)[axis]
    _resample_axis_kernel[(triton.cdiv(N, BLOCK), B)](x, y, spacing, n_low, N, shape[axis], stride, BLOCK=BLOCK)
    return y
