"""Intensity operations on synthetic images ``(B, 1, D, H, W)``: GMM, bias, gamma, noise, clip, normalise."""
from __future__ import annotations

import torch

from ..fields import smooth_field
from .blur import gaussian_blur, gaussian_kernel1d


def texture_noise(shape, fwhm: torch.Tensor, generators: list[torch.Generator], device=None) -> torch.Tensor:
    """Unit-variance Gaussian noise ``(B, 1, *shape)`` smoothed isotropically with a per-sample FWHM.

    The smoothed field is divided by the kernel's L2 norm (cubed: three axes) so that its variance stays 1
    whatever the FWHM: ``sigma`` keeps meaning the within-class standard deviation. ``fwhm`` ``(B,)`` is read on
    the host (give the host copy of device parameters).
    """
    z = torch.cat([torch.randn(1, 1, *shape, generator=g, device=device) for g in generators])
    return texture_from_normals(z, fwhm)


def texture_from_normals(z: torch.Tensor, fwhm: torch.Tensor) -> torch.Tensor:
    """The texture of :func:`texture_noise` from given standard normals ``z`` ``(B, 1, *shape)``: blurred with
    each sample's FWHM (``(B,)``, read on the host) and divided by the kernel's L2 norm cubed."""
    fwhm = torch.as_tensor(fwhm).detach().cpu()
    out = []
    for b in range(z.shape[0]):
        f = float(fwhm[b])
        zb = z[b:b + 1]
        if f > 0:
            k = gaussian_kernel1d(f, dtype=torch.float64)
            zb = gaussian_blur(zb, fwhm[b:b + 1]) / float(k.pow(2).sum().sqrt() ** 3)
        out.append(zb)
    return torch.cat(out)


def gmm_sample(tissue: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, texture: torch.Tensor,
               lesion_weight: torch.Tensor | None = None, check_labels: bool = True) -> torch.Tensor:
    """Intensity of a Gaussian mixture with known class membership.

    ``I = sum_k p_k (mu_k + sigma_k t)`` with ``t`` the (spatially smoothed) unit noise ``texture``, where ``p``
    is the one-hot of integer labels or the given probabilities, mixed with the lesion class (the last entry
    of ``mu``/``sigma``) as ``p_k (1 - w)`` and ``w``. One texture volume serves every class: classes barely
    overlap, so within each class the statistics are those of an independent draw, at 1/K of the cost.

    Args:
        tissue: ``(B, 1, D, H, W)`` integer labels or ``(B, K, D, H, W)`` float probabilities.
        mu, sigma: ``(B, L)`` class means and stds, ``L > K`` (or > max label); entry ``L - 1`` is the lesion.
        texture: ``(B, 1, D, H, W)`` unit-variance noise.
        lesion_weight: ``(B, 1, D, H, W)`` lesion fraction in [0, 1], or None.
        check_labels: refuse labels outside ``[0, L - 1)`` (reads the labels' range back from the device; the
            generator checked its maps already and passes False).

    Returns:
        ``(B, 1, D, H, W)`` float32 image.
    """
    B = tissue.shape[0]
    if mu.shape != sigma.shape or mu.shape[0] != B:
        raise ValueError(f"`mu` and `sigma` must both be ({B}, L), got {tuple(mu.shape)} and {tuple(sigma.shape)}")
    n_cls = mu.shape[1] - 1
    if tissue.is_floating_point():
        if tissue.shape[1] > n_cls:
            raise ValueError(f"tissue has {tissue.shape[1]} channels, more than the {n_cls} class Gaussians drawn")
        mean = torch.einsum("bk...,bk->b...", tissue, mu[:, :tissue.shape[1]]).unsqueeze(1)
        std = torch.einsum("bk...,bk->b...", tissue, sigma[:, :tissue.shape[1]]).unsqueeze(1)
    else:
        labels = tissue.long()
        if check_labels and (int(labels.max()) >= n_cls or int(labels.min()) < 0):
            raise ValueError(f"tissue labels must be in [0, {n_cls - 1}], got [{int(labels.min())}, {int(labels.max())}]")
        mean = torch.gather(mu, 1, labels.reshape(B, -1)).reshape(labels.shape)
        std = torch.gather(sigma, 1, labels.reshape(B, -1)).reshape(labels.shape)
    image = mean + std * texture
    if lesion_weight is not None:
        w = lesion_weight
        lesion = mu[:, -1].view(B, 1, 1, 1, 1) + sigma[:, -1].view(B, 1, 1, 1, 1) * texture
        image = image * (1 - w) + lesion * w
    return image


# Nyul-style landmarks: these foreground percentiles map to a fixed standard scale (p1 -> 0, p99 -> 1, deciles evenly
# in between): a piecewise-linear, outlier-robust, coarse histogram equalisation
LANDMARK_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def histogram_normalise(x: torch.Tensor, percentiles=LANDMARK_PERCENTILES) -> torch.Tensor:
    """Map each volume's intensities piecewise-linearly so that foreground percentile landmarks hit a fixed scale.

    The one histogram normalisation of real scans, in training's real branch and at inference (paper section 2).
    Foreground is every finite voxel above the volume's minimum (it drops zero padding and a flat background, so
    the result does not depend on how much of the field of view is background: a training crop and the whole
    scan are normalised alike, which a full-volume histogram equalisation would not do). Landmark ``p_i`` (the
    ``percentiles[i]``-th foreground percentile, numpy's linear definition) maps to ``(percentiles[i] -
    percentiles[0]) / (percentiles[-1] - percentiles[0])``; values below the first or above the last landmark
    are clamped to 0 / 1. A fixed standard scale (Nyul & Udupa 1999 with the scale fixed instead of learned)
    needs no training statistics.

    Shape:
        x: ``(B, C, ...)`` (each ``(b, c)`` volume on its own); returns float32 of the same shape in [0, 1], all
        zeros for a constant volume; NaN / Inf count as 0.
    """
    x = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
    pc = torch.tensor([float(p) for p in percentiles], dtype=torch.float64)
    scale = ((pc - pc[0]) / (pc[-1] - pc[0])).to(x.device, torch.float32)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            v = x[b, c]
            fg = v[v > v.min()]
            if fg.numel() < 2:
                continue
            fg = torch.sort(fg.double()).values
            pos = pc.to(fg.device) / 100.0 * (fg.numel() - 1)          # numpy's "linear" percentile
            lo = pos.floor().long().clamp(max=fg.numel() - 1)
            hi = (lo + 1).clamp(max=fg.numel() - 1)
            marks = fg[lo] + (pos - lo.double()) * (fg[hi] - fg[lo])
            # ties (a saturated or quantised scan) would make the map non-invertible: force them apart
            marks = marks + torch.arange(marks.numel(), device=marks.device, dtype=marks.dtype) * max(
                1e-6 * float(marks[-1] - marks[0]), 1e-12)
            out[b, c] = interp(v.reshape(-1), marks.float(), scale).reshape(v.shape)
    return out


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``numpy.interp`` (``xp`` increasing, ends clamped), on any device."""
    n = xp.numel()
    idx = torch.searchsorted(xp.contiguous(), x.contiguous(), right=True).clamp(1, n - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    w = ((x - x0) / (x1 - x0).clamp(min=torch.finfo(x.dtype).tiny)).clamp(0, 1)
    return fp[idx - 1] + w * (fp[idx] - fp[idx - 1])


def bias_field(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Multiply by ``exp(f)``, ``f`` the cubic B-spline of ``coeffs`` ``(B, 1, m, m, m)`` over the volume."""
    return x * torch.exp(smooth_field(coeffs.to(x.device, x.dtype), x.shape[2:]))


def gamma_transform(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Per sample: min-max normalise to [0, 1], raise to ``gamma`` ``(B,)``, map back to [min, max]."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.amin(1).view(-1, 1, 1, 1, 1)
    hi = flat.amax(1).view(-1, 1, 1, 1, 1)
    span = (hi - lo).clamp(min=1e-6)
    return ((x - lo) / span).clamp(0, 1).pow(gamma.to(x.device, x.dtype).view(-1, 1, 1, 1, 1)) * span + lo


def add_noise(x: torch.Tensor, std: torch.Tensor, generators: list[torch.Generator] | None = None,
              kind: str = "rician", normals=None) -> torch.Tensor:
    """Add noise of per-sample ``std`` ``(B,)``: Gaussian, or Rician (magnitude of the image plus complex
    Gaussian noise, as in magnitude MR images).

    Args:
        generators: one per sample: draw the standard normals from them; or
        normals: the two standard-normal volumes ``(n1, n2)``, each shaped like ``x`` (``n2`` unused for
            Gaussian noise), to use instead (e.g. those a fast path drew).
    """
    if kind not in ("rician", "gaussian"):
        raise ValueError(f"`kind` must be 'rician' or 'gaussian', got {kind!r}")
    if (generators is None) == (normals is None):
        raise ValueError("`generators` or `normals` must be given, not both nor neither")
    out = []
    for b in range(x.shape[0]):
        s = std[b].to(x.device, x.dtype)

        def normal(k):
            if normals is not None:
                return normals[k][b:b + 1].to(x.device, x.dtype)
            return torch.randn(x[b:b + 1].shape, generator=generators[b], device=x.device, dtype=x.dtype)
        n1 = normal(0) * s
        if kind == "gaussian":
            out.append(x[b:b + 1] + n1)
        else:
            out.append(torch.sqrt((x[b:b + 1] + n1) ** 2 + (normal(1) * s) ** 2))
    return torch.cat(out)


def _order_pair(flat: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values at sorted positions ``i`` and ``i + 1`` (0-based) of a 1D tensor, from the shorter tail (topk)."""
    n = flat.numel()
    j = min(i + 1, n - 1)
    if j + 1 <= n - i:
        low = torch.topk(flat, j + 1, largest=False, sorted=True).values
        return low[i], low[j]
    high = torch.topk(flat, n - i, largest=True, sorted=True).values      # positions n-1 down to i
    return high[-1], high[-1 - (j - i)]


def quantiles(x: torch.Tensor, q) -> torch.Tensor:
    """Per-sample quantiles ``(B, len(q))`` over all voxels, with torch.quantile's linear interpolation.

    Tail quantiles (the clip's 1st/99th percentiles) come from a top-k of the shorter tail, several times
    cheaper than the full sort torch.quantile does; central ones from torch.quantile itself.
    """
    flat = x.reshape(x.shape[0], -1).float()
    n = flat.shape[1]
    out = torch.empty(flat.shape[0], len(q), dtype=flat.dtype, device=flat.device)
    central = []
    for k, qk in enumerate(q):
        pos = float(qk) * (n - 1)
        i = int(pos)
        if min(i + 2, n - i) > 0.1 * n and n <= 16_000_000:     # torch.quantile's input size limit
            central.append(k)
            continue
        for b in range(flat.shape[0]):
            lo, hi = _order_pair(flat[b], i)
            out[b, k] = torch.lerp(lo, hi, pos - i)
    if central:
        qs = torch.tensor([float(q[k]) for k in central], dtype=flat.dtype, device=flat.device)
        out[:, central] = torch.quantile(flat, qs, dim=1).T
    return out


def percentile_clip(x: torch.Tensor, lower: float = 0.01, upper: float = 0.99) -> torch.Tensor:
    """Clip each sample to its ``lower`` and ``upper`` quantiles (fractions, e.g. 0.01 and 0.99)."""
    if not 0.0 <= lower <= upper <= 1.0:
        raise ValueError(f"quantiles must satisfy 0 <= lower <= upper <= 1, got ({lower}, {upper})")
    qv = quantiles(x, [lower, upper]).to(x.dtype)
    return torch.maximum(torch.minimum(x, qv[:, 1].view(-1, 1, 1, 1, 1)), qv[:, 0].view(-1, 1, 1, 1, 1))


def skull_strip(x: torch.Tensor, brain: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Zero voxels outside ``brain`` ``(B, 1, D, H, W)`` in the samples where ``apply`` ``(B,)`` is true."""
    keep = brain.to(torch.bool) | ~apply.to(x.device).view(-1, 1, 1, 1, 1)
    return x * keep.to(x.dtype)


def z_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per sample: zero mean, unit (population) standard deviation over all voxels."""
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(1).view(-1, 1, 1, 1, 1)
    std = flat.std(1, unbiased=False).view(-1, 1, 1, 1, 1)
    return (x - mean) / std.clamp(min=eps)
