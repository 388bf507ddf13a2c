import pytest
import torch

from synthgen import ops
from synthgen.ops.warp import affine_elastic_coords, flip, grid_pull


def _identity(shape, batch=1):
    matrix = torch.eye(3, dtype=torch.float64).expand(batch, 3, 3)
    center = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64).expand(batch, 3)
    return matrix, center


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_identity_warp_returns_input(mode):
    shape = (7, 9, 11)
    vol = torch.rand(2, 3, *shape) if mode == "linear" else torch.randint(0, 6, (2, 1, *shape), dtype=torch.uint8)
    coords = affine_elastic_coords(shape, *_identity(shape, 2), elastic=torch.zeros(2, 3, 4, 4, 4))
    out = grid_pull(vol, coords, mode)
    assert out.dtype == vol.dtype
    assert torch.allclose(out.float(), vol.float(), atol=1e-5)


def test_integer_translation_shifts_exactly():
    shape = (8, 10, 12)
    vol = torch.rand(1, 1, *shape)
    matrix, center = _identity(shape)
    shift = torch.tensor([[2.0, -1.0, 3.0]], dtype=torch.float64)
    out = grid_pull(vol, affine_elastic_coords(shape, matrix, center + shift), "linear")
    assert torch.allclose(out[..., :-2, 1:, :-3], vol[..., 2:, :-1, 3:], atol=1e-5)
    assert (out[..., -2:, :, :] == 0).all()   # outside the input reads zero


def test_crop_smaller_than_input_reads_the_right_window():
    vol = torch.arange(20 * 21 * 22, dtype=torch.float32).reshape(1, 1, 20, 21, 22)
    matrix = torch.eye(3, dtype=torch.float64)[None]
    center = torch.tensor([[9.5, 10.0, 12.5]], dtype=torch.float64)   # crop 6x5x4 starting at (7, 8, 11)
    out = grid_pull(vol, affine_elastic_coords((6, 5, 4), matrix, center), "linear")
    assert torch.allclose(out, vol[..., 7:13, 8:13, 11:15], rtol=1e-6)


def test_rotation_by_90_degrees_permutes_axes():
    from synthgen.sampling import affine_matrix
    shape = (9, 9, 9)
    vol = torch.rand(1, 1, *shape)
    m = affine_matrix(torch.tensor([90.0, 0, 0]), torch.zeros(3), torch.ones(3))[None]
    _, center = _identity(shape)
    out = grid_pull(vol, affine_elastic_coords(shape, m, center), "nearest")
    expected = torch.rot90(vol, k=1, dims=(3, 4))
    assert torch.allclose(out, expected) or torch.allclose(out, torch.rot90(vol, k=-1, dims=(3, 4)))


def test_flip_is_an_involution_and_per_sample():
    x = torch.rand(3, 2, 5, 6, 7)
    flips = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    once = flip(x, flips)
    assert torch.equal(flip(once, flips), x)
    assert torch.equal(once[1], x[1])
    assert torch.equal(once[0], torch.flip(x[0], (1, 3)))


def test_warp_errors_name_the_argument():
    with pytest.raises(ValueError, match="matrix"):
        affine_elastic_coords((4, 4, 4), torch.eye(3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="center"):
        affine_elastic_coords((4, 4, 4), torch.eye(3)[None], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mode"):
        grid_pull(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 4, 4, 4, 3), "cubic")
    with pytest.raises(ValueError, match="volume"):
        grid_pull(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4, 3))
    with pytest.raises(ValueError, match="coords"):
        grid_pull(torch.zeros(1, 1, 4, 4, 4), torch.zeros(2, 4, 4, 4, 3))
    with pytest.raises(ValueError, match="flips"):
        flip(torch.zeros(2, 1, 4, 4, 4), torch.zeros(1, 3, dtype=torch.bool))
    assert ops.grid_pull is grid_pull


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_pull_reads_only_the_reached_box_and_zero_outside(mode):
    vol = torch.randint(0, 5, (2, 1, 20, 21, 22), dtype=torch.uint8)
    vol = vol.float() if mode == "linear" else vol
    far = torch.full((2, 4, 5, 6, 3), 100.0)                      # an all-background crop
    out = grid_pull(vol, far, mode)
    assert out.shape == (2, 1, 4, 5, 6) and (out == 0).all()
    assert out.dtype == vol.dtype
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(2, 6, 7, 8, 3, generator=g) * torch.tensor([8.0, 9.0, 10.0]) + 4   # a sub-box
    coords[1, 0, 0, 0] = torch.tensor([19.5, -0.5, 21.0])          # border and just outside
    full = torch.nn.functional.grid_sample(
        vol.float(), (coords * (2.0 / (torch.tensor([20.0, 21.0, 22.0]) - 1)) - 1).flip(-1),
        mode="bilinear" if mode == "linear" else "nearest", padding_mode="zeros", align_corners=True)
    out = grid_pull(vol, coords, mode).float()
    if mode == "linear":
        assert torch.allclose(out, full, atol=1e-5)
    else:   # nearest: only float round-off at a half-voxel tie may pick the other neighbour
        differ = (out != full)[:, 0]
        tie = ((coords - coords.floor() - 0.5).abs() < 1e-4).any(-1)
        assert not (differ & ~tie).any()


def test_pull_on_a_one_voxel_axis_interpolates_with_zero_outside():
    ones = torch.ones(1, 1, 5, 5, 5)
    beyond = torch.tensor([[5.0, 2, 2], [5.2, 2, 2], [4.5, 2, 2]]).reshape(1, 3, 3)   # only x in [4, 6) is reached
    assert torch.allclose(grid_pull(ones, beyond), torch.tensor([[[0.0, 0.0, 0.5]]]))
    slab = torch.ones(1, 1, 1, 5, 5)                                                  # a single-slice volume
    pts = torch.tensor([[0.5, 2, 2], [-0.7, 2, 2], [0.0, 2, 2]]).reshape(1, 3, 3)
    assert torch.allclose(grid_pull(slab, pts), torch.tensor([[[0.5, 0.3, 1.0]]]))
