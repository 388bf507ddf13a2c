"""Smooth random fields: a coarse grid of cubic B-spline coefficients evaluated on a dense grid.

The control grid spans the output grid corner to corner: control point 0 sits on voxel 0 and control point
n-1 on voxel N-1 (coordinate ``x_c = x * (n - 1) / (N - 1)``). Coefficients are used as they are (no spline
prefilter) and the boundary is mirrored half-sample-symmetrically (torch-interpol's ``dct2``), so
``smooth_field`` equals ``interpol.grid_pull(coeffs, grid, interpolation=3, bound='dct2')`` at those
coordinates. On a regular grid the tensor-product spline is separable: three small (N x n) weight matrices
applied along each axis, about ``n`` multiply-adds per output voxel instead of 64 taps.

Amplitude: without a prefilter the spline averages neighbouring coefficients, so a field of i.i.d. N(0, s^2)
coefficients has a standard deviation of only about ``0.35 s`` in 3D (per axis ``sum_k beta3(t - k)^2`` is 0.48
on average away from the borders, more near the mirrored ones). :func:`bspline_field_std` gives that factor
exactly for a control grid and a dense grid; every random field (elastic displacement, bias log-field, lesion
fading) divides its coefficients' std by it, so a configured std is the std of the field itself.
"""
from __future__ import annotations

import functools

import torch

from .device import to_device


def cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline basis beta3(t), support (-2, 2)."""
    a = t.abs()
    inner = 2.0 / 3.0 - a ** 2 + 0.5 * a ** 3
    outer = (2.0 - a).clamp(min=0) ** 3 / 6.0
    return torch.where(a < 1, inner, outer)


def _mirror_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Half-sample symmetric boundary (dct2): ... 1 0 | 0 1 ... n-1 | n-1 n-2 ..."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - 1 - i, i)


@functools.lru_cache(maxsize=64)
def _bspline_matrix_cpu(n_ctrl: int, n_out: int) -> torch.Tensor:
    x = torch.arange(n_out, dtype=torch.float64)
    xc = x * ((n_ctrl - 1) / (n_out - 1)) if n_out > 1 else torch.zeros(1, dtype=torch.float64)
    base = torch.floor(xc).long()
    weights = torch.zeros(n_out, n_ctrl, dtype=torch.float64)
    for offset in (-1, 0, 1, 2):
        idx = base + offset
        w = cubic_bspline(xc - idx.to(torch.float64))
        weights.index_put_((torch.arange(n_out), _mirror_index(idx, n_ctrl)), w, accumulate=True)
    return weights


def bspline_matrix(n_ctrl: int, n_out: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Weights ``(n_out, n_ctrl)`` such that ``field = W @ coeffs`` along one axis (uploaded without a host
    sync, on the caller's stream)."""
    return to_device(_bspline_matrix_cpu(int(n_ctrl), int(n_out)).to(dtype), torch.device(device or "cpu"))


@functools.lru_cache(maxsize=256)
def _bspline_axis_variance(n_ctrl: int, n_out: int) -> float:
    """Mean over the ``n_out`` positions of ``sum_k W[i, k]^2``: the variance of a 1D spline of i.i.d. unit
    coefficients, averaged along the axis (mirrored boundary coefficients counted once, with their summed
    weight)."""
    return float((_bspline_matrix_cpu(int(n_ctrl), int(n_out)) ** 2).sum(1).mean())


def bspline_field_std(n_ctrl, shape) -> float:
    """Standard deviation (root mean square over the grid) of :func:`smooth_field` with i.i.d. N(0, 1)
    coefficients on a control grid ``n_ctrl`` (one int or 3) spanning a dense grid ``shape``.

    At voxel ``(i, j, k)`` the field's variance is ``v1[i] v2[j] v3[k]`` with ``v[i] = sum_k W[i, k]^2`` per axis, so
    its mean over the grid is the product of the per-axis means, exactly. Divide a coefficient std by this to
    make it the field's std: 0.348 for 8 control points over 192 voxels per axis, 0.360 for 5 over 192.
    """
    n = (int(n_ctrl),) * len(shape) if isinstance(n_ctrl, (int, float)) else tuple(int(c) for c in n_ctrl)
    if len(n) != len(shape) or any(c < 1 for c in n) or any(int(s) < 1 for s in shape):
        raise ValueError(f"`n_ctrl` and `shape` must be positive sizes, one per axis, got {n_ctrl} and {tuple(shape)}")
    var = 1.0
    for c, s in zip(n, shape):
        var *= _bspline_axis_variance(c, int(s))
    return var ** 0.5


def smooth_field(coeffs: torch.Tensor, shape, region=None, channels_last: bool = False) -> torch.Tensor:
    """Evaluate cubic B-spline coefficients on a dense grid, or on a box of it.

    Args:
        coeffs: ``(B, C, n1, n2, n3)`` control-grid coefficients (each ``n >= 1``).
        shape: spatial size ``(D, H, W)`` of the grid the control points span.
        region: optional ``((lo, hi), (lo, hi), (lo, hi))`` voxel box: only it is evaluated.
        channels_last: return ``(B, D, H, W, C)`` (e.g. a displacement next to coordinates).

    Returns:
        ``(B, C, D, H, W)`` field (or the box's size), same dtype and device as ``coeffs``.
    """
    if coeffs.ndim != 5:
        raise ValueError(f"`coeffs` must be (B, C, n1, n2, n3), got shape {tuple(coeffs.shape)}")
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"`shape` must be 3 positive sizes, got {tuple(shape)}")
    dev, dt = coeffs.device, coeffs.dtype
    w1, w2, w3 = (bspline_matrix(n, s, dev, dt) for n, s in zip(coeffs.shape[2:], shape))
    if region is not None:
        w1, w2, w3 = (w[lo:hi] for w, (lo, hi) in zip((w1, w2, w3), region))
    # contract the smallest axes first: cost ~ N*n per output voxel along the last contraction
    out = torch.einsum("bcijk,zk->bcijz", coeffs, w3)
    out = torch.einsum("bcijz,yj->bciyz", out, w2)
    return torch.einsum("bciyz,xi->bxyzc" if channels_last else "bciyz,xi->bcxyz", out, w1)
