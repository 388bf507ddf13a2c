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


def _conspicuity(gmm, labels=None, batch=1000):
    from synthgen.config import LabelConfig
    cfg = GeneratorConfig(gmm=gmm, labels=labels or LabelConfig())
    return cfg, sample_params(cfg, (60, 70, 64), seed=5, index=0, batch=batch)


def test_conspicuity_prior_puts_the_lesion_outside_grey_and_white_matter():
    """Under ``gmm.lesion_contrast`` the lesion's mean is a margin U(lo, hi) above max(GM, WM) (labels 1, 2 of the
    default label set) or below their min, bright with the configured probability, the margin uniform; every
    other draw is the paper's. The expectation is computed here from the drawn GM and WM means."""
    from synthgen.config import GMMConfig
    lo, hi, p = 20.0, 90.0, 0.3
    base = sample_params(GeneratorConfig(gmm=GMMConfig(mu=(120.0, 255.0))), (60, 70, 64), seed=5, index=0, batch=1000)
    _, prior = _conspicuity(GMMConfig(mu=(120.0, 255.0), lesion_contrast=(lo, hi), lesion_bright_probability=p))
    assert torch.equal(prior.gmm_mu[:, :-1], base.gmm_mu[:, :-1]) and torch.equal(prior.gmm_sigma, base.gmm_sigma)
    par, les = prior.gmm_mu[:, 1:3].double(), prior.gmm_mu[:, -1].double()
    above, below = les - par.max(1).values, par.min(1).values - les
    bright = above > 0
    margin = torch.where(bright, above, below).numpy()
    assert bool(((above > 0) ^ (below > 0)).all())                   # never between GM and WM
    assert margin.min() >= lo - 1e-3 and margin.max() <= hi + 1e-3
    assert stats.kstest(margin, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    assert stats.binomtest(int(bright.sum()), len(bright), p).pvalue > 1e-3    # dark always fits above 120 - 90


def test_conspicuity_prior_draws_bright_where_dark_would_fall_below_zero():
    """Rician noise folds negative means back up, so a dark lesion that does not fit below the parenchyma is
    drawn bright instead: every mean >= 0, and the lesion still clears GM and WM by the margin."""
    from synthgen.config import GMMConfig
    _, prior = _conspicuity(GMMConfig(mu=(0.0, 60.0), lesion_contrast=(50.0, 100.0)), batch=400)
    par, les = prior.gmm_mu[:, 1:3], prior.gmm_mu[:, -1]
    assert float(les.min()) >= 0
    dark = les < par.min(1).values
    assert bool((dark | (les >= par.max(1).values + 50 - 1e-3)).all())
    assert bool((par.min(1).values[dark] - les[dark] >= 50 - 1e-3).all())
    assert 0 < int(dark.sum()) < 0.5 * len(les)      # some fit (parenchyma above 50), most are flipped bright


def test_conspicuity_prior_reads_grey_and_white_matter_of_a_label_mapping():
    """With FreeSurfer labels the parenchyma is every Gaussian of a GM or WM label (cortex, cerebral and cerebellar
    WM, deep nuclei, ...): the lesion lies outside all of their means."""
    from synthgen.config import GMMConfig
    from synthgen.data.tissue import freesurfer_mapping
    from synthgen.sampling import parenchyma_gaussians
    labels = freesurfer_mapping().label_config()
    cfg, prior = _conspicuity(GMMConfig(lesion_contrast=(10.0, 40.0)), labels, batch=200)
    classes = labels.class_table()
    par_labels = [i for i, c in enumerate(classes) if c in (1, 2)]
    assert len(par_labels) > 4
    assert sorted({labels.gaussians[i] for i in par_labels}) == parenchyma_gaussians(cfg)
    par = prior.gmm_mu[:, par_labels]           # per label (each label's group's mean)
    les = prior.gmm_mu[:, -1]
    assert bool(((les >= par.max(1).values + 10 - 1e-3) | (les <= par.min(1).values - 10 + 1e-3)).all())


def test_conspicuity_prior_config_is_checked():
    from synthgen.config import GMMConfig
    cfg = GeneratorConfig(gmm=GMMConfig(lesion_contrast=(25.0, 100.0), lesion_bright_probability=0.7))
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    for bad, match in (({"lesion_contrast": (50.0, 10.0)}, "gmm.lesion_contrast"),
                       ({"lesion_contrast": (-5.0, 10.0)}, "gmm.lesion_contrast"),
                       ({"lesion_contrast": (5.0, 10.0), "lesion_mu": (0.0, 40.0)}, "two lesion priors"),
                       ({"lesion_bright_probability": 1.5}, "lesion_bright_probability")):
        with pytest.raises(ValueError, match=match):
            GeneratorConfig(gmm=GMMConfig(**bad)).validate()


def _field_rms(coeffs: torch.Tensor, shape) -> torch.Tensor:
    """Root mean square over the grid of each sample's spline field (all channels), via the reference spline."""
    from synthgen.fields import smooth_field
    return smooth_field(coeffs.double(), shape).pow(2).mean(dim=(1, 2, 3, 4)).sqrt()


@pytest.mark.parametrize("crop, voxel_size", [((40, 48, 36), 1.0), ((30, 30, 30), 2.0)])
def test_effective_elastic_and_bias_std_are_the_configured_ones(crop, voxel_size):
    """Each sample draws s ~ U(0, max_std) and its field has std s: over 300 draws the fields' RMS has the moments
    of U(0, max): E[rms^2] = max^2 / 3 and E[rms] = max / 2 (within 10 %; the spline's shrink was 3x)."""
    from synthgen.config import BiasConfig, ElasticConfig
    cfg = GeneratorConfig(crop=crop, voxel_size=voxel_size, elastic=ElasticConfig(max_std=4.0),
                          bias=BiasConfig(max_std=0.3))
    p = sample_params(cfg, (80, 80, 80), seed=11, index=0, batch=N)
    elastic_mm = _field_rms(p.elastic, crop) * voxel_size          # RMS of all components, in mm
    bias = _field_rms(p.bias, crop)
    for rms, top in ((elastic_mm, 4.0), (bias, 0.3)):
        assert float(rms.pow(2).mean().sqrt()) == pytest.approx(top / math.sqrt(3), rel=0.1)
        assert float(rms.mean()) == pytest.approx(top / 2, rel=0.1)
        assert float(rms.max()) < 1.25 * top


def _euler_zyx_degrees(r: torch.Tensor) -> torch.Tensor:
    """Angles (about axes 0, 1, 2) of R = Rz @ Ry @ Rx, in degrees (|angle about axis 1| < 90)."""
    ax = torch.atan2(r[..., 2, 1], r[..., 2, 2])
    ay = torch.asin(-r[..., 2, 0].clamp(-1, 1))
    az = torch.atan2(r[..., 1, 0], r[..., 0, 0])
    return torch.stack([ax, ay, az], -1) * (180 / math.pi)


def test_rotation_angles_are_uniform_in_the_configured_range_in_degrees(draws):
    """The rotation part of M = R S Z is M's QR factor Q (S Z is upper triangular with a positive diagonal):
    its angles must be U(-15, 15) degrees on each axis, which a degrees/radians slip breaks either way."""
    cfg, p = draws
    q, u = torch.linalg.qr(p.matrix)
    sign = torch.sign(torch.diagonal(u, dim1=-2, dim2=-1))
    rot = q * sign[:, None, :]
    assert torch.allclose(torch.diagonal(u, dim1=-2, dim2=-1).abs(), torch.diagonal(u * sign[..., None], dim1=-2,
                                                                                        dim2=-1), atol=1e-12)
    angles = _euler_zyx_degrees(rot)
    r = cfg.affine.rotation
    assert float(angles.abs().max()) <= r + 1e-6 and float(angles.abs().max()) > 0.9 * r
    for axis in range(3):
        assert stats.kstest(angles[:, axis].numpy(), stats.uniform(-r, 2 * r).cdf).pvalue > 1e-3
    # a known rotation: 10 degrees about axis 2 turns axis 0 towards axis 1 by 10 degrees
    m = affine_matrix(torch.tensor([0.0, 0.0, 10.0]), torch.zeros(3), torch.ones(3))
    assert float(m[1, 0]) == pytest.approx(math.sin(math.radians(10)), abs=1e-12)
    assert torch.allclose(_euler_zyx_degrees(affine_matrix(torch.tensor([5.0, -7.0, 12.0]), torch.zeros(3),
                                                           torch.ones(3))), torch.tensor([5.0, -7.0, 12.0],
                                                                                         dtype=torch.float64))
