"""Separable Gaussian blurs and thick-slice simulation, per sample and per axis.

FWHM is in voxels; sigma = FWHM / sqrt(8 ln 2). Kernels are sampled Gaussians truncated at 3 sigma and
normalised to sum 1; borders replicate the edge voxel so that blurring does not darken the crop's faces.
"""
from __future__ import annotations

import math

import numpy as np
import torch

FWHM_PER_SIGMA = math.sqrt(8.0 * math.log(2.0))


def gaussian_kernel_table(*fwhms, truncate: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised sampled Gaussians of several FWHMs (voxels) at once, float64; with several FWHM lists,
    kernel i is the convolution of the Gaussians of ``fwhms[0][i], fwhms[1][i], ...`` (radii add).

    Returns:
        ``taps`` ``(n, 2 rmax + 1)``: kernel i's ``2 r_i + 1`` taps first, zeros after; ``radius`` ``(n,)`` int64.
        FWHM 0 gives the identity ``[1]``.
    """
    tables = []
    for values in fwhms:
        f = np.asarray(values, dtype=np.float64).reshape(-1)
        if not (np.isfinite(f).all() and (f >= 0).all()):
            raise ValueError(f"`fwhm` must be finite numbers >= 0, got {f.tolist()}")
        sigma = f / FWHM_PER_SIGMA
        radius = np.where(sigma > 0, np.ceil(truncate * sigma), 0).astype(np.int64)
        t = np.arange(2 * int(radius.max(initial=0)) + 1)
        x = (t[None, :] - radius[:, None]) / np.where(sigma > 0, sigma, 1.0)[:, None]
        k = np.where(t[None, :] <= 2 * radius[:, None], np.exp(-0.5 * x * x), 0.0)
        tables.append((k / k.sum(1, keepdims=True), radius))
    taps, radius = tables[0]
    for more, more_radius in tables[1:]:
        if len(more_radius) != len(radius):
            raise ValueError(f"FWHM lists must have one length, got {len(radius)} and {len(more_radius)}")
        total = radius + more_radius
        out = np.zeros((len(total), 2 * int(total.max(initial=0)) + 1))
        for i, (a, b) in enumerate(zip(radius, more_radius)):
            if b == 0:      # identity: keep the taps bit for bit
                out[i, :2 * a + 1] = taps[i, :2 * a + 1]
            else:
                out[i, :2 * (a + b) + 1] = np.convolve(taps[i, :2 * a + 1], more[i, :2 * b + 1])
        taps, radius = out, total
    return taps, radius


def gaussian_kernel1d(fwhm: float, truncate: float = 3.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised sampled Gaussian of the given FWHM (voxels); ``[1]`` for FWHM <= 0."""
    fwhm = float(fwhm)
    if fwhm < 0 or not math.isfinite(fwhm):
        raise ValueError(f"`fwhm` must be a finite number >= 0, got {fwhm}")
    taps, radius = gaussian_kernel_table([fwhm], truncate=truncate)
    return torch.from_numpy(taps[0, :2 * int(radius[0]) + 1]).to(dtype=dtype, device=device)


def _host_taps(*fwhms) -> list[float]:
    """The taps of :func:`gaussian_kernel_table` for one kernel (one FWHM per list), as host floats."""
    taps, radius = gaussian_kernel_table(*([float(f)] for f in fwhms))
    return taps[0, :2 * int(radius[0]) + 1].tolist()


def _conv_axis(x: torch.Tensor, weights, axis: int) -> torch.Tensor:
    """Convolve every channel of ``x`` ``(1, C, D, H, W)`` with a 1D kernel (host floats) along spatial ``axis``.

    Written as a sum of shifted copies of the edge-padded volume: for these single-channel volumes and short
    kernels that is 3-5x faster on CPU than conv1d/conv3d, and exact. The taps are host numbers, so nothing is
    read back from the device.
    """
    if len(weights) == 1:
        return x
    r = len(weights) // 2
    dim = 2 + axis
    n = x.shape[dim]
    edge = [r if d == dim else -1 for d in range(x.ndim)]
    padded = torch.cat([x.narrow(dim, 0, 1).expand(*edge), x, x.narrow(dim, n - 1, 1).expand(*edge)], dim)
    out = padded.narrow(dim, 0, n) * weights[0]
    for i in range(1, len(weights)):
        out.add_(padded.narrow(dim, i, n), alpha=weights[i])
    return out


def gaussian_blur(x: torch.Tensor, fwhm: torch.Tensor) -> torch.Tensor:
    """Blur each sample of ``x`` ``(B, C, D, H, W)`` with its own per-axis FWHM.

    Args:
        fwhm: ``(B, 3)`` (per axis) or ``(B,)`` (isotropic) FWHM in voxels; read on the host (give the host copy
            of device parameters: a device tensor is read back once).
    """
    if x.ndim != 5:
        raise ValueError(f"`x` must be (B, C, D, H, W), got shape {tuple(x.shape)}")
    fwhm = torch.as_tensor(fwhm).detach().cpu()
    fwhm = fwhm.reshape(x.shape[0], -1).expand(x.shape[0], 3) if fwhm.ndim <= 1 else fwhm
    if fwhm.shape != (x.shape[0], 3):
        raise ValueError(f"`fwhm` must be ({x.shape[0]},) or ({x.shape[0]}, 3), got shape {tuple(fwhm.shape)}")
    out = []
    for b, row in enumerate(fwhm.tolist()):
        y = x[b:b + 1]
        for axis in range(3):
            y = _conv_axis(y, _host_taps(row[axis]), axis)
        out.append(y)
    return torch.cat(out)


def _lerp_axis(x: torch.Tensor, pos: torch.Tensor, axis: int) -> torch.Tensor:
    """Linearly interpolate ``x`` (1, C, D, H, W) at fractional positions ``pos`` along spatial ``axis``."""
    dim = 2 + axis
    n = x.shape[dim]
    pos = pos.clamp(0, n - 1)
    i0 = pos.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    w = (pos - i0.to(pos.dtype)).to(x.dtype)
    shape = [1] * x.ndim
    shape[dim] = -1
    return x.index_select(dim, i0) * (1 - w).view(shape) + x.index_select(dim, i1) * w.view(shape)


def thick_slices(x: torch.Tensor, spacing: torch.Tensor, motion_fwhm: torch.Tensor | None = None) -> torch.Tensor:
    """Simulate the acquisition's blur and low through-plane resolution, axis by axis: blur with the motion
    blur Gaussian (``motion_fwhm``) convolved with, where ``r > 1``, a Gaussian slice profile of FWHM ``r``;
    then, where ``r > 1``, keep one sample every ``r`` voxels and interpolate back linearly.

    One composed kernel per axis is the two blurs applied one after the other, except within its radius of
    the crop's faces (replicate borders are applied once, not twice); the fast path runs one pass per axis.

    Args:
        x: ``(B, C, D, H, W)``.
        spacing: ``(B, 3)`` low-resolution voxel size per axis, in voxels (1 leaves the axis at full resolution).
        motion_fwhm: ``(B, 3)`` FWHM in voxels of the motion blur per axis, or None for none.
        Both are read on the host: give the host copies of device parameters (a device tensor is read back).
    """
    if spacing.shape != (x.shape[0], 3):
        raise ValueError(f"`spacing` must be ({x.shape[0]}, 3), got shape {tuple(spacing.shape)}")
    spacing_cpu = spacing.detach().cpu().double()      # the host copy decides kernels and grids: no sync
    if bool((spacing_cpu < 1).any()):
        raise ValueError(f"`spacing` must be >= 1, got {spacing_cpu.tolist()}")
    motion = torch.zeros(x.shape[0], 3) if motion_fwhm is None else motion_fwhm.detach().cpu()
    if motion.shape != (x.shape[0], 3):
        raise ValueError(f"`motion_fwhm` must be ({x.shape[0]}, 3), got shape {tuple(motion.shape)}")
    profile = torch.where(spacing_cpu > 1, spacing_cpu, torch.zeros_like(spacing_cpu))
    out = []
    for b in range(x.shape[0]):
        y = x[b:b + 1]
        for axis in range(3):
            y = _conv_axis(y, _host_taps(motion[b, axis], profile[b, axis]), axis)
            r = float(spacing_cpu[b, axis])
            if r <= 1.0:
                continue
            n = y.shape[2 + axis]
            low = torch.arange(0, n - 1 + 1e-6, r, dtype=torch.float64, device=x.device)
            y = _lerp_axis(y, low, axis)                                  # low-resolution slices
            up = torch.arange(n, dtype=torch.float64, device=x.device) / r
            y = _lerp_axis(y, up, axis)                                   # back on the output grid
        out.append(y)
    return torch.cat(out)
