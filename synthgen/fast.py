"""Fused, batched generation on the GPU: the reference pipeline of :mod:`synthgen.reference` in few passes.

Passes over the batch (each a kernel with the batch in its launch grid, per-sample parameters from small device
tensors): [texture: Philox normals + 3 blur passes] -> fused warp/sample/GMM/bias/target (+ image min/max) -> per
axis: motion blur and slice profile as one kernel (gamma folded into the narrowest), thick-slice resample
(noise in the epilogue of the last) -> smoothing (+ min/max in the epilogue of the last) -> 2-level histogram
quantiles -> clip/strip statistics -> one final pass (clip, skull-strip, flip, z-normalise, output dtype, binary
target).
Axis passes run only when some sample in the batch needs them. No pass exists only for noise or min/max: each
rides in the epilogue of the pass that produces its input. Intermediate volumes are ``config.work_dtype``.

Same parameters and the same texture/noise volumes give the reference's output to float tolerance (float32 work
volumes); the percentile clip uses histogram quantiles (error bound in :mod:`synthgen.kernels.triton_reduce`).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import GeneratorConfig
from .device import to_device
from .ops.blur import gaussian_kernel_table
from .reference import generate_ref, label_tables, lesion_offset
from .sampling import SampleParams

# "cuda" swaps in the CUDA C++ warp (csrc/synth_warp.cu); the other passes are Triton in both backends
AVAILABLE = ("torch", "triton", "cuda") if importlib.util.find_spec("triton") else ("torch",)
OUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WORK_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _kernel_table(device, *fwhms):
    """Per-sample Gaussian taps ``(B, kmax)`` float32 (zero-padded), radii ``(B,)`` int32 and the max radius;
    several FWHM lists compose their Gaussians (:func:`synthgen.ops.blur.gaussian_kernel_table`, one host call)."""
    taps, radius = gaussian_kernel_table(*fwhms)
    table = torch.from_numpy(taps.astype(np.float32))
    radius_t = torch.from_numpy(radius.astype(np.int32))
    return to_device(table, device), to_device(radius_t, device), int(radius.max(initial=0))


@dataclass(frozen=True)
class Pass:
    """One pass over the batch's volumes that :func:`generate_fast` launches (see :func:`pass_plan`)."""
    name: str                   # "randn", "blur", "warp", "resample", "histogram", "stats" or "final"
    stage: str                  # "texture", "warp", "thick" (motion blur, slice profile, resample), "smooth",
                                # "normalise"
    axis: int | None = None     # the axis of a blur or resample
    taps: int = 0               # kernel width (2 r + 1) of a blur: the widest sample's
    gamma: bool = False         # the gamma rides on this blur (applied to every tap)
    epilogue: tuple = ()        # what rides in the pass's epilogue: "noise", "minmax"


def _stage_fwhms(params: SampleParams):
    """Per axis, the FWHM lists each blur stage composes: texture, motion blur + slice profile, smoothing."""
    B = len(params)
    profile = torch.where(params.spacing > 1, params.spacing.double(), torch.zeros((), dtype=torch.float64))
    return {"texture": [[params.gmm_fwhm.tolist()]] * 3,
            "thick": [[params.motion_fwhm[:, a].tolist(), profile[:, a].tolist()] for a in range(3)],
            "smooth": [[params.smooth_fwhm.reshape(B).tolist()]] * 3}


def pass_plan(config: GeneratorConfig, params: SampleParams, texture_given: bool = False,
              clip_levels: int = 2) -> list[Pass]:
    """The passes :func:`generate_fast` runs for a batch, in order: the one definition of what runs (the launcher
    follows it, benchmarks/roofline.py costs it).

    An axis pass runs only when some sample of the batch needs it; the motion blur / slice profile passes run
    narrowest first, with the gamma on the first; the noise rides in the epilogue of the last of the "thick"
    passes and the image's range (min/max) in that of the last pass before the clip.
    """
    pc = params.to("cpu")
    fwhms = _stage_fwhms(pc)
    radius = {stage: [int(gaussian_kernel_table(*rows[a])[1].max(initial=0)) for a in range(3)]
              for stage, rows in fwhms.items()}
    plan = []
    if not texture_given:
        plan.append(Pass("randn", "texture"))
        plan += [Pass("blur", "texture", a, 2 * radius["texture"][a] + 1) for a in range(3) if radius["texture"][a]]
    plan.append(Pass("warp", "warp", epilogue=("minmax",)))
    gamma = True
    for a in sorted(range(3), key=lambda axis: radius["thick"][axis]):
        if radius["thick"][a] > 0 or gamma:
            plan.append(Pass("blur", "thick", a, 2 * radius["thick"][a] + 1, gamma=gamma))
            gamma = False
        if bool((pc.spacing[:, a] > 1).any()):
            plan.append(Pass("resample", "thick", a))
    smooth = [Pass("blur", "smooth", a, 2 * radius["smooth"][a] + 1) for a in range(3) if radius["smooth"][a]]
    last_thick = max(i for i, p in enumerate(plan) if p.stage == "thick")
    plan[last_thick] = _with(plan[last_thick], ("noise",) if smooth else ("noise", "minmax"))
    if smooth:
        smooth[-1] = _with(smooth[-1], ("minmax",))
    plan += smooth
    plan += [Pass("histogram", "normalise") for _ in range(clip_levels)]
    plan += [Pass("stats", "normalise"), Pass("final", "normalise")]
    return plan


def _with(p: Pass, epilogue: tuple) -> Pass:
    return dataclasses.replace(p, epilogue=epilogue)


def _blur_launch(p: Pass, fwhms, device, gamma=None):
    """The callable ``(x, y, epilogue)`` of a planned blur, its kernel table uploaded."""
    from .kernels.triton_blur import blur_axis
    table, radius, _ = _kernel_table(device, *fwhms[p.stage][p.axis])
    return functools.partial(blur_axis, kernels=table, radius=radius, axis=p.axis, gamma=gamma if p.gamma else None)


def _run(passes, x, y, epilogue=None):
    """Run ``passes`` ping-ponging between ``x`` and ``y``, ``epilogue`` on the last; returns (result, spare)."""
    for i, run in enumerate(passes):
        run(x, y, epilogue=epilogue if i == len(passes) - 1 else None)
        x, y = y, x
    return x, y


def hist_quantiles(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qs, levels: int = 2) -> torch.Tensor:
    """Per-sample quantiles ``(B, len(qs))`` of ``x`` ``(B, ...)`` from histograms (torch.quantile's definition).

    Args:
        lo, hi: ``(B,)`` per-sample min and max of ``x``.
        levels: 1 (error <= (max - min) / 4096) or 2 (error <= 4 (max - min) / 4096**2).
    """
    from .kernels import triton_reduce as tr
    B, N, NB = x.shape[0], x[0].numel(), tr.NBINS
    span = (hi - lo).double()
    scale = torch.where(span > 0, NB / span.clamp(min=1e-300), torch.zeros_like(span)).float()
    ranks, weights = [], []
    for q in qs:
        pos = float(q) * (N - 1)
        k0 = math.floor(pos)
        ranks += [k0, min(k0 + 1, N - 1)]
        weights.append(pos - k0)
    ranks_t = to_device(torch.tensor(ranks, dtype=torch.int64), x.device).expand(B, -1).contiguous()
    h1 = tr.histogram(x, lo, scale).long()
    c1 = h1.cumsum(1)
    bin1 = torch.searchsorted(c1, ranks_t, right=True).clamp(max=NB - 1)
    below = c1.gather(1, bin1) - h1.gather(1, bin1)
    if levels == 1:
        pos_in_bin = bin1.double() + (ranks_t - below + 0.5).double() / h1.gather(1, bin1).clamp(min=1).double()
    else:
        h2 = tr.histogram(x, lo, scale, select=bin1.int().contiguous()).long()
        c2 = h2.cumsum(2)
        r2 = (ranks_t - below).unsqueeze(-1)
        sub = torch.searchsorted(c2, r2, right=True).clamp(max=NB - 1)
        below2 = c2.gather(2, sub) - h2.gather(2, sub)
        frac = (r2 - below2 + 0.5).double() / h2.gather(2, sub).clamp(min=1).double()
        pos_in_bin = bin1.double() + (sub.double() + frac).squeeze(-1) / NB
    vals = lo.double().unsqueeze(1) + pos_in_bin * (span / NB).unsqueeze(1)
    vals = torch.minimum(torch.maximum(vals, lo.double().unsqueeze(1)), hi.double().unsqueeze(1))
    w = to_device(torch.tensor(weights, dtype=torch.float64), x.device)
    return (vals[:, 0::2] * (1 - w) + vals[:, 1::2] * w).float()


@dataclass
class WarpArgs:
    """Everything one launch of the fused warp (``triton_warp`` or ``cuda_loader``) reads and writes."""
    tissue: torch.Tensor            # (1 | B, C, X, Y, Z) uint8 labels or float probabilities, contiguous
    tissue_bstride: int             # elements between the maps of two samples (0: one map for all)
    lesion: torch.Tensor | None     # (1 | B, 2, x, y, z) float32 [intensity weight, label weight] over the map
    lesion_bstride: int             # box [lesion_offset, lesion_offset + (x, y, z)), or None
    lesion_offset: tuple
    threshold: float                # label weight above which a voxel is lesion
    matrix: torch.Tensor            # (B, 9) float32
    center: torch.Tensor            # (B, 3) float32
    elastic: torch.Tensor           # (B, 3, n, n, n) float32 B-spline coefficients (voxels)
    bias: torch.Tensor              # (B, 1, m, m, m) float32 log-field coefficients
    mu: torch.Tensor                # (B, L + 1) float32 per-label means, the lesion's last
    sigma: torch.Tensor             # (B, L + 1) float32
    texture: torch.Tensor           # (B, *crop) unit texture (work dtype)
    tex_scale: torch.Tensor         # (B,) float32, multiplies the texture
    flip: torch.Tensor              # (B, 3) uint8
    crop: tuple
    image: torch.Tensor             # (B, *crop) out: intensity after GMM, lesion and bias (work dtype)
    target: torch.Tensor            # (B, *crop) uint8 out: target class, flipped
    classes: torch.Tensor           # (L,) uint8 label -> target class
    lesion_class: int


def _one_map(tissue: torch.Tensor) -> bool:
    """One map for the whole batch: a batch of one, or one broadcast along the batch (stride 0)."""
    return tissue.shape[0] == 1 or tissue.stride(0) == 0


def warp_args(tissue, lesion, params: SampleParams, texture, tex_scale, image, target, tables,
              threshold: float) -> WarpArgs:
    """The fused warp's :class:`WarpArgs` for a batch: per-sample parameters uploaded without a host sync.

    Args:
        tissue: ``(1 | B, C, X, Y, Z)`` labels (any integer dtype) or probabilities (float32 / float16 are read
            as they are).
        lesion: ``(intensity_weight, label_weight[, offset])``, each weight ``(1 | B, 1, x, y, z)`` over the map
            box that starts at voxel ``offset`` (default 0: the whole map), or None.
        tables: ``(classes, lesion_class)`` as :func:`label_tables`.
    """
    dev = image.device
    B = len(params)
    pc = params.to("cpu")

    def up(t, dtype=torch.float32):
        return to_device(t.to(dtype).contiguous(), dev)

    tissue = tissue[:1] if _one_map(tissue) else tissue   # one map: one copy
    if not tissue.is_floating_point():
        tissue = tissue.to(torch.uint8)
    elif tissue.dtype not in (torch.float32, torch.float16):
        tissue = tissue.to(torch.float32)
    tis = tissue.contiguous()
    les, offset = None, (0, 0, 0)
    if lesion is not None:
        les = torch.cat([lesion[0], lesion[1]], 1).to(device=dev, dtype=torch.float32).contiguous()
        offset = tuple(int(o) for o in lesion_offset(lesion))
    return WarpArgs(tis, 0 if tis.shape[0] == 1 else tis[0].numel(), les,
                    0 if les is None or les.shape[0] == 1 else les[0].numel(), offset, float(threshold),
                    up(pc.matrix.reshape(B, 9)), up(pc.center), up(pc.elastic), up(pc.bias), up(pc.gmm_mu),
                    up(pc.gmm_sigma), texture, tex_scale, up(pc.flip, torch.uint8),
                    tuple(int(c) for c in image.shape[1:]), image, target, tables[0], int(tables[1]))


def _check(config, tissue, params, lesion, backend, texture, noise, clip_levels):
    if not isinstance(config, GeneratorConfig):
        raise TypeError(f"`config` must be a GeneratorConfig, got {type(config).__name__}")
    if not isinstance(params, SampleParams):
        raise TypeError(f"`params` must be SampleParams, got {type(params).__name__}")
    if backend not in ("triton", "cuda"):
        raise ValueError(f"`backend` must be 'triton' or 'cuda', got {backend!r}")
    if clip_levels not in (1, 2):
        raise ValueError(f"`clip_levels` must be 1 or 2, got {clip_levels!r}")
    if config.image_dtype not in OUT_DTYPES:
        raise ValueError(f"`config.image_dtype` must be one of {tuple(OUT_DTYPES)}, got {config.image_dtype!r}")
    if config.work_dtype not in WORK_DTYPES:
        raise ValueError(f"`config.work_dtype` must be one of {tuple(WORK_DTYPES)}, got {config.work_dtype!r}")
    if backend == "cuda" and config.work_dtype != "float32":
        raise ValueError(f"work_dtype {config.work_dtype!r} needs the triton backend: the CUDA C++ warp reads and "
                         "writes float32 volumes")
    B, crop = len(params), tuple(int(c) for c in config.crop)
    if tissue.ndim != 5 or tissue.shape[0] not in (1, B):
        raise ValueError(f"`tissue` must be (1 or {B}, C, X, Y, Z), got shape {tuple(tissue.shape)}")
    if texture is not None and texture.numel() != B * math.prod(crop):
        raise ValueError(f"`texture` must be ({B}, 1, *{crop}), got shape {tuple(texture.shape)}")
    if noise is not None and (len(noise) != 2 or any(n.numel() != B * math.prod(crop) for n in noise)):
        raise ValueError(f"`noise` must be two ({B}, 1, *{crop}) standard-normal volumes")
    if lesion is not None:
        lo = lesion_offset(lesion) if len(lesion) in (2, 3) else None
        if (lo is None or lesion[0].shape != lesion[1].shape or lesion[0].ndim != 5
                or any(o < 0 or o + n > m for o, n, m in zip(lo, lesion[0].shape[2:], tissue.shape[2:]))):
            raise ValueError(f"`lesion` must be (intensity_weight, label_weight[, offset]) inside the tissue grid "
                             f"{tuple(tissue.shape[2:])}")


@torch.no_grad()
def generate_fast(config: GeneratorConfig, tissue: torch.Tensor, params: SampleParams, lesion=None,
                  backend: str = "triton", *, texture: torch.Tensor | None = None, noise=None,
                  clip_levels: int = 2, tables=None):
    """The generator's batch through the fast kernels.

    Args:
        config: validated generator config (crop, clip, noise kind, lesion threshold, target, image and work
            dtypes).
        tissue: ``(1 | B, 1, X, Y, Z)`` integer labels or ``(1 | B, K, X, Y, Z)`` float probabilities.
        params: the batch's :class:`SampleParams` (CPU or device).
        lesion: ``(intensity_weight, label_weight[, offset])``, each weight ``(B, 1, x, y, z)`` over the map box
            from voxel ``offset`` (default: the whole map), or None.
        backend: "triton", or "cuda" (CUDA C++ warp, Triton elsewhere).
        texture: unit-variance within-class texture ``(B, 1, *crop)`` to use instead of drawing it (tests).
        noise: two standard-normal volumes ``(B, 1, *crop)`` to use instead of Philox (tests).
        clip_levels: histogram levels of the percentile clip (see :func:`hist_quantiles`).
        tables: ``(target_of_label, lesion_class)`` as :func:`label_tables` gives them (None: made here).

    Returns:
        ``image`` ``(B, 1, *crop)`` and ``target`` ``(B, *crop)`` uint8, as :class:`SynthGenerator`.

    Raises:
        TypeError / ValueError: bad argument types, shapes, backend, clip levels or dtype.
    """
    _check(config, tissue, params, lesion, backend, texture, noise, clip_levels)
    from .kernels import triton_blur, triton_noise, triton_reduce
    dev = tissue.device
    B, crop = len(params), tuple(int(c) for c in config.crop)
    work_dtype = WORK_DTYPES[config.work_dtype]
    pc = params.to("cpu")                       # host copies for kernel tables and launch decisions

    def up(t, dtype=torch.float32):             # per-sample parameters, uploaded without a host sync
        return to_device(t.to(dtype).contiguous(), dev)

    f32 = dict(device=dev, dtype=torch.float32)
    seeds, flip, strip = up(pc.noise_key, torch.int64), up(pc.flip, torch.uint8), up(pc.skull_strip, torch.uint8)
    if tissue.is_floating_point():      # one map for the batch: converted once, not once per sample
        tissue = (tissue[:1] if tissue.stride(0) == 0 else tissue).to(torch.float32)

    plan = pass_plan(config, pc, texture is not None, clip_levels)
    fwhms = _stage_fwhms(pc)
    stage = {name: [p for p in plan if p.stage == name] for name in ("texture", "thick", "smooth")}
    a = torch.empty(B, *crop, device=dev, dtype=work_dtype)
    tmp = torch.empty_like(a)
    if texture is not None:
        tex = texture.reshape(B, *crop).to(device=dev, dtype=work_dtype).contiguous()
        tscale = torch.ones(B, **f32)
        image, spare = a, tmp
    else:
        triton_noise.randn(a, seeds, 0)
        tex, tmp = _run([_blur_launch(p, fwhms, dev) for p in stage["texture"] if p.name == "blur"], a, tmp)
        taps, _ = gaussian_kernel_table(pc.gmm_fwhm.tolist())      # unit variance after the 3 axis blurs
        tscale = up(torch.from_numpy(np.sqrt((taps ** 2).sum(1)) ** -3))
        image, spare = tmp, tex                 # the texture buffer is free once the warp has read it
    target = torch.empty(B, *crop, device=dev, dtype=torch.uint8)
    tables = tables if tables is not None else label_tables(config, dev)
    if backend == "cuda":
        from .kernels import cuda_loader as warp
    else:
        from .kernels import triton_warp as warp
    lo, hi = warp.warp_sample(warp_args(tissue, lesion, pc, tex, tscale, image, target, tables,
                                        config.lesion_threshold), minmax=True)
    lesion_class = tables[1]

    # per axis (pass_plan): motion blur and slice profile as one kernel, thick-slice resample. Axes commute, so the
    # gamma (applied to every tap) rides on the narrowest kernel, run first. The noise is added in the epilogue of
    # the last of these passes, the clip range recorded by the last pass before the clip.
    span = (hi - lo).clamp(min=1e-6)
    gamma = torch.stack([lo, span, up(pc.gamma)], 1).contiguous()
    passes = []
    for p in stage["thick"]:
        if p.name == "blur":
            passes.append(_blur_launch(p, fwhms, dev, gamma))
            continue
        r = pc.spacing[:, p.axis]
        n_low = torch.tensor([len(torch.arange(0, crop[p.axis] - 1 + 1e-6, float(ri), dtype=torch.float64))
                              for ri in r.tolist()], dtype=torch.int32)
        passes.append(functools.partial(triton_blur.resample_axis, spacing=up(r), n_low=up(n_low, torch.int32),
                                        axis=p.axis))
    smooth = [_blur_launch(p, fwhms, dev) for p in stage["smooth"]]
    normals = None if noise is None else tuple(v.reshape(B, *crop).to(**f32).contiguous() for v in noise)
    noisy = triton_blur.Epilogue(up(pc.noise_std), seeds, normals, rician=config.noise.kind == "rician",
                                 minmax="minmax" in stage["thick"][-1].epilogue)
    last = triton_blur.Epilogue(minmax=True) if smooth else noisy
    x, y = _run(passes, image, spare, noisy)
    x, y = _run(smooth, x, y, last)

    lo, hi = last.range
    q = hist_quantiles(x, lo, hi, config.clip, clip_levels).contiguous()
    psum, pm2 = triton_reduce.clip_strip_stats(x, target, q, strip, flip, crop)
    N = math.prod(crop)
    counts = torch.full((psum.shape[1],), float(triton_reduce.BLOCK), device=dev, dtype=torch.float64)
    counts[-1] = N - triton_reduce.BLOCK * (psum.shape[1] - 1)
    psum, pm2 = psum.double(), pm2.double()
    mean = psum.sum(1) / N
    m2 = pm2.sum(1) + (counts * (psum / counts - mean[:, None]) ** 2).sum(1)
    std = (m2 / N).sqrt()
    ms = torch.stack([mean, 1.0 / std.clamp(min=1e-6)], 1).float().contiguous()
    out = torch.empty(B, 1, *crop, device=dev, dtype=OUT_DTYPES[config.image_dtype])
    triton_reduce.finalise(x, target, out, q, strip, flip, ms, crop, config.target == "lesion", lesion_class)
    return out, target


# ------------------------------------------------------------------------------------------------- self-check
SELF_CHECK_ATOL = {"float32": 1e-3, "float16": 0.1}   # max |fast - reference| in z units (float32 measured <= 2e-5;
                                                      # float16 work volumes <= 0.03)
SELF_CHECK_TARGET = 0.999            # share of target voxels that must agree (FMA contraction may move a class
                                     # boundary voxel; the interpreter and the host build agree on every voxel)
_checked: dict = {}


def self_check_size(n: int, small: int) -> int:
    """A size of at most ``small + 15`` with the remainder of ``n`` mod 16. Triton specialises a kernel on
    whether each integer argument is divisible by 16 (and equal to 1); sizes, strides and voxel counts are sums
    and products of the sizes, so equal remainders give the kernels that ``n`` gets. (Block counts and a
    batch's lesion boxes may still specialise otherwise: those compile when training meets them.)"""
    n = int(n)
    return n if n <= small + 15 else small + n % 16


def self_check_crop(crop) -> tuple:
    """The self-check's crop: small (at most 47 per axis), specialised as ``crop``."""
    return tuple(self_check_size(n, 32) for n in crop)


def _check_key(config: GeneratorConfig, tissue: torch.Tensor, lesion, backend: str):
    return (str(tissue.device), backend, tissue.is_floating_point(), int(tissue.shape[1]), lesion is not None,
            _one_map(tissue), tuple(self_check_size(n, 16) for n in tissue.shape[2:]),
            repr(_self_check_config(config)))


def _self_check_config(config: GeneratorConfig) -> GeneratorConfig:
    """``config`` at the self-check's crop and with one contrast (the kernel variants depend on neither)."""
    return dataclasses.replace(config, crop=self_check_crop(config.crop), channels=1)


SELF_CHECK_REACH = 1e-4   # weight above which a changed class voxel reaches another through the blurs


def _compare(img, ref_img, tgt, ref_tgt, params: SampleParams) -> tuple[float, float]:
    """``(max |image - reference| away from changed classes, share of equal target voxels)``.

    One rule for labels and probabilities: a voxel that changes class (a rounding at a class boundary) changes
    the image there by a class contrast, and the blurs after the warp (motion, slice profile, resampling,
    smoothing: linear) carry it to other voxels with the weights they give the changed voxels' indicator. The
    target rule bounds how many voxels may change class; the image rule holds wherever that weight is below
    ``SELF_CHECK_REACH``, where a class contrast of a few z moves the image by less than the tolerance."""
    from . import ops
    differ = (tgt != ref_tgt)[:, None]
    spread = ops.flip(differ.float(), params.flip)               # back to the warp's orientation, blurred, flipped
    spread = ops.gaussian_blur(ops.thick_slices(spread, params.spacing, params.motion_fwhm), params.smooth_fwhm)
    far = (ops.flip(spread, params.flip) <= SELF_CHECK_REACH) & ~differ
    gap = (img.float() - ref_img.float()).abs()[far.expand_as(img)]
    return float(gap.max()) if gap.numel() else 0.0, float(1.0 - differ.float().mean())


def self_check(config: GeneratorConfig, tissue: torch.Tensor, lesion, backend: str) -> tuple[bool, str]:
    """Run ``backend`` as training runs it (its own Philox texture and noise, kernels specialised as for the
    config's crop and map) and the reference with the same normals drawn by :mod:`synthgen.ops.philox`, on a
    small piece of ``tissue`` with every per-sample switch exercised, and compare: ``(ok, what was found)``.
    Exceptions are part of the answer."""
    from .ops import philox, texture_from_normals
    from .sampling import sample_params
    cfg = _self_check_config(config)
    dev = tissue.device
    try:
        size = [self_check_size(n, 16) for n in tissue.shape[2:]]
        lo = [(n - s) // 2 for n, s in zip(tissue.shape[2:], size)]
        piece = tissue[:1, :, lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]].contiguous()
        # one map for the batch stays one (batch stride 0), per-sample maps get a second one: the map stride the
        # kernels will see
        piece = piece.expand(2, *piece.shape[1:]) if _one_map(tissue) else torch.cat([piece, piece.flip(2)])
        params = sample_params(cfg, size, 0, 0, 2)
        # every switch on in one sample and off in the other: each axis pass and epilogue variant runs
        params.skull_strip = torch.tensor([True, False])
        params.flip = torch.tensor([[True, False, True], [False, True, False]])
        params.spacing = torch.tensor([[2.5, 2.5, 2.5], [1.0, 3.3, 1.0]])
        params.motion_fwhm = torch.tensor([[0.0, 2.5, 0.0], [0.0, 0.0, 1.7]])
        params.smooth_fwhm = torch.tensor([0.8, 0.0])
        params.gmm_fwhm = torch.tensor([1.3, 0.0])
        weights = None
        if lesion is not None:      # boxed weights at an offset inside the map, as LesionSource gives them
            inner = [max(n - 2, 1) for n in size]
            box = torch.zeros(2, 1, *inner, device=dev)
            box[:, :, inner[0] // 4:inner[0] // 2, inner[1] // 4:inner[1] // 2, inner[2] // 3:2 * inner[2] // 3] = 1
            weights = (box * 0.7, box, tuple(1 if n > 2 else 0 for n in size))
        # the normals the kernels draw (streams 0 texture, 1-2 noise), drawn again by the reference's Philox
        seeds, n = to_device(params.noise_key.to(torch.int64), dev), math.prod(cfg.crop)
        normals = [philox.randn(seeds, n, k).reshape(2, 1, *cfg.crop) for k in range(3)]
        texture = texture_from_normals(normals[0], params.gmm_fwhm)
        tables = label_tables(cfg, dev)
        ref_img, ref_tgt = generate_ref(cfg, piece, params, weights, tables, texture=texture, noise=normals[1:])
        img, tgt = generate_fast(cfg, piece, params, weights, backend, tables=tables)
        diff, agree = _compare(img, ref_img, tgt, ref_tgt, params)
    except Exception as err:          # compile or launch failure: the fast path cannot be trusted here
        return False, f"{type(err).__name__}: {err}"
    tol = SELF_CHECK_ATOL[config.work_dtype] + (2 ** -7 if config.image_dtype != "float32" else 0.0) * 8
    ok = diff <= tol and agree >= SELF_CHECK_TARGET
    return ok, f"max |image - reference| {diff:.3g} z (tolerance {tol:.3g}), target {100 * agree:.2f} % equal " \
               f"(needs {100 * SELF_CHECK_TARGET:.1f} %)"


def checked_backend(config: GeneratorConfig, tissue: torch.Tensor, lesion, backend: str) -> str:
    """``backend`` once it has passed :func:`self_check` for this configuration and device, else "torch" (after one
    warning with the reason and the numbers). ``SYNTHGEN_SELF_CHECK=0`` skips the check."""
    import os
    import warnings
    if os.environ.get("SYNTHGEN_SELF_CHECK", "1").strip() == "0":
        return backend
    key = _check_key(config, tissue, lesion, backend)
    if key not in _checked:
        ok, found = self_check(config, tissue, lesion, backend)
        _checked[key] = ok
        if not ok:
            name = torch.cuda.get_device_name(tissue.device) if tissue.is_cuda else str(tissue.device)
            warnings.warn(f"synthgen: the {backend} fast path disagrees with the reference on {name} ({found}); "
                          "this configuration runs the reference on the device instead (SYNTHGEN_BACKEND="
                          f"{backend} forces the fast path, SYNTHGEN_SELF_CHECK=0 skips the check)", RuntimeWarning,
                          stacklevel=3)
    return backend if _checked[key] else "torch"
