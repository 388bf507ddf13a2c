"""The reference pipeline of the paper (section 2): the whole synthetic sample by the plain-torch ops of
:mod:`synthgen.ops`, the definition that :class:`synthgen.generator.SynthGenerator` runs on the torch backend and
that the fast path (:mod:`synthgen.fast`), its self-check, the tests and the benchmarks compare with.

Per sample: the affine + elastic transform pulls the tissue map (and lesion weights) onto the output grid, GMM
intensities with within-class texture, then bias field, gamma, motion blur, thick slices, noise, smoothing, clip to
the 1st/99th percentiles, random skull-strip, flips, z-normalisation. It imports neither the generator nor the fast
path.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from . import ops
from .config import GeneratorConfig
from .device import to_device
from .sampling import SampleParams, generator_for


def lesion_offset(lesion) -> tuple:
    """The map voxel where a lesion's weight volumes start: ``lesion[2]`` when given, else the map's origin."""
    return tuple(lesion[2]) if len(lesion) > 2 and lesion[2] is not None else (0, 0, 0)


def label_tables(config: GeneratorConfig, device) -> tuple[torch.Tensor, int]:
    """``config.target_table()`` as a uint8 device tensor, and the lesion class."""
    table, lesion = config.target_table()
    return to_device(torch.tensor(table, dtype=torch.uint8), device), lesion


def warp_sample_ref(tissue: torch.Tensor, lesion, params: SampleParams, texture: torch.Tensor, crop,
                    classes: torch.Tensor, lesion_class: int, threshold: float, host_params=None):
    """The warp + sampling + GMM + bias stage of the pipeline, by the reference ops: what one fused kernel does
    on the GPU (:func:`synthgen.fast.warp_args`), and the definition it is tested against.

    One transform (affine + elastic) pulls the tissue map (nearest for labels, linear for probabilities; outside
    the map is background) and the lesion weights onto the output grid; the GMM draws each label's intensity with
    the within-class ``texture``, the lesion is blended in by its intensity weight, the bias field multiplies.

    Args:
        tissue: ``(B, 1, X, Y, Z)`` integer labels or ``(B, K, X, Y, Z)`` probabilities.
        lesion: ``(intensity_weight, label_weight[, offset])``, each weight ``(B, 1, x, y, z)`` over the map box
            that starts at voxel ``offset`` (default 0: the whole map), or None.
        params: the batch's parameters on ``tissue``'s device.
        texture: ``(B, 1, *crop)`` unit-variance texture.
        classes: ``(L,)`` uint8 target class of each label (or channel), ``lesion_class`` the lesion's.
        threshold: label weight above which a voxel is lesion.
        host_params: a host copy of ``params`` for the lesion's seeing boxes (None: ``params`` read back).

    Returns:
        ``(image, target)``: ``(B, 1, *crop)`` float32 and uint8, before flips.
    """
    coords = ops.affine_elastic_coords(crop, params.matrix, params.center, params.elastic)
    hp = params if host_params is None else host_params
    reach = ops.reach_box(crop, hp.matrix, hp.center, hp.elastic, tissue.shape[2:])     # on the host: no sync
    if tissue.is_floating_point():
        probs = ops.grid_pull(tissue.float(), coords, "linear", reach)
        outside = (1 - probs.sum(1, keepdim=True)).clamp(min=0)
        warped = torch.cat([probs[:, :1] + outside, probs[:, 1:]], 1)   # outside the map is background
        label = warped.argmax(1, keepdim=True)
    else:
        warped = ops.grid_pull(tissue, coords, "nearest", reach)
        label = warped.long()
    target = classes[label]                                                  # (B, 1, *crop) uint8
    image = ops.gmm_sample(warped, params.gmm_mu, params.gmm_sigma, texture, check_labels=False)  # maps checked
    if lesion is not None:
        # only the output voxels that can see the lesion's box pull its weights and blend it in (elsewhere its
        # weight is 0, which leaves the voxel as it is: the lesion's cost follows its box, not the crop); the blend
        # is gmm_sample's, voxel for voxel
        lo = lesion_offset(lesion)
        hi = tuple(a + n for a, n in zip(lo, lesion[0].shape[2:]))
        weights = torch.cat([lesion[0], lesion[1]], 1).float()
        offset = to_device(torch.tensor(lo, dtype=coords.dtype), coords.device)
        mu, sigma = params.gmm_mu[:, -1], params.gmm_sigma[:, -1]
        whole = ((0, 0, 0), tuple(weights.shape[2:]))          # the weights' own box, already float
        for b, box in enumerate(ops.seeing_box(crop, hp.matrix, hp.center, hp.elastic, lo, hi)):
            if box is None:
                continue
            sl = (slice(b, b + 1), slice(None), *(slice(a, z) for a, z in zip(*box)))
            w = ops.grid_pull(weights[b:b + 1] if weights.shape[0] > 1 else weights, coords[sl[:1] + sl[2:]] - offset,
                              "linear", whole)
            w_int, w_lab = w[:, :1].clamp(0, 1), w[:, 1:]
            target[sl] = torch.where(w_lab > threshold, torch.full_like(target[sl], lesion_class), target[sl])
            image[sl] = image[sl] * (1 - w_int) + (mu[b] + sigma[b] * texture[sl]) * w_int
    return ops.bias_field(image, params.bias), target


def generate_ref(config: GeneratorConfig, tissue: torch.Tensor, params: SampleParams, lesion, tables,
                 texture: torch.Tensor | None = None, noise=None, stage=None):
    """The whole pipeline by the reference ops (paper section 2): what :class:`SynthGenerator` runs on the torch
    backend, and the definition the fast path is compared with.

    Args:
        config: the generator's config.
        tissue: ``(B, C, X, Y, Z)`` labels or probabilities (already broadcast to the batch).
        params: the batch's parameters.
        lesion: boxed lesion weights (:meth:`synthgen.lesions.LesionSource.sample`) or None.
        tables: ``(target_of_label, lesion_class)`` (:func:`label_tables`).
        texture: the unit within-class texture ``(B, 1, *crop)``, or None to draw it from ``params.noise_key``;
        noise: the two standard-normal noise volumes ``(B, 1, *crop)``, or None to draw them alike.
        stage: a context-manager factory ``stage(name)`` timing each stage (None: none).

    Returns:
        ``(image (B, 1, *crop) in config.image_dtype, target (B, *crop) uint8)``.
    """
    stage = stage or (lambda name: nullcontext())
    dev = tissue.device
    crop = tuple(int(c) for c in config.crop)
    table, lesion_class = tables
    p, hp = params.to(dev), params.to("cpu")     # device copies for the maths, host copies for kernels and loops
    gens = [generator_for(int(k), dev) for k in hp.noise_key] if texture is None or noise is None else None
    with stage("warp_gmm_bias"):
        if texture is None:
            texture = ops.texture_noise(crop, hp.gmm_fwhm, gens, device=dev)
        image, target = warp_sample_ref(tissue, lesion, p, to_device(texture, dev), crop, table, lesion_class,
                                        config.lesion_threshold, host_params=hp)
        brain = target > 0
        del texture
    with stage("gamma"):
        image = ops.gamma_transform(image, p.gamma)
    with stage("blur"):
        image = ops.thick_slices(image, hp.spacing, hp.motion_fwhm)     # motion blur + slice profile
    with stage("noise"):
        image = ops.add_noise(image, p.noise_std, None if noise is not None else gens, config.noise.kind,
                              normals=noise)
        image = ops.gaussian_blur(image, hp.smooth_fwhm)
    with stage("normalise"):
        image = ops.percentile_clip(image, *config.clip)
        image = ops.skull_strip(image, brain, p.skull_strip)
        image = ops.flip(image, hp.flip)
        target = ops.flip(target, hp.flip)
        image = ops.z_normalise(image).to(getattr(torch, config.image_dtype))
    target = target[:, 0]
    if config.target == "lesion":
        target = (target == lesion_class).to(torch.uint8)
    return image, target
