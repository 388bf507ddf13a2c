import dataclasses

import pytest

from synthgen.config import (AffineConfig, AnisotropyConfig, BiasConfig, ElasticConfig, GammaConfig,
                             GeneratorConfig, GMMConfig, MotionBlurConfig, NoiseConfig, SmoothConfig)


def test_defaults_are_the_papers():
    c = GeneratorConfig().validate()
    assert c.gmm.mu == (0.0, 255.0) and c.gmm.sigma == (0.0, 16.0) and c.gmm.fwhm == (0.0, 2.0)
    assert c.clip == (0.01, 0.99) and c.skull_strip_probability == 0.3 and c.crop == (192, 192, 192)
    assert c.num_target_classes == 6 and dataclasses.replace(c, target="lesion").num_target_classes == 2


def test_round_trip_through_a_dict():
    c = GeneratorConfig(crop=(64, 64, 64), gmm=GMMConfig(sigma=(1.0, 5.0)))
    assert GeneratorConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown GeneratorConfig fields"):
        GeneratorConfig.from_dict({"crops": 1})


@pytest.mark.parametrize("bad,match", [
    (dict(crop=(10, 10)), "crop"),
    (dict(gmm=GMMConfig(mu=(255.0, 0.0))), "gmm.mu"),
    (dict(gmm=GMMConfig(sigma=(-1.0, 2.0))), "gmm.sigma"),
    (dict(gmm=GMMConfig(fwhm=(-1.0, 2.0))), "gmm.fwhm"),
    (dict(affine=AffineConfig(rotation=200)), "affine.rotation"),
    (dict(affine=AffineConfig(shear=1.5)), "affine.shear"),
    (dict(affine=AffineConfig(zoom=1.0)), "affine.zoom"),
    (dict(affine=AffineConfig(translation=-1)), "affine.translation"),
    (dict(elastic=ElasticConfig(control_points=2)), "elastic.control_points"),
    (dict(elastic=ElasticConfig(max_std=-1)), "elastic.max_std"),
    (dict(bias=BiasConfig(control_points=3)), "bias.control_points"),
    (dict(bias=BiasConfig(max_std=-0.1)), "bias.max_std"),
    (dict(gamma=GammaConfig(log_std=-1)), "gamma.log_std"),
    (dict(motion=MotionBlurConfig(probability=2)), "motion.probability"),
    (dict(motion=MotionBlurConfig(fwhm=(-1.0, 1.0))), "motion.fwhm"),
    (dict(anisotropy=AnisotropyConfig(spacing=(0.5, 2.0))), "anisotropy.spacing"),
    (dict(anisotropy=AnisotropyConfig(isotropic_probability=-0.1)), "anisotropy.isotropic_probability"),
    (dict(noise=NoiseConfig(max_std=-1)), "noise.max_std"),
    (dict(noise=NoiseConfig(kind="poisson")), "noise.kind"),
    (dict(smooth=SmoothConfig(fwhm=(2.0, 1.0))), "smooth.fwhm"),
    (dict(clip=(0.5, 1.5)), "clip"),
    (dict(skull_strip_probability=1.3), "skull_strip_probability"),
    (dict(flip_probability=-0.5), "flip_probability"),
    (dict(lesion_threshold=1.0), "lesion_threshold"),
    (dict(target="both"), "target"),
])
def test_out_of_range_parameters_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**bad).validate()


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("bad,match", [
    (dict(bias=BiasConfig(max_std=NAN)), "bias.max_std"),
    (dict(bias=BiasConfig(max_std=INF)), "bias.max_std"),
    (dict(gamma=GammaConfig(log_std=NAN)), "gamma.log_std"),
    (dict(noise=NoiseConfig(max_std=INF)), "noise.max_std"),
    (dict(noise=NoiseConfig(scale=NAN)), "noise.scale"),
    (dict(noise=NoiseConfig(scale=0.0)), "noise.scale"),
    (dict(gmm=GMMConfig(mu=(0.0, INF))), "gmm.mu"),
    (dict(gmm=GMMConfig(lesion_mu=(0.0, NAN))), "gmm.lesion_mu"),
    (dict(gmm=GMMConfig(sigma=(0.0, INF))), "gmm.sigma"),
    (dict(elastic=ElasticConfig(max_std=INF)), "elastic.max_std"),
    (dict(affine=AffineConfig(translation=INF)), "affine.translation"),
    (dict(affine=AffineConfig(rotation=NAN)), "affine.rotation"),
    (dict(motion=MotionBlurConfig(fwhm=(0.0, INF))), "motion.fwhm"),
    (dict(anisotropy=AnisotropyConfig(spacing=(1.0, INF))), "anisotropy.spacing"),
    (dict(smooth=SmoothConfig(fwhm=(NAN, 1.0))), "smooth.fwhm"),
    (dict(voxel_size=NAN), "voxel_size"),
    (dict(voxel_size=INF), "voxel_size"),
    (dict(voxel_size=1e-6), r"voxel_size` must be in \[0.1, 16\] mm"),
    (dict(crop=(1000, 1000, 1000)), r"`crop` must hold at most .* got 1000x1000x1000"),
    (dict(crop=(INF, 64, 64)), r"`crop\[0\]` must be finite"),
])
def test_non_finite_and_memory_exploding_parameters_are_refused(bad, match):
    """NaN / Inf would give all-NaN images or all-background targets; a 1000^3 crop or 1e-6 mm voxels ask for
    hundreds of GB: each is refused by validate(), naming the field."""
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**bad).validate()


def test_batch_size_zero_is_refused():
    import torch
    from synthgen import SynthGenerator
    gen = SynthGenerator(GeneratorConfig(crop=(8, 8, 8)))
    tissue = torch.ones(1, 1, 8, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int or None .* got 0"):
        gen(tissue, batch_size=0)


def _number_paths(obj, prefix=""):
    """Dotted paths of every float of a config (tuple elements as ``path[i]``), with a setter for each."""
    out = []
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += _number_paths(value, f"{path}.")
        elif isinstance(value, float):
            out.append((path, obj, f.name, None))
        elif isinstance(value, tuple):
            out += [(f"{path}[{i}]", obj, f.name, i) for i, v in enumerate(value) if isinstance(v, float)]
    return out


def _quick():
    from synthgen.train.config import quick_preset
    return quick_preset()


TRAIN_FLOATS = [path for path, *_ in _number_paths(_quick())]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("path", TRAIN_FLOATS)
def test_every_float_field_of_every_config_refuses_nan_and_inf_by_its_path(path, bad):
    """One generic rule (issue 22): NaN or Inf in any float of a training config, optimiser and schedule settings
    included (a NaN poly_power once trained to "diverged", blaming the learning rate), is refused by validate()
    naming its dotted path."""
    import re
    cfg = _quick()
    _, obj, name, i = next(entry for entry in _number_paths(cfg) if entry[0] == path)
    value = getattr(obj, name)
    setattr(obj, name, bad if i is None else value[:i] + (bad,) + value[i + 1:])
    with pytest.raises(ValueError, match=re.escape(f"`{path}` must be finite, got {bad}")):
        cfg.validate()


def test_the_generator_and_lesion_configs_apply_the_rule_alone():
    from synthgen.config import LesionConfig, ProceduralLesionConfig
    assert len(TRAIN_FLOATS) > 50 and "optim.poly_power" in TRAIN_FLOATS and "generator.gmm.mu[1]" in TRAIN_FLOATS
    with pytest.raises(ValueError, match=r"`noise.scale` must be finite, got nan"):
        GeneratorConfig(noise=NoiseConfig(scale=float("nan"))).validate()
    with pytest.raises(ValueError, match=r"`lesion.procedural.roughness` must be finite, got inf"):
        LesionConfig(procedural=ProceduralLesionConfig(roughness=float("inf"))).validate()
    with pytest.raises(ValueError, match=r"`elastic.control_points` must be an int, got 8.5 \(float\)"):
        GeneratorConfig(elastic=ElasticConfig(control_points=8.5)).validate()
    with pytest.raises(ValueError, match=r"`voxel_size` must be a number, got '3' \(str\)"):
        GeneratorConfig(voxel_size="3").validate()


def test_lesion_config_keeps_how_masks_are_read_apart_from_how_lesions_are_made():
    from synthgen.config import LesionConfig, LesionMaskConfig
    reading = ["mask_dir", "mask_pattern", "mask_threshold", "max_volume_ml", "max_outside_fraction",
               "holdout_fraction"]
    assert [f.name for f in dataclasses.fields(LesionMaskConfig)] == reading
    assert [f.name for f in dataclasses.fields(LesionConfig)][:len(reading)] == reading   # same order as before
    assert not set(reading) & {"count", "healthy_probability", "clip_to", "target", "fading", "softcp", "procedural"}
    # the old spelling: a LesionConfig still takes every field, and is a mask-reading config too
    cfg = LesionConfig(mask_pattern="*_lesion.nii.gz", holdout_fraction=0.3, count=(2, 3))
    assert isinstance(cfg, LesionMaskConfig) and (cfg.mask_pattern, cfg.count) == ("*_lesion.nii.gz", (2, 3))
    with pytest.raises(ValueError, match=r"`lesion.mask_threshold` must be in \[0, 1\), got 1.5"):
        LesionMaskConfig(mask_threshold=1.5).validate()
    with pytest.raises(ValueError, match=r"`lesion.holdout_fraction`"):
        LesionConfig(holdout_fraction=2.0).validate()


def test_transfer_preset_is_quick_with_the_conspicuity_prior_soop_lesions_and_a_2mm_grid():
    from synthgen.config import ProceduralLesionConfig
    from synthgen.train.config import preset, quick_preset
    cfg, quick = preset("transfer").validate(), quick_preset()
    assert cfg.generator.gmm.lesion_contrast == (25.0, 100.0) and cfg.generator.gmm.lesion_mu is None
    assert cfg.generator.voxel_size == 2.0 and cfg.generator.crop == (64, 64, 64)
    assert cfg.data.lesion.procedural == ProceduralLesionConfig() and cfg.data.lesion.healthy_probability == 0.1
    assert cfg.model == quick.model and cfg.generator.target == "lesion" and cfg.steps == 18_000
