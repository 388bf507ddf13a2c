"""Geometry: one affine + elastic transform, driven by the output grid, shared by every channel.

For output voxel ``x`` of a crop of size ``S`` the input voxel is
``M @ (x - (S - 1) / 2) + center + u(x)`` where ``u`` is the cubic B-spline displacement evaluated on the output
grid. Only output voxels are ever computed: the crop is chosen first (``center``), never cut from a full volume.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fields import smooth_field


def affine_elastic_coords(out_shape, matrix: torch.Tensor, center: torch.Tensor,
                          elastic: torch.Tensor | None = None) -> torch.Tensor:
    """Input voxel coordinates of every output voxel.

    Args:
        out_shape: output spatial size ``(D, H, W)``.
        matrix: ``(B, 3, 3)`` linear map from output-voxel offsets (about the crop centre) to input offsets.
        center: ``(B, 3)`` input voxel coordinates of the crop centre.
        elastic: ``(B, 3, n, n, n)`` B-spline coefficients of the displacement in input voxels, or None.

    Returns:
        ``(B, D, H, W, 3)`` float32 coordinates on ``center``'s device.
    """
    if matrix.ndim != 3 or matrix.shape[1:] != (3, 3):
        raise ValueError(f"`matrix` must be (B, 3, 3), got shape {tuple(matrix.shape)}")
    if center.shape != (matrix.shape[0], 3):
        raise ValueError(f"`center` must be ({matrix.shape[0]}, 3), got shape {tuple(center.shape)}")
    dev = center.device
    axes = [torch.arange(n, device=dev, dtype=torch.float32) - (n - 1) / 2 for n in out_shape]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)          # (D, H, W, 3)
    coords = torch.einsum("dhwj,bij->bdhwi", offsets, matrix.to(dev, torch.float32))
    coords = coords + center.to(dev, torch.float32)[:, None, None, None, :]
    if elastic is not None:
        disp = smooth_field(elastic.to(dev, torch.float32), out_shape)          # (B, 3, D, H, W)
        coords = coords + disp.permute(0, 2, 3, 4, 1)
    return coords


def grid_pull(volume: torch.Tensor, coords: torch.Tensor, mode: str = "linear") -> torch.Tensor:
    """Sample ``volume`` ``(B, C, X, Y, Z)`` at voxel coordinates ``coords`` ``(B, ..., 3)``; zero outside.

    Args:
        mode: "linear" (trilinear; probabilities, images) or "nearest" (labels, returned in the input dtype).

    Returns:
        ``(B, C, ...)`` with the spatial shape of ``coords``.
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"`mode` must be 'linear' or 'nearest', got {mode!r}")
    if volume.ndim != 5:
        raise ValueError(f"`volume` must be (B, C, X, Y, Z), got shape {tuple(volume.shape)}")
    if coords.shape[0] != volume.shape[0] or coords.shape[-1] != 3:
        raise ValueError(f"`coords` must be ({volume.shape[0]}, ..., 3), got shape {tuple(coords.shape)}")
    src_dtype = volume.dtype
    # only the box the coordinates reach is converted and sampled (a crop reads a fraction of the map)
    lo = coords.reshape(-1, 3).amin(0).floor().long() - 1
    hi = coords.reshape(-1, 3).amax(0).ceil().long() + 2
    lo = [max(int(v), 0) for v in lo]
    hi = [min(int(v), n) for v, n in zip(hi, volume.shape[2:])]
    if any(h <= l for l, h in zip(lo, hi)):          # every point is outside the map
        shape = (*volume.shape[:2], *coords.shape[1:-1])
        keep = mode == "nearest" or volume.is_floating_point()
        return torch.zeros(shape, dtype=src_dtype if keep else torch.float32, device=volume.device)
    volume = volume[..., lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    coords = coords - torch.tensor(lo, dtype=coords.dtype, device=coords.device)
    vol = volume if volume.is_floating_point() else volume.to(torch.float32)
    size = torch.tensor(volume.shape[2:], dtype=torch.float32, device=coords.device)
    # grid_sample wants (x, y, z) = (last, middle, first) axis, normalised for align_corners=True
    norm = (coords.to(torch.float32) * (2.0 / (size - 1).clamp(min=1)) - 1.0).flip(-1)
    grid = norm if coords.ndim == 5 else norm.reshape(coords.shape[0], -1, 1, 1, 3)
    out = F.grid_sample(vol, grid.to(vol.dtype), mode="bilinear" if mode == "linear" else "nearest",
                        padding_mode="zeros", align_corners=True)
    out = out.reshape(*volume.shape[:2], *coords.shape[1:-1])
    return out.to(src_dtype) if mode == "nearest" else out


def flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip each sample of ``x`` ``(B, ..., D, H, W)`` along the spatial axes where ``flips`` ``(B, 3)`` is true."""
    if flips.shape != (x.shape[0], 3):
        raise ValueError(f"`flips` must be ({x.shape[0]}, 3), got shape {tuple(flips.shape)}")
    out = []
    for b in range(x.shape[0]):
        dims = [x.ndim - 3 + a for a in range(3) if bool(flips[b, a])]
        out.append(torch.flip(x[b:b + 1], dims) if dims else x[b:b + 1])
    return torch.cat(out)
