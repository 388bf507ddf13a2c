"""Training configuration: one dataclass per concern, every setting a field, presets as instances.

Paper (Chalcroft et al., "Synthetic Data for Robust Stroke Segmentation", arXiv:2404.01946), section 2:
Dice + cross-entropy, AdamW lr 1e-4, poly schedule (1 - n/N)^0.9 per iteration, grad-norm clip 12, batch 1,
dropout 0.2, 1200 epochs x 500 iterations, mixed precision. The resolved config is written as ``config.json``
beside the run and inside every checkpoint; ``TrainConfig.from_dict`` reads it back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from synthgen import validate
from synthgen.config import GeneratorConfig, GMMConfig, LesionConfig, ProceduralLesionConfig, dataclass_from_dict

PRESETS = ("paper", "quick", "transfer")


@dataclass
class ModelConfig:
    """``synthgen.segment.build_unet`` arguments except the class count (6, or 2 for the baseline)."""
    channels: tuple = (32, 64, 128, 256, 320, 320)   # paper
    strides: tuple | None = None                     # None: 2 per down step (paper)
    dropout: float = 0.2                             # paper
    num_res_units: int = 1                           # paper: one residual unit per block


@dataclass
class OptimConfig:
    """Loss, optimiser and schedule."""
    lr: float = 1e-4                  # AdamW learning rate; paper
    weight_decay: float = 0.01        # AdamW default (paper gives none)
    betas: tuple = (0.9, 0.999)       # AdamW default
    poly_power: float = 0.9           # lr_n = lr (1 - n/N)^power per iteration; paper (after nnU-Net)
    grad_clip: float = 12.0           # max global grad norm; paper
    dice_weight: float = 1.0          # loss = dice_weight * Dice + ce_weight * CE; paper: plain sum
    ce_weight: float = 1.0
    dice_include_background: bool = True   # background class in the Dice: paper's text (Dice + CE, no class left
                                      # out); SynthStroke's code: False
    dice_batch: bool = False          # Dice pooled over the batch before dividing; paper: per sample (batch 1, the
                                      # same there); SynthStroke's code: True
    amp: str = "auto"                 # "auto": bf16 autocast on CUDA when supported, else fp32; "bf16"; "off"


@dataclass
class DataConfig:
    """Where training samples come from."""
    tissue_maps: str | None = None    # folder of tissue maps; None: the bundled MNI152 map
    label_map: str | None = None      # label mapping for tissue maps with other label sets ("freesurfer", JSON)
    lesions: str | None = None        # folder of lesion masks (MNI); None: lesion.mask_dir, else procedural
    real: str | None = None           # folder of real scans + masks, alternated 1:1 with synthetic samples
    real_val: str | None = None       # folder of real validation scans + masks
    store: str | None = None          # packed store (python -m synthgen.data pack) read instead of tissue_maps,
                                      # lesions and real; an empty section: as if that folder were not given
    prefetch: int = 2                 # steps whose maps / scans are read ahead into pinned memory (a bounded
                                      # queue; the device holds only the map in use)
    lesion: LesionConfig = field(default_factory=LesionConfig)   # synthgen.lesions.LesionSource settings;
                                      # validation uses its "holdout" split of a lesion folder


@dataclass
class TrainConfig:
    """A whole training run; ``steps`` is N of the poly schedule."""
    preset: str = "paper"
    steps: int = 600_000              # paper: 1200 epochs x 500 iterations
    iters_per_epoch: int = 500        # only for reporting epochs; paper: 500
    batch_size: int = 1               # per rank; paper: 1
    seed: int = 0                     # rank r synthesises stream seed + r and seeds torch with it
    baseline: bool = False            # real scans only, 2 classes (lesion vs background); paper's baseline
    device: str = "auto"              # "auto": cuda if available, else cpu
    out: str = "runs/train"           # output folder: config.json, checkpoints, metrics.csv, plots
    log_every: int = 50               # steps per log line / metrics.csv row
    val_every: int = 5000             # steps between validations (0: never)
    val_samples: int = 16             # fixed held-out synthetic samples
    val_seed_offset: int = 10 ** 6    # validation stream = seed + this (never used in training)
    ckpt_every: int = 5000            # steps between checkpoints (plus one at the end and on SIGINT/SIGTERM)
    plot_samples: int = 3             # validation samples drawn in val_samples.png
    generate_ahead: str = "auto"      # make step n + 1's batch on a side stream and thread while step n trains:
                                      # "auto" (on CUDA), "on", "off"; the run's numbers are the same either way
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    @property
    def num_classes(self) -> int:
        """The network's outputs: the generator's target classes (lesion last), 2 for the baseline."""
        return 2 if self.baseline else self.generator.num_target_classes

    @property
    def class_names(self) -> tuple:
        return ("background", "lesion") if self.baseline else self.generator.target_class_names

    def resolve_labels(self) -> "TrainConfig":
        """Set ``generator.labels`` from the data (the store's index or the label mapping), so that the class
        count, the target and ``config.json`` describe the maps; return self.

        Raises:
            ValueError / FileNotFoundError: a bad label mapping or store, or labels that contradict the data's.
        """
        if self.baseline:
            return self
        from synthgen.data.training import data_labels, merge_labels
        d = self.data
        self.generator.labels = merge_labels(data_labels(d.store, d.label_map), self.generator.labels)
        return self

    def model_kwargs(self) -> dict:
        """Keyword arguments of ``build_unet`` (the checkpoint's ``config["model"]``)."""
        m = self.model
        return {"out_channels": self.num_classes, "in_channels": 1 if self.baseline else self.generator.channels,
                "channels": list(m.channels),
                "strides": None if m.strides is None else list(m.strides), "dropout": m.dropout,
                "num_res_units": m.num_res_units}

    def validate(self) -> "TrainConfig":
        """Check every field; return self.

        Raises:
            ValueError: a field out of range, or a crop that the network cannot take.
        """
        validate.check_config_fields(self)         # NaN / Inf and wrong types in any field, by its path
        if self.preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {PRESETS}, got {self.preset!r}")
        for name in ("steps", "batch_size", "iters_per_epoch", "log_every"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive int, got {getattr(self, name)!r}")
        for name in ("val_every", "ckpt_every", "val_samples", "plot_samples"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {getattr(self, name)!r}")
        if self.generate_ahead not in ("auto", "on", "off"):
            raise ValueError(f"`generate_ahead` must be 'auto', 'on' or 'off', got {self.generate_ahead!r}")
        if self.device != "auto" and not str(self.device).startswith(("cpu", "cuda")):
            raise ValueError(f"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        o = self.optim
        if not 0 < o.lr < float("inf"):
            raise ValueError(f"`optim.lr` must be > 0 and finite, got {o.lr}")
        if not o.grad_clip > 0:
            raise ValueError(f"`optim.grad_clip` must be > 0, got {o.grad_clip}")
        if o.poly_power < 0:
            raise ValueError(f"`optim.poly_power` must be >= 0, got {o.poly_power}")
        if o.dice_weight < 0 or o.ce_weight < 0 or o.dice_weight + o.ce_weight == 0:
            raise ValueError(f"`optim.dice_weight` and `optim.ce_weight` must be >= 0 and not both 0, "
                             f"got {o.dice_weight}, {o.ce_weight}")
        if o.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"`optim.amp` must be 'auto', 'bf16' or 'off', got {o.amp!r}")
        self.data.lesion.validate()
        d = self.data
        if int(d.prefetch) != d.prefetch or d.prefetch < 1:
            raise ValueError(f"`data.prefetch` must be an int >= 1, got {d.prefetch!r}")
        if d.store:
            both = [f"data.{k}" for k in ("tissue_maps", "lesions", "real", "label_map") if getattr(d, k)]
            if both:
                raise ValueError(f"`data.store` (--store) must be given without {both}: the store replaces the "
                                 "folders (labels were mapped when it was packed), got both")
        if self.generator.channels > 1 and (d.real or d.real_val):
            raise ValueError(f"`generator.channels` {self.generator.channels} (several contrasts) trains on synthetic "
                             "data only: real scans are one contrast; drop --real / --real-val, got both")
        if self.baseline and not (d.real or d.store):
            raise ValueError("`baseline` trains on real scans only: it needs `data.real` (--real DIR) or "
                             "`data.store` (--store STORE), got None")
        self.generator.validate()
        from synthgen.segment.model import total_stride
        validate.check_network_input(self.generator.crop, total_stride(vars(self.model)), "`generator.crop`")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Rebuild from ``to_dict`` output (e.g. ``config.json``); unknown keys are an error."""
        d = dict(d)
        gen = d.pop("generator", None)
        cfg = dataclass_from_dict(cls, d)
        if gen is not None:
            cfg.generator = GeneratorConfig.from_dict(gen)
        return cfg


def paper_preset() -> TrainConfig:
    """The paper's recipe: 192^3 crops at 1 mm, the full UNet, 600k iterations."""
    return TrainConfig(preset="paper")


def _large_lesions() -> ProceduralLesionConfig:
    # one component of SOOP volume x 3, at least 15 mL (~550 voxels at 3 mm): visible on the coarse grid, and
    # one component keeps the CPU cost of procedural synthesis (per component) down
    base = ProceduralLesionConfig()
    return ProceduralLesionConfig(volume_quantiles_ml=tuple(max(15.0, 3 * q) for q in base.volume_quantiles_ml),
                                  component_count_pmf=(1.0, 0.0))


def quick_preset() -> TrainConfig:
    """A CPU-sized run (about 5 minutes on 2 free cores) in which lesion Dice clearly rises.

    The tissue map is resliced to 3 mm so that a 48^3 crop (144 mm) covers most of the brain, with every
    distance range kept in mm (``GeneratorConfig.voxel_size``); the UNet is narrow (16..128 channels, 4
    levels); procedural lesions are large single components, visible at 3 mm. Two departures from the paper
    make a few thousand CPU steps enough: the target is binary (lesion vs rest), and the contrast has a prior,
    lesions dark (mean U(0, 40)) against tissues in U(80, 255), as chronic lesions look on T1. With the
    paper's fully random contrast a lesion is only told apart by anatomy, which a network this size does not
    learn in minutes (lesion Dice stayed at 0 over 1500 steps with the full ranges).
    """
    return TrainConfig(
        preset="quick", steps=2500, iters_per_epoch=250, log_every=50, val_every=250, val_samples=16,
        ckpt_every=250, plot_samples=3,
        model=ModelConfig(channels=(16, 32, 64, 128), dropout=0.0),
        optim=OptimConfig(lr=1e-3),
        data=DataConfig(lesion=LesionConfig(healthy_probability=0.0, procedural=_large_lesions())),
        generator=GeneratorConfig(crop=(48, 48, 48), voxel_size=3.0, target="lesion",
                                  gmm=GMMConfig(mu=(80.0, 255.0), lesion_mu=(0.0, 40.0))),
    )


def transfer_preset() -> TrainConfig:
    """The CPU recipe meant to transfer to real strokes of any contrast (issue 19; ``benchmarks/transfer_ablation.py``).

    ``quick`` with three changes, each a row of the ablation in ``benchmarks/README.md``: the conspicuity prior
    (``gmm.lesion_contrast``: the lesion 25-100 intensity units brighter than GM and WM or darker, every other class
    fully random, so that neither "dark" nor "brightest thing" is the lesion), the SOOP-calibrated procedural
    lesions (small and multifocal ones included) with 10 % healthy samples, and a 2 mm grid with 64^3 crops
    (128 mm) so that lesions of a few voxels at 3 mm stay visible. 18,000 steps: about 2 hours on 2 cores.
    """
    cfg = quick_preset()
    cfg.preset, cfg.steps, cfg.iters_per_epoch, cfg.val_every, cfg.ckpt_every = "transfer", 18_000, 1000, 1000, 250
    cfg.data.lesion = LesionConfig(healthy_probability=0.1)
    cfg.generator.gmm = GMMConfig(lesion_contrast=(25.0, 100.0))
    cfg.generator.voxel_size, cfg.generator.crop = 2.0, (64, 64, 64)
    return cfg


def preset(name: str) -> TrainConfig:
    """A fresh preset by name ("paper", "quick" or "transfer").

    Raises:
        ValueError: unknown name.
    """
    if name == "paper":
        return paper_preset()
    if name == "quick":
        return quick_preset()
    if name == "transfer":
        return transfer_preset()
    raise ValueError(f"`preset` must be one of {PRESETS}, got {name!r}")
