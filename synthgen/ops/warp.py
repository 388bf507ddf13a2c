"""Geometry: one affine + elastic transform, driven by the output grid, shared by every channel.

For output voxel ``x`` of a crop of size ``S`` the input voxel is
``M @ (x - (S - 1) / 2) + center + u(x)`` where ``u`` is the cubic B-spline displacement evaluated on the output
grid. Only output voxels are ever computed: the crop is chosen first (``center``), never cut from a full volume.
:func:`output_affine` gives the output grid's voxel -> world affine from the input's (the affine part exactly).
"""
from __future__ import annotations

import numpy as np
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
    B = matrix.shape[0]
    m = matrix.to(dev, torch.float32)
    c = center.to(dev, torch.float32)
    axes = [torch.arange(n, device=dev, dtype=torch.float32) - (n - 1) / 2 for n in out_shape]
    coords = torch.empty(B, *out_shape, 3, device=dev, dtype=torch.float32)
    for i in range(3):
        # row i of the affine is a sum of three 1D ramps: broadcast, never a (D, H, W, 3) matrix product
        coords[..., i] = (m[:, i, 0, None, None, None] * axes[0][:, None, None]
                          + m[:, i, 1, None, None, None] * axes[1][None, :, None]
                          + (m[:, i, 2, None, None, None] * axes[2][None, None, :] + c[:, i, None, None, None]))
    if elastic is not None:
        coords += smooth_field(elastic.to(dev, torch.float32), out_shape, channels_last=True)
    return coords


def reach_box(out_shape, matrix: torch.Tensor, center: torch.Tensor, elastic: torch.Tensor | None, in_shape,
              margin: int = 2):
    """The voxel box ``(lo, hi)`` of an input grid that :func:`affine_elastic_coords` can reach, for a batch.

    The affine image of the crop's corners, grown by the largest elastic displacement (a cubic B-spline never
    exceeds its largest coefficient) and by ``margin`` voxels (trilinear neighbours), united over the batch and
    clipped to ``in_shape``; None when it misses the grid. Computed from the host copies of the parameters.
    """
    m, c = matrix.detach().to("cpu", torch.float64), center.detach().to("cpu", torch.float64)
    half = torch.tensor([(n - 1) / 2 for n in out_shape], dtype=torch.float64)
    signs = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float64)
    pts = (signs * half) @ m.transpose(1, 2) + c[:, None, :]                    # (B, 8, 3)
    bound = torch.zeros_like(c)
    if elastic is not None:
        bound = elastic.detach().to("cpu", torch.float64).abs().amax(dim=(2, 3, 4))
    lo = torch.floor(pts.amin(1) - bound).amin(0) - margin
    hi = torch.ceil(pts.amax(1) + bound).amax(0) + 1 + margin
    lo = [max(int(v), 0) for v in lo]
    hi = [min(int(v), int(n)) for v, n in zip(hi, in_shape)]
    if any(b <= a for a, b in zip(lo, hi)):
        return None
    return tuple(lo), tuple(hi)


def output_affine(matrix: torch.Tensor, center: torch.Tensor, flips: torch.Tensor | None, out_shape,
                  affine=None) -> torch.Tensor:
    """Voxel -> world affine of each output grid, from the input's voxel -> world ``affine``.

    Output voxel ``o`` (after the flips) samples input voxel ``M F (o - (S - 1) / 2) + center`` (+ the elastic
    displacement), ``F = diag(-1 if flipped else 1)``: a flip of output axis ``a`` maps ``o_a`` to
    ``S_a - 1 - o_a``, i.e. negates column ``a`` of ``M`` about the crop centre. So the output affine is
    ``affine @ [[M F, center - M F (S - 1) / 2], [0, 1]]``. It is exact for the affine part; the elastic part
    is a displacement about it (``affine[:3, :3] @ u`` in mm, at most a few mm with the paper's ranges).

    Args:
        matrix: ``(B, 3, 3)`` output offsets -> input offsets (voxels), as :class:`~synthgen.SampleParams`.
        center: ``(B, 3)`` input voxel at the crop centre.
        flips: ``(B, 3)`` bool, output axes flipped after the warp (None: no flips).
        out_shape: the output's spatial size ``(D, H, W)``.
        affine: the input's ``(4, 4)`` (or ``(B, 4, 4)``) voxel -> world affine; None: identity (the result is
            then the output -> input voxel map).

    Returns:
        ``(B, 4, 4)`` float64 on the CPU.

    Raises:
        ValueError: wrong shapes.
    """
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    if m.ndim != 3 or m.shape[1:] != (3, 3):
        raise ValueError(f"`matrix` must be (B, 3, 3), got shape {tuple(m.shape)}")
    B = m.shape[0]
    c = torch.as_tensor(center).detach().to("cpu", torch.float64)
    if c.shape != (B, 3):
        raise ValueError(f"`center` must be ({B}, 3), got shape {tuple(c.shape)}")
    size = tuple(int(s) for s in out_shape)
    if len(size) != 3:
        raise ValueError(f"`out_shape` must be 3 sizes (D, H, W), got {out_shape}")
    sign = torch.ones(B, 3, dtype=torch.float64)
    if flips is not None:
        f = torch.as_tensor(flips).detach().to("cpu", torch.bool)
        if f.shape != (B, 3):
            raise ValueError(f"`flips` must be ({B}, 3), got shape {tuple(f.shape)}")
        sign = torch.where(f, -sign, sign)
    mf = m * sign[:, None, :]                                   # M F: column a negated where axis a flips
    half = torch.tensor([(s - 1) / 2 for s in size], dtype=torch.float64)
    vox2vox = torch.eye(4, dtype=torch.float64).repeat(B, 1, 1)
    vox2vox[:, :3, :3] = mf
    vox2vox[:, :3, 3] = c - mf @ half
    if affine is None:
        return vox2vox
    a = torch.as_tensor(np.asarray(affine, dtype=np.float64) if not isinstance(affine, torch.Tensor)
                        else affine.detach().to("cpu", torch.float64))
    if a.shape not in ((4, 4), (B, 4, 4)):
        raise ValueError(f"`affine` must be (4, 4) or ({B}, 4, 4), got shape {tuple(a.shape)}")
    return a.to(torch.float64) @ vox2vox


def seeing_box(out_shape, matrix: torch.Tensor, center: torch.Tensor, elastic: torch.Tensor | None, lo, hi,
               margin: int = 2) -> list:
    """Per sample, the box ``(o_lo, o_hi)`` of output voxels whose coordinates (:func:`affine_elastic_coords`) can
    land in the input box ``[lo, hi)``, or None: the inverse affine of the box grown by the largest elastic
    displacement and ``margin`` voxels, clipped to the output. The dual of :func:`reach_box`; host copies of the
    parameters only."""
    m, c = matrix.detach().to("cpu", torch.float64), center.detach().to("cpu", torch.float64)
    half = torch.tensor([(n - 1) / 2 for n in out_shape], dtype=torch.float64)
    bound = torch.zeros_like(c)
    if elastic is not None:
        bound = elastic.detach().to("cpu", torch.float64).abs().amax(dim=(2, 3, 4))
    signs = torch.tensor([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=torch.float64)
    out = []
    for b in range(m.shape[0]):
        grow = bound[b] + margin
        a = torch.tensor(lo, dtype=torch.float64) - grow
        z = torch.tensor(hi, dtype=torch.float64) - 1 + grow
        corners = a + signs * (z - a)                                        # (8, 3) input voxels
        o = (corners - c[b]) @ torch.linalg.inv(m[b]).T + half              # output voxels
        o_lo = [max(int(v), 0) for v in torch.floor(o.amin(0))]
        o_hi = [min(int(v), int(n)) for v, n in zip(torch.ceil(o.amax(0)) + 1, out_shape)]
        out.append((tuple(o_lo), tuple(o_hi)) if all(h > l_ for l_, h in zip(o_lo, o_hi)) else None)
    return out


def grid_pull(volume: torch.Tensor, coords: torch.Tensor, mode: str = "linear", reach="read") -> torch.Tensor:
    """Sample ``volume`` ``(B, C, X, Y, Z)`` at voxel coordinates ``coords`` ``(B, ..., 3)``; zero outside.

    Args:
        mode: "linear" (trilinear; probabilities, images) or "nearest" (labels, returned in the input dtype).
        reach: the input box ``(lo, hi)`` the coordinates can reach, known on the host (:func:`reach_box`), or
            None when they reach nothing; "read" (the default when omitted) finds it from ``coords``, which
            reads the device back.

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
    if isinstance(reach, str) and reach == "read":
        cmin, cmax = torch.aminmax(coords.reshape(-1, 3), dim=0)
        lo = cmin.floor().long() - 1
        hi = cmax.ceil().long() + 2
        lo = [max(int(v), 0) for v in lo]
        hi = [min(int(v), n) for v, n in zip(hi, volume.shape[2:])]
    elif reach is None:
        lo, hi = [0] * 3, [0] * 3
    else:
        lo = [max(int(v), 0) for v in reach[0]]
        hi = [min(int(v), n) for v, n in zip(reach[1], volume.shape[2:])]
    if any(h <= l for l, h in zip(lo, hi)):          # every point is outside the map
        shape = (*volume.shape[:2], *coords.shape[1:-1])
        keep = mode == "nearest" or volume.is_floating_point()
        return torch.zeros(shape, dtype=src_dtype if keep else torch.float32, device=volume.device)
    volume = volume[..., lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    vol = volume if volume.is_floating_point() else volume.to(torch.float32)
    thin = [a for a in range(3) if vol.shape[2 + a] < 2]
    if thin:     # align_corners maps every point of a 1-voxel axis onto it: give it explicit zero neighbours
        pad = [0] * 6
        for a in thin:
            pad[2 * (2 - a)] = pad[2 * (2 - a) + 1] = 1
            lo[a] -= 1
        vol = F.pad(vol, pad)
        volume = vol
    # grid_sample wants (x, y, z) = (last, middle, first) axis, normalised for align_corners=True: one
    # strided pass per axis writes the shifted, scaled and flipped grid
    grid = torch.empty(coords.shape, dtype=vol.dtype, device=coords.device)
    for a in range(3):
        scale = 2.0 / max(volume.shape[2 + a] - 1, 1)
        grid[..., 2 - a] = coords[..., a] * scale - (lo[a] * scale + 1.0)
    grid = grid if coords.ndim == 5 else grid.reshape(coords.shape[0], -1, 1, 1, 3)
    out = F.grid_sample(vol, grid, mode="bilinear" if mode == "linear" else "nearest",
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
