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
