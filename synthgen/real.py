"""The real-scan branch: augmentation of real labelled scans on the device, alternated 1:1 with synthetic ones.

Paper (Chalcroft et al., "Synthetic Data for Robust Stroke Segmentation") section 2: real MPRAGE scans are randomly cropped to 192^3, deformed
(random affine + elastic), histogram-normalised, randomly histogram-shifted, multiplied by a bias field,
gamma-adjusted, flipped on every axis and z-normalised; the real and synthetic loaders alternate 1:1.
Scans may have several channels (contrasts of one subject on one grid): one warp, bias field, gamma and flip
per sample for all of them, while the histogram steps, gamma's min-max range and the z-score act on each channel
alone. Label maps keep their labels (binary masks or multi-class), pulled by nearest neighbour.

Geometry and intensity steps are the synthetic generator's own (:mod:`synthgen.ops`, parameters from
:func:`synthgen.sampling.sample_params` with the same :class:`~synthgen.config.GeneratorConfig` ranges): one
warp driven by the output grid does crop + affine + elastic for scan (trilinear) and mask (nearest). Each
sample's randomness comes from ``(seed, index)`` only, on a stream of its own (``"real"``), so real sample ``i``
is not correlated with synthetic sample ``i``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import ops
from .config import GeneratorConfig, HistogramConfig   # HistogramConfig also importable from here, its old home
from .device import to_device
from .ops.intensity import interp
from .sampling import SampleParams, generator_for, sample_key, sample_params


@dataclass
class RealParams:
    """Everything random about a batch of real samples (replayable)."""
    geometry: SampleParams        # matrix, center, elastic, bias, gamma, flip (other fields unused)
    shift_on: torch.Tensor        # (B,) bool
    shift_knots: torch.Tensor     # (B, K) monotone knot values in [0, 1] at K equispaced positions

    def __len__(self) -> int:
        return len(self.geometry)


def histogram_shift(x: torch.Tensor, knots: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Map each sample's intensities through a monotone piecewise-linear curve (MONAI ``RandHistogramShift``).

    Args:
        x: ``(B, C, ...)``.
        knots: ``(B, K)`` curve values in [0, 1] (relative to the sample's [min, max]) at K equispaced positions.
        apply: ``(B,)`` bool, on the host; samples where it is False are returned unchanged.
    """
    out = x.clone()
    apply = torch.as_tensor(apply).cpu()
    for b in range(x.shape[0]):
        if not bool(apply[b]):
            continue
        v = x[b].float()
        lo, hi = v.amin(), v.amax()                     # on the device: nothing is read back
        k = to_device(knots[b].to(torch.float32), v.device)
        span = hi - lo
        ref = lo + span * torch.linspace(0, 1, k.numel(), device=v.device, dtype=torch.float32)
        mapped = interp(v.reshape(-1), ref, lo + span * k).reshape(v.shape)
        out[b] = torch.where(span > 0, mapped, v).to(x.dtype)         # a constant sample stays as it is
    return out


def _shift_knots(g: torch.Generator, n: int) -> torch.Tensor:
    """MONAI's recipe: endpoints fixed, each inner knot uniform between its left neighbour and its reference
    right neighbour, left to right (monotone by construction)."""
    ref = torch.linspace(0, 1, n, dtype=torch.float64)
    knots = ref.clone()
    for i in range(1, n - 1):
        u = torch.rand(1, generator=g, dtype=torch.float64)
        knots[i] = knots[i - 1] + (ref[i + 1] - knots[i - 1]) * u
    return knots.float()


class RealAugmenter:
    """Augment real scans with lesion masks on their device: crop 192^3, affine + elastic, histogram
    normalisation and shift, bias field, gamma, flips, z-normalisation.

    Example::

        aug = RealAugmenter()
        image, target = aug(scan, mask, seed=0, index=7)   # scan (1, C, X, Y, Z), mask (1, 1, X, Y, Z)

    Args:
        config: geometry, bias, gamma and flip ranges, shared with the synthetic generator (crop size too).
        histogram: histogram normalisation / shift settings.
        lesions: a :class:`synthgen.lesions.LesionSource` (e.g. a mask bank) to paste stroke lesions into the scans
            before they are augmented (:func:`paste_lesions`: healthy scans gain a lesion), or None.
        lesion_label: the label the pasted lesions get in the target.
    """

    def __init__(self, config: GeneratorConfig | None = None, histogram: HistogramConfig | None = None,
                 lesions=None, lesion_label: int = 1):
        self.config = (config or GeneratorConfig()).validate()
        self.histogram = (histogram or HistogramConfig()).validate()
        self.lesions, self.lesion_label = lesions, int(lesion_label)

    def sample_params(self, in_shape, seed: int = 0, index: int = 0, batch: int = 1) -> RealParams:
        """Parameters of real samples ``index .. index + batch - 1`` of stream ``seed`` (CPU tensors)."""
        real_seed = sample_key(seed, 0, "real")   # a stream of its own: not the synthetic sample's draws
        # one geometry per scan (a real scan's contrasts are its channels, not GeneratorConfig.channels)
        geometry = sample_params(dataclasses.replace(self.config, channels=1), tuple(in_shape[-3:]), real_seed,
                                 index, batch)
        on, knots = [], []
        for i in range(batch):
            g = generator_for(sample_key(seed, index + i, "real-histogram"))
            on.append(bool(torch.rand(1, generator=g) < self.histogram.shift_probability))
            knots.append(_shift_knots(g, self.histogram.shift_control_points))
        return RealParams(geometry, torch.tensor(on), torch.stack(knots))

    @torch.no_grad()
    def __call__(self, scan: torch.Tensor, mask: torch.Tensor, seed: int = 0, index: int = 0,
                 params: RealParams | None = None, return_params: bool = False, affine=None):
        """Augment a batch.

        Args:
            scan: ``(B, C, X, Y, Z)`` float (any float dtype, e.g. fp16 from a packed store), RAS 1 mm; C >= 1
                contrasts on one grid.
            mask: ``(B, 1, X, Y, Z)`` label map on the same grid: a lesion mask {0, 1} or multi-class labels
                (integer or bool; float only with integer values, as ``LoadImaged`` gives labels).
            seed, index: sample ``i`` of the batch is real sample ``index + i`` of stream ``seed``.
            params: replay these parameters.
            affine: the scans' 4x4 voxel -> world (MNI mm) affine, where lesions are pasted (``lesions``).

        Returns:
            ``image`` ``(B, C, *crop)`` float32, each channel z-normalised, and ``target`` ``(B, *crop)`` with the
            labels of ``mask`` (uint8 for uint8 / bool masks, the mask's dtype for other integers, int64 for
            float masks) [and ``params``].

        Raises:
            TypeError / ValueError: wrong types, shapes, non-integer float labels, or scan and mask on different
                grids or devices.
        """
        if not isinstance(scan, torch.Tensor) or not isinstance(mask, torch.Tensor):
            raise TypeError(f"`scan` and `mask` must be torch.Tensors, got {type(scan).__name__} and "
                            f"{type(mask).__name__}")
        if scan.ndim != 5 or scan.shape[1] < 1 or not scan.is_floating_point():
            raise ValueError(f"`scan` must be a float (B, C, X, Y, Z) tensor, got shape {tuple(scan.shape)} "
                             f"dtype {scan.dtype}")
        want = (scan.shape[0], 1, *scan.shape[2:])
        if tuple(mask.shape) != want or mask.device != scan.device:
            raise ValueError(f"`mask` must match `scan` in shape and device, as {want} on {scan.device}, got "
                             f"{tuple(mask.shape)} on {mask.device}")
        if mask.is_floating_point() and not bool((mask == mask.round()).all()):
            raise ValueError("`mask` must hold integer labels, got non-integer float values (probabilities?)")
        n, channels = scan.shape[0], scan.shape[1]
        if params is None:
            params = self.sample_params(scan.shape, seed, index, n)
        elif not isinstance(params, RealParams):
            raise TypeError(f"`params` must be RealParams, got {type(params).__name__}")
        if len(params) != n:
            raise ValueError(f"`params` must hold {n} samples, got {len(params)}")
        dev = scan.device
        if self.lesions is not None:
            scan, mask = paste_lesions(scan, mask, self.lesions, [sample_key(seed, index + i, "real-lesion")
                                                                  for i in range(n)], affine, self.lesion_label,
                                       self.config.lesion_threshold)
        hp = params.geometry.to("cpu")         # host copies decide boxes and flips: no read back
        p = params.geometry.to(dev)
        crop = tuple(int(c) for c in self.config.crop)
        coords = ops.affine_elastic_coords(crop, p.matrix, p.center, p.elastic)
        reach = ops.reach_box(crop, hp.matrix, hp.center, hp.elastic, scan.shape[2:])
        labels = mask.to(torch.uint8) if mask.dtype == torch.bool else mask
        image = ops.grid_pull(scan.float(), coords, "linear", reach)
        target = ops.grid_pull(labels, coords, "nearest", reach)
        # per-channel intensity steps: fold the channels into the batch, one sample's parameters for each
        per_channel = (lambda t: t.repeat_interleave(channels, 0)) if channels > 1 else (lambda t: t)
        image = image.reshape(n * channels, 1, *crop)
        image = ops.histogram_normalise(image)
        image = histogram_shift(image, per_channel(params.shift_knots), per_channel(params.shift_on))
        image = ops.bias_field(image, per_channel(p.bias))
        image = ops.gamma_transform(image, per_channel(p.gamma))
        image = ops.flip(image, per_channel(hp.flip))
        image = ops.z_normalise(image).reshape(n, channels, *crop)
        target = ops.flip(target, hp.flip)[:, 0]
        if target.is_floating_point():
            target = target.round().to(torch.int64)
        return (image, target, params) if return_params else (image, target)


def paste_lesions(scan: torch.Tensor, mask: torch.Tensor, lesions, keys: list[int], affine=None,
                  lesion_label: int = 1, threshold: float = 0.5):
    """Paste stroke lesions into real scans (e.g. healthy ones): the lesion source's masks, faded and Soft-CP
    blended as in synthesis, with an intensity drawn from the scan's own.

    The head is the scan's foreground (above its minimum plus 5 % of its 1st-99th percentile range), the region
    the lesion is clipped to (and where procedural lesions may grow). Per sample and channel the lesion's mean
    is the scan's foreground intensity at a quantile ~ U(0, 1) (any contrast a lesion may take there, as the GMM
    draws it for synthetic samples) and its std ~ U(0, 10 %) of that range, on a texture smoothed over one voxel.

    Args:
        scan: ``(B, C, X, Y, Z)`` float; mask: ``(B, 1, X, Y, Z)`` labels on the same grid.
        lesions: a :class:`synthgen.lesions.LesionSource`.
        keys: one 64-bit key per sample (its lesion and intensity draws).
        affine: the grid's voxel -> world (MNI mm) affine (the masks are placed by it).
        lesion_label: the label lesion voxels get in the returned mask.
        threshold: label weight above which a voxel is lesion (``GeneratorConfig.lesion_threshold``).

    Returns:
        ``(scan float32, mask)``: the blended scans and the labels with lesions where the label weight exceeds
        ``threshold``.
    """
    from .sampling import generator_for
    x = scan.float()
    sub = x[:, :1].flatten(2)[..., ::max(1, x[0, 0].numel() // 200_000)]          # quantiles on a subsample
    lo, hi = torch.quantile(sub, torch.tensor([0.01, 0.99], device=x.device), dim=-1).unbind(0)   # (B, 1) each
    floor = x[:, :1].flatten(2).amin(-1) + 0.05 * (hi - lo)
    head = (x[:, :1] > floor[..., None, None, None]).to(torch.uint8)
    weights = lesions.sample(head, keys, affine=affine, classes=(0, 1))
    out, labelled = x.clone(), mask.clone()
    if weights is None:
        return out, labelled
    w_int, w_lab, offset = weights[0], weights[1], weights[2] if len(weights) > 2 else (0, 0, 0)
    box = (slice(None), slice(None), *(slice(o, o + n) for o, n in zip(offset, w_int.shape[2:])))
    region, target = out[box], labelled[box]
    for b, key in enumerate(keys):
        if not bool(w_lab[b].any()):
            continue
        g = generator_for(int(key) ^ 0x5EED)
        for c in range(x.shape[1]):
            fg = x[b, c][head[b, 0] > 0]
            fg = fg[::max(1, fg.numel() // 200_000)]
            q = float(torch.rand(1, generator=g, dtype=torch.float64))
            p1, mean, p99 = torch.quantile(fg, torch.tensor([0.01, q, 0.99], device=x.device, dtype=fg.dtype))
            std = float(torch.rand(1, generator=g)) * 0.1 * float(p99 - p1)
            texture = torch.randn((1, 1, *w_int.shape[2:]), generator=g).to(x.device)
            texture = ops.gaussian_blur(texture, torch.tensor([1.0]))[0, 0]
            region[b, c] = region[b, c] * (1 - w_int[b, 0]) + (mean + std * texture) * w_int[b, 0]
        target[b] = torch.where(w_lab[b] > threshold, torch.full_like(target[b], lesion_label), target[b])
    out[box], labelled[box] = region, target
    return out, labelled


def mixed_source(step: int, first: str = "synthetic") -> tuple[str, int]:
    """Which branch training step ``step`` draws from, and that branch's own sample index: exactly 1:1.

    Even steps go to ``first``, odd steps to the other; the index counts that branch's samples, so
    ``(seed, index)`` seeding stays reproducible and a resumed run continues the same sequence.

    Raises:
        ValueError: ``step`` < 0 or ``first`` not "synthetic"/"real".
    """
    if first not in ("synthetic", "real"):
        raise ValueError(f"`first` must be 'synthetic' or 'real', got {first!r}")
    if int(step) < 0:
        raise ValueError(f"`step` must be >= 0, got {step}")
    other = "real" if first == "synthetic" else "synthetic"
    return (first if step % 2 == 0 else other), int(step) // 2


def real_item(seed: int, index: int, num_items: int) -> int:
    """Which real item real sample ``index`` uses: a fresh permutation every ``num_items`` samples (epochs).

    Raises:
        ValueError: ``num_items`` < 1.
    """
    if num_items < 1:
        raise ValueError(f"`num_items` must be >= 1, got {num_items}")
    epoch, pos = divmod(int(index), num_items)
    perm = torch.randperm(num_items, generator=generator_for(sample_key(seed, epoch, "real-epoch")))
    return int(perm[pos])


class AlternatingSampler:
    """Iterate training samples alternating exactly 1:1 between synthetic and real, from step ``start``.

    Args:
        synthetic: ``index -> sample`` for synthetic sample ``index`` (e.g. a generator call).
        real: ``index -> sample`` for real sample ``index`` (e.g. :class:`RealAugmenter` on ``real_item``).
        first: the branch of step 0.
        start: first step (resume).

    Yields:
        ``(source, sample)`` with ``source`` "synthetic" or "real".
    """

    def __init__(self, synthetic, real, first: str = "synthetic", start: int = 0):
        mixed_source(start, first)   # validates
        self.synthetic, self.real, self.first, self.step = synthetic, real, first, int(start)

    def __iter__(self):
        return self

    def __next__(self):
        source, index = mixed_source(self.step, self.first)
        self.step += 1
        return source, (self.synthetic if source == "synthetic" else self.real)(index)

