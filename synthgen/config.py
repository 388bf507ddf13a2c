"""Every parameter range of the synthetic generator, in one place, with units and sources.

Paper: Chalcroft et al., "Synthetic Data for Robust Stroke Segmentation", section 2.
Where the paper gives no number, the value is the one its reference code (SynthStroke ``custom_cc.py``,
built on cornucopia 0.x) or SynthSeg (Billot et al. 2023, doi:10.1016/j.media.2023.102789) uses; each
field names its source. Distances are in voxels of the 1 mm output grid (so voxels == mm).

A config is plain data: ``dataclasses.asdict`` gives a JSON-able dict, ``GeneratorConfig.from_dict``
reads it back. The library never reads a global config.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Tissue-map classes (input) and target classes (output). Channels 5+ of a tissue map are extra
# non-brain tissues (scalp, skull, ...): they get their own intensity but are background in the target.
TISSUE_CLASSES = ("background", "gm", "wm", "pv", "csf")
TARGET_CLASSES = ("background", "gm", "wm", "pv", "csf", "lesion")
LESION_CLASS = 5


def _check_range(name: str, lo_hi, lo_bound=None, hi_bound=None):
    lo, hi = lo_hi
    if not (lo <= hi):
        raise ValueError(f"`{name}` must be a (low, high) range with low <= high, got {lo_hi}")
    if lo_bound is not None and lo < lo_bound:
        raise ValueError(f"`{name}` must be >= {lo_bound}, got {lo_hi}")
    if hi_bound is not None and hi > hi_bound:
        raise ValueError(f"`{name}` must be <= {hi_bound}, got {lo_hi}")


def _check_prob(name: str, p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {p}")


@dataclass
class GMMConfig:
    """Per-class Gaussian intensities (paper section 2)."""
    mu: tuple = (0.0, 255.0)      # class mean ~ U(mu); paper
    sigma: tuple = (0.0, 16.0)    # class std ~ U(sigma); paper
    fwhm: tuple = (0.0, 2.0)      # within-class smoothing FWHM (voxels, isotropic) ~ U(fwhm); paper. The
                                  # reference code cast the draw to int (0 or 1 only): corrected here.

    def validate(self):
        _check_range("gmm.mu", self.mu)
        _check_range("gmm.sigma", self.sigma, 0.0)
        _check_range("gmm.fwhm", self.fwhm, 0.0)


@dataclass
class AffineConfig:
    """Random affine about the crop centre. Sources: SynthStroke custom_cc.py (cornucopia RandomAffineElastic)."""
    rotation: float = 15.0        # degrees, each axis ~ U(-r, r); SynthStroke rotation=15
    shear: float = 0.012          # each of the 3 shears ~ U(-s, s); SynthStroke shears=0.012
    zoom: float = 0.15            # scale per axis ~ U(1 - z, 1 + z); SynthStroke zooms=0.15
    translation: float = 0.0      # voxels, each axis ~ U(-t, t), added to the random crop position

    def validate(self):
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"`affine.rotation` must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.shear < 1:
            raise ValueError(f"`affine.shear` must be in [0, 1), got {self.shear}")
        if not 0 <= self.zoom < 1:
            raise ValueError(f"`affine.zoom` must be in [0, 1), got {self.zoom}")
        if self.translation < 0:
            raise ValueError(f"`affine.translation` must be >= 0, got {self.translation}")


@dataclass
class ElasticConfig:
    """Smooth displacement: cubic B-spline through a coarse control grid spanning the output crop."""
    control_points: int = 8       # per axis; SynthSeg nonlin_scale 0.04 x 192 = 7.7; cornucopia draws 2..10
    max_std: float = 3.0          # voxels; control displacements ~ N(0, s^2), s ~ U(0, max_std), so 3 s at the
                                  # upper bound ~ 9.6 voxels = SynthStroke elastic=0.05 of a 192 FOV

    def validate(self):
        if self.control_points < 4:
            raise ValueError(f"`elastic.control_points` must be >= 4 (cubic spline), got {self.control_points}")
        if self.max_std < 0:
            raise ValueError(f"`elastic.max_std` must be >= 0, got {self.max_std}")


@dataclass
class BiasConfig:
    """Multiplicative bias field exp(f), f a cubic B-spline through a coarse grid of N(0, s^2) values."""
    control_points: int = 5       # per axis; SynthSeg bias_scale 0.025 x 192 = 4.8; cornucopia bias=7 -> 2..7
    max_std: float = 0.5          # s ~ U(0, max_std); SynthSeg bias_field_std=0.5; cornucopia strength 0.5

    def validate(self):
        if self.control_points < 4:
            raise ValueError(f"`bias.control_points` must be >= 4 (cubic spline), got {self.control_points}")
        if self.max_std < 0:
            raise ValueError(f"`bias.max_std` must be >= 0, got {self.max_std}")


@dataclass
class GammaConfig:
    """Gamma contrast: x -> x^g on min-max normalised intensities, log(g) ~ N(0, std^2)."""
    log_std: float = 0.6          # SynthStroke gamma=0.6 (cornucopia LogNormal(0, 0.6)); SynthSeg uses 0.5

    def validate(self):
        if self.log_std < 0:
            raise ValueError(f"`gamma.log_std` must be >= 0, got {self.log_std}")


@dataclass
class MotionBlurConfig:
    """Gaussian blur along one random axis (smearing along the motion direction)."""
    probability: float = 0.5      # no source; half the samples stay sharp
    fwhm: tuple = (0.0, 3.0)      # voxels ~ U(fwhm); SynthStroke motion_fwhm=3

    def validate(self):
        _check_prob("motion.probability", self.probability)
        _check_range("motion.fwhm", self.fwhm, 0.0)


@dataclass
class AnisotropyConfig:
    """Thick slices: slice-profile blur, downsample and upsample along a random axis (or all axes)."""
    probability: float = 1.0      # cornucopia IntensityTransform always applies its low-res switch
    spacing: tuple = (1.0, 8.0)   # low-res voxel size in output voxels ~ U(spacing); SynthStroke resolution=8
    isotropic_probability: float = 0.5  # low-res in all three axes instead of one; cornucopia's 2D/3D switch

    def validate(self):
        _check_prob("anisotropy.probability", self.probability)
        _check_prob("anisotropy.isotropic_probability", self.isotropic_probability)
        _check_range("anisotropy.spacing", self.spacing, 1.0)


@dataclass
class NoiseConfig:
    """Additive noise, std relative to the GMM intensity range (255), so that it is visible.

    cornucopia draws std ~ U(0, 1/snr) with snr=10 in absolute units on a 0-255 image, i.e. invisible: the
    same bound is applied here relative to the intensity scale (std up to 10 % of 255).
    """
    max_std: float = 0.1          # std / 255 ~ U(0, max_std); SynthStroke snr=10 -> 1/snr
    kind: str = "rician"          # "rician" (magnitude of complex Gaussian noise, as in MRI) or "gaussian"
    scale: float = 255.0          # intensity scale the std is relative to: the top of gmm.mu

    def validate(self):
        if self.max_std < 0:
            raise ValueError(f"`noise.max_std` must be >= 0, got {self.max_std}")
        if self.kind not in ("rician", "gaussian"):
            raise ValueError(f"`noise.kind` must be 'rician' or 'gaussian', got {self.kind!r}")


@dataclass
class SmoothConfig:
    """Final isotropic Gaussian smoothing (scanner point-spread function)."""
    probability: float = 0.5      # no source; mild, so that it does not duplicate motion blur and anisotropy
    fwhm: tuple = (0.0, 1.5)      # voxels ~ U(fwhm); no source in the paper (SynthSeg blurs by resolution)

    def validate(self):
        _check_prob("smooth.probability", self.probability)
        _check_range("smooth.fwhm", self.fwhm, 0.0)


@dataclass
class GeneratorConfig:
    """The whole synthetic-sample pipeline (paper section 2, steps in order)."""
    crop: tuple = (192, 192, 192)   # output size in voxels (1 mm); paper: random crop 192^3
    gmm: GMMConfig = field(default_factory=GMMConfig)
    affine: AffineConfig = field(default_factory=AffineConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    gamma: GammaConfig = field(default_factory=GammaConfig)
    motion: MotionBlurConfig = field(default_factory=MotionBlurConfig)
    anisotropy: AnisotropyConfig = field(default_factory=AnisotropyConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    smooth: SmoothConfig = field(default_factory=SmoothConfig)
    clip: tuple = (0.01, 0.99)      # quantiles clipped before z-normalisation; paper: 1st and 99th percentiles
    skull_strip_probability: float = 0.3   # paper: random skull-stripping on 30 % of samples
    flip_probability: float = 0.5   # per axis; paper: random flipping in all axes
    lesion_threshold: float = 0.5   # lesion weight above which a voxel is lesion in the target
    target: str = "tissue"          # "tissue": 6 classes (TARGET_CLASSES); "lesion": binary (paper's baseline)

    def validate(self) -> "GeneratorConfig":
        if len(self.crop) != 3 or any(int(c) != c or c < 4 for c in self.crop):
            raise ValueError(f"`crop` must be 3 integers >= 4, got {self.crop}")
        for part in (self.gmm, self.affine, self.elastic, self.bias, self.gamma, self.motion,
                     self.anisotropy, self.noise, self.smooth):
            part.validate()
        _check_range("clip", self.clip, 0.0, 1.0)
        _check_prob("skull_strip_probability", self.skull_strip_probability)
        _check_prob("flip_probability", self.flip_probability)
        if not 0 < self.lesion_threshold < 1:
            raise ValueError(f"`lesion_threshold` must be in (0, 1), got {self.lesion_threshold}")
        if self.target not in ("tissue", "lesion"):
            raise ValueError(f"`target` must be 'tissue' or 'lesion', got {self.target!r}")
        return self

    @property
    def num_target_classes(self) -> int:
        return len(TARGET_CLASSES) if self.target == "tissue" else 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        return _from_dict(cls, d)


def _from_dict(cls, d):
    """Rebuild a (nested) dataclass from ``asdict`` output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for key, value in d.items():
        default = getattr(cls(), key) if key in names else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _from_dict(type(default), value)
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)
