"""Per-sample 1D passes along one axis (Triton): Gaussian blur with replicate borders, thick-slice resampling.

Blur (``synthgen.ops.blur``): ``y[i] = sum_t k_b[t] * g(x[clamp(i - r_b + t, 0, n - 1)])`` with sample ``b``'s
sampled Gaussian ``k_b`` of radius ``r_b`` (zero-padded to the batch's widest kernel) and ``g`` the identity or,
folded in from the previous stage, the per-sample gamma ``g(v) = clamp((v - lo) / span, 0, 1) ** gamma * span + lo``.

Resample (``thick_slices`` after its motion blur + slice-profile kernel): low-resolution samples
``L[k] = lerp(y, k r)`` for ``k < n_low``, then ``out[i] = lerp(L, min(i / r, n_low - 1))``; samples with
``r <= 1`` are copied.

Either pass can finish with an :class:`Epilogue` instead of a pass of its own: the acquisition noise
(:func:`synthgen.kernels.triton_noise.noisy`) and per-block min/max partials of what it stores. Volumes may be
float32 or float16 (math in float32; the store rounds).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_noise import noisy
from .triton_reduce import MinMax, partial_minmax

BLOCK = 512


class Epilogue:
    """What an axis pass does to its output before storing it.

    Args:
        noise_std: ``(B,)`` float32 noise std per sample, or None for no noise.
        seeds: ``(B,)`` int64 Philox seeds (streams 1-2), used when ``normals`` is None.
        normals: two standard-normal volumes shaped like the output, instead of Philox (tests).
        rician: Rician (magnitude of complex Gaussian noise) or Gaussian noise.
        minmax: also record per-sample min/max; after the launch ``range`` holds ``(min, max)``, each ``(B,)``.
    """

    def __init__(self, noise_std=None, seeds=None, normals=None, rician: bool = True, minmax: bool = False):
        self.noise_std, self.seeds, self.normals, self.rician, self.minmax = noise_std, seeds, normals, rician, minmax
        self.range = None

    def launch_args(self, y):
        """(kernel arguments, constexprs, MinMax or None) for output ``y`` ``(B, ...)``."""
        B, N = y.shape[0], y[0].numel()
        noise = self.noise_std is not None
        philox = noise and self.normals is None
        n1, n2 = self.normals if noise and not philox else (y, y)
        mm = MinMax(B, triton.cdiv(N, BLOCK), y.device) if self.minmax else None
        args = (self.noise_std if noise else y, self.seeds if philox else y, n1, n2,
                mm.pmin if mm else y, mm.pmax if mm else y, mm.nblk if mm else 1)
        return args, dict(NOISE=noise, PHILOX=philox, RICIAN=self.rician, MINMAX=mm is not None), mm


_NONE = Epilogue()


@triton.jit
def _finish(v, y_ptr, b, pid, offs, mask, N, std_ptr, seed_ptr, n1_ptr, n2_ptr, pmin_ptr, pmax_ptr, nblk,
            NOISE: tl.constexpr, PHILOX: tl.constexpr, RICIAN: tl.constexpr, MINMAX: tl.constexpr):
    if NOISE:
        v = noisy(v, b, offs, mask, N, std_ptr, seed_ptr, n1_ptr, n2_ptr, PHILOX, RICIAN)
    v = v.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + b.to(tl.int64) * N + offs, v, mask=mask)
    if MINMAX:
        partial_minmax(v, mask, pmin_ptr, pmax_ptr, b, pid, nblk)


@triton.jit
def _gamma(v, lo, span, gamma):
    u = tl.minimum(tl.maximum((v - lo) / span, 0.0), 1.0)
    p = tl.where(u > 0, tl.exp2(gamma * tl.log2(tl.maximum(u, 1e-38))), 0.0)
    return p * span + lo


@triton.jit
def _blur_axis_kernel(x_ptr, y_ptr, k_ptr, kmax, rad_ptr, gam_ptr, N, n, stride,
                      std_ptr, seed_ptr, n1_ptr, n2_ptr, pmin_ptr, pmax_ptr, nblk,
                      GAMMA: tl.constexpr, NOISE: tl.constexpr, PHILOX: tl.constexpr, RICIAN: tl.constexpr,
                      MINMAX: tl.constexpr, BLOCK: tl.constexpr):
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
    for t in range(0, kmax):
        j = tl.minimum(tl.maximum(i - r + t, 0), n - 1)
        v = tl.load(xb + base + j * stride, mask=mask, other=0.0).to(tl.float32)
        if GAMMA:
            v = _gamma(v, lo, span, gamma)
        acc += tl.load(kb + t) * v
    _finish(acc, y_ptr, b, pid, offs, mask, N, std_ptr, seed_ptr, n1_ptr, n2_ptr, pmin_ptr, pmax_ptr, nblk,
            NOISE, PHILOX, RICIAN, MINMAX)


@triton.jit
def _lowres(yb, base, k, r, n, stride, mask):
    p = tl.minimum(k.to(tl.float32) * r, (n - 1).to(tl.float32))
    a0 = tl.minimum(tl.floor(p).to(tl.int32), n - 1)
    a1 = tl.minimum(a0 + 1, n - 1)
    f = p - a0.to(tl.float32)
    v0 = tl.load(yb + base + a0 * stride, mask=mask, other=0.0).to(tl.float32)
    v1 = tl.load(yb + base + a1 * stride, mask=mask, other=0.0).to(tl.float32)
    return v0 * (1.0 - f) + v1 * f


@triton.jit
def _resample_axis_kernel(x_ptr, y_ptr, r_ptr, nlow_ptr, N, n, stride,
                          std_ptr, seed_ptr, n1_ptr, n2_ptr, pmin_ptr, pmax_ptr, nblk,
                          NOISE: tl.constexpr, PHILOX: tl.constexpr, RICIAN: tl.constexpr, MINMAX: tl.constexpr,
                          BLOCK: tl.constexpr):
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
        out = tl.load(xb + offs, mask=mask, other=0.0).to(tl.float32)
    _finish(out, y_ptr, b, pid, offs, mask, N, std_ptr, seed_ptr, n1_ptr, n2_ptr, pmin_ptr, pmax_ptr, nblk,
            NOISE, PHILOX, RICIAN, MINMAX)


def _launch(kernel, x, y, axis, args, epilogue, **constexprs):
    B = x.shape[0]
    shape = x.shape[1:]
    N = shape[0] * shape[1] * shape[2]
    stride = (shape[1] * shape[2], shape[2], 1)[axis]
    ep = epilogue or _NONE
    ep_args, ep_flags, mm = ep.launch_args(y)
    kernel[(triton.cdiv(N, BLOCK), B)](x, y, *args, N, shape[axis], stride, *ep_args, **constexprs, **ep_flags,
                                       BLOCK=BLOCK)
    if mm is not None:
        ep.range = mm.result()
    return y


def blur_axis(x, y, kernels, radius, axis, gamma=None, epilogue: Epilogue | None = None):
    """``y`` = per-sample blur of ``x`` ``(B, D, H, W)`` along spatial ``axis``, then ``epilogue``.

    Args:
        kernels: ``(B, kmax)`` float32 taps (sample b's ``2 radius[b] + 1`` first, zeros after).
        radius: ``(B,)`` int32.
        gamma: ``(B, 3)`` float32 (lo, span, gamma) applied to every input tap, or None.
    """
    return _launch(_blur_axis_kernel, x, y, axis,
                   (kernels, kernels.shape[1], radius, gamma if gamma is not None else kernels), epilogue,
                   GAMMA=gamma is not None)


def resample_axis(x, y, spacing, n_low, axis, epilogue: Epilogue | None = None):
    """``y`` = thick-slice down/up-sampling of ``x`` ``(B, D, H, W)`` along ``axis``, then ``epilogue``;
    ``spacing`` (B,) float32, ``n_low`` (B,) int32 low-resolution sample counts."""
    return _launch(_resample_axis_kernel, x, y, axis, (spacing, n_low), epilogue)
