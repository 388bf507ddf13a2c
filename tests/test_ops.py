import math

import pytest
import torch

from synthgen import ops
from synthgen.ops.blur import FWHM_PER_SIGMA, gaussian_kernel1d


def _measured_fwhm(profile: torch.Tensor) -> float:
    x = torch.arange(profile.numel(), dtype=torch.float64)
    p = profile.double() / profile.sum()
    mean = (x * p).sum()
    return float(((x - mean) ** 2 * p).sum().sqrt()) * FWHM_PER_SIGMA


@pytest.mark.parametrize("fwhm", [1.5, 3.0, 5.0])
def test_blur_of_a_delta_has_the_requested_fwhm(fwhm):
    x = torch.zeros(1, 1, 31, 33, 35, dtype=torch.float64)
    x[0, 0, 15, 16, 17] = 1.0
    out = ops.gaussian_blur(x, torch.tensor([[fwhm, 0.0, fwhm]]))
    assert math.isclose(out.sum().item(), 1.0, rel_tol=1e-9)
    assert math.isclose(_measured_fwhm(out[0, 0, :, 16, 17]), fwhm, rel_tol=0.03)
    assert math.isclose(_measured_fwhm(out[0, 0, 15, 16, :]), fwhm, rel_tol=0.03)
    assert (out[0, 0, 15, :, 17] > 0).sum() == 1   # zero FWHM on the middle axis leaves it sharp


def test_blur_is_per_sample_and_keeps_constants():
    x = torch.ones(2, 1, 9, 10, 11)
    out = ops.gaussian_blur(x, torch.tensor([2.0, 0.0]))
    assert torch.allclose(out, x, atol=1e-6)   # replicate borders: no darkening at the faces
    y = torch.rand(2, 1, 9, 10, 11)
    out = ops.gaussian_blur(y, torch.tensor([2.0, 0.0]))
    assert torch.equal(out[1], y[1]) and not torch.allclose(out[0], y[0])


def test_kernel_errors():
    with pytest.raises(ValueError, match="fwhm"):
        gaussian_kernel1d(-1.0)
    with pytest.raises(ValueError, match="x"):
        ops.gaussian_blur(torch.zeros(4, 4, 4), torch.zeros(1))
    with pytest.raises(ValueError, match="fwhm"):
        ops.gaussian_blur(torch.zeros(2, 1, 4, 4, 4), torch.zeros(3, 2))


def test_thick_slices():
    x = torch.rand(2, 1, 16, 17, 18)
    assert torch.equal(ops.thick_slices(x, torch.ones(2, 3)), x)
    const = torch.full((1, 1, 16, 17, 18), 3.0)
    assert torch.allclose(ops.thick_slices(const, torch.tensor([[1.0, 4.0, 2.5]])), const, atol=1e-5)
    out = ops.thick_slices(x, torch.tensor([[1.0, 1.0, 5.0], [1.0, 1.0, 1.0]]))
    # high through-plane frequencies are removed, in-plane ones kept
    assert out[0].diff(dim=-1).abs().mean() < 0.3 * x[0].diff(dim=-1).abs().mean()
    assert torch.equal(out[1], x[1])
    with pytest.raises(ValueError, match="spacing"):
        ops.thick_slices(x, torch.ones(2, 2))
    with pytest.raises(ValueError, match="spacing"):
        ops.thick_slices(x, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="motion_fwhm"):
        ops.thick_slices(x, torch.ones(2, 3), torch.zeros(2, 2))


def test_thick_slices_compose_motion_blur_and_slice_profile():
    """One kernel per axis: the motion blur alone where r <= 1; motion blur then slice profile away from the
    faces (within the composed radius the replicate border is applied once instead of twice)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 30, 31, 29, generator=g) * 100
    motion = torch.tensor([[2.0, 0.0, 1.3], [0.0, 2.5, 0.0]])
    assert torch.equal(ops.thick_slices(x, torch.ones(2, 3), motion), ops.gaussian_blur(x, motion))
    spacing = torch.tensor([[1.0, 1.0, 2.5], [1.0, 1.0, 1.0]])
    both = ops.thick_slices(x, spacing, motion)
    twice = ops.thick_slices(ops.gaussian_blur(x, motion), spacing)
    inner = (slice(None), slice(None), slice(10, -10), slice(10, -10), slice(10, -10))
    torch.testing.assert_close(both[inner], twice[inner], atol=1e-4, rtol=1e-6)
    assert not torch.allclose(both, twice, atol=1e-3)                    # the faces differ
    const = torch.full((1, 1, 16, 17, 18), 3.0)
    out = ops.thick_slices(const, torch.tensor([[1.0, 4.0, 2.5]]), torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(out, const, atol=1e-5, rtol=0)


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_gmm_with_zero_fwhm_has_the_drawn_class_statistics():
    labels = torch.zeros(1, 1, 40, 40, 40, dtype=torch.uint8)
    labels[..., 20:] = 1
    labels[..., 30:, :, :] = 2
    mu = torch.tensor([[10.0, 100.0, 200.0, 0.0]])
    sigma = torch.tensor([[3.0, 8.0, 15.0, 0.0]])
    tex = ops.texture_noise((40, 40, 40), torch.zeros(1), _gens(1))
    img = ops.gmm_sample(labels, mu, sigma, tex)
    for k in range(3):
        v = img[labels == k]
        assert abs(v.mean().item() - mu[0, k].item()) < 4 * sigma[0, k].item() / math.sqrt(v.numel())
        assert abs(v.std().item() / sigma[0, k].item() - 1) < 0.05


def test_gmm_soft_probabilities_equal_one_hot_labels():
    labels = torch.randint(0, 3, (2, 1, 6, 7, 8))
    probs = torch.nn.functional.one_hot(labels[:, 0].long(), 3).permute(0, 4, 1, 2, 3).float()
    mu, sigma = torch.rand(2, 4) * 255, torch.rand(2, 4) * 16
    tex = torch.randn(2, 1, 6, 7, 8)
    assert torch.allclose(ops.gmm_sample(labels, mu, sigma, tex), ops.gmm_sample(probs, mu, sigma, tex), atol=1e-4)
    w = torch.rand(2, 1, 6, 7, 8)
    mixed = ops.gmm_sample(labels, mu, sigma, tex, w)
    lesion = mu[:, -1].view(2, 1, 1, 1, 1) + sigma[:, -1].view(2, 1, 1, 1, 1) * tex
    assert torch.allclose(mixed, ops.gmm_sample(labels, mu, sigma, tex) * (1 - w) + lesion * w, atol=1e-4)
    with pytest.raises(ValueError, match="labels"):
        ops.gmm_sample(labels + 5, mu, sigma, tex)
    with pytest.raises(ValueError, match="channels"):
        ops.gmm_sample(torch.rand(2, 5, 6, 7, 8), mu, sigma, tex)
    with pytest.raises(ValueError, match="mu"):
        ops.gmm_sample(labels, mu[:1], sigma, tex)


def test_texture_noise_has_unit_variance_and_the_requested_correlation():
    fwhm = 3.0
    tex = ops.texture_noise((48, 48, 48), torch.tensor([fwhm]), _gens(1))
    inner = tex[0, 0, 8:-8, 8:-8, 8:-8]
    assert abs(inner.var().item() - 1) < 0.1
    # lag-1 autocorrelation of white noise smoothed by a Gaussian of std s is exp(-1 / (4 s^2))
    s = fwhm / FWHM_PER_SIGMA
    lag1 = (inner[1:] * inner[:-1]).mean().item() / inner.var().item()
    assert abs(lag1 - math.exp(-1 / (4 * s * s))) < 0.05
    same = ops.texture_noise((48, 48, 48), torch.tensor([fwhm]), _gens(1))
    assert torch.equal(tex, same)


def test_bias_gamma_noise():
    x = torch.rand(2, 1, 10, 11, 12) * 200 + 10
    assert torch.allclose(ops.bias_field(x, torch.zeros(2, 1, 4, 4, 4)), x)
    assert torch.allclose(ops.bias_field(x, torch.full((2, 1, 4, 4, 4), math.log(2.0))), 2 * x, rtol=1e-5)
    assert torch.allclose(ops.gamma_transform(x, torch.ones(2)), x, atol=1e-3)
    g = ops.gamma_transform(x, torch.tensor([0.5, 2.0]))
    flat_x, flat_g = x[0].flatten(), g[0].flatten()
    order = flat_x.argsort()
    assert (flat_g[order].diff() >= -1e-4).all()                      # monotone
    assert torch.isclose(g.amin(), x.amin()) and torch.isclose(g.amax(), x.amax())
    zero = torch.zeros(1, 1, 40, 40, 40)
    gauss = ops.add_noise(zero, torch.tensor([5.0]), _gens(1), "gaussian")
    assert abs(gauss.std().item() - 5.0) < 0.1
    rice = ops.add_noise(zero, torch.tensor([5.0]), _gens(1), "rician")
    assert abs(rice.mean().item() - 5.0 * math.sqrt(math.pi / 2)) < 0.1   # Rayleigh mean on a zero signal
    with pytest.raises(ValueError, match="kind"):
        ops.add_noise(zero, torch.tensor([1.0]), _gens(1), "poisson")


def test_percentile_clip_equals_torch_quantile():
    x = torch.randn(3, 1, 9, 10, 11) ** 3
    out = ops.percentile_clip(x, 0.01, 0.99)
    for b in range(3):
        lo, hi = torch.quantile(x[b].flatten(), torch.tensor([0.01, 0.99]))
        assert torch.isclose(out[b].min(), lo) and torch.isclose(out[b].max(), hi)
        inside = (x[b] > lo) & (x[b] < hi)
        assert torch.equal(out[b][inside], x[b][inside])
    with pytest.raises(ValueError, match="quantiles"):
        ops.percentile_clip(x, 0.9, 0.1)


def test_skull_strip_and_z_normalise():
    x = torch.rand(2, 1, 5, 6, 7) + 1
    brain = torch.zeros(2, 1, 5, 6, 7, dtype=torch.bool)
    brain[..., 1:4, 1:5, 1:6] = True
    out = ops.skull_strip(x, brain, torch.tensor([True, False]))
    assert (out[0][~brain[0]] == 0).all() and torch.equal(out[1], x[1])
    z = ops.z_normalise(x * 100 + 7)
    assert torch.allclose(z.mean((1, 2, 3, 4)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z.std((1, 2, 3, 4), unbiased=False), torch.ones(2), atol=1e-5)
    assert torch.isfinite(ops.z_normalise(torch.zeros(1, 1, 3, 3, 3))).all()   # constant image: no NaN


def test_quantiles_equal_torch_quantile_in_the_tails_and_the_centre():
    x = torch.randn(3, 1, 20, 25, 30) ** 3
    x[1] = 0.0                                   # ties everywhere
    qs = [0.0, 0.01, 0.3, 0.5, 0.99, 1.0]
    ref = torch.quantile(x.reshape(3, -1), torch.tensor(qs), dim=1).T
    assert torch.allclose(ops.quantiles(x, qs), ref, rtol=1e-5, atol=1e-5)
