"""Per-sample reductions and the final elementwise pass (Triton).

- min/max: one partial per block (:func:`partial_minmax`, in the epilogue of the pass that produces the volume),
  reduced by torch over the (B, blocks) partials (deterministic, no atomics).
- histogram quantiles: level 1 bins ``t = (x - lo) * NB / (hi - lo)`` into ``NB = 4096`` bins over [min, max];
  level 2 re-bins the voxels of one level-1 bin (``frac(t) * NB``) into NB sub-bins, so a quantile is located to
  one sub-bin: ``|q - torch.quantile| <= 2 (max - min) / NB**2`` (the 2 covers float32 rounding of ``t``);
  with level 1 alone the bound is ``(max - min) / NB``. Each program accumulates a histogram over ``CHUNK``
  voxels in registers and adds it with one vector atomic: atomics per voxel ``NB / CHUNK``.
- mean/std of the clipped, skull-stripped image: block sums and centred sums of squares, combined (Chan et al.)
  in float64 by torch.
- final: ``out[o] = (strip(clip(x[flip(o)])) - mean) / std`` in the output dtype; binary target if asked.
"""
from __future__ import annotations

import triton
import triton.language as tl

BLOCK = 1024
NBINS = 4096
HIST_ITERS = 16      # blocks per histogram program: CHUNK = 16 Ki voxels, 1/4 atomic per voxel


@triton.jit
def partial_minmax(v, mask, pmin_ptr, pmax_ptr, b, pid, nblk):
    """Store block ``pid``'s min and max of ``v`` at ``[b, pid]`` of the ``(B, nblk)`` partials; called in the
    epilogue of the pass that produces a volume, so no pass exists only for min/max."""
    v = v.to(tl.float32)
    tl.store(pmin_ptr + b * nblk + pid, tl.min(tl.where(mask, v, float("inf")), axis=0))
    tl.store(pmax_ptr + b * nblk + pid, tl.max(tl.where(mask, v, float("-inf")), axis=0))


@triton.jit
def _hist_kernel(x_ptr, lo_ptr, scale_ptr, sel_ptr, hist_ptr, N, iters,
                 S: tl.constexpr, LEVEL2: tl.constexpr, NB: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    lo = tl.load(lo_ptr + b)
    scale = tl.load(scale_ptr + b)
    xb = x_ptr + b.to(tl.int64) * N
    bins = tl.arange(0, NB)
    if LEVEL2:
        for s in tl.static_range(S):
            sel = tl.load(sel_ptr + b * S + s)
            h = tl.zeros([NB], tl.int32)
            for it in range(0, iters):
                offs = (pid * iters + it) * BLOCK + tl.arange(0, BLOCK)
                mask = offs < N
                x = tl.load(xb + offs, mask=mask, other=0.0).to(tl.float32)
                t = (x - lo) * scale
                b1 = tl.minimum(tl.maximum(tl.floor(t), 0.0), NB - 1.0)
                sub = tl.minimum(tl.maximum(tl.floor((t - b1) * NB), 0.0), NB - 1.0).to(tl.int32)
                h += tl.histogram(sub, NB, mask=mask & (b1.to(tl.int32) == sel))
            tl.atomic_add(hist_ptr + (b * S + s) * NB + bins, h)
    else:
        h = tl.zeros([NB], tl.int32)
        for it in range(0, iters):
            offs = (pid * iters + it) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < N
            x = tl.load(xb + offs, mask=mask, other=0.0).to(tl.float32)
            t = (x - lo) * scale
            b1 = tl.minimum(tl.maximum(tl.floor(t), 0.0), NB - 1.0).to(tl.int32)
            h += tl.histogram(b1, NB, mask=mask)
        tl.atomic_add(hist_ptr + b * NB + bins, h)


@triton.jit
def _flip_index(o, D, H, W, fb):
    d = o // (H * W)
    h = (o // W) % H
    w = o % W
    d = tl.where(tl.load(fb) != 0, D - 1 - d, d)
    h = tl.where(tl.load(fb + 1) != 0, H - 1 - h, h)
    w = tl.where(tl.load(fb + 2) != 0, W - 1 - w, w)
    return (d * H + h) * W + w


@triton.jit
def _stats_kernel(x_ptr, tgt_ptr, q_ptr, strip_ptr, flip_ptr, psum_ptr, pm2_ptr, D, H, W, nblk,
                  BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    N = D * H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    boff = b.to(tl.int64) * N
    x = tl.load(x_ptr + boff + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.maximum(tl.minimum(x, tl.load(q_ptr + b * 2 + 1)), tl.load(q_ptr + b * 2))
    # the target was written flipped: voxel s's brain label sits at flip(s)
    o = tl.minimum(offs, N - 1)
    brain = tl.load(tgt_ptr + boff + _flip_index(o, D, H, W, flip_ptr + b * 3), mask=mask, other=0) > 0
    keep = brain | (tl.load(strip_ptr + b) == 0)
    y = tl.where(keep & mask, y, 0.0)
    cnt = tl.minimum(N - pid * BLOCK, BLOCK).to(tl.float32)
    s = tl.sum(y, axis=0)
    m = s / cnt
    dev = tl.where(mask, y - m, 0.0)
    tl.store(psum_ptr + b * nblk + pid, s)
    tl.store(pm2_ptr + b * nblk + pid, tl.sum(dev * dev, axis=0))


@triton.jit
def _final_kernel(x_ptr, tgt_ptr, out_ptr, q_ptr, strip_ptr, flip_ptr, ms_ptr, D, H, W, lesion_class,
                  LESION_TARGET: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    N = D * H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    boff = b.to(tl.int64) * N
    o = tl.minimum(offs, N - 1)
    src = _flip_index(o, D, H, W, flip_ptr + b * 3)
    x = tl.load(x_ptr + boff + src, mask=mask, other=0.0).to(tl.float32)
    y = tl.maximum(tl.minimum(x, tl.load(q_ptr + b * 2 + 1)), tl.load(q_ptr + b * 2))
    t = tl.load(tgt_ptr + boff + offs, mask=mask, other=0)
    keep = (t > 0) | (tl.load(strip_ptr + b) == 0)
    y = tl.where(keep, y, 0.0)
    y = (y - tl.load(ms_ptr + b * 2)) * tl.load(ms_ptr + b * 2 + 1)
    tl.store(out_ptr + boff + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
    if LESION_TARGET:
        tl.store(tgt_ptr + boff + offs, (t == lesion_class).to(tl.uint8), mask=mask)


class MinMax:
    """Per-block min/max partials ``(B, nblk)`` that a kernel fills (:func:`partial_minmax`); :meth:`result`
    reduces them to per-sample ``(min, max)``, each ``(B,)``, on the device (no host sync)."""

    def __init__(self, B: int, nblk: int, device):
        import torch
        self.nblk = nblk
        self.pmin = torch.empty(B, nblk, device=device, dtype=torch.float32)
        self.pmax = torch.empty_like(self.pmin)

    def result(self):
        return self.pmin.amin(1), self.pmax.amax(1)


def histogram(x, lo, scale, select=None):
    """Level-1 ``(B, NBINS)`` histogram of ``t = (x - lo) * scale``, or level-2 ``(B, S, NBINS)`` sub-bin
    histograms of the voxels in level-1 bins ``select`` ``(B, S)`` int32."""
    import torch
    B = x.shape[0]
    N = x[0].numel()
    S = 1 if select is None else select.shape[1]
    hist = torch.zeros(B, S, NBINS, device=x.device, dtype=torch.int32)
    grid = (triton.cdiv(N, BLOCK * HIST_ITERS), B)
    _hist_kernel[grid](x, lo, scale, select if select is not None else hist, hist, N, HIST_ITERS,
                       S=S, LEVEL2=select is not None, NB=NBINS, BLOCK=BLOCK)
    return hist[:, 0] if select is None else hist


def clip_strip_stats(x, target, q, strip, flip, crop):
    """Per-sample partial ``(sum, centred sum of squares)`` ``(B, blocks)`` of the clipped, stripped image."""
    import torch
    B = x.shape[0]
    N = x[0].numel()
    nblk = triton.cdiv(N, BLOCK)
    psum = torch.empty(B, nblk, device=x.device, dtype=torch.float32)
    pm2 = torch.empty_like(psum)
    _stats_kernel[(nblk, B)](x, target, q, strip, flip, psum, pm2, *crop, nblk, BLOCK=BLOCK)
    return psum, pm2


def finalise(x, target, out, q, strip, flip, mean_inv_std, crop, lesion_target: bool, lesion_class: int = 5):
    """Write ``out`` (flipped, clipped, stripped, z-normalised) and, if asked, binarise ``target`` in place
    (lesion where it holds ``lesion_class``)."""
    B = x.shape[0]
    N = x[0].numel()
    _final_kernel[(triton.cdiv(N, BLOCK), B)](x, target, out, q, strip, flip, mean_inv_std, *crop, int(lesion_class),
                                              LESION_TARGET=lesion_target, BLOCK=BLOCK)
    return out
