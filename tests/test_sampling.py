import math

import pytest
import torch
from scipy import stats

from synthgen.config import GeneratorConfig
from synthgen.sampling import MAX_TISSUE_CHANNELS, affine_matrix, sample_key, sample_params

N = 300


@pytest.fixture(scope="module")
def draws():
    cfg = GeneratorConfig(crop=(32, 32, 32))
    return cfg, sample_params(cfg, (60, 70, 64), seed=123, index=0, batch=N)


def test_keys_depend_on_seed_index_and_stream():
    keys = {sample_key(s, i, st) for s in range(3) for i in range(50) for st in ("params", "lesion")}
    assert len(keys) == 300 and all(0 <= k < 2 ** 63 for k in keys)
    assert sample_key(1, 2, "x") == sample_key(1, 2, "x")


def test_uniform_ranges_follow_their_distributions(draws):
    cfg, p = draws
    alpha = 1e-3
    assert stats.kstest(p.gmm_mu[:, 0].numpy(), stats.uniform(0, 255).cdf).pvalue > alpha
    assert stats.kstest(p.gmm_sigma[:, 3].numpy(), stats.uniform(0, 16).cdf).pvalue > alpha
    assert stats.kstest(p.gmm_fwhm.numpy(), stats.uniform(0, 2).cdf).pvalue > alpha
    assert stats.kstest(torch.log(p.gamma).numpy(), stats.norm(0, cfg.gamma.log_std).cdf).pvalue > alpha
    assert stats.kstest((p.noise_std / 255).numpy(), stats.uniform(0, cfg.noise.max_std).cdf).pvalue > alpha
    assert p.gmm_mu.shape == (N, MAX_TISSUE_CHANNELS + 1)


def test_probabilities_and_bounds(draws):
    cfg, p = draws
    def close(frac, prob):
        return abs(frac - prob) < 4 * math.sqrt(prob * (1 - prob) / N)
    assert close(p.skull_strip.float().mean().item(), 0.3)
    assert close(p.flip.float().mean().item(), 0.5)
    assert close((p.motion_fwhm.amax(1) > 0).float().mean().item(), cfg.motion.probability)
    assert (p.motion_fwhm > 0).sum(1).max() <= 1       # one motion axis
    assert ((p.spacing >= 1) & (p.spacing <= 8)).all()
    iso = (p.spacing > 1).all(1).float().mean().item()
    assert close(iso, 0.5)
    zooms = torch.linalg.svdvals(p.matrix)       # rotations keep the scale; shears are tiny
    assert zooms.min() > 0.8 and zooms.max() < 1.2
    # the crop stays inside a larger input
    assert ((p.center[:, 0] >= 15.5) & (p.center[:, 0] <= 60 - 1 - 15.5)).all()


def test_affine_matrix_is_a_rotation_without_shear_and_zoom():
    m = affine_matrix(torch.tensor([10.0, -20.0, 30.0]), torch.zeros(3), torch.ones(3))
    assert torch.allclose(m @ m.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert math.isclose(torch.linalg.det(m).item(), 1.0, rel_tol=1e-12)


def test_samples_do_not_depend_on_the_batch():
    cfg = GeneratorConfig()
    a = sample_params(cfg, (60, 70, 64), seed=5, index=10, batch=4)
    b = sample_params(cfg, (60, 70, 64), seed=5, index=12, batch=1)
    assert torch.equal(a.select(2).gmm_mu, b.gmm_mu) and torch.equal(a.select(2).elastic, b.elastic)


def test_distances_are_in_mm_and_converted_with_the_voxel_size():
    one = sample_params(GeneratorConfig(crop=(32, 32, 32)), (60, 70, 64), seed=9, index=0, batch=50)
    three = sample_params(GeneratorConfig(crop=(32, 32, 32), voxel_size=3.0), (60, 70, 64), seed=9, index=0, batch=50)
    assert torch.allclose(three.gmm_fwhm, one.gmm_fwhm / 3)
    assert torch.allclose(three.motion_fwhm, one.motion_fwhm / 3)
    assert torch.allclose(three.smooth_fwhm, one.smooth_fwhm / 3)
    assert torch.allclose(three.elastic, one.elastic / 3, atol=1e-6)
    assert torch.allclose(three.spacing, (one.spacing / 3).clamp(min=1))
    assert torch.equal(three.gmm_mu, one.gmm_mu) and torch.equal(three.matrix, one.matrix)
    with pytest.raises(ValueError, match="voxel_size"):
        GeneratorConfig(voxel_size=0).validate()


def test_lesion_contrast_prior_rescales_only_the_lesion_mean():
    from synthgen.config import GMMConfig
    base = sample_params(GeneratorConfig(), (60, 70, 64), seed=2, index=0, batch=40)
    prior = sample_params(GeneratorConfig(gmm=GMMConfig(lesion_mu=(0.0, 40.0))), (60, 70, 64), seed=2, index=0,
                          batch=40)
    assert torch.equal(prior.gmm_mu[:, :-1], base.gmm_mu[:, :-1]) and torch.equal(prior.elastic, base.elastic)
    assert torch.allclose(prior.gmm_mu[:, -1], base.gmm_mu[:, -1] * 40 / 255, atol=1e-4)
    cfg = GeneratorConfig(gmm=GMMConfig(lesion_mu=(0.0, 40.0)))
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="gmm.lesion_mu"):
        GeneratorConfig(gmm=GMMConfig(lesion_mu=(50.0, 10.0))).validate()
