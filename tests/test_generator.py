import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import synthgen
from synthgen.config import (AnisotropyConfig, BiasConfig, GammaConfig, GeneratorConfig, GMMConfig,
                             MotionBlurConfig, NoiseConfig, SmoothConfig)

CROP = (24, 28, 20)


def _cfg(**kw):
    return GeneratorConfig(crop=CROP, **kw)


def test_output_shapes_dtypes_and_normalisation(phantom):
    gen = synthgen.SynthGenerator(_cfg())
    image, target = gen(phantom, seed=0, batch_size=2)
    assert image.shape == (2, 1, *CROP) and image.dtype == torch.float32
    assert target.shape == (2, *CROP) and target.dtype == torch.uint8
    assert torch.isfinite(image).all()
    assert torch.allclose(image.mean((1, 2, 3, 4)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(image.std((1, 2, 3, 4), unbiased=False), torch.ones(2), atol=1e-3)
    assert set(target.unique().tolist()) <= {0, 1, 2, 3, 4}     # no lesion source: healthy, extras -> 0


def test_same_seed_same_bytes_other_seed_other_sample(phantom):
    gen = synthgen.SynthGenerator(_cfg())
    a, ta = gen(phantom, seed=3)
    b, tb = gen(phantom, seed=3)
    c, _ = gen(phantom, seed=4)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.allclose(a, c)


def test_replaying_params_reproduces_the_sample(phantom):
    gen = synthgen.SynthGenerator(_cfg())
    image, target, params = gen(phantom, seed=1, index=5, batch_size=3, return_params=True)
    again, target2 = gen(phantom, params=params)
    assert torch.equal(image, again) and torch.equal(target, target2)
    one, _ = gen(phantom, params=params.select(1))
    assert torch.equal(one[0], image[1])
    alone, _ = gen(phantom, seed=1, index=6)
    assert torch.equal(alone[0], image[1])          # sample index 6 is the same in or out of a batch


def _plain_config():
    """Every intensity augmentation off: the image is a function of the target class only."""
    return _cfg(gmm=GMMConfig(sigma=(0.0, 0.0), fwhm=(0.0, 0.0)), bias=BiasConfig(max_std=0.0),
                gamma=GammaConfig(log_std=0.0), motion=MotionBlurConfig(probability=0.0),
                anisotropy=AnisotropyConfig(probability=0.0), noise=NoiseConfig(max_std=0.0),
                smooth=SmoothConfig(probability=0.0), clip=(0.0, 1.0), skull_strip_probability=0.0)


@pytest.mark.parametrize("seed", range(4))
def test_image_and_target_stay_aligned_under_any_warp(phantom, seed):
    gen = synthgen.SynthGenerator(_plain_config())
    image, target, params = gen(phantom, seed=seed, return_params=True)
    # every target class maps to one intensity: the image went through the same warp and flips
    for k in target.unique():
        values = image[0, 0][target[0] == k]
        if k == 0:
            continue   # background mixes air and non-brain head tissue
        assert values.max() - values.min() < 1e-4, f"class {int(k)} spans several intensities"
    # and the class layout is that of nearest-neighbour pulling the labels with the sampled transform
    from synthgen import ops
    coords = ops.affine_elastic_coords(CROP, params.matrix, params.center, params.elastic)
    pulled = ops.grid_pull(phantom, coords, "nearest")[:, 0]
    pulled[pulled > 4] = 0
    assert torch.equal(ops.flip(pulled[:, None], params.flip)[:, 0], target)


def test_soft_probabilities_give_the_same_classes_as_labels(phantom):
    probs = torch.nn.functional.one_hot(phantom[:, 0].long(), 6).permute(0, 4, 1, 2, 3).float()
    gen = synthgen.SynthGenerator(_plain_config())
    _, t_lab = gen(phantom, seed=2)
    _, t_prob = gen(probs, seed=2)
    agree = (t_lab == t_prob).float().mean()
    assert agree > 0.93      # trilinear vs nearest differ only on thin-shell class boundaries


class _FixedLesion:
    """A cube of lesion in the middle of the map, at full weight."""

    def sample(self, tissue, keys, affine=None, classes=None, region=None):
        w = torch.zeros(tissue.shape[0], 1, *tissue.shape[2:])
        w[..., 10:20, 12:24, 10:20] = 1.0
        return w, w


def test_lesion_weights_become_the_lesion_class(phantom):
    cfg = _plain_config()
    gen = synthgen.SynthGenerator(cfg, lesions=_FixedLesion())
    image, target = gen(phantom, seed=0)
    assert (target == 5).sum() > 0.6 * 10 * 12 * 10 * 0.8       # zooms up to 15 %
    core = -torch.nn.functional.max_pool3d(-(target == 5).float()[:, None], 3, 1, 1)[0, 0] > 0
    values = image[0, 0][core]
    assert core.sum() > 0 and values.max() - values.min() < 1e-4   # the lesion has its own Gaussian
    binary = synthgen.SynthGenerator(dataclasses.replace(cfg, target="lesion"), lesions=_FixedLesion())
    _, t_bin = binary(phantom, seed=0)
    assert torch.equal(t_bin, (target == 5).to(torch.uint8))


@pytest.mark.parametrize("rotate, flip", [(False, (False, False, False)), (False, (True, False, True)),
                                          (True, (False, True, False))])
def test_target_equals_a_hand_computed_translation_rotation_and_flip(phantom, rotate, flip):
    """Replayed parameters with a known geometry (a translation by integers + 0.3 voxel, optionally a quarter turn
    in the (0, 1) plane, flips, no elastic): the target is the phantom indexed by numpy at
    rint(M (o - (S - 1) / 2) + centre), flipped, with the lesion cube where its trilinear weight exceeds 0.5; no
    warp code builds the expectation."""
    import numpy as np
    gen = synthgen.SynthGenerator(_plain_config(), lesions=_FixedLesion())
    params = gen.sample_params(phantom.shape, seed=0, batch=1)
    m = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) if rotate else np.eye(3)
    centre = np.array([15.3, 17.3, 15.8])
    params = dataclasses.replace(params, matrix=torch.from_numpy(m)[None], center=torch.from_numpy(centre)[None],
                                 elastic=torch.zeros_like(params.elastic), flip=torch.tensor([flip]))
    _, target = gen(phantom, params=params)
    o = np.stack(np.meshgrid(*[np.arange(n) for n in CROP], indexing="ij"), -1).astype(np.float64)
    idx = np.rint((o - (np.array(CROP) - 1) / 2) @ m.T + centre).astype(int)
    assert idx.min() >= 0 and all(idx[..., a].max() < phantom.shape[2 + a] for a in range(3))
    labels = phantom[0, 0].numpy()[idx[..., 0], idx[..., 1], idx[..., 2]]
    expected = np.where(labels > 4, 0, labels)                                   # non-brain head -> background
    # the lesion weight is pulled trilinearly: for a box, the product of 1D linear interpolations of its indicator
    x = (o - (np.array(CROP) - 1) / 2) @ m.T + centre
    weight = np.ones(CROP)
    for a, (lo, hi) in enumerate(((10, 20), (12, 24), (10, 20))):
        k, f = np.floor(x[..., a]), x[..., a] - np.floor(x[..., a])
        weight *= (1 - f) * ((k >= lo) & (k < hi)) + f * ((k + 1 >= lo) & (k + 1 < hi))
    cube = weight > 0.5
    expected[cube] = 5
    for axis in range(3):
        if flip[axis]:
            expected = np.flip(expected, axis)
    assert cube.sum() > 100 and np.array_equal(target[0].numpy(), expected)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 31), index=st.integers(0, 10 ** 6))
def test_output_is_finite_and_normalised_across_the_ranges(seed, index):
    from conftest import phantom_labels
    gen = synthgen.SynthGenerator(_cfg())
    image, target = gen(phantom_labels(), seed=seed, index=index)
    assert torch.isfinite(image).all()
    assert abs(image.mean().item()) < 1e-3 and abs(image.std(unbiased=False).item() - 1) < 1e-2


def test_skull_strip_zeroes_non_brain(phantom):
    cfg = dataclasses.replace(_cfg(), skull_strip_probability=1.0)
    image, target = synthgen.SynthGenerator(cfg)(phantom, seed=0)
    outside = image[0, 0][target[0] == 0]
    assert outside.max() - outside.min() < 1e-5                  # one constant (z-normalised zero)


def test_bad_arguments_raise_clear_errors(phantom):
    gen = synthgen.SynthGenerator(_cfg())
    with pytest.raises(TypeError, match="tissue"):
        gen(phantom.numpy())
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        gen(phantom[0])
    with pytest.raises(ValueError, match="labels must be in"):
        gen(phantom.to(torch.int32) + 20)
    with pytest.raises(ValueError, match="1 channel"):
        gen(phantom.expand(1, 2, -1, -1, -1).contiguous())
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        gen(torch.full((1, 5, 8, 8, 8), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        gen(torch.full((1, 5, 8, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="channels"):
        gen(torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(TypeError, match="dtype"):
        gen(torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch"):
        gen(phantom.expand(3, -1, -1, -1, -1), batch_size=2)
    with pytest.raises(TypeError, match="params"):
        gen(phantom, params={"matrix": 1})


@pytest.mark.gpu
def test_cuda_generation_is_reproducible_and_matches_cpu_geometry(phantom):
    cfg = _plain_config()
    gen = synthgen.SynthGenerator(cfg)
    cpu_image, cpu_target = gen(phantom, seed=7)
    a, ta = gen(phantom.cuda(), seed=7)
    b, tb = gen(phantom.cuda(), seed=7)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    # no noise in this config: the device changes nothing but rounding
    assert (ta.cpu() == cpu_target).float().mean() > 0.999
    assert torch.allclose(a.cpu(), cpu_image, atol=1e-3)


def test_tissue_map_checked_once_and_again_after_an_in_place_change(monkeypatch):
    import synthgen.generator as generator_module
    from conftest import phantom_labels
    calls = []
    real_check = generator_module.check_tissue
    monkeypatch.setattr(generator_module, "check_tissue", lambda t, n=15: (calls.append(1), real_check(t, n)))
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=(8, 8, 8)))
    tissue = phantom_labels((12, 12, 12))
    gen(tissue, seed=0)
    gen(tissue, seed=1)
    assert len(calls) == 1                      # no min/max (a host sync on a GPU) per batch
    tissue[0, 0, 0, 0, 0] = 99                  # in place: checked again, and refused
    with pytest.raises(ValueError, match="labels must be in"):
        gen(tissue, seed=2)
    gen(phantom_labels((12, 12, 12)), seed=0)   # another map: checked
    assert len(calls) == 3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_image_dtype(phantom, dtype):
    a, ta = synthgen.SynthGenerator(_cfg())(phantom, seed=4)
    b, tb = synthgen.SynthGenerator(_cfg(image_dtype=dtype))(phantom, seed=4)
    assert b.dtype == getattr(torch, dtype) and torch.equal(ta, tb)
    torch.testing.assert_close(b.float(), a, atol=0, rtol=2 ** -7 if dtype == "bfloat16" else 2 ** -10)
    with pytest.raises(ValueError, match="`image_dtype` must be"):
        _cfg(image_dtype="float64").validate()


def test_several_contrasts_of_one_anatomy(phantom):
    """channels=3: three different images of one warped anatomy and one lesion, with one target; contrast 0 is
    the single-contrast sample, byte for byte; params replay."""
    import dataclasses
    from synthgen.lesions import LesionSource
    from synthgen.config import LesionConfig
    cfg = _cfg()
    masks = torch.zeros(1, *phantom.shape[2:])
    masks[0, 12:18, 14:20, 12:18] = 1
    lesions = LesionSource.from_tensor(masks, config=LesionConfig(healthy_probability=0.0))
    one, t1 = synthgen.SynthGenerator(cfg, lesions=lesions)(phantom, seed=5, batch_size=2)
    gen = synthgen.SynthGenerator(dataclasses.replace(cfg, channels=3), lesions=lesions)
    many, t3, params = gen(phantom, seed=5, batch_size=2, return_params=True)
    assert many.shape == (2, 3, *cfg.crop) and t3.shape == t1.shape and torch.equal(t3, t1)
    assert torch.equal(many[:, :1], one) and (t3 == 5).any()
    for b in range(2):
        corr = torch.corrcoef(many[b].flatten(1))
        assert not torch.equal(many[b, 0], many[b, 1]) and corr[0, 1] < 0.999      # different contrasts
    assert len(params) == 6 and torch.equal(params.matrix[0], params.matrix[2])    # one anatomy
    assert not torch.equal(params.gmm_mu[0], params.gmm_mu[1])
    again, t_again = gen(phantom, params=params)
    assert torch.equal(again, many) and torch.equal(t_again, t3)
    affines = gen.output_affine(params)
    assert affines.shape == (2, 4, 4)
    with pytest.raises(ValueError, match="3 rows per sample"):
        gen(phantom, params=params.select(0))
    with pytest.raises(ValueError, match="`channels` must be an int in"):
        dataclasses.replace(cfg, channels=0).validate()
