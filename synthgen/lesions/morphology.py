"""Lesion blending: binary morphology, Soft-CP weights and the fading field.

Soft-CP: Dai et al. 2022, "Soft-CP: a credible and effective data augmentation for semantic segmentation
of medical lesions", arXiv:2203.10507. Fading: Chalcroft et al., "Synthetic Data for Robust Stroke
Segmentation", section 2 (a smooth multiplicative field over the lesion, "varying grades of infarction").

Corrected with respect to the reference code (SynthStroke ``lesion.py``): dilation and erosion are true
binary morphology with a 3x3x3 cube (``max_pool3d``), not box means (which blur instead of growing, and
whose unpadded erosion shrank the array); the volume border does not erode a mask (a lesion cut by the
field of view continues outside it); the fading field is mapped into a configured range instead of being
clipped to [0, 1], and its control grid has a fixed spacing in voxels.
"""
from __future__ import annotations

import math

import torch

from ..config import FadingConfig, SoftCPConfig
from ..fields import bspline_field_std, smooth_field


def _grow(mask: torch.Tensor) -> torch.Tensor:
    """One binary dilation of a bool ``(..., D, H, W)`` tensor by the 3x3x3 cube: an OR of the mask shifted by one
    voxel along each axis in turn (the cube is the product of three segments); outside the volume adds nothing.
    Bytes and ORs instead of a float max-pool: 3-25x faster on a CPU, the same result."""
    for axis in (-3, -2, -1):
        n = mask.shape[axis]
        if n < 2:
            continue
        out = mask.clone()
        out.narrow(axis, 1, n - 1).logical_or_(mask.narrow(axis, 0, n - 1))
        out.narrow(axis, 0, n - 1).logical_or_(mask.narrow(axis, 1, n - 1))
        mask = out
    return mask


def dilate(mask: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Binary dilation by a 3x3x3 cube (26-neighbourhood), ``steps`` times.

    Args:
        mask: ``(B, C, D, H, W)`` tensor of 0/1 values (bool, integer or float).
        steps: number of one-voxel dilations.

    Returns:
        The dilated mask, same shape and dtype. Outside the volume counts as 0.
    """
    m = mask > 0.5 if mask.is_floating_point() else mask.bool()
    for _ in range(steps):
        m = _grow(m)
    return m.to(mask.dtype)


def erode(mask: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Binary erosion by a 3x3x3 cube: the complement of the dilated complement, ``steps`` times.

    Voxels beyond the volume border do not count as background: a lesion touching the border is eroded only
    from inside the volume.
    """
    m = mask > 0.5 if mask.is_floating_point() else mask.bool()
    for _ in range(steps):
        m = ~_grow(~m)
    return m.to(mask.dtype)


def soft_cp(mask: torch.Tensor, alpha: float = 0.5, erode_steps: int = 0, dilate_steps: int = 3) -> torch.Tensor:
    """Soft-CP blending weights of a binary lesion mask (Dai et al. 2022).

    ``w = 1`` on the core ``C = erode^e(mask)``; the ``j``-th voxel ring grown around the core
    (``dilate^j(C) minus dilate^(j-1)(C)``, ``j = 1..d``) gets ``alpha^j``; 0 beyond. Voxels of the mask
    that the core's rings do not reach (structures thinner than ``2e + 1`` voxels, which erosion removes)
    get ``alpha^e``, so no part of the lesion vanishes.

    With ``e = 0`` (the default) the core is the mask and the edge runs outward from its boundary: weight 1 on
    every mask voxel, ``alpha^j`` on the ``j``-th ring outside it. With ``e > 0`` part of the edge lies inside the
    mask (``w > 0.5`` covers exactly the mask when ``d <= e`` and ``alpha^e > 0.5``: the blending used before
    issue 12, with ``e = d = 2``, ``alpha = 0.9``).

    Args:
        mask: ``(B, C, D, H, W)`` binary mask (bool, integer or 0/1 float).
        alpha: weight ratio between neighbouring rings, in (0, 1].
        erode_steps: ``e``, rings removed to form the weight-1 core.
        dilate_steps: ``d``, rings grown from the core with decaying weight.

    Returns:
        ``(B, C, D, H, W)`` float32 weights in [0, 1].
    """
    m = mask > 0
    grown = erode(m, erode_steps)
    weight = grown.to(torch.float32)
    for j in range(1, dilate_steps + 1):
        grown = _grow(grown)
        weight = torch.maximum(weight, grown.to(torch.float32) * (alpha ** j))
    return torch.maximum(weight, m.to(torch.float32) * (alpha ** erode_steps))


def soft_cp_config(mask: torch.Tensor, config: SoftCPConfig) -> torch.Tensor:
    """``soft_cp`` with the parameters of a :class:`SoftCPConfig`."""
    return soft_cp(mask, config.alpha, config.erode, config.dilate)


def fading_coefficients(generator: torch.Generator, shape, spacing: float) -> torch.Tensor:
    """Coarse-grid coefficients ``(1, 1, n1, n2, n3)`` of a unit-variance fading field (drawn on the CPU).

    ``n = ceil((size - 1) / spacing) + 1`` control points per axis (at least 4), so the field's feature
    size is ``spacing`` voxels whatever the volume size; the coefficients' std is ``1 / bspline_field_std``, so
    the field evaluated over ``shape`` has unit std (:func:`synthgen.fields.bspline_field_std`).
    """
    n = [max(4, math.ceil((int(s) - 1) / spacing) + 1) for s in shape]
    return torch.randn((1, 1, *n), generator=generator, dtype=torch.float32) / bspline_field_std(n, shape)


FADING_MAPPINGS = ("power", "sigmoid")


def fading_field(coeffs: torch.Tensor, shape, value_range=(0.2, 1.0), gain: float = 2.0,
                 region=None, mapping: str = "power", power: float = 2.0) -> torch.Tensor:
    """Smooth multiplicative field in ``value_range = (lo, hi)``, from a unit-variance spline ``f``.

    ``f`` is the cubic B-spline of ``coeffs`` (see :func:`fading_coefficients`), N(0, 1) at every voxel, so
    ``u = Phi(f)`` (the normal CDF) is U(0, 1) at every voxel and the mapping fixes the field's distribution:

    - ``"power"`` (default): ``hi - (hi - lo) * u^power``, so ``(hi - fade) / (hi - lo)`` follows
      Beta(1 / power, 1) and the fade's quantile ``q`` is ``hi - (hi - lo) (1 - q)^power``. With the defaults
      (range (0.2, 1), power 2): p10 / p25 / p50 / p75 / p90 = 0.35 / 0.55 / 0.80 / 0.95 / 0.99, mean 0.73:
      most lesion voxels strongly infarcted, some faint ("varying grades of infarction").
    - ``"sigmoid"`` (before issue 12): ``lo + (hi - lo) * sigmoid(gain * f)``; with gain 2 the values spread
      over the whole range, median 0.6 for range (0.2, 1).

    The field's features are ``control_spacing`` voxels wide (12: about a median lesion's radius), so one lesion
    sees one to three grades.

    Args:
        coeffs: ``(B, 1, n1, n2, n3)`` coefficients.
        shape: dense output size ``(D, H, W)``.
        value_range: ``(lo, hi)``, the field's bounds.
        gain: slope of the sigmoid, in units of the field's standard deviation (``"sigmoid"`` only).
        region: optional voxel box ``((lo, hi),) * 3``: evaluate only there (see ``smooth_field``).
        mapping: ``"power"`` or ``"sigmoid"``.
        power: exponent of ``"power"`` (1: uniform over the range; larger: more voxels near ``hi``).

    Returns:
        ``(B, 1, D, H, W)`` field (or the box's size), dtype and device of ``coeffs``.

    Raises:
        ValueError: unknown ``mapping``.
    """
    lo, hi = value_range
    f = smooth_field(coeffs, shape, region)
    if mapping == "power":
        return hi - (hi - lo) * torch.special.ndtr(f) ** power
    if mapping == "sigmoid":
        return lo + (hi - lo) * torch.sigmoid(gain * f)
    raise ValueError(f"`mapping` must be one of {FADING_MAPPINGS}, got {mapping!r}")


def fading_config(coeffs: torch.Tensor, shape, config: FadingConfig, region=None) -> torch.Tensor:
    """``fading_field`` with the parameters of a :class:`FadingConfig`."""
    return fading_field(coeffs, shape, config.range, config.gain, region, config.mapping, config.power)
