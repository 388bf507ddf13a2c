"""The synthetic-sample pipeline of the paper (section 2), composed from :mod:`synthgen.ops`.

Per sample, on the tissue map's device: choose the crop and the affine + elastic transform (one transform for
image, tissue map and lesion), pull the tissue map (and lesion weights) onto the output grid, draw GMM
intensities with within-class texture, then bias field, gamma, motion blur, thick slices, noise, smoothing,
clip to the 1st/99th percentiles, random skull-strip, flips, z-normalisation.
"""
from __future__ import annotations

import time
import weakref
from contextlib import contextmanager

import torch

from . import fast, ops
from .backend import select_backend
from .config import LESION_CLASS, GeneratorConfig
from .sampling import MAX_TISSUE_CHANNELS, SampleParams, generator_for, sample_params

# tissue channel / label -> target class: bg, GM, WM, PV, CSF keep their index, extra channels -> background
_TISSUE_TO_TARGET = torch.tensor([0, 1, 2, 3, 4] + [0] * (MAX_TISSUE_CHANNELS - 5), dtype=torch.uint8)


def check_tissue(tissue: torch.Tensor) -> None:
    """Raise a clear error unless ``tissue`` is a batch of label maps or probability maps."""
    if not isinstance(tissue, torch.Tensor):
        raise TypeError(f"`tissue` must be a torch.Tensor, got {type(tissue).__name__}")
    if tissue.ndim != 5:
        raise ValueError(f"`tissue` must be (B, C, D, H, W), got shape {tuple(tissue.shape)}")
    if tissue.is_floating_point():
        if tissue.shape[1] < 2 or tissue.shape[1] > MAX_TISSUE_CHANNELS:
            raise ValueError(f"probability `tissue` must have 2..{MAX_TISSUE_CHANNELS} channels "
                             f"[bg, GM, WM, PV, CSF, ...], got {tissue.shape[1]}")
        if not bool(torch.isfinite(tissue).all()):
            raise ValueError("`tissue` probabilities contain NaN or Inf")
        lo, hi = float(tissue.min()), float(tissue.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"`tissue` probabilities must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    elif tissue.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        if tissue.shape[1] != 1:
            raise ValueError(f"integer `tissue` labels must have 1 channel, got shape {tuple(tissue.shape)}")
        lo, hi = int(tissue.min()), int(tissue.max())
        if lo < 0 or hi >= MAX_TISSUE_CHANNELS:
            raise ValueError(f"`tissue` labels must be in [0, {MAX_TISSUE_CHANNELS - 1}], got [{lo}, {hi}]")
    else:
        raise TypeError(f"`tissue` must be integer labels or float probabilities, got dtype {tissue.dtype}")


class SynthGenerator:
    """Synthetic MR images with segmentation targets from tissue maps (SynthSeg-style, with stroke lesions).

    Example::

        gen = synthgen.SynthGenerator()
        tissue = synthgen.data.default_tissue_map()
        image, target = gen(tissue, seed=0)      # (1, 1, 192, 192, 192) float32, (1, 192, 192, 192) uint8

    Args:
        config: the ranges (:class:`synthgen.config.GeneratorConfig`); the paper's by default.
        lesions: an object with ``sample(tissue, keys) -> (intensity_weight, label_weight) | None`` (see
            :mod:`synthgen.lesions`), or None for healthy samples.
    """

    def __init__(self, config: GeneratorConfig | None = None, lesions=None):
        self.config = (config or GeneratorConfig()).validate()
        self.lesions = lesions
        self.stage_ms: dict[str, float] = {}
        self.profile = False
        self._checked: dict = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_checked"] = {}      # weak references do not pickle (DataLoader workers under spawn): check again
        return state

    @contextmanager
    def _stage(self, name: str, device):
        if not self.profile:
            yield
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.stage_ms[name] = self.stage_ms.get(name, 0.0) + 1e3 * (time.perf_counter() - t0)

    def _check_tissue_once(self, tissue: torch.Tensor) -> None:
        """:func:`check_tissue` once per map (again after an in-place change): its min/max would otherwise be a
        host sync on every batch, which stops the host from queueing work ahead of a GPU."""
        if not isinstance(tissue, torch.Tensor):
            check_tissue(tissue)                # raises the clear error
        key = (tissue.data_ptr(), tissue._version, tuple(tissue.shape), tuple(tissue.stride()), tissue.dtype,
               tissue.device)
        ref = self._checked.get(key)
        if ref is not None and ref() is tissue:
            return
        check_tissue(tissue)
        if len(self._checked) >= 64:
            self._checked.clear()
        self._checked[key] = weakref.ref(tissue)

    def sample_params(self, tissue_shape, seed: int = 0, index: int = 0, batch: int = 1) -> SampleParams:
        """Parameters of samples ``index .. index + batch - 1`` of stream ``seed`` for a map of spatial shape."""
        return sample_params(self.config, tuple(tissue_shape[-3:]), seed, index, batch)

    def output_affine(self, params: SampleParams, affine=None) -> torch.Tensor:
        """Voxel -> world affines ``(B, 4, 4)`` float64 of the samples made with ``params`` from a map whose voxel ->
        world affine is ``affine`` (exact for the affine part; the elastic warp is a displacement about it). See
        :func:`synthgen.ops.output_affine`."""
        return ops.output_affine(params.matrix, params.center, params.flip, self.config.crop, affine)

    @torch.no_grad()
    def __call__(self, tissue: torch.Tensor, seed: int = 0, index: int = 0, batch_size: int | None = None,
                 params: SampleParams | None = None, return_params: bool = False):
        """Generate a batch.

        Args:
            tissue: ``(B, 1, D, H, W)`` integer labels (0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5+ extra non-brain) or
                ``(B, K, D, H, W)`` float probabilities in that channel order. ``B == 1`` is broadcast.
            seed, index: sample ``i`` of the batch is sample ``index + i`` of stream ``seed``.
            batch_size: number of samples (default: the tissue batch).
            params: replay these parameters instead of drawing new ones.
            return_params: also return the :class:`SampleParams` used.

        Returns:
            ``image`` ``(B, 1, *crop)`` float32 z-normalised and ``target`` ``(B, *crop)`` uint8 (6 classes, or
            0/1 when ``config.target == "lesion"``), [and ``params``]; plain tensors (a MetaTensor's metadata is
            dropped: :meth:`output_affine` gives each sample's own grid).
        """
        if isinstance(tissue, torch.Tensor) and type(tissue) is not torch.Tensor:
            tissue = tissue.as_subclass(torch.Tensor)    # e.g. a MetaTensor: its metadata is the map's, not the crop's
        self._check_tissue_once(tissue)
        dev = tissue.device
        n = len(params) if params is not None else (batch_size or tissue.shape[0])
        if tissue.shape[0] not in (1, n):
            raise ValueError(f"`tissue` batch must be 1 or {n}, got {tissue.shape[0]}")
        if tissue.shape[0] == 1 and n > 1:
            tissue = tissue.expand(n, *tissue.shape[1:])
        if params is None:
            params = self.sample_params(tissue.shape, seed, index, n)
        elif not isinstance(params, SampleParams):
            raise TypeError(f"`params` must be SampleParams, got {type(params).__name__}")
        cfg = self.config
        crop = tuple(int(c) for c in cfg.crop)

        with self._stage("lesion", dev):
            lesion = self.lesions.sample(tissue, [int(k) for k in params.lesion_key]) if self.lesions else None
        backend = select_backend(dev, available=fast.AVAILABLE)
        if backend != "torch":      # fused kernels (synthgen.fast); same parameters, same maths
            image, target = fast.generate_fast(cfg, tissue, params, lesion, backend)
            return (image, target, params) if return_params else (image, target)
        p = params.to(dev)
        with self._stage("warp", dev):
            coords = ops.affine_elastic_coords(crop, p.matrix, p.center, p.elastic)
            if tissue.is_floating_point():
                probs = ops.grid_pull(tissue.float(), coords, "linear")
                outside = (1 - probs.sum(1, keepdim=True)).clamp(min=0)
                probs = torch.cat([probs[:, :1] + outside, probs[:, 1:]], 1)   # outside the map is background
                tissue_class = probs.argmax(1, keepdim=True)
                warped = probs
            else:
                warped = ops.grid_pull(tissue, coords, "nearest")
                tissue_class = warped.long()
            target = _TISSUE_TO_TARGET.to(dev)[tissue_class]                       # (B, 1, *crop) uint8
            w_int = None
            if lesion is not None:
                w = ops.grid_pull(torch.cat([lesion[0], lesion[1]], 1).float(), coords, "linear")
                w_int, w_lab = w[:, :1].clamp(0, 1), w[:, 1:]
                target = torch.where(w_lab > cfg.lesion_threshold, torch.full_like(target, LESION_CLASS), target)
            brain = target > 0
        with self._stage("gmm", dev):
            gens = [generator_for(int(k), dev) for k in params.noise_key]
            texture = ops.texture_noise(crop, p.gmm_fwhm, gens, device=dev)
            image = ops.gmm_sample(warped, p.gmm_mu, p.gmm_sigma, texture, w_int)
            del texture, warped
        with self._stage("bias_gamma", dev):
            image = ops.bias_field(image, p.bias)
            image = ops.gamma_transform(image, p.gamma)
        with self._stage("blur", dev):
            image = ops.thick_slices(image, p.spacing, p.motion_fwhm)     # motion blur + slice profile
        with self._stage("noise", dev):
            image = ops.add_noise(image, p.noise_std, gens, cfg.noise.kind)
            image = ops.gaussian_blur(image, p.smooth_fwhm)
        with self._stage("normalise", dev):
            image = ops.percentile_clip(image, *cfg.clip)
            image = ops.skull_strip(image, brain, p.skull_strip)
            image = ops.flip(image, p.flip)
            target = ops.flip(target, p.flip)
            image = ops.z_normalise(image).to(getattr(torch, cfg.image_dtype))
        target = target[:, 0]
        if cfg.target == "lesion":
            target = (target == LESION_CLASS).to(torch.uint8)
        return (image, target, params) if return_params else (image, target)
