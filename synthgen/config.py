"""Every parameter range of the synthetic generator, in one place, with units and sources.

Paper: Chalcroft et al., "Synthetic Data for Robust Stroke Segmentation", section 2.
Where the paper gives no number, the value is the one its reference code (SynthStroke ``custom_cc.py``,
built on cornucopia 0.x) or SynthSeg (Billot et al. 2023, doi:10.1016/j.media.2023.102789) uses; each
field names its source. Distances (elastic std, FWHMs, slice spacing, translation) are in mm; they are
divided by ``GeneratorConfig.voxel_size`` (1 mm in the paper, so voxels == mm there) when drawn.

A config is plain data: ``dataclasses.asdict`` gives a JSON-able dict, ``GeneratorConfig.from_dict``
reads it back. The library never reads a global config.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from . import calibration as cal
from .validate import check_config_fields

# Tissue-map classes (input) and target classes (output). Channels 5+ of a tissue map are extra
# non-brain tissues (scalp, skull, ...): they get their own intensity but are background in the target.
TISSUE_CLASSES = ("background", "gm", "wm", "pv", "csf")
TARGET_CLASSES = ("background", "gm", "wm", "pv", "csf", "lesion")
LESION_CLASS = 5
NON_BRAIN = 5                 # tissue class of the extra non-brain labels (scalp, skull, ...): background in targets
DEFAULT_NUM_LABELS = 15       # labels 0..14 in our convention (0-4 the tissue classes, 5-14 non-brain tissues)
MAX_LABELS = 256              # hard labels are uint8 on the device
MAX_CROP_VOXELS = 320 ** 3    # a larger crop asks for tens of GB (the fused path moves ~140 bytes per voxel)
MIN_VOXEL_MM, MAX_VOXEL_MM = 0.1, 16.0   # training grids outside this make kernels or maps absurd (1e-6 mm: TBs)


def _check_range(name: str, lo_hi, lo_bound=None, hi_bound=None):
    lo, hi = lo_hi
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"`{name}` must be finite, got {lo_hi}")
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
    lesion_mu: tuple | None = None  # the lesion's mean ~ U(lesion_mu); None: the tissues' range (paper). A
                                  # narrow range is a contrast prior, e.g. (0, 40) for T1-dark chronic lesions
    lesion_contrast: tuple | None = None   # conspicuity prior (beyond the paper): the lesion's mean lies
                                  # U(lesion_contrast) intensity units above the brighter parenchyma class (GM,
                                  # WM) or below the darker one, never between them, so every drawn lesion can be
                                  # seen against the tissue it replaces. None: no prior (paper). Intensities are on
                                  # the mu scale (0-255); a dark lesion that would fall below 0 is drawn bright
    lesion_bright_probability: float = 0.5   # share of bright lesions under the conspicuity prior (DWI, FLAIR,
                                  # T2 bright; ADC, T1 dark)
    sigma: tuple = (0.0, 16.0)    # class std ~ U(sigma); paper
    fwhm: tuple = (0.0, 2.0)      # within-class smoothing FWHM (mm, isotropic) ~ U(fwhm); paper. The
                                  # reference code cast the draw to int (0 or 1 only): corrected here.

    def validate(self):
        _check_range("gmm.mu", self.mu)
        if self.lesion_mu is not None:
            _check_range("gmm.lesion_mu", self.lesion_mu)
        if self.lesion_contrast is not None:
            _check_range("gmm.lesion_contrast", self.lesion_contrast, 0.0)
            if self.lesion_mu is not None:
                raise ValueError(f"`gmm.lesion_contrast` and `gmm.lesion_mu` are two lesion priors; give one, got "
                                 f"{self.lesion_contrast} and {self.lesion_mu}")
        _check_prob("gmm.lesion_bright_probability", self.lesion_bright_probability)
        _check_range("gmm.sigma", self.sigma, 0.0)
        _check_range("gmm.fwhm", self.fwhm, 0.0)


@dataclass
class AffineConfig:
    """Random affine about the crop centre. Sources: SynthStroke custom_cc.py (cornucopia RandomAffineElastic)."""
    rotation: float = 15.0        # degrees, each axis ~ U(-r, r); SynthStroke rotation=15
    shear: float = 0.012          # each of the 3 shears ~ U(-s, s); SynthStroke shears=0.012
    zoom: float = 0.15            # scale per axis ~ U(1 - z, 1 + z); SynthStroke zooms=0.15
    translation: float = 0.0      # mm, each axis ~ U(-t, t), added to the random crop position

    def validate(self):
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"`affine.rotation` must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.shear < 1:
            raise ValueError(f"`affine.shear` must be in [0, 1), got {self.shear}")
        if not 0 <= self.zoom < 1:
            raise ValueError(f"`affine.zoom` must be in [0, 1), got {self.zoom}")
        if not (0 <= self.translation < math.inf):
            raise ValueError(f"`affine.translation` must be finite and >= 0, got {self.translation}")


@dataclass
class ElasticConfig:
    """Smooth displacement: cubic B-spline through a coarse control grid spanning the output crop.

    Amplitude by effect: each sample draws s ~ U(0, max_std) and the displacement field itself has std s (root
    mean square over the crop, per component; the coefficients are scaled by ``fields.bspline_field_std``).
    """
    control_points: int = 8       # per axis; SynthSeg nonlin_scale 0.04 x 192 = 7.7; cornucopia draws 2..10
    max_std: float = 2.5          # mm. Matches SynthStroke (cornucopia 0.5.1 RandomAffineElasticTransform(0.05, 10),
                                  # its 256^3 volume, central 192^3): field std p10/p50/p90 0.22/1.19/2.22 mm,
                                  # mean 1.22 (ours at 2.5: about 0.25/1.2/2.3, mean 1.2); largest displacement
                                  # p50 4.1 mm there, ~6 mm here (a fixed 8^3 grid has more peaks than cornucopia's
                                  # 2..10 nodes). benchmarks/field_amplitudes.py

    def validate(self):
        if self.control_points < 4:
            raise ValueError(f"`elastic.control_points` must be >= 4 (cubic spline), got {self.control_points}")
        if not (0 <= self.max_std < math.inf):
            raise ValueError(f"`elastic.max_std` must be finite and >= 0, got {self.max_std}")


@dataclass
class BiasConfig:
    """Multiplicative bias field exp(f), f a cubic B-spline through a coarse control grid spanning the crop.

    Amplitude by effect: each sample draws s ~ U(0, max_std) and the log-field f has std s over the crop.
    """
    control_points: int = 5       # per axis; SynthSeg bias_scale 0.025 x 192 = 4.8; cornucopia bias=7 -> 2..7
    max_std: float = 0.1          # log-field std. Matches SynthStroke (cornucopia 0.5.1 IntensityTransform(bias=7,
                                  # bias_strength=0.5): field in 1 +- U(0, 0.5), 2..7 nodes): log std p10/p50/p90
                                  # 0.010/0.049/0.095, mean 0.050 over the central 192^3 of 256^3 (ours at 0.1:
                                  # about 0.015/0.055/0.088). SynthSeg's nominal 0.5 is the std of its coarse
                                  # values, not of the field. benchmarks/field_amplitudes.py

    def validate(self):
        if self.control_points < 4:
            raise ValueError(f"`bias.control_points` must be >= 4 (cubic spline), got {self.control_points}")
        if not (0 <= self.max_std < math.inf):
            raise ValueError(f"`bias.max_std` must be finite and >= 0, got {self.max_std}")


@dataclass
class GammaConfig:
    """Gamma contrast: x -> x^g on min-max normalised intensities, log(g) ~ N(0, std^2)."""
    log_std: float = 0.6          # SynthStroke gamma=0.6 (cornucopia LogNormal(0, 0.6)); SynthSeg uses 0.5

    def validate(self):
        if not (0 <= self.log_std < math.inf):
            raise ValueError(f"`gamma.log_std` must be finite and >= 0, got {self.log_std}")


@dataclass
class MotionBlurConfig:
    """Gaussian blur along one random axis (smearing along the motion direction)."""
    probability: float = 0.5      # no source; half the samples stay sharp
    fwhm: tuple = (0.0, 3.0)      # mm ~ U(fwhm); SynthStroke motion_fwhm=3 (voxels at 1 mm)

    def validate(self):
        _check_prob("motion.probability", self.probability)
        _check_range("motion.fwhm", self.fwhm, 0.0)


@dataclass
class AnisotropyConfig:
    """Thick slices: slice-profile blur, downsample and upsample along a random axis (or all axes)."""
    probability: float = 1.0      # cornucopia IntensityTransform always applies its low-res switch
    spacing: tuple = (1.0, 8.0)   # low-res voxel size in mm ~ U(spacing), at least one output voxel;
                                  # SynthStroke resolution=8 (voxels at 1 mm)
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
        if not (0 <= self.max_std < math.inf):
            raise ValueError(f"`noise.max_std` must be finite and >= 0, got {self.max_std}")
        if not (0 < self.scale < math.inf):
            raise ValueError(f"`noise.scale` must be finite and > 0, got {self.scale}")
        if self.kind not in ("rician", "gaussian"):
            raise ValueError(f"`noise.kind` must be 'rician' or 'gaussian', got {self.kind!r}")


@dataclass
class SmoothConfig:
    """Final isotropic Gaussian smoothing (scanner point-spread function)."""
    probability: float = 0.5      # no source; mild, so that it does not duplicate motion blur and anisotropy
    fwhm: tuple = (0.0, 1.5)      # mm ~ U(fwhm); no source in the paper (SynthSeg blurs by resolution)

    def validate(self):
        _check_prob("smooth.probability", self.probability)
        _check_range("smooth.fwhm", self.fwhm, 0.0)


def _int_table(name: str, value, lo: int, hi: int) -> None:
    if value is None:
        return
    if not isinstance(value, (tuple, list)) or not value or any(
            isinstance(v, bool) or int(v) != v or not lo <= v <= hi for v in value):
        raise ValueError(f"`{name}` must be a non-empty sequence of integers in [{lo}, {hi}], got {value!r}")


@dataclass
class LabelConfig:
    """What the labels of a hard-label tissue map mean (SynthSeg's generation labels, classes and output labels).

    Label ``g`` of the map draws its intensity from Gaussian ``gaussians[g]`` (labels sharing a number share one
    distribution, e.g. the left and right copy of a structure), belongs to tissue class ``classes[g]`` (which
    decides the 6-class target, where lesions may grow and what a skull-strip removes) and, for
    ``GeneratorConfig.target == "labels"``, has target class ``targets[g]``. A mapping
    (:class:`synthgen.data.LabelMapping`, e.g. ``--label-map freesurfer``) fills these in; the default is our
    convention, in which every label is its own Gaussian and its own class. Soft maps read channel ``k`` as label
    ``k``. Billot et al. 2023 (SynthSeg), doi:10.1016/j.media.2023.102789.
    """
    classes: tuple | None = None      # tissue class of each label (index = label): 0 background, 1 GM, 2 WM,
                                      # 3 PV, 4 CSF, 5 non-brain. None: labels 0-4 are their own class,
                                      # 5..14 non-brain (the bundled map, MultiBrain maps)
    gaussians: tuple | None = None    # Gaussian of each label (labels with one number share it); None: one each
    targets: tuple | None = None      # target class of each label for target "labels" (0 background); the
                                      # lesion class is max(targets) + 1
    target_names: tuple | None = None   # names of target classes 0..max(targets) (logs, metrics)
    names: tuple | None = None        # name of each label (e.g. its source label value), for reports

    @property
    def num_labels(self) -> int:
        """How many labels a map may hold (labels 0 .. num_labels - 1; channels of a soft map)."""
        return len(self.classes) if self.classes is not None else DEFAULT_NUM_LABELS

    @property
    def num_gaussians(self) -> int:
        return max(self.gaussians) + 1 if self.gaussians is not None else self.num_labels

    def class_table(self) -> tuple:
        """Tissue class of every label."""
        if self.classes is not None:
            return tuple(int(c) for c in self.classes)
        return tuple(min(g, NON_BRAIN) for g in range(DEFAULT_NUM_LABELS))

    def validate(self) -> "LabelConfig":
        n = self.num_labels
        _int_table("labels.classes", self.classes, 0, NON_BRAIN)
        if n > MAX_LABELS:
            raise ValueError(f"`labels.classes` must describe at most {MAX_LABELS} labels (uint8 maps), got {n}")
        for name in ("gaussians", "targets", "names"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"`labels.{name}` must have one entry per label ({n}), got {len(value)}")
        _int_table("labels.gaussians", self.gaussians, 0, MAX_LABELS - 1)
        _int_table("labels.targets", self.targets, 0, MAX_LABELS - 2)
        if self.target_names is not None:
            if self.targets is None or len(self.target_names) != max(self.targets) + 1:
                raise ValueError(f"`labels.target_names` must name target classes 0..max(targets), got "
                                 f"{len(self.target_names)} names for targets {self.targets!r}")
        return self


@dataclass
class GeneratorConfig:
    """The whole synthetic-sample pipeline (paper section 2, steps in order)."""
    crop: tuple = (192, 192, 192)   # output size in voxels; paper: random crop 192^3 at 1 mm
    voxel_size: float = 1.0         # mm per voxel of the tissue map and the output (paper: 1); distances
                                    # below are in mm and are converted to voxels with it
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
    target: str = "tissue"          # "tissue": 6 classes (TARGET_CLASSES); "lesion": binary (paper's baseline);
                                    # "labels": the label set of labels.targets, lesion last (e.g. a parcellation)
    labels: LabelConfig = field(default_factory=LabelConfig)   # meaning of hard labels (one Gaussian per label)
    channels: int = 1               # contrasts of one anatomy and one lesion, each with its own GMM and intensity
                                    # chain (SynthSeg n_channels; SynthStroke draws one GMM per channel)
    image_dtype: str = "float32"    # output image: "float32", "float16" or "bfloat16" (target: uint8); the GPU
                                    # fast path writes it directly (half the bytes for a bf16 autocast model)
    work_dtype: str = "float32"     # intermediate volumes of the GPU fast path (synthgen.fast): "float32" gives
                                    # the reference's result to float tolerance; "float16" halves the memory
                                    # traffic (math stays float32, stores round to 11 bits: statistics unchanged)

    def validate(self) -> "GeneratorConfig":
        check_config_fields(self)                   # NaN / Inf and wrong types in any field, by its path
        if len(self.crop) != 3 or any(not math.isfinite(c) or int(c) != c or c < 4 for c in self.crop):
            raise ValueError(f"`crop` must be 3 integers >= 4, got {self.crop}")
        if math.prod(int(c) for c in self.crop) > MAX_CROP_VOXELS:
            raise ValueError(f"`crop` must hold at most {MAX_CROP_VOXELS:.3g} voxels (320^3; ~140 bytes each to "
                             f"synthesise), got {'x'.join(str(int(c)) for c in self.crop)}")
        if not MIN_VOXEL_MM <= self.voxel_size <= MAX_VOXEL_MM:
            raise ValueError(f"`voxel_size` must be in [{MIN_VOXEL_MM:g}, {MAX_VOXEL_MM:g}] mm, got {self.voxel_size}")
        for part in (self.gmm, self.affine, self.elastic, self.bias, self.gamma, self.motion,
                     self.anisotropy, self.noise, self.smooth):
            part.validate()
        _check_range("clip", self.clip, 0.0, 1.0)
        _check_prob("skull_strip_probability", self.skull_strip_probability)
        _check_prob("flip_probability", self.flip_probability)
        if not 0 < self.lesion_threshold < 1:
            raise ValueError(f"`lesion_threshold` must be in (0, 1), got {self.lesion_threshold}")
        if isinstance(self.channels, bool) or int(self.channels) != self.channels or not 1 <= self.channels <= 16:
            raise ValueError(f"`channels` must be an int in [1, 16], got {self.channels!r}")
        if self.target not in ("tissue", "lesion", "labels"):
            raise ValueError(f"`target` must be 'tissue', 'lesion' or 'labels', got {self.target!r}")
        self.labels.validate()
        if self.target == "labels" and self.labels.targets is None:
            raise ValueError("`target` 'labels' needs a target label set (`labels.targets`, from a label mapping "
                             "with a \"target\" list, e.g. --label-map freesurfer), got none")
        if self.image_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"`image_dtype` must be 'float32', 'float16' or 'bfloat16', got {self.image_dtype!r}")
        if self.work_dtype not in ("float32", "float16"):
            raise ValueError(f"`work_dtype` must be 'float32' or 'float16', got {self.work_dtype!r}")
        return self

    @property
    def num_target_classes(self) -> int:
        """Classes of the target, lesion last."""
        if self.target == "labels":
            return max(self.labels.targets) + 2
        return len(TARGET_CLASSES) if self.target == "tissue" else 2

    @property
    def target_class_names(self) -> tuple:
        if self.target == "labels":
            names = self.labels.target_names or tuple(f"label_{i}" for i in range(max(self.labels.targets) + 1))
            return tuple(names) + ("lesion",)
        return TARGET_CLASSES if self.target == "tissue" else ("background", "lesion")

    def target_table(self) -> tuple[tuple, int]:
        """``(table, lesion)``: the class each label is drawn as in the target before flips and binarisation
        (tissue classes, non-brain as background; or ``labels.targets``), and the lesion's class there.
        ``target == "lesion"`` binarises this target afterwards (a skull-strip still needs the tissue classes)."""
        if self.target == "labels":
            return tuple(int(t) for t in self.labels.targets), max(self.labels.targets) + 1
        return tuple(0 if c == NON_BRAIN else c for c in self.labels.class_table()), LESION_CLASS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        return dataclass_from_dict(cls, d)


@dataclass
class HistogramConfig:
    """Real-scan branch (:mod:`synthgen.real`): random histogram shift (MONAI ``RandHistogramShift``); the normalisation before it is
    :func:`synthgen.ops.histogram_normalise`, the one inference uses too."""
    shift_probability: float = 0.5    # no source in the paper; MONAI's default is 0.1
    shift_control_points: int = 10    # knots of the random monotone intensity curve; MONAI default 10

    def validate(self) -> "HistogramConfig":
        if not 0.0 <= self.shift_probability <= 1.0:
            raise ValueError(f"`histogram.shift_probability` must be in [0, 1], got {self.shift_probability}")
        if self.shift_control_points < 3:
            raise ValueError(f"`histogram.shift_control_points` must be >= 3, got {self.shift_control_points}")
        return self


def dataclass_from_dict(cls, d):
    """Rebuild a (nested) dataclass from ``asdict`` output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for key, value in d.items():
        default = getattr(cls(), key) if key in names else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = dataclass_from_dict(type(default), value)
        elif isinstance(default, tuple) or (isinstance(value, list) and not dataclasses.is_dataclass(default)):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


# --- lesions ---
# Lesion sources (synthgen.lesions). Figures marked SOOP were measured by scripts/calibrate_lesions.py over all
# 1449 acute ischaemic stroke masks of the Stroke Outcome Optimization Project; the tables live in
# synthgen.calibration, with their sources.

@dataclass
class FadingConfig:
    """Smooth multiplicative field over the lesion intensity weight (paper section 2, "grades of infarction").

    At every voxel the field is ``hi - (hi - lo) * Phi(f)^power`` with ``f`` a unit-variance smooth random field,
    so ``(hi - fade) / (hi - lo)`` is Beta(1 / power, 1) distributed: with the defaults the fade's p10 / p50 / p90
    are 0.35 / 0.80 / 0.99 (mean 0.73), most lesion voxels strongly infarcted and some faint
    (synthgen.lesions.morphology.fading_field).
    """
    probability: float = 1.0        # fraction of lesioned samples faded; SynthStroke fades every pasted lesion
    range: tuple = (0.2, 1.0)       # (lo, hi) field values, unitless. lo > 0 keeps some lesion contrast under
                                    # every voxel labelled lesion; SynthStroke clips a bias field to [0, 1]
    control_spacing: float = 12.0   # voxels between control points: features of ~1 cm, about the radius of
                                    # a median (12.7 mL, SOOP) lesion, so one lesion sees 1-3 grades
    mapping: str = "power"          # "power": the distribution above; "sigmoid": lo + (hi - lo) sigmoid(gain f),
                                    # spread over the whole range, median 0.6 (the fading before issue 12)
    power: float = 2.0              # "power" exponent: 1 is uniform over the range, larger puts more voxels near
                                    # hi; 2 gives a median fade of 0.8 (no source: "varying grades")
    gain: float = 2.0               # "sigmoid" slope in field standard deviations: 2 spreads draws over the whole
                                    # range without saturating

    def validate(self):
        _check_prob("lesion.fading.probability", self.probability)
        _check_range("lesion.fading.range", self.range, 0.0, 1.0)
        if not self.control_spacing >= 1:
            raise ValueError(f"`lesion.fading.control_spacing` must be >= 1 voxel, got {self.control_spacing}")
        if self.mapping not in ("power", "sigmoid"):
            raise ValueError(f"`lesion.fading.mapping` must be 'power' or 'sigmoid', got {self.mapping!r}")
        if not self.power > 0:
            raise ValueError(f"`lesion.fading.power` must be > 0, got {self.power}")
        if not self.gain > 0:
            raise ValueError(f"`lesion.fading.gain` must be > 0, got {self.gain}")


@dataclass
class SoftCPConfig:
    """Soft-CP blending weights (Dai et al. 2022, arXiv:2203.10507): 1 on the core, alpha^j on ring j around it.

    Default: the core is the mask itself (``erode = 0``) and the soft edge runs outward from the mask boundary,
    ``alpha^j`` on the j-th voxel ring outside it (3x3x3 morphology); the target is the mask
    (``LesionConfig.target``), so the edge blends the lesion into the tissue around it without moving its label.
    """
    alpha: float = 0.5              # weight ratio between neighbouring rings: the first ring outside the mask at
                                    # half weight (a one-voxel partial-volume edge), 0.25 and 0.125 beyond. The
                                    # paper's code (SynthStroke) uses 0.9 with its rings inside its target
    erode: int = 0                  # voxel rings eroded from the mask to form the weight-1 core (0: the mask)
    dilate: int = 3                 # rings grown from the core with weights alpha^1..alpha^dilate; 3 rings of
                                    # 0.5 / 0.25 / 0.125 leave < 0.07 beyond. Before issue 12: alpha 0.9, erode 2,
                                    # dilate 2 (the edge inside the mask: LesionConfig.with_inward_blending)

    def validate(self):
        if not 0 < self.alpha <= 1:
            raise ValueError(f"`lesion.softcp.alpha` must be in (0, 1], got {self.alpha}")
        if int(self.erode) != self.erode or self.erode < 0:
            raise ValueError(f"`lesion.softcp.erode` must be an integer >= 0, got {self.erode}")
        if int(self.dilate) != self.dilate or self.dilate < 0:
            raise ValueError(f"`lesion.softcp.dilate` must be an integer >= 0, got {self.dilate}")


def _check_components(components, n: int) -> None:
    """``ProceduralLesionConfig.territory_components``: n territories of (weight, mean, std, correlations)."""
    import numpy as np
    bad = f"`lesion.procedural.territory_components` must hold {n} territories of (weight >= 0, (x, y, z) mean, " \
          f"(x, y, z) std > 0, (r_xy, r_xz, r_yz)) components with a positive-definite covariance, got"
    if len(components) != n:
        raise ValueError(f"{bad} {len(components)} territories")
    for t, comps in enumerate(components):
        try:
            ok = len(comps) > 0 and sum(c[0] for c in comps) > 0
            for w, mean, std, (rxy, rxz, ryz) in comps:
                corr = np.array([[1.0, rxy, rxz], [rxy, 1.0, ryz], [rxz, ryz, 1.0]])
                ok = ok and w >= 0 and len(mean) == 3 and len(std) == 3 and min(std) > 0 \
                    and bool(np.all(np.linalg.eigvalsh(corr) > 0))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{bad} {comps!r} for territory {t}")


@dataclass
class ProceduralLesionConfig:
    """Procedural ischaemic stroke masks (beyond the paper), calibrated on SOOP (synthgen.calibration)."""
    volume_quantiles_ml: tuple = cal.VOLUME_QUANTILES_ML
                                    # mL, total lesion volume at quantiles 0, 5, ..., 100 %; SOOP
    max_volume_ml: float = 300.0    # mL, draws above are clipped; ~5 % of SOOP masks exceed 200 mL
    component_count_pmf: tuple = cal.COMPONENT_COUNT_PMF
                                    # P(1), ..., P(9), P(>= 10) components (26-connectivity); SOOP
    component_count_max: int = 20   # components drawn uniformly in [10, max] for the ">= 10" bucket; SOOP
                                    # p95 is 14 components (max 96: specks of spatial normalisation)
    largest_component_share_quantiles: tuple = cal.LARGEST_COMPONENT_SHARE_QUANTILES
                                    # share of the volume in the largest component of a multifocal lesion at
                                    # deciles 0..100 %; SOOP
    satellite_distance_mm: float = 34.0   # mm, std of the isotropic Gaussian offset of satellite centres from
                                          # the main component's: median distance 1.54 x 34 = 53 mm; SOOP
    left_probability: float = 0.5   # share of lesions mostly in the left hemisphere; SOOP 0.498
    bilateral_probability: float = 0.273  # share of multifocal lesions with >= 5 % of their volume in the
                                          # other hemisphere (21.4 % of all lesions are); SOOP
    bilateral_probability_unifocal: float = 0.087   # the same for one-component lesions (they straddle the
                                          # midline: brainstem, vermis, corpus callosum); SOOP
    bilateral_minority_share_quantiles: tuple = cal.BILATERAL_MINORITY_SHARE_QUANTILES
                                    # share of a bilateral lesion's volume on its smaller side, deciles; SOOP
    cross_midline: bool = False     # components may spill over the midline (world x = 0)
    territory_names: tuple = cal.TERRITORY_NAMES   # JHU arterial atlas groups (calibrate script)
    territory_probabilities: tuple = cal.TERRITORY_PROBABILITIES  # territory holding most of the lesion; SOOP
    territory_volume_ranks: tuple | None = cal.TERRITORY_VOLUME_RANKS
                                    # per territory, the lesion volume's percentile among all lesions (0..1)
                                    # at quantiles 0, 5, ..., 100 %: the volume is volume_quantiles_ml read at
                                    # that percentile, so deep (lacunar) lesions are small and MCA ones large
                                    # and a rescaled volume_quantiles_ml keeps the effect; SOOP. None: volume
                                    # independent of the territory
    territory_components: tuple | None = cal.TERRITORY_COMPONENTS
                                    # per territory, the Gaussian mixture (weight, (x, y, z) mean mm, (x, y, z)
                                    # std mm, (r_xy, r_xz, r_yz)) of where SOOP lesions of that (JHU atlas)
                                    # territory lie, right hemisphere: the main component's centre is drawn
                                    # from it. None: one Gaussian over the whole atlas territory (below)
    territory_mean_mm: tuple = cal.TERRITORY_MEAN_MM
                                    # MNI mm (|x|, y, z) centroid of each territory; JHU atlas
    territory_std_mm: tuple = cal.TERRITORY_STD_MM
                                    # mm, spread of each territory per axis; JHU atlas
    elongation: float = 3.0         # max ratio of the ellipsoid's longest to shortest axis (log-uniform);
                                    # no source: stroke lesions are mostly elongated along vessels
    roughness: float = 0.5          # amplitude of the boundary noise relative to the ellipsoid radius
    noise_scale: float = 0.5        # noise control spacing as a fraction of the component radius

    def validate(self):
        q = self.volume_quantiles_ml
        if len(q) < 2 or any(b < a for a, b in zip(q, q[1:])) or q[0] <= 0:
            raise ValueError(f"`lesion.procedural.volume_quantiles_ml` must be >= 2 positive increasing values, "
                             f"got {q}")
        if not self.max_volume_ml > 0:
            raise ValueError(f"`lesion.procedural.max_volume_ml` must be > 0, got {self.max_volume_ml}")
        p = self.component_count_pmf
        if len(p) < 1 or any(x < 0 for x in p) or abs(sum(p) - 1) > 1e-3:
            raise ValueError(f"`lesion.procedural.component_count_pmf` must be probabilities summing to 1, got {p}")
        if self.component_count_max < len(p):
            raise ValueError(f"`lesion.procedural.component_count_max` must be >= {len(p)}, "
                             f"got {self.component_count_max}")
        s = self.largest_component_share_quantiles
        if len(s) < 2 or any(b < a for a, b in zip(s, s[1:])) or s[0] <= 0 or s[-1] > 1:
            raise ValueError(f"`lesion.procedural.largest_component_share_quantiles` must be increasing values "
                             f"in (0, 1], got {s}")
        if not self.satellite_distance_mm > 0:
            raise ValueError(f"`lesion.procedural.satellite_distance_mm` must be > 0, got {self.satellite_distance_mm}")
        _check_prob("lesion.procedural.left_probability", self.left_probability)
        _check_prob("lesion.procedural.bilateral_probability", self.bilateral_probability)
        _check_prob("lesion.procedural.bilateral_probability_unifocal", self.bilateral_probability_unifocal)
        b = self.bilateral_minority_share_quantiles
        if len(b) < 2 or any(y < x for x, y in zip(b, b[1:])) or b[0] <= 0 or b[-1] > 0.5:
            raise ValueError(f"`lesion.procedural.bilateral_minority_share_quantiles` must be increasing values "
                             f"in (0, 0.5], got {b}")
        n = len(self.territory_names)
        tp = self.territory_probabilities
        if len(tp) != n or any(x < 0 for x in tp) or not sum(tp) > 0:
            raise ValueError(f"`lesion.procedural.territory_probabilities` must be {n} non-negative weights, got {tp}")
        r = self.territory_volume_ranks
        if r is not None and (len(r) != n or any(len(t) < 2 or any(y < x for x, y in zip(t, t[1:]))
                                                 or t[0] < 0 or t[-1] > 1 for t in r)):
            raise ValueError(f"`lesion.procedural.territory_volume_ranks` must be None or {n} increasing sequences "
                             f"in [0, 1], got {r}")
        for name in ("territory_mean_mm", "territory_std_mm"):
            value = getattr(self, name)
            if len(value) != n or any(len(v) != 3 for v in value):
                raise ValueError(f"`lesion.procedural.{name}` must hold {n} (x, y, z) triples, got {value}")
        if any(s <= 0 for v in self.territory_std_mm for s in v):
            raise ValueError(f"`lesion.procedural.territory_std_mm` must be > 0, got {self.territory_std_mm}")
        if self.territory_components is not None:
            _check_components(self.territory_components, n)
        if not self.elongation >= 1:
            raise ValueError(f"`lesion.procedural.elongation` must be >= 1, got {self.elongation}")
        if not self.roughness >= 0:
            raise ValueError(f"`lesion.procedural.roughness` must be >= 0, got {self.roughness}")
        if not self.noise_scale > 0:
            raise ValueError(f"`lesion.procedural.noise_scale` must be > 0, got {self.noise_scale}")


@dataclass
class LesionMaskConfig:
    """How lesion masks are read into the bank (synthgen.lesions.load_mask_bank): which files, binarised how, which
    dropped, which held out. :class:`LesionConfig` adds how lesions are synthesised from them."""
    mask_dir: str = ""              # folder of binary lesion masks in MNI space; "" -> procedural lesions
    mask_pattern: str = "*.nii*"    # file name pattern inside mask_dir (SOOP: "*_lesion.nii.gz")
    mask_threshold: float = 0.5     # a stored value above it is lesion (binarisation before resampling)
    max_volume_ml: float = 300.0    # mL, larger masks are dropped; SOOP: ~70 of 1449 exceed 200 mL
    max_outside_fraction: float = 0.2  # masks with a larger share of voxels outside the brain are dropped
                                    # (when a brain mask is given); no source, the lesion is clipped anyway
    holdout_fraction: float = 0.2   # share of mask files (by name hash) in the "holdout" split

    def validate(self) -> "LesionMaskConfig":
        if not 0 <= self.mask_threshold < 1:
            raise ValueError(f"`lesion.mask_threshold` must be in [0, 1), got {self.mask_threshold}")
        if not self.max_volume_ml > 0:
            raise ValueError(f"`lesion.max_volume_ml` must be > 0, got {self.max_volume_ml}")
        _check_prob("lesion.max_outside_fraction", self.max_outside_fraction)
        _check_prob("lesion.holdout_fraction", self.holdout_fraction)
        return self


@dataclass
class LesionConfig(LesionMaskConfig):
    """Where lesions come from (the mask-reading fields of :class:`LesionMaskConfig`, first, as before) and how they are
    synthesised and blended (paper section 2; synthgen.lesions.LesionSource)."""
    count: tuple = (1, 1)           # lesions per lesioned sample ~ U{lo..hi}; paper pastes one
    healthy_probability: float = 0.1   # lesion-free samples. Paper: 0 (always pastes). 10 % shows the network
                                    # healthy brains (no false positives to learn) at little cost in lesion
                                    # exposure, and matches lesion-free slabs of a 192^3 crop at inference
    clip_to: str = "brain"          # lesion weights are multiplied by this tissue's probability: "brain"
                                    # (GM+WM+PV+CSF: the target is the mask inside the brain, background outside
                                    # it), "parenchyma" (GM+WM+PV; drops ~7 % of SOOP masks' voxels) or "none"
    target: str = "mask"            # the label weight (lesion where > GeneratorConfig.lesion_threshold): "mask",
                                    # the binary mask (clipped), so the target is the mask; "softcp", the Soft-CP
                                    # weight (the target before issue 12)
    fading: FadingConfig = field(default_factory=FadingConfig)
    softcp: SoftCPConfig = field(default_factory=SoftCPConfig)
    procedural: ProceduralLesionConfig = field(default_factory=ProceduralLesionConfig)

    def validate(self) -> "LesionConfig":
        check_config_fields(self, "lesion.")
        super().validate()
        if len(self.count) != 2 or any(int(c) != c for c in self.count) or not 0 <= self.count[0] <= self.count[1]:
            raise ValueError(f"`lesion.count` must be integers (lo, hi) with 0 <= lo <= hi, got {self.count}")
        _check_prob("lesion.healthy_probability", self.healthy_probability)
        if self.clip_to not in ("parenchyma", "brain", "none"):
            raise ValueError(f"`lesion.clip_to` must be 'parenchyma', 'brain' or 'none', got {self.clip_to!r}")
        if self.target not in ("mask", "softcp"):
            raise ValueError(f"`lesion.target` must be 'mask' or 'softcp', got {self.target!r}")
        self.fading.validate()
        self.softcp.validate()
        self.procedural.validate()
        return self

    def with_inward_blending(self) -> "LesionConfig":
        """A copy blended as before issue 12: the Soft-CP edge inside the mask (alpha 0.9, erode 2, dilate 2), the
        target the Soft-CP weight clipped to parenchyma, the sigmoid fading. Fainter lesions (weight p50 ~0.5 over
        the mask) and a target ~7 % smaller than SOOP masks (``benchmarks/lesion_blending.py``)."""
        return dataclasses.replace(
            self, clip_to="parenchyma", target="softcp", softcp=SoftCPConfig(alpha=0.9, erode=2, dilate=2),
            fading=dataclasses.replace(self.fading, mapping="sigmoid"))
