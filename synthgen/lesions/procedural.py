"""Procedural ischaemic stroke lesion masks, synthesised on the device from a 64-bit key (no data set).

Beyond the paper (which pastes real ATLAS masks). One lesion is one vascular event:

1. draw the number of connected components, the total volume (inverse CDF through log-volume quantiles),
   the hemisphere and the arterial territory from :class:`ProceduralLesionConfig` (calibrated on 1449
   SOOP acute stroke masks by ``scripts/calibrate_lesions.py``);
2. pick the main component's centre among parenchyma voxels (GM, WM, GM/WM PV; never CSF or background) of
   that hemisphere, drawn from one Gaussian of the territory's mixture: where the SOOP lesions of that JHU
   arterial territory lie (``ProceduralLesionConfig.territory_components``, MNI mm; or, with None, one Gaussian
   over the whole atlas territory). The atlas itself (CC BY-SA) is not shipped: its territories enter only
   through these statistics;
3. grow each component in a box around its centre from the score ``1 - rho + roughness * noise`` (``rho``
   the radius in a randomly rotated, elongated ellipsoid, ``noise`` a smooth random field, so the outline is
   irregular and the shape follows the tissue it may occupy): the component is the ``n`` voxels best connected
   to the centre, those whose best path from it (through allowed voxels) has the highest lowest score (a
   grayscale reconstruction of the score from the centre). It is one 26-connected component of ``n`` voxels,
   or of every allowed voxel of its box connected to the centre (within twice the box's reach) when the tissue
   runs out;
4. satellites (the other components) share the remaining volume and sit around the main one (Gaussian
   offset, same hemisphere unless the lesion is bilateral), clear of the components before them.

All scalar draws, candidate points and coarse noise grids come from a CPU generator seeded with the key; the
rest runs on the tissue's device in a number of operations fixed by those draws, with no read back to the host
(a lesion's voxels never decide what runs next): centres are the first allowed of the candidate points,
gathered on the device, and each component lives in a box of a size fixed on the host around that centre.
Nothing is computed over the whole map. A key gives the same lesion on any device (up to float rounding of the
scores).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ProceduralLesionConfig
from ..device import to_device
from ..fields import smooth_field
from .morphology import dilate, fading_coefficients

BOX_REACH = 1.6     # a component's box reaches this many of its ellipsoid's longest semi-axes from its centre
TRIES = 256         # Gaussian candidate centres, then 4 x as many from a 3 x wider one, then 16 x as many uniform
LATTICE = 32768     # and last a shuffled lattice of about this many voxels over the whole grid


def grid_affine(shape, affine=None) -> np.ndarray:
    """The 4x4 voxel -> world (mm) affine of the grid, or a 1 mm RAS grid centred on world 0 if None."""
    if affine is not None:
        return np.asarray(affine, dtype=np.float64)
    out = np.eye(4)
    out[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2
    return out


class VoxelReader:
    """Bool values of a map of ``shape`` read at voxels ``(i, j, k)`` (broadcastable int64 tensors on the map's
    device); False outside the map. ``values_at`` maps flat indices to values: no pass over the whole map."""

    def __init__(self, values_at, shape):
        self.values_at, self.shape = values_at, tuple(int(n) for n in shape)

    @classmethod
    def of(cls, volume: torch.Tensor) -> "VoxelReader":
        """Read a ``(D, H, W)`` bool tensor."""
        flat = volume.reshape(-1)
        return cls(lambda idx: flat[idx], volume.shape)

    def __call__(self, i, j, k) -> torch.Tensor:
        flat, inside = _flat_index(self.shape, i, j, k)
        return self.values_at(flat) & inside


def _flat_index(shape, i, j, k):
    """Flat indices of voxels ``(i, j, k)`` in a C-ordered volume of ``shape`` (clamped into it), and whether
    each lies inside it."""
    d, h, w = shape
    inside = (i >= 0) & (i < d) & (j >= 0) & (j < h) & (k >= 0) & (k < w)
    return (i.clamp(0, d - 1) * h + j.clamp(0, h - 1)) * w + k.clamp(0, w - 1), inside


@dataclass
class Component:
    """One grown component: ``blob`` (a bool box) with its first voxel at map voxel ``lo`` (a ``(3,)`` int64
    device tensor; the box may reach beyond the map, its voxels there are False), and ``claim``, the blob grown by
    one voxel (origin ``lo - 1``), where later components may not go."""
    lo: torch.Tensor
    blob: torch.Tensor
    claim: torch.Tensor

    def axes(self, origin=(0, 0, 0)):
        """Map voxel indices of the blob's box minus ``origin``, as three broadcastable int64 tensors."""
        return _box_axes(self.lo - to_device(torch.tensor(origin), self.lo.device), self.blob.shape)


def _box_axes(lo: torch.Tensor, size):
    """Voxel indices ``lo[a] + 0..size[a]-1`` along each axis, shaped to broadcast into ``size``."""
    return [(lo[a] + torch.arange(n, device=lo.device)).reshape([-1 if b == a else 1 for b in range(3)])
            for a, n in enumerate(size)]


def _blocked(taken, i, j, k) -> torch.Tensor | None:
    """Whether voxels ``(i, j, k)`` lie in the claim of one of the components ``taken`` (None if there are none)."""
    out = None
    for c in taken:
        lo = c.lo - 1
        hit = VoxelReader.of(c.claim)(i - lo[0], j - lo[1], k - lo[2])
        out = hit if out is None else out | hit
    return out


def _side(affine: np.ndarray, i, j, k, left) -> torch.Tensor:
    """Whether voxels ``(i, j, k)`` lie on the ``left`` (a bool or 0-d bool tensor) side of world x = 0."""
    a = [float(v) for v in affine[0]]
    return ((i * a[0] + j * a[1] + k * a[2] + a[3]) < 0) == left


def _candidates(mean_mm: torch.Tensor, chol: np.ndarray, affine: np.ndarray, shape, u: float) -> torch.Tensor:
    """Candidate centres ``(N, 3)`` (int64 voxels on ``mean_mm``'s device) in the order they are tried: ``TRIES``
    Gaussian(mean, chol chol^T) points, then ``4 TRIES`` of a Gaussian 3 x wider (the allowed voxels may sit in
    its tail), then ``16 TRIES`` uniform over the grid, then every voxel of a lattice of about ``LATTICE`` voxels
    spanning the grid, shuffled (only tissue that fits between its points, with every uniform point missing it,
    goes unfound). Drawn on the CPU from ``u``; mapped on the device."""
    dev = mean_mm.device
    g = torch.Generator().manual_seed(int(u * 2 ** 53))
    z = torch.cat([torch.randn(TRIES, 3, generator=g, dtype=torch.float64),
                   3.0 * torch.randn(4 * TRIES, 3, generator=g, dtype=torch.float64)])
    inv = np.linalg.inv(affine)
    # world -> voxel of mean + chol z, as one affine map of z (host-side 3x3s; the mean comes in on the device)
    lin = to_device(torch.as_tensor(inv[:3, :3] @ chol), dev)
    off = to_device(torch.as_tensor(inv[:3, :3]), dev) @ mean_mm + to_device(torch.as_tensor(inv[:3, 3]), dev)
    gauss = torch.round(to_device(z, dev) @ lin.T + off)
    uniform = torch.floor(torch.rand(16 * TRIES, 3, generator=g, dtype=torch.float64) * torch.tensor(shape))
    stride = max(1, math.ceil((math.prod(shape) / LATTICE) ** (1 / 3)))
    lattice = torch.cartesian_prod(*[torch.arange(min(stride // 2, n - 1), n, stride, dtype=torch.float64)
                                     for n in shape]).reshape(-1, 3)
    lattice = lattice[torch.randperm(len(lattice), generator=g)]
    return torch.cat([gauss, to_device(torch.cat([uniform, lattice]), dev)]).to(torch.int64)


def _pick_centre(allowed: VoxelReader, mean_mm: torch.Tensor, chol: np.ndarray, affine: np.ndarray, u: float,
                 left, either_side: bool, taken=()):
    """The first candidate centre (:func:`_candidates`) that ``allowed`` holds on the ``left`` side (or, when
    ``either_side``, if there is none, on either side) outside the claims of ``taken``.

    Returns:
        ``(centre, found)``: ``(3,)`` int64 voxel and a 0-d bool tensor (False: no candidate qualifies; the
        centre is then meaningless), both on the device.
    """
    v = _candidates(mean_mm, chol, affine, allowed.shape, u)
    i, j, k = v.unbind(1)
    hit = allowed(i, j, k)
    blocked = _blocked(taken, i, j, k)
    if blocked is not None:
        hit = hit & ~blocked
    rank = (hit & _side(affine, i, j, k, left)).to(torch.uint8)
    if either_side:
        rank = rank + hit.to(torch.uint8)
    best = torch.argmax(rank).reshape(1)    # the first of the best-ranked candidates (a tensor index: no sync)
    return v.index_select(0, best)[0], rank.index_select(0, best)[0] > 0


def _max_grow(r: torch.Tensor) -> torch.Tensor:
    """The 3x3x3 maximum of a ``(D, H, W)`` float tensor (outside counts as -inf): one max-pool on a GPU; on a CPU,
    where max-pooling is 30x slower, a maximum of shifted copies along each axis in turn (the same values)."""
    if r.device.type != "cpu":
        return torch.nn.functional.max_pool3d(r[None, None], 3, 1, 1)[0, 0]
    for axis in range(3):
        n = r.shape[axis]
        if n < 2:
            continue
        out = r.clone()
        torch.maximum(out.narrow(axis, 1, n - 1), r.narrow(axis, 0, n - 1), out=out.narrow(axis, 1, n - 1))
        torch.maximum(out.narrow(axis, 0, n - 1), r.narrow(axis, 1, n - 1), out=out.narrow(axis, 0, n - 1))
        r = out
    return r


def best_connected(score: torch.Tensor, seed, n_voxels: int, steps: int, read_back: bool | None = None
                   ) -> torch.Tensor:
    """The ``n_voxels`` voxels best connected to voxel ``seed`` of ``score`` (``(D, H, W)`` float32, -inf where not
    allowed): 26-connected to it and, among those, the highest by the lowest score along their best path.

    That value is the grayscale reconstruction of ``score`` from ``seed`` over paths of at most ``steps`` moves
    (at most 2047). Its upper level sets are connected and hold the seed; ties are broken by the step at which a
    voxel reached its value (its predecessor on the path got there earlier), then by voxel order, so any ``n``
    first voxels stay connected. Fewer voxels when fewer are connected within ``steps`` moves; none when the seed
    is not allowed.

    ``read_back`` (default: on a CPU, where it is free) lets the host read the device to work only next to the
    voxels that rose the step before and to stop once none did: the same result, less work. Without it the work
    is the same fixed sequence of operations whatever the data (no host sync).
    """
    if score.dtype != torch.float32 or score.ndim != 3:
        raise ValueError(f"`score` must be a (D, H, W) float32 tensor, got {tuple(score.shape)} {score.dtype}")
    dev = score.device
    read_back = dev.type == "cpu" if read_back is None else read_back
    level = torch.full_like(score, -float("inf"))
    level[seed] = score[seed]
    reached = torch.zeros(score.shape, dtype=torch.int16, device=dev)
    front = [(c, c + 1) for c in seed]          # the box of the voxels that rose last step
    for step in range(1, min(int(steps), 2047) + 1):
        # after `step` steps only the cube of that radius around the seed can have risen: work there alone (or,
        # reading back, only next to the voxels that rose the step before)
        box = tuple(slice(max(a - 1, 0), min(b + 1, n)) for (a, b), n in zip(front, score.shape))
        part = level[box]
        grown = torch.minimum(_max_grow(part), score[box])
        rose = grown > part
        reached[box].masked_fill_(rose, step)
        level[box] = grown
        if read_back:
            flat = rose.view(torch.uint8)
            ij, jk = flat.amax(dim=2), flat.amax(dim=0)      # the cheap reductions: over the last, first axis
            rows = [torch.nonzero(r).flatten() for r in (ij.amax(1), ij.amax(0), jk.amax(0))]
            if rows[0].numel() == 0:
                break
            front = [(s.start + int(r[0]), s.start + int(r[-1]) + 1) for s, r in zip(box, rows)]
        else:
            front = [(max(c - step, 0), min(c + step + 1, n)) for c, n in zip(seed, score.shape)]
    bits = level.view(torch.int32)
    order = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64) * 2048 + (2047 - reached.to(torch.int64))
    order = order.reshape(-1)
    k = min(max(int(n_voxels), 1), order.numel())
    threshold = torch.topk(order, k, sorted=False).values.min()
    above = order > threshold
    tie = order == threshold
    blob = above | (tie & (torch.cumsum(tie, 0) <= k - above.sum()))
    return (blob & (level.reshape(-1) > -float("inf"))).reshape(score.shape)


def grow_component(allowed: VoxelReader, centre: torch.Tensor, found, n_voxels: int, g: torch.Generator,
                   config: ProceduralLesionConfig, affine: np.ndarray, left=None, taken=()) -> Component:
    """One irregular component of ``n_voxels`` voxels around ``centre`` (fewer when the tissue of its box that is
    connected to the centre runs out).

    The box reaches ``BOX_REACH`` times the ellipsoid's longest semi-axis (plus 2 voxels) from the centre, never
    further than the map's size minus one along an axis (from any centre it then spans the map): room for the
    noise and for spreading along the tissue the component may occupy. Its size is fixed on the host; where it lies
    is the device's centre. Paths from the centre are followed for up to twice the box's reach.

    Args:
        allowed: voxels the component may occupy.
        centre: ``(3,)`` int64 voxel on the device; ``found``: 0-d bool tensor, False for no component.
        n_voxels: target size in voxels.
        g: CPU generator (shape and noise draws).
        config: elongation, roughness and noise scale.
        affine: the grid's voxel -> world affine (the hemisphere test).
        left: the side of world x = 0 the component keeps to (a 0-d bool tensor), or None for either.
        taken: earlier components: their claims are not allowed.
    """
    n_voxels = max(1, int(n_voxels))
    radius = (3.0 * n_voxels / (4.0 * math.pi)) ** (1.0 / 3.0)
    log_axes = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * math.log(config.elongation)
    axes = radius * torch.exp(log_axes - log_axes.mean())          # same volume as the sphere
    rot = _random_rotation(g)
    reach = math.ceil(BOX_REACH * float(axes.max()) + 2)
    half = [min(reach, n - 1) for n in allowed.shape]
    size = tuple(2 * h + 1 for h in half)
    coeffs = fading_coefficients(g, size, max(2.0, config.noise_scale * radius))
    dev = centre.device
    lo = centre - to_device(torch.tensor(half), dev)
    i, j, k = _box_axes(lo, size)
    ok = allowed(i, j, k) & found
    if left is not None:
        ok = ok & _side(affine, i, j, k, left)
    blocked = _blocked(taken, i, j, k)
    if blocked is not None:
        ok = ok & ~blocked
    # the ellipsoid radius of each voxel's offset d from the centre: |(d R) / axes|, a broadcast sum per axis
    d = [(x - lo[a] - h).to(torch.float32) for a, (x, h) in enumerate(zip((i, j, k), half))]
    scale = (rot / axes).tolist()                       # R[a, b] / axes[b], host floats
    rho = sum((d[0] * scale[0][b] + d[1] * scale[1][b] + d[2] * scale[2][b]) ** 2 for b in range(3)).sqrt()
    noise = smooth_field(to_device(coeffs, dev), size)[0, 0]
    score = torch.where(ok, 1.0 - rho + config.roughness * noise, torch.full_like(rho, -float("inf")))
    blob = best_connected(score, tuple(half), n_voxels, 2 * max(half))
    return Component(lo, blob, dilate(torch.nn.functional.pad(blob, (1, 1, 1, 1, 1, 1))))


def paste(components, out: torch.Tensor, origin=(0, 0, 0)) -> torch.Tensor:
    """OR the components into the bool volume ``out`` whose first voxel is map voxel ``origin`` (the parts beyond
    it are dropped); returns ``out``."""
    if not components:
        return out
    spill = torch.zeros(out.numel() + 1, dtype=torch.bool, device=out.device)   # last: voxels beyond ``out``
    one = torch.ones((), dtype=torch.bool, device=out.device)
    for c in components:
        flat, inside = _flat_index(out.shape, *c.axes(origin))
        spill.index_put_((torch.where(c.blob & inside, flat, out.numel()).reshape(-1),), one)
    return out.logical_or_(spill[:-1].reshape(out.shape))


def components_box(components, shape):
    """``(lo, hi)`` voxel box of the components' voxels within a grid of ``shape``, or None if they have none.
    Reads the device (use where that is free: on a CPU)."""
    lo, hi = None, None
    for c in components:
        box = [torch.nonzero(c.blob.any(dim=tuple(b for b in range(3) if b != a))).flatten() for a in range(3)]
        if any(b.numel() == 0 for b in box):
            continue
        start = [int(c.lo[a]) + int(box[a][0]) for a in range(3)]
        stop = [int(c.lo[a]) + int(box[a][-1]) + 1 for a in range(3)]
        lo = start if lo is None else [min(x, y) for x, y in zip(lo, start)]
        hi = stop if hi is None else [max(x, y) for x, y in zip(hi, stop)]
    if lo is None:
        return None
    return tuple(max(a, 0) for a in lo), tuple(min(b, n) for b, n in zip(hi, shape))


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


def lesion_components(allowed: VoxelReader, key: int, config: ProceduralLesionConfig, affine=None,
                      device=None) -> list[Component]:
    """The components of the procedural lesion of ``key`` on a map read through ``allowed`` (the voxels a lesion
    may occupy: GM, WM, PV), on ``device`` (default: the CPU). No read back from the device.

    Args:
        allowed: the map's parenchyma, read at voxels.
        key: 64-bit integer that alone determines the lesion.
        config: the lesion distribution.
        affine: 4x4 voxel -> world (MNI mm, RAS+) of the grid; None assumes 1 mm RAS centred on world 0.
            Hemispheres are split at world x = 0; territories are placed in world mm.
    """
    shape = allowed.shape
    affine = grid_affine(shape, affine)
    dev = torch.device("cpu") if device is None else torch.device(device)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    g = torch.Generator().manual_seed(int(key))
    plan = draw_lesion_plan(g, config)
    straddle = plan["bilateral"] and plan["count"] == 1
    keep_side = not (config.cross_midline or straddle)

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
    chol = np.linalg.cholesky(cov + np.eye(3) * 1e-6)
    mean = to_device(torch.tensor(mean, dtype=torch.float64), dev)
    centre, found = _pick_centre(allowed, mean, chol, affine, plan["u_centre"], plan["left"], either_side=True)
    left = _side(affine, *centre.unbind(), True)       # the side it landed on (the other when that had none)
    main = grow_component(allowed, centre, found, n_main, g, config, affine, left if keep_side else None)
    taken = [main]
    lin, off = (to_device(torch.as_tensor(a), dev) for a in (affine[:3, :3], affine[:3, 3]))
    centre_mm = lin @ centre.to(torch.float64) + off
    spread = np.eye(3) * config.satellite_distance_mm
    for i, share in enumerate(plan["satellite_shares"]):
        partner = plan["bilateral"] and i == 0       # the bilateral partner: mirrored across the midline
        sat_left = ~left if partner else left
        sat_mean = centre_mm.clone()
        if partner:
            sat_mean[0] = -sat_mean[0]
        u = float(torch.rand(1, generator=g, dtype=torch.float64))
        # satellites keep clear of earlier components (not touching them): their volume adds up and the
        # component count is the drawn one
        sat, sat_found = _pick_centre(allowed, sat_mean, spread, affine, u, sat_left, either_side=False,
                                      taken=taken)
        n = round(plan["volume_ml"] * share / voxel_ml)
        taken.append(grow_component(allowed, sat, sat_found & found, n, g, config, affine,
                                    sat_left if keep_side else None, taken))
    return taken


def procedural_lesion(parenchyma: torch.Tensor, key: int, config: ProceduralLesionConfig,
                      affine=None) -> torch.Tensor:
    """One procedural stroke lesion mask on the grid of ``parenchyma`` (:func:`lesion_components`, pasted).

    Args:
        parenchyma: ``(D, H, W)`` bool, voxels a lesion may occupy (GM, WM, PV).
        key, config, affine: as for :func:`lesion_components`.

    Returns:
        ``(D, H, W)`` bool mask on ``parenchyma``'s device (empty if no candidate centre finds parenchyma: a grid
        without any, or with only specks that every candidate misses, :func:`_candidates`).
    """
    comps = lesion_components(VoxelReader.of(parenchyma), key, config, affine, parenchyma.device)
    return paste(comps, torch.zeros(parenchyma.shape, dtype=torch.bool, device=parenchyma.device))
