import interpol
import pytest
import torch

from synthgen.fields import bspline_matrix, smooth_field


def _interpol_reference(coeffs, shape):
    axes = [torch.arange(s, dtype=torch.float64) * (n - 1) / max(s - 1, 1) for s, n in zip(shape, coeffs.shape[2:])]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    return interpol.grid_pull(coeffs.double(), grid, interpolation=3, bound="dct2", prefilter=False)


@pytest.mark.parametrize("ctrl,shape", [((5, 6, 4), (17, 24, 31)), ((4, 4, 4), (7, 9, 11)), ((8, 3, 5), (19, 1, 13))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_smooth_field_matches_torch_interpol(ctrl, shape, dtype):
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(2, 3, *ctrl, generator=g, dtype=torch.float64)
    ref = _interpol_reference(coeffs, shape)
    out = smooth_field(coeffs.to(dtype), shape)
    assert out.dtype == dtype and out.shape == (2, 3, *shape)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(out.double(), ref, atol=tol)


def test_smooth_field_reproduces_constants_and_is_smooth():
    out = smooth_field(torch.full((1, 1, 5, 5, 5), 2.5), (20, 21, 22))
    assert torch.allclose(out, torch.full_like(out, 2.5), atol=1e-5)   # partition of unity
    w = bspline_matrix(6, 50, dtype=torch.float64)
    assert torch.allclose(w.sum(1), torch.ones(50, dtype=torch.float64))
    field = smooth_field(torch.randn(1, 1, 6, 6, 6, dtype=torch.float64), (50, 50, 50))
    second = field.diff(n=2, dim=2).abs().max()
    assert second < 0.05 * field.abs().max()   # C2 spline: tiny second differences at 10 voxels per knot


def test_smooth_field_rejects_bad_shapes():
    with pytest.raises(ValueError, match="coeffs"):
        smooth_field(torch.zeros(3, 4, 4, 4), (8, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        smooth_field(torch.zeros(1, 1, 4, 4, 4), (8, 8))


def test_smooth_field_on_a_region_equals_the_crop_of_the_full_field():
    coeffs = torch.randn(2, 1, 5, 6, 4)
    full = smooth_field(coeffs, (17, 24, 31))
    box = ((3, 9), (0, 24), (30, 31))
    part = smooth_field(coeffs, (17, 24, 31), region=box)
    assert torch.allclose(part, full[..., 3:9, 0:24, 30:31], atol=1e-6)


def test_smooth_field_channels_last():
    coeffs = torch.randn(2, 3, 5, 4, 6)
    assert torch.allclose(smooth_field(coeffs, (9, 8, 7), channels_last=True),
                          smooth_field(coeffs, (9, 8, 7)).permute(0, 2, 3, 4, 1), atol=1e-6)
