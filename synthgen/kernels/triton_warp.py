"""Fused warp + sampling + GMM + bias (Triton): one pass from coarse grids and the tissue map to image and target.

Per output voxel ``x`` (batch index from the launch grid, parameters read from small per-sample tensors):

    c      = M (x - (S - 1) / 2) + center + sum_{64 taps} beta3 beta3 beta3 * elastic      (input voxels)
    p      = nearest(labels, c) one-hot | trilinear(probs, c) with the outside mass added to background
    I      = sum_k p_k (mu_k + sigma_k t)          t = texture * tex_scale (unit-variance texture)
    I      = I (1 - w) + (mu_L + sigma_L t) w      w = clamp(trilinear(lesion_int, c), 0, 1)
    I      = I * exp(sum_{64 taps} beta3 beta3 beta3 * bias)
    target = class(argmax p) (5 where trilinear(lesion_lab, c) > threshold), written at the flipped voxel

With ``MINMAX`` the kernel also stores per-block min/max partials of the image (the gamma stage needs the
per-sample range; no separate min/max pass). The texture and image may be float32 or float16.

The B-spline taps follow :mod:`synthgen.fields` (control point 0 on voxel 0, n-1 on voxel N-1, no prefilter,
half-sample-symmetric mirror), evaluated from the coarse coefficients instead of a dense field.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_reduce import MinMax, partial_minmax

BLOCK = 256


@triton.jit
def _mirror(i, n):
    # dct2 boundary; taps only reach -1 .. n + 1, so one reflection per side is enough
    i = tl.where(i < 0, -i - 1, i)
    i = tl.where(i >= n, 2 * n - 1 - i, i)
    return tl.where(n == 1, 0 * i, i)


@triton.jit
def _bspline_taps(x, scale, n):
    """Cubic B-spline weights and mirrored control indices of dense coordinate ``x`` (scale = (n-1)/(N-1))."""
    xc = x * scale
    base = tl.floor(xc)
    f = xc - base
    g = 1.0 - f
    w0 = g * g * g * (1.0 / 6.0)
    w1 = 2.0 / 3.0 - f * f + 0.5 * f * f * f
    w2 = 2.0 / 3.0 - g * g + 0.5 * g * g * g
    w3 = f * f * f * (1.0 / 6.0)
    bi = base.to(tl.int32)
    return (w0, w1, w2, w3), (_mirror(bi - 1, n), _mirror(bi, n), _mirror(bi + 1, n), _mirror(bi + 2, n))


@triton.jit
def _corner(cx, cy, cz, X, Y, Z, dx: tl.constexpr, dy: tl.constexpr, dz: tl.constexpr, mask):
    """Offset, weight and in-bounds mask of one trilinear corner (zero padding)."""
    x0 = tl.floor(cx)
    y0 = tl.floor(cy)
    z0 = tl.floor(cz)
    fx = cx - x0
    fy = cy - y0
    fz = cz - z0
    ix = x0.to(tl.int32) + dx
    iy = y0.to(tl.int32) + dy
    iz = z0.to(tl.int32) + dz
    wx = fx if dx == 1 else 1.0 - fx
    wy = fy if dy == 1 else 1.0 - fy
    wz = fz if dz == 1 else 1.0 - fz
    inb = (ix >= 0) & (ix < X) & (iy >= 0) & (iy < Y) & (iz >= 0) & (iz < Z) & mask
    return (ix * Y + iy) * Z + iz, wx * wy * wz, inb


@triton.jit
def _corners(cx, cy, cz, X, Y, Z, mask):
    """The 8 trilinear corners of each point, as :func:`_corner` gives them, computed once for every channel."""
    return (_corner(cx, cy, cz, X, Y, Z, 0, 0, 0, mask), _corner(cx, cy, cz, X, Y, Z, 0, 0, 1, mask),
            _corner(cx, cy, cz, X, Y, Z, 0, 1, 0, mask), _corner(cx, cy, cz, X, Y, Z, 0, 1, 1, mask),
            _corner(cx, cy, cz, X, Y, Z, 1, 0, 0, mask), _corner(cx, cy, cz, X, Y, Z, 1, 0, 1, mask),
            _corner(cx, cy, cz, X, Y, Z, 1, 1, 0, mask), _corner(cx, cy, cz, X, Y, Z, 1, 1, 1, mask))


@triton.jit
def _lerp(ptr, c):
    """Trilinear value of the volume at ``ptr`` at corners ``c`` (:func:`_corners`); zero outside."""
    v = c[0][1] * tl.load(ptr + c[0][0], mask=c[0][2], other=0.0).to(tl.float32)
    for i in tl.static_range(1, 8):
        v += c[i][1] * tl.load(ptr + c[i][0], mask=c[i][2], other=0.0).to(tl.float32)
    return v


@triton.jit
def _warp_kernel(tis_ptr, tis_bstride, X, Y, Z,
                 les_ptr, les_bstride, LX, LY, LZ, lox, loy, loz, threshold,
                 mat_ptr, ctr_ptr,
                 el_ptr, n1, n2, n3, es1, es2, es3,
                 bias_ptr, m1, m2, m3, bs1, bs2, bs3,
                 mu_ptr, sig_ptr, L,
                 tex_ptr, tscale_ptr, flip_ptr,
                 D, H, W,
                 img_ptr, tgt_ptr, pmin_ptr, pmax_ptr, nblk,
                 cls_ptr, lesion_class,
                 K: tl.constexpr, LABELS: tl.constexpr, LESION: tl.constexpr, BIAS: tl.constexpr,
                 MINMAX: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    N = D * H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    o = tl.minimum(offs, N - 1)            # masked lanes still index inside every table
    d = o // (H * W)
    h = (o // W) % H
    w = o % W
    fd = d.to(tl.float32)
    fh = h.to(tl.float32)
    fw = w.to(tl.float32)
    od = fd - (D - 1) * 0.5
    oh = fh - (H - 1) * 0.5
    ow = fw - (W - 1) * 0.5
    mb = mat_ptr + b * 9
    cb = ctr_ptr + b * 3
    cx = tl.load(mb + 0) * od + tl.load(mb + 1) * oh + tl.load(mb + 2) * ow + tl.load(cb + 0)
    cy = tl.load(mb + 3) * od + tl.load(mb + 4) * oh + tl.load(mb + 5) * ow + tl.load(cb + 1)
    cz = tl.load(mb + 6) * od + tl.load(mb + 7) * oh + tl.load(mb + 8) * ow + tl.load(cb + 2)

    # elastic displacement: 64 taps of the coarse grid, 3 components
    wa, ia = _bspline_taps(fd, es1, n1)
    wb, ib = _bspline_taps(fh, es2, n2)
    wc, ic = _bspline_taps(fw, es3, n3)
    nn = n1 * n2 * n3
    eb = el_ptr + b * 3 * nn
    ux = tl.zeros([BLOCK], tl.float32)
    uy = tl.zeros([BLOCK], tl.float32)
    uz = tl.zeros([BLOCK], tl.float32)
    for i in tl.static_range(4):
        for j in tl.static_range(4):
            wij = wa[i] * wb[j]
            row = (ia[i] * n2 + ib[j]) * n3
            for k in tl.static_range(4):
                wt = wij * wc[k]
                off = row + ic[k]
                ux += wt * tl.load(eb + off)
                uy += wt * tl.load(eb + nn + off)
                uz += wt * tl.load(eb + 2 * nn + off)
    cx += ux
    cy += uy
    cz += uz

    tb = tis_ptr + b.to(tl.int64) * tis_bstride
    mub = mu_ptr + b * L
    sgb = sig_ptr + b * L
    if LABELS:
        ix = tl.floor(cx + 0.5).to(tl.int32)
        iy = tl.floor(cy + 0.5).to(tl.int32)
        iz = tl.floor(cz + 0.5).to(tl.int32)
        inb = (ix >= 0) & (ix < X) & (iy >= 0) & (iy < Y) & (iz >= 0) & (iz < Z) & mask
        lab = tl.load(tb + (ix * Y + iy) * Z + iz, mask=inb, other=0).to(tl.int32)
        mean = tl.load(mub + lab, mask=mask, other=0.0)
        std = tl.load(sgb + lab, mask=mask, other=0.0)
        cls = tl.load(cls_ptr + lab, mask=mask, other=0).to(tl.int32)     # label -> target class
    else:
        XYZ = X * Y * Z
        corners = _corners(cx, cy, cz, X, Y, Z, mask)
        p0 = tl.zeros([BLOCK], tl.float32)
        total = tl.zeros([BLOCK], tl.float32)
        mean = tl.zeros([BLOCK], tl.float32)
        std = tl.zeros([BLOCK], tl.float32)
        best = tl.full([BLOCK], -1.0, tl.float32)
        cls = tl.zeros([BLOCK], tl.int32)
        for k in tl.static_range(K):
            pk = _lerp(tb + k * XYZ, corners)
            total += pk
            if k == 0:
                p0 = pk
            else:
                mean += pk * tl.load(mub + k)
                std += pk * tl.load(sgb + k)
                better = pk > best                      # strict: the first maximum wins, as torch.argmax
                cls = tl.where(better, k, cls)
                best = tl.where(better, pk, best)
        p0 = p0 + tl.maximum(1.0 - total, 0.0)          # outside the map is background
        mean += p0 * tl.load(mub)
        std += p0 * tl.load(sgb)
        cls = tl.where(p0 >= best, 0, cls)
        cls = tl.load(cls_ptr + cls, mask=mask, other=0).to(tl.int32)     # channel -> target class

    t = tl.load(tex_ptr + b.to(tl.int64) * N + o, mask=mask, other=0.0).to(tl.float32) * tl.load(tscale_ptr + b)
    img = mean + std * t
    if LESION:
        # the lesion weights cover the map box [lo, lo + (LX, LY, LZ)): zero outside it, as outside the map
        lb = les_ptr + b.to(tl.int64) * les_bstride
        XYZl = LX * LY * LZ
        lc = _corners(cx - lox, cy - loy, cz - loz, LX, LY, LZ, mask)
        wi = _lerp(lb, lc)
        wl = _lerp(lb + XYZl, lc)
        wi = tl.minimum(tl.maximum(wi, 0.0), 1.0)
        les = tl.load(mub + L - 1) + tl.load(sgb + L - 1) * t
        img = img * (1.0 - wi) + les * wi
        cls = tl.where(wl > threshold, lesion_class, cls)

    if BIAS:
        wa, ia = _bspline_taps(fd, bs1, m1)
        wb, ib = _bspline_taps(fh, bs2, m2)
        wc, ic = _bspline_taps(fw, bs3, m3)
        bb = bias_ptr + b * (m1 * m2 * m3)
        field = tl.zeros([BLOCK], tl.float32)
        for i in tl.static_range(4):
            for j in tl.static_range(4):
                wij = wa[i] * wb[j]
                row = (ia[i] * m2 + ib[j]) * m3
                for k in tl.static_range(4):
                    field += wij * wc[k] * tl.load(bb + row + ic[k])
        img = img * tl.exp(field)

    img = img.to(img_ptr.dtype.element_ty)
    tl.store(img_ptr + b.to(tl.int64) * N + o, img, mask=mask)
    if MINMAX:
        partial_minmax(img, mask, pmin_ptr, pmax_ptr, b, pid, nblk)
    fb = flip_ptr + b * 3
    td = tl.where(tl.load(fb) != 0, D - 1 - d, d)
    th = tl.where(tl.load(fb + 1) != 0, H - 1 - h, h)
    tw = tl.where(tl.load(fb + 2) != 0, W - 1 - w, w)
    tl.store(tgt_ptr + b.to(tl.int64) * N + (td * H + th) * W + tw, cls.to(tl.uint8), mask=mask)


def spline_scale(n_ctrl: int, n_out: int) -> float:
    """Control-grid units per dense voxel, as in :func:`synthgen.fields.bspline_matrix`."""
    return (n_ctrl - 1) / (n_out - 1) if n_out > 1 else 0.0


def warp_sample(args, minmax: bool = False):
    """Launch the fused warp over a batch (``args``: a :class:`synthgen.fast.WarpArgs`).

    Returns:
        With ``minmax``, the image's per-sample ``(min, max)``, each ``(B,)``; else None.
    """
    a = args
    B = a.image.shape[0]
    D, H, W = a.crop
    labels = not a.tissue.is_floating_point()
    n1, n2, n3 = a.elastic.shape[2:]
    m1, m2, m3 = a.bias.shape[2:] if a.bias is not None else (1, 1, 1)
    grid = (triton.cdiv(D * H * W, BLOCK), B)
    mm = MinMax(B, grid[0], a.image.device) if minmax else None
    lshape = a.lesion.shape[2:] if a.lesion is not None else (1, 1, 1)
    _warp_kernel[grid](
        a.tissue, a.tissue_bstride, *a.tissue.shape[2:],
        a.lesion if a.lesion is not None else a.image, a.lesion_bstride, *lshape, *a.lesion_offset,
        float(a.threshold),
        a.matrix, a.center,
        a.elastic, n1, n2, n3, spline_scale(n1, D), spline_scale(n2, H), spline_scale(n3, W),
        a.bias if a.bias is not None else a.elastic, m1, m2, m3,
        spline_scale(m1, D), spline_scale(m2, H), spline_scale(m3, W),
        a.mu, a.sigma, a.mu.shape[1],
        a.texture, a.tex_scale, a.flip,
        D, H, W, a.image, a.target,
        mm.pmin if mm else a.image, mm.pmax if mm else a.image, grid[0],
        a.classes, int(a.lesion_class),
        K=1 if labels else a.tissue.shape[1], LABELS=labels, LESION=a.lesion is not None, BIAS=a.bias is not None,
        MINMAX=minmax, BLOCK=BLOCK)
    return mm.result() if mm else None
