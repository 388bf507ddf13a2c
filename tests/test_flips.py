"""Random flips: drawn per axis, and each axis flipped is that axis (checked one axis at a time on asymmetric volumes,
so that no flip pattern reads the same reversed)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

import synthgen
from synthgen import ops
from synthgen.config import GeneratorConfig
from synthgen.real import RealAugmenter
from synthgen.sampling import sample_params

from conftest import phantom_labels

SINGLE_AXIS = torch.eye(3, dtype=torch.bool)      # sample a flips axis a only
N_DRAWS = 400


def _flip_draws(flips: torch.Tensor) -> None:
    """Each axis flips with probability 1/2 on its own: the marginals are 1/2, and any two axes agree in half of the
    samples (one draw for all three axes makes them agree always). Bounds: 5 binomial standard deviations."""
    f = flips.double()
    tol = 5 * math.sqrt(0.25 / len(f))
    assert torch.all((f.mean(0) - 0.5).abs() < tol), f.mean(0)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert abs(float((f[:, a] == f[:, b]).double().mean()) - 0.5) < tol, (a, b)


def test_synthetic_flips_are_drawn_per_axis():
    cfg = GeneratorConfig(crop=(8, 8, 8))
    _flip_draws(sample_params(cfg, (10, 10, 10), seed=0, index=0, batch=N_DRAWS).flip)


def test_real_flips_are_drawn_per_axis():
    aug = RealAugmenter(GeneratorConfig(crop=(8, 8, 8)))
    _flip_draws(aug.sample_params((1, 1, 10, 10, 10), seed=0, index=0, batch=N_DRAWS).geometry.flip)


def test_flip_reverses_each_axis_alone():
    x = torch.arange(3 * 2 * 4 * 5 * 6, dtype=torch.float32).reshape(3, 2, 4, 5, 6)   # every voxel distinct
    out = ops.flip(x, SINGLE_AXIS)
    ref = x.numpy()
    for a in range(3):
        want = ref[a][(slice(None),) + tuple(slice(None, None, -1) if k == a else slice(None) for k in range(3))]
        assert np.array_equal(out[a].numpy(), want), a


def test_output_affine_of_a_single_axis_flip():
    """Flipping output axis a maps voxel o_a to S_a - 1 - o_a: the unflipped grid's affine times that map."""
    shape = (4, 5, 6)
    matrix = torch.tensor([[[0.9, 0.1, 0.0], [-0.2, 1.1, 0.05], [0.0, 0.3, 1.2]]], dtype=torch.float64).repeat(3, 1, 1)
    center = torch.tensor([[7.0, 8.5, 9.25]], dtype=torch.float64).repeat(3, 1)
    affine = np.diag([1.5, -2.0, 2.5, 1.0])
    affine[:3, 3] = [10.0, 20.0, -30.0]
    plain = ops.output_affine(matrix, center, None, shape, affine).numpy()
    flipped = ops.output_affine(matrix, center, SINGLE_AXIS, shape, affine).numpy()
    for a in range(3):
        reverse = np.eye(4)
        reverse[a, a], reverse[a, 3] = -1.0, shape[a] - 1
        assert np.allclose(flipped[a], plain[a] @ reverse), a


def _replayed(gen, tissue, flips):
    params = gen.sample_params(tissue.shape, seed=5, batch=3)
    return gen(tissue, params=dataclasses.replace(params, flip=flips))


def _reversed(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.flip(volume, volume.ndim - 3 + axis)


def test_generator_flips_each_axis_alone(phantom):
    """The same parameters with one axis flipped give the unflipped sample reversed along that axis (the phantom's
    ventricles and head are not symmetric under the crop's flips once the crop centre is off the middle)."""
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=(12, 14, 16)))
    image, target = _replayed(gen, phantom, torch.zeros(3, 3, dtype=torch.bool))
    image_f, target_f = _replayed(gen, phantom, SINGLE_AXIS)
    for a in range(3):
        t = target[a].numpy()
        assert not np.array_equal(t, _reversed(t, a)), a       # the flip is visible
        assert np.array_equal(target_f[a].numpy(), _reversed(t, a)), a
        # z-normalisation sums the voxels in another order: float rounding only
        np.testing.assert_allclose(image_f[a].numpy(), _reversed(image[a].numpy(), a), atol=1e-5, rtol=0)


def test_real_augmenter_flips_each_axis_alone():
    scan = torch.rand(1, 1, 14, 15, 16, generator=torch.Generator().manual_seed(0)) * 100
    mask = (scan > 60).to(torch.uint8)
    aug = RealAugmenter(GeneratorConfig(crop=(10, 11, 12)))
    params = aug.sample_params(scan.shape, seed=2, batch=3)
    params.geometry.flip = torch.zeros(3, 3, dtype=torch.bool)
    image, target = aug(scan.expand(3, -1, -1, -1, -1), mask.expand(3, -1, -1, -1, -1), params=params)
    params.geometry.flip = SINGLE_AXIS
    image_f, target_f = aug(scan.expand(3, -1, -1, -1, -1), mask.expand(3, -1, -1, -1, -1), params=params)
    for a in range(3):
        assert np.array_equal(target_f[a].numpy(), _reversed(target[a].numpy(), a)), a
        np.testing.assert_allclose(image_f[a].numpy(), _reversed(image[a].numpy(), a), atol=1e-5, rtol=0)


@pytest.fixture
def phantom():
    return phantom_labels((26, 30, 28))
