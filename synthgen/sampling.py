"""Per-sample random parameters, derived from (seed, sample index) only.

Every sample owns a key ``sample_key(seed, index, stream)``; its scalar parameters and coarse grids are drawn
on the CPU from a generator seeded with that key (tiny, and identical on every device), and its dense noise
volumes are drawn on the target device from ``noise_key``. Nothing reads global RNG state, so a sample does
not depend on the batch it is generated in, and ``SampleParams`` replays it exactly.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from .config import DEFAULT_NUM_LABELS, GeneratorConfig
from .device import to_device
from .fields import bspline_field_std

_MASK64 = (1 << 64) - 1
MAX_TISSUE_CHANNELS = DEFAULT_NUM_LABELS   # Gaussians drawn at least per sample; the lesion uses one more (last)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_key(seed: int, index: int, stream: str = "") -> int:
    """A 63-bit key that depends only on ``(seed, index, stream)`` (splitmix64 mixing)."""
    h = _splitmix64(int(seed) & _MASK64)
    h = _splitmix64(h ^ (int(index) & _MASK64))
    for ch in stream.encode():
        h = _splitmix64(h ^ ch)
    return h >> 1


def generator_for(key: int, device="cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``key``."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(key))
    return g


def rotation_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """(3,) rotation angles in degrees about the three axes -> (3, 3) matrix Rz @ Ry @ Rx."""
    a = angles_deg.double() * (math.pi / 180.0)
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones((), dtype=a.dtype), torch.zeros((), dtype=a.dtype)
    rx = torch.stack([one, zero, zero, zero, c[0], -s[0], zero, s[0], c[0]]).reshape(3, 3)
    ry = torch.stack([c[1], zero, s[1], zero, one, zero, -s[1], zero, c[1]]).reshape(3, 3)
    rz = torch.stack([c[2], -s[2], zero, s[2], c[2], zero, zero, zero, one]).reshape(3, 3)
    return rz @ ry @ rx


def affine_matrix(rotation: torch.Tensor, shear: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """Linear part R @ S @ Z mapping output-voxel offsets to input-voxel offsets."""
    sh = torch.eye(3, dtype=torch.float64)
    sh[0, 1], sh[0, 2], sh[1, 2] = shear.double()
    return rotation_matrix(rotation) @ sh @ torch.diag(zoom.double())


@dataclass
class SampleParams:
    """Everything random about a batch of samples, one row per sample (replayable)."""
    matrix: torch.Tensor          # (B, 3, 3) float64, output offsets -> input offsets (voxels)
    center: torch.Tensor          # (B, 3) float64, input voxel at the centre of the output crop
    elastic: torch.Tensor         # (B, 3, n, n, n) float32, B-spline coefficients of the displacement (voxels),
                                  # scaled so that the displacement's std over the crop is the drawn one
    gmm_mu: torch.Tensor          # (B, L + 1) mean of each label (L >= 15 labels); the last one is the lesion's
    gmm_sigma: torch.Tensor       # (B, L + 1) std of each label
    gmm_fwhm: torch.Tensor        # (B,) within-class smoothing FWHM (voxels)
    bias: torch.Tensor            # (B, 1, m, m, m) float32, B-spline coefficients of the log bias field (its std
                                  # over the crop is the drawn one)
    gamma: torch.Tensor           # (B,) gamma exponent
    motion_fwhm: torch.Tensor     # (B, 3) FWHM of the motion blur per axis (zero except the motion axis)
    spacing: torch.Tensor         # (B, 3) low-resolution voxel size per axis (1 = untouched)
    noise_std: torch.Tensor       # (B,) noise std in intensity units
    smooth_fwhm: torch.Tensor     # (B,) isotropic smoothing FWHM (voxels)
    skull_strip: torch.Tensor     # (B,) bool
    flip: torch.Tensor            # (B, 3) bool, flip each output axis
    noise_key: torch.Tensor       # (B,) int64, seeds the on-device texture and noise volumes
    lesion_key: torch.Tensor      # (B,) int64, seeds the lesion source

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def to(self, device) -> "SampleParams":
        """On ``device``: host -> GPU without a host sync (:func:`synthgen.device.to_device`)."""
        return SampleParams(**{f.name: to_device(getattr(self, f.name), device) for f in dataclasses.fields(self)})

    def select(self, i: int) -> "SampleParams":
        return SampleParams(**{f.name: getattr(self, f.name)[i:i + 1] for f in dataclasses.fields(self)})

    @staticmethod
    def cat(items: list["SampleParams"]) -> "SampleParams":
        return SampleParams(**{f.name: torch.cat([getattr(p, f.name) for p in items])
                               for f in dataclasses.fields(SampleParams)})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _uniform(g: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _bernoulli(g: torch.Generator, p: float, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def parenchyma_gaussians(config: GeneratorConfig) -> list[int]:
    """The Gaussians that draw grey and white matter (tissue classes 1 and 2); the other brain classes, or every
    non-background Gaussian, for a label set without them."""
    return list(_parenchyma(config.labels.class_table(), config.labels.gaussians))


@functools.lru_cache(maxsize=16)
def _parenchyma(classes: tuple, gaussians: tuple | None) -> tuple:
    # cached by the label tables: sample_one asks once per sample, and a label set may hold 256 labels
    of_label = gaussians or tuple(range(len(classes)))
    for wanted in ((1, 2), (1, 2, 3, 4), tuple(range(1, 256))):
        found = sorted({int(g) for g, c in zip(of_label, classes) if c in wanted})
        if found:
            return tuple(found)
    return (0,)


def conspicuous_lesion_mean(config: GeneratorConfig, mu: torch.Tensor, u: float) -> torch.Tensor:
    """The lesion's mean under ``gmm.lesion_contrast``, from the Gaussian means ``mu`` (lesion last) and the lesion's
    own uniform draw ``u`` in [0, 1) (its place in ``gmm.mu``).

    ``u`` decides both the side and the margin, so that the prior adds no draw: bright when ``u < p``
    (``lesion_bright_probability``), and the margin reads the rescaled ``u`` in ``lesion_contrast``. Bright lies the
    margin above the brightest parenchyma Gaussian, dark below the darkest; a dark mean below 0 (which Rician noise
    would fold back up) is drawn bright instead.
    """
    gm = config.gmm
    u = float(u)
    p = gm.lesion_bright_probability
    bright = u < p
    v = u / p if bright else (u - p) / (1 - p)
    margin = gm.lesion_contrast[0] + (gm.lesion_contrast[1] - gm.lesion_contrast[0]) * min(max(v, 0.0), 1.0)
    par = mu[parenchyma_gaussians(config)]
    dark = float(par.min()) - margin
    return (par.max() + margin) if bright or dark < 0 else torch.tensor(dark, dtype=mu.dtype)


# what one anatomy shares across its contrasts (GeneratorConfig.channels); every other field is per contrast
ANATOMY_FIELDS = ("matrix", "center", "elastic", "skull_strip", "flip", "lesion_key")


def sample_one(config: GeneratorConfig, in_shape, seed: int, index: int, stream: str = "params") -> SampleParams:
    """Draw the parameters of sample ``index`` of stream ``seed`` for a tissue map of spatial ``in_shape``.

    The order of draws is fixed: changing a range changes values, never which variable a draw feeds.
    ``stream`` names the random stream (contrast ``c > 0`` of a multi-contrast sample draws from its own).
    """
    c = config
    mm = 1.0 / c.voxel_size          # distances are drawn in mm, used in voxels
    g = generator_for(sample_key(seed, index, stream))
    aff = c.affine
    rotation = _uniform(g, -aff.rotation, aff.rotation, 3)
    shear = _uniform(g, -aff.shear, aff.shear, 3)
    zoom = _uniform(g, 1 - aff.zoom, 1 + aff.zoom, 3)
    matrix = affine_matrix(rotation, shear, zoom)
    # crop centre: uniform over positions that keep the crop inside the input; centred where it cannot
    center = torch.empty(3, dtype=torch.float64)
    u = torch.rand(3, generator=g, dtype=torch.float64)
    for a in range(3):
        n, s = in_shape[a], c.crop[a]
        lo, hi = (s - 1) / 2, n - 1 - (s - 1) / 2
        center[a] = lo + (hi - lo) * u[a] if hi > lo else (n - 1) / 2
    center += _uniform(g, -aff.translation, aff.translation, 3) * mm

    # field stds are drawn, then divided by the spline's shrink (fields.bspline_field_std) on the crop the control
    # grid spans: the coefficients are larger than the field, and every backend evaluates these same ones
    n = c.elastic.control_points
    el_std = _uniform(g, 0, c.elastic.max_std).float() * mm
    elastic = torch.randn(3, n, n, n, generator=g) * (el_std / bspline_field_std(n, c.crop))

    # one Gaussian per label, or per group of labels tied together (c.labels.gaussians), then the lesion's; at
    # least 15 + 1 are drawn, so that label sets of up to 15 labels draw the same numbers
    k = max(MAX_TISSUE_CHANNELS, c.labels.num_gaussians) + 1
    mu = _uniform(g, *c.gmm.mu, k).float()
    if c.gmm.lesion_mu is not None or c.gmm.lesion_contrast is not None:
        # a lesion prior reads the lesion's own draw, rescaled to [0, 1): the order of draws never changes
        lo, hi = c.gmm.mu
        u = (mu[-1] - lo) / (hi - lo) if hi > lo else torch.zeros(())
        if c.gmm.lesion_mu is not None:
            mu[-1] = c.gmm.lesion_mu[0] + (c.gmm.lesion_mu[1] - c.gmm.lesion_mu[0]) * u
        else:
            mu[-1] = conspicuous_lesion_mean(c, mu, u)
    sigma = _uniform(g, *c.gmm.sigma, k).float()
    if c.labels.gaussians is not None:   # per label: its group's Gaussian (a table lookup in the kernels)
        of_label = torch.tensor(list(c.labels.gaussians) + [k - 1])
        mu, sigma = mu[of_label], sigma[of_label]
    fwhm = _uniform(g, *c.gmm.fwhm).float() * mm

    m = c.bias.control_points
    b_std = _uniform(g, 0, c.bias.max_std).float()
    bias = torch.randn(1, m, m, m, generator=g) * (b_std / bspline_field_std(m, c.crop))

    gamma = torch.exp(torch.randn(1, generator=g, dtype=torch.float64) * c.gamma.log_std).float()

    motion_on = _bernoulli(g, c.motion.probability)
    motion_axis = int(torch.randint(3, (1,), generator=g))
    motion_fwhm = torch.zeros(3)
    motion_fwhm[motion_axis] = float(_uniform(g, *c.motion.fwhm)) * float(motion_on) * mm

    an = c.anisotropy
    aniso_on = _bernoulli(g, an.probability)
    iso = _bernoulli(g, an.isotropic_probability)
    aniso_axis = int(torch.randint(3, (1,), generator=g))
    r = max(float(_uniform(g, *an.spacing)) * mm, 1.0)
    spacing = torch.ones(3)
    if aniso_on:
        if iso:
            spacing[:] = r
        else:
            spacing[aniso_axis] = r

    noise_std = (_uniform(g, 0, c.noise.max_std) * c.noise.scale).float()
    smooth_on = _bernoulli(g, c.smooth.probability)
    smooth_fwhm = (_uniform(g, *c.smooth.fwhm) * smooth_on).float() * mm
    skull = _bernoulli(g, c.skull_strip_probability)
    flip = _bernoulli(g, c.flip_probability, 3)
    noise_key = torch.randint(0, 2 ** 62, (1,), generator=g, dtype=torch.int64)
    lesion_key = torch.tensor([sample_key(seed, index, "lesion")], dtype=torch.int64)

    return SampleParams(
        matrix=matrix[None], center=center[None], elastic=elastic[None], gmm_mu=mu[None],
        gmm_sigma=sigma[None], gmm_fwhm=fwhm, bias=bias[None], gamma=gamma,
        motion_fwhm=motion_fwhm[None], spacing=spacing[None], noise_std=noise_std,
        smooth_fwhm=smooth_fwhm, skull_strip=skull, flip=flip[None], noise_key=noise_key,
        lesion_key=lesion_key)


def sample_params(config: GeneratorConfig, in_shape, seed: int, index: int, batch: int) -> SampleParams:
    """Parameters of samples ``index, ..., index + batch - 1`` of stream ``seed`` (CPU tensors).

    With ``config.channels = C > 1`` there are ``batch * C`` rows, sample-major: row ``i * C + c`` is contrast
    ``c`` of sample ``i``. Contrast 0 is the single-contrast sample (the same bytes); contrast ``c`` draws its
    intensities (GMM, texture, bias, gamma, blur, resolution, noise) from a stream of its own and shares the
    anatomy (:data:`ANATOMY_FIELDS`: geometry, skull-strip, flips, lesion) with contrast 0.
    """
    rows = []
    for i in range(batch):
        first = sample_one(config, in_shape, seed, index + i)
        rows.append(first)
        for ch in range(1, config.channels):
            other = sample_one(config, in_shape, seed, index + i, stream=f"params/contrast{ch}")
            for name in ANATOMY_FIELDS:
                setattr(other, name, getattr(first, name))
            rows.append(other)
    return SampleParams.cat(rows)
