"""Procedural ischaemic stroke lesion masks, synthesised on the device from a 64-bit key (no data set).

Beyond the paper (which pastes real ATLAS masks). One lesion is one vascular event:

1. draw the number of connected components, the total volume (inverse CDF through log-volume quantiles),
   the hemisphere and the arterial territory from :class:`ProceduralLesionConfig` (calibrated on 1449
   SOOP acute stroke masks by ``scripts/calibrate_lesions.py``);
2. pick the main component's centre among parenchyma voxels (GM, WM, GM/WM PV; never CSF or background) of
   that hemisphere, weighted by one Gaussian of the territory's mixture: where the SOOP lesions of that JHU
   arterial territory lie (``ProceduralLesionConfig.territory_components``, MNI mm; or, with None, one Gaussian
   over the whole atlas territory). The atlas itself (CC BY-SA) is not shipped: its territories enter only
   through these statistics;
3. grow each component as the ``n`` highest-scoring allowed voxels of ``1 - rho + roughness * noise``:
   ``rho`` the radius in a randomly rotated, elongated ellipsoid and ``noise`` a smooth random field, so
   the outline is irregular and the shape follows the tissue it may occupy; only the part 26-connected to
   the peak is kept (grown once more by what fragments took), so a component stays one component and its
   volume is ``n`` up to what the tissue around it allows;
4. satellites (the other components) share the remaining volume and sit around the main one (Gaussian
   offset, same hemisphere unless the lesion is bilateral).

All scalar draws and coarse noise grids come from a CPU generator seeded with the key, dense work happens on
the tissue's device: a key gives the same lesion on any device (up to float rounding of the scores).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import ProceduralLesionConfig
from ..fields import smooth_field
from .morphology import fading_coefficients


def grid_affine(shape, affine=None) -> np.ndarray:
    """The 4x4 voxel -> world (mm) affine of the grid, or a 1 mm RAS grid centred on world 0 if None."""
    if affine is not None:
        return np.asarray(affine, dtype=np.float64)
    out = np.eye(4)
    out[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2
    return out


def _world_box(lo, hi, affine: np.ndarray, device) -> torch.Tensor:
    """World coordinates ``(d, h, w, 3)`` (float32, mm) of the voxel box ``[lo, hi)``."""
    axes = [torch.arange(a, b, device=device, dtype=torch.float32) for a, b in zip(lo, hi)]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    lin = torch.as_tensor(affine[:3, :3], dtype=torch.float32, device=device)
    off = torch.as_tensor(affine[:3, 3], dtype=torch.float32, device=device)
    return ijk @ lin.T + off


def _voxel_box(center_mm, half_mm, affine: np.ndarray, shape) -> tuple[list[int], list[int]]:
    """Voxel box (lo, hi) covering the world box ``center +- half`` (per axis), clipped to the grid."""
    inv = np.linalg.inv(affine)
    corners = np.array([[center_mm[0] + sx * half_mm[0], center_mm[1] + sy * half_mm[1],
                         center_mm[2] + sz * half_mm[2], 1.0]
                        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    vox = corners @ inv.T
    lo = np.clip(np.floor(vox[:, :3].min(0)), 0, np.asarray(shape) - 1).astype(int)
    hi = np.clip(np.ceil(vox[:, :3].max(0)) + 1, 1, np.asarray(shape)).astype(int)
    return lo.tolist(), hi.tolist()


def _pick_voxel(weight: torch.Tensor, u: float):
    """Index (flat) of a voxel drawn with probability proportional to ``weight`` (u ~ U(0,1)); None if all 0."""
    cdf = torch.cumsum(weight.reshape(-1).to(torch.float64), 0)
    total = float(cdf[-1])
    if not total > 0:
        return None
    return min(int(torch.searchsorted(cdf, torch.tensor([u * total], dtype=cdf.dtype, device=cdf.device))),
               cdf.numel() - 1)


def _x_world(shape, affine: np.ndarray, device) -> torch.Tensor:
    """World x (mm) of every voxel, ``(D, H, W)`` float32, as a broadcast sum (x is linear in i, j, k)."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) * float(affine[0, a]) for a, n in enumerate(shape)]
    return axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :] + float(affine[0, 3])


def _sample_centre(allowed: torch.Tensor, mean_mm, cov_mm, affine, u: float, tries: int = 256,
                   blocked: torch.Tensor | None = None):
    """A voxel of ``allowed`` (and not ``blocked``) drawn with a Gaussian(mean_mm, cov_mm) weight; widen to all
    of it if empty.

    ``cov_mm`` is a 3x3 covariance (mm^2) or three per-axis standard deviations (mm). Rejection first (a
    Gaussian point in world mm, rounded to its voxel, kept if allowed): a few lookups instead of weighting a box
    that can span the whole volume. Falls back to the explicit weighting when the allowed voxels sit far in the
    Gaussian's tail.
    """
    cov = np.asarray(cov_mm, dtype=np.float64)
    cov = np.diag(np.maximum(cov, 1e-3) ** 2) if cov.ndim == 1 else cov + np.eye(3) * 1e-6
    chol = np.linalg.cholesky(cov)
    std = np.sqrt(np.diag(cov))
    g = torch.Generator().manual_seed(int(u * 2 ** 53))
    points = torch.randn(tries, 3, generator=g, dtype=torch.float64).numpy() @ chol.T + np.asarray(mean_mm)
    vox = np.rint(np.c_[points, np.ones(tries)] @ np.linalg.inv(affine).T)[:, :3].astype(np.int64)
    inside = np.all((vox >= 0) & (vox < np.asarray(allowed.shape)), axis=1)
    if inside.any():
        cand = torch.as_tensor(vox[inside], device=allowed.device)
        hit = allowed[cand[:, 0], cand[:, 1], cand[:, 2]]
        if blocked is not None:
            hit = hit & ~blocked[cand[:, 0], cand[:, 1], cand[:, 2]]
        if bool(hit.any()):
            return [int(v) for v in cand[int(torch.nonzero(hit)[0])]]
    lo, hi = _voxel_box(mean_mm, 3 * std, affine, allowed.shape)
    precision = torch.as_tensor(np.linalg.inv(cov), dtype=torch.float32, device=allowed.device)
    for lo, hi in ((lo, hi), ([0, 0, 0], list(allowed.shape))):
        sub = allowed[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if blocked is not None:
            sub = sub & ~blocked[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if sub.numel() == 0 or not bool(sub.any()):
            continue
        world = _world_box(lo, hi, affine, allowed.device)
        d = world - torch.as_tensor(mean_mm, dtype=torch.float32, device=world.device)
        w = torch.exp(-0.5 * ((d @ precision) * d).sum(-1)) * sub
        if not bool((w > 0).any()):       # far in the Gaussian tail: fall back to uniform over the box
            w = sub.to(torch.float32)
        i = _pick_voxel(w, u)
        if i is not None:
            local = np.unravel_index(i, tuple(sub.shape))
            return [int(a) + b for a, b in zip(local, lo)]
    return None


def territory_gaussian(config: ProceduralLesionConfig, territory: int, u: float) -> tuple[list, np.ndarray]:
    """``(mean_mm, cov_mm)`` of the Gaussian a lesion of ``territory`` is placed by, in the right hemisphere
    (x >= 0): one component of ``config.territory_components`` chosen with probability its weight by ``u`` in
    [0, 1), or the single ``territory_mean_mm`` / ``territory_std_mm`` Gaussian when it is None."""
    if config.territory_components is None:
        std = np.asarray(config.territory_std_mm[territory], dtype=np.float64)
        return list(config.territory_mean_mm[territory]), np.diag(std ** 2)
    comps = config.territory_components[territory]
    weights = np.asarray([c[0] for c in comps], dtype=np.float64)
    k = min(int(np.searchsorted(np.cumsum(weights) / weights.sum(), u, side="right")), len(comps) - 1)
    return list(comps[k][1]), component_covariance(comps[k])


def component_covariance(component) -> np.ndarray:
    """3x3 covariance (mm^2) of a ``(weight, mean, std, (r_xy, r_xz, r_yz))`` territory component."""
    _, _, std, (rxy, rxz, ryz) = component
    corr = np.array([[1.0, rxy, rxz], [rxy, 1.0, ryz], [rxz, ryz, 1.0]])
    s = np.asarray(std, dtype=np.float64)
    return corr * np.outer(s, s)


def _random_rotation(g: torch.Generator) -> torch.Tensor:
    """A uniformly random 3x3 rotation (normalised Gaussian quaternion)."""
    q = torch.randn(4, generator=g, dtype=torch.float64)
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]], dtype=torch.float64)


def grow_component(allowed: torch.Tensor, center, n_voxels: int, g: torch.Generator,
                   config: ProceduralLesionConfig, blocked: torch.Tensor | None = None
                   ) -> tuple[list[int], list[int], torch.Tensor] | None:
    """One irregular blob of ``n_voxels`` voxels of ``allowed`` around ``center`` (fewer only when the tissue
    26-connected to it runs out).

    The search box starts at 1.6 x the ellipsoid's longest semi-axis and doubles while the blob is short of
    ``n_voxels`` and the box does not yet span the grid: a big lesion next to the midline, the cortex or a
    ventricle reaches its volume by spreading further along the tissue it may occupy.

    Args:
        allowed: ``(D, H, W)`` bool, voxels the blob may occupy.
        center: voxel index of the blob's centre.
        n_voxels: target size in voxels.
        g: CPU generator (shape draws).
        config: elongation, roughness and noise scale.
        blocked: optional ``(D, H, W)`` bool, voxels the blob may not occupy after all (checked per box: cheaper
            than ``allowed & ~blocked`` over the grid).

    Returns:
        ``(lo, hi, box_mask)``: the voxel box and the blob inside it, or None if nothing is allowed there.
    """
    n_voxels = max(1, int(n_voxels))
    radius = (3.0 * n_voxels / (4.0 * math.pi)) ** (1.0 / 3.0)
    log_axes = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * math.log(config.elongation)
    axes = radius * torch.exp(log_axes - log_axes.mean())          # same volume as the sphere
    rot = _random_rotation(g)
    # 1.6 x the longest semi-axis leaves room for the noise and for tissue the ellipsoid cannot use
    half = math.ceil(1.6 * float(axes.max()) + 2)
    while True:
        lo = [max(0, c - half) for c in center]
        hi = [min(s, c + half + 1) for c, s in zip(center, allowed.shape)]
        whole = all(a == 0 and b == s for a, b, s in zip(lo, hi, allowed.shape))
        box = allowed[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if blocked is not None:
            box = box & ~blocked[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        # a fresh noise grid per box (feature size fixed in voxels): only the last box's blob is kept
        coeffs = fading_coefficients(g, tuple(box.shape), max(2.0, config.noise_scale * radius))
        blob = _blob_in_box(box, [c - a for c, a in zip(center, lo)], n_voxels, axes, rot, coeffs, config)
        if blob is None:                  # only when the centre is not allowed: growing finds nothing new
            return None
        if whole or int(blob.sum()) >= n_voxels or not _touches_inner_face(blob, lo, hi, allowed.shape):
            return lo, hi, blob           # reached, or the tissue connected to the blob is used up
        half *= 2


def _touches_inner_face(blob: torch.Tensor, lo, hi, shape) -> bool:
    """Whether ``blob`` reaches a face of its box that is not the grid's border (a bigger box adds tissue)."""
    for axis in range(3):
        if lo[axis] > 0 and bool(blob.select(axis, 0).any()):
            return True
        if hi[axis] < shape[axis] and bool(blob.select(axis, -1).any()):
            return True
    return False


def _blob_in_box(box: torch.Tensor, center, n_voxels: int, axes: torch.Tensor, rot: torch.Tensor,
                 coeffs: torch.Tensor, config: ProceduralLesionConfig) -> torch.Tensor | None:
    """The ``n_voxels`` best-scoring voxels of ``box`` 26-connected to the peak (fewer if it runs out)."""
    if not bool(box.any()):
        return None
    dev, shape = box.device, tuple(box.shape)
    axes_ = [torch.arange(n, device=dev, dtype=torch.float32) - c for n, c in zip(shape, center)]
    d = torch.stack(torch.meshgrid(*axes_, indexing="ij"), dim=-1)
    q = (d @ rot.to(device=dev, dtype=torch.float32)) / axes.to(device=dev, dtype=torch.float32)
    rho = q.norm(dim=-1)
    noise = smooth_field(coeffs.to(dev), shape)[0, 0]
    score = torch.where(box, 1.0 - rho + config.roughness * noise, torch.full_like(rho, -float("inf")))
    available = int(box.sum())
    if available <= n_voxels:
        return _connected_to_peak(box, score)
    flat = score.reshape(-1)

    def part(k):          # the peak's component of the k best voxels: grows with k (nested sets, same peak)
        return _connected_to_peak(score >= -torch.kthvalue(-flat, k).values, score)

    k = n_voxels
    blob = part(k)
    for _ in range(4):    # noise peaks and tissue gaps split off fragments: grow the main body by as much
        lost = n_voxels - int(blob.sum())
        if lost <= 0 or k >= available:
            break
        k = min(k + lost, available)
        blob = part(k)
        if int(blob.sum()) > n_voxels:    # a bridge joined a large fragment: its n best voxels, largest part
            inside = torch.where(blob, score, torch.full_like(score, -float("inf"))).reshape(-1)
            return _largest_part(score >= -torch.kthvalue(-inside, n_voxels).values) & blob
    return blob


def _largest_part(selected: torch.Tensor) -> torch.Tensor:
    """The largest 26-connected component of a 3D bool tensor (on the CPU)."""
    from scipy import ndimage
    labels, n = ndimage.label(selected.cpu().numpy(), structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return selected
    sizes = np.bincount(labels.ravel())[1:]
    return torch.from_numpy(labels == 1 + int(np.argmax(sizes))).to(selected.device)


def _connected_to_peak(selected: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """The 26-connected part of ``selected`` holding its highest-scoring voxel."""
    peak = int(torch.argmax(torch.where(selected, score, torch.full_like(score, -float("inf")))))
    if selected.device.type == "cpu":     # one labelling pass beats ~diameter max-pool passes on a CPU
        from scipy import ndimage
        labels, _ = ndimage.label(selected.numpy(), structure=np.ones((3, 3, 3), dtype=bool))
        return torch.from_numpy(labels == labels.reshape(-1)[peak])
    return _reconstruct(selected, peak)


def _reconstruct(selected: torch.Tensor, peak: int) -> torch.Tensor:
    """Geodesic reconstruction of ``selected`` from the flat voxel index ``peak`` by 3x3x3 max-pooling
    (stays on the device: no host round trip)."""
    sel = selected.to(torch.float32)[None, None]
    seed = torch.zeros_like(sel).reshape(-1)
    seed[peak] = 1.0
    region = seed.reshape(sel.shape)
    while True:
        for _ in range(8):      # check convergence every 8 steps: fewer host syncs
            region = torch.nn.functional.max_pool3d(region, 3, 1, 1) * sel
        grown = torch.nn.functional.max_pool3d(region, 3, 1, 1) * sel
        if torch.equal(grown, region):
            return region[0, 0] > 0
        region = grown


def _interp_quantile(quantiles, u: float, log: bool) -> float:
    """Inverse CDF through equally spaced quantiles (piecewise linear, in log space if ``log``)."""
    q = np.asarray(quantiles, dtype=np.float64)
    probs = np.linspace(0.0, 1.0, len(q))
    if log:
        return float(np.exp(np.interp(u, probs, np.log(np.maximum(q, 1e-6)))))
    return float(np.interp(u, probs, q))


def draw_lesion_plan(g: torch.Generator, config: ProceduralLesionConfig) -> dict:
    """The scalar random choices of one procedural lesion (replayable, CPU only).

    The volume is read from ``volume_quantiles_ml`` at a percentile drawn from the territory's
    ``territory_volume_ranks``. A bilateral lesion puts ``minority_share`` of its volume in the other
    hemisphere: in its first satellite (``satellite_shares[0]``) when multifocal, else by straddling the
    midline.
    """
    u = torch.rand(8, generator=g, dtype=torch.float64).tolist()
    pmf = torch.tensor(config.component_count_pmf, dtype=torch.float64)
    bucket = int(torch.multinomial(pmf, 1, generator=g))
    count = bucket + 1
    if bucket == len(pmf) - 1:                  # the open tail bucket: "this many or more"
        count = bucket + 1 + int(u[0] * (config.component_count_max - bucket))
    territory = int(torch.multinomial(torch.tensor(config.territory_probabilities, dtype=torch.float64), 1,
                                      generator=g))
    rank = u[1]
    if config.territory_volume_ranks is not None:
        rank = _interp_quantile(config.territory_volume_ranks[territory], u[1], log=False)
    volume = min(_interp_quantile(config.volume_quantiles_ml, rank, log=True), config.max_volume_ml)
    main_share = 1.0 if count == 1 else _interp_quantile(config.largest_component_share_quantiles, u[2], log=False)
    shares = -torch.log(torch.rand(max(count - 1, 0), generator=g, dtype=torch.float64).clamp(min=1e-12))
    shares = sorted((shares / shares.sum()).tolist(), reverse=True) if count > 1 else []
    bilateral = u[4] < (config.bilateral_probability if count > 1 else config.bilateral_probability_unifocal)
    minority = _interp_quantile(config.bilateral_minority_share_quantiles, u[6], log=False) if bilateral else 0.0
    if bilateral and count > 1:
        # the first satellite crosses with the minority share; the main body keeps the larger side's lead
        main_share = min(main_share, 1.0 - minority)
        rest = shares[1:]
        total = sum(rest)
        shares = [minority] + [x / total * (1.0 - minority - main_share) for x in rest] if rest else [minority]
        if not rest:
            main_share = 1.0 - minority
    else:
        shares = [x * (1.0 - main_share) for x in shares]
    return {"count": count, "volume_ml": volume, "left": u[3] < config.left_probability, "bilateral": bilateral,
            "minority_share": minority, "territory": territory, "main_share": main_share,
            "satellite_shares": shares, "u_centre": u[5], "u_component": u[7]}


def _cap_depth(share: float) -> float:
    """Distance of a sphere's centre from a plane, in radii, that leaves ``share`` of its volume beyond it."""
    lo, hi = 0.0, 1.0       # cap share (1 - t)^2 (2 + t) / 4 falls from 0.5 at t = 0 to 0 at t = 1
    for _ in range(40):
        t = 0.5 * (lo + hi)
        lo, hi = (t, hi) if (1 - t) ** 2 * (2 + t) / 4 > share else (lo, t)
    return 0.5 * (lo + hi)


def _claim(taken: torch.Tensor, lo, hi, blob: torch.Tensor) -> None:
    """Mark ``blob`` (in box ``[lo, hi)``) and its 26-neighbours as taken, so later components stay apart."""
    plo = [max(0, a - 1) for a in lo]
    phi = [min(n, b + 1) for b, n in zip(hi, taken.shape)]
    padded = torch.zeros([b - a for a, b in zip(plo, phi)], dtype=torch.float32, device=blob.device)
    padded[lo[0] - plo[0]:hi[0] - plo[0], lo[1] - plo[1]:hi[1] - plo[1], lo[2] - plo[2]:hi[2] - plo[2]] = blob.float()
    grown = torch.nn.functional.max_pool3d(padded[None, None], 3, 1, 1)[0, 0] > 0
    taken[plo[0]:phi[0], plo[1]:phi[1], plo[2]:phi[2]] |= grown


def procedural_lesion(parenchyma: torch.Tensor, key: int, config: ProceduralLesionConfig,
                      affine=None) -> torch.Tensor:
    """One procedural stroke lesion mask on the grid of ``parenchyma``.

    Args:
        parenchyma: ``(D, H, W)`` bool, voxels a lesion may occupy (GM, WM, PV).
        key: 64-bit integer that alone determines the lesion.
        config: the lesion distribution.
        affine: 4x4 voxel -> world (MNI mm, RAS+) of the grid; None assumes 1 mm RAS centred on world 0.
            Hemispheres are split at world x = 0; territories are placed in world mm.

    Returns:
        ``(D, H, W)`` bool mask on ``parenchyma``'s device (empty if the grid holds no parenchyma).
    """
    shape = tuple(parenchyma.shape)
    affine = grid_affine(shape, affine)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    g = torch.Generator().manual_seed(int(key))
    plan = draw_lesion_plan(g, config)
    x_world = _x_world(shape, affine, parenchyma.device)
    sides = {True: parenchyma & (x_world < 0), False: parenchyma & (x_world >= 0)}
    mask = torch.zeros(shape, dtype=torch.bool, device=parenchyma.device)
    straddle = plan["bilateral"] and plan["count"] == 1

    def allowed_for(left: bool):
        return parenchyma if (config.cross_midline or straddle) else sides[left]

    mean, cov = territory_gaussian(config, plan["territory"], plan["u_component"])
    n_main = round(plan["volume_ml"] * plan["main_share"] / voxel_ml)
    if straddle:     # centre at the depth from the midline that leaves minority_share on the other side
        radius_mm = (3.0 * plan["volume_ml"] * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
        mean[0] = _cap_depth(plan["minority_share"]) * radius_mm
        cov[0, :] = cov[:, 0] = 0.0
        cov[0, 0] = float(np.abs(affine[0, :3]).max()) ** 2
    if plan["left"]:                                 # mirror to the left: x and its correlations change sign
        mean[0] = -abs(mean[0])
        flip = np.diag([-1.0, 1.0, 1.0])
        cov = flip @ cov @ flip
    else:
        mean[0] = abs(mean[0])
    centre = _sample_centre(sides[plan["left"]], mean, cov, affine, plan["u_centre"])
    if centre is None:                               # no parenchyma on that side: try the other one
        centre = _sample_centre(parenchyma, mean, cov, affine, plan["u_centre"])
        if centre is None:
            return mask
    left = bool(x_world[tuple(centre)] < 0)
    main = grow_component(allowed_for(left), centre, n_main, g, config)
    taken = torch.zeros_like(mask)
    if main is not None:
        lo, hi, blob = main
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= blob
        _claim(taken, lo, hi, blob)
    centre_mm = (affine[:3, :3] @ np.asarray(centre, dtype=np.float64) + affine[:3, 3]).tolist()
    for i, share in enumerate(plan["satellite_shares"]):
        sat_left = (not left) if (plan["bilateral"] and i == 0) else left
        sat_mean = list(centre_mm)
        if sat_left != left:                          # the bilateral partner: mirror across the midline
            sat_mean[0] = -sat_mean[0]
        u = float(torch.rand(1, generator=g, dtype=torch.float64))
        spread = [config.satellite_distance_mm] * 3
        # satellites keep clear of earlier components (not touching them): their volume adds up and the
        # component count is the drawn one
        sat = _sample_centre(sides[sat_left], sat_mean, spread, affine, u, blocked=taken)
        if sat is None:
            continue
        grown = grow_component(allowed_for(sat_left), sat, round(plan["volume_ml"] * share / voxel_ml), g, config,
                               blocked=taken)
        if grown is not None:
            lo, hi, blob = grown
            mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= blob
            _claim(taken, lo, hi, blob)
    return mask
