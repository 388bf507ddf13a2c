"""Intensity steps against numbers written here from their definitions, not read from the modules under test:
Rician noise at non-zero signal (the Rice distribution), the 1st / 99th percentile clip (paper section 2) and the
histogram normalisation's landmarks (``synthgen.ops.histogram_normalise``'s documented standard scale)."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

import synthgen
from synthgen import ops, segment
from synthgen.config import GeneratorConfig

NOISE_SHAPE = (1, 1, 40, 40, 40)


@pytest.mark.parametrize("signal, std", [(5.0, 5.0), (20.0, 5.0), (3.0, 1.5)])
def test_rician_noise_follows_the_rice_distribution(signal, std):
    """|signal + complex Gaussian noise| ~ Rice(signal / std, scale std): its mean and variance, within 5 standard
    errors for the 64,000 independent voxels (at zero signal any Rayleigh-like formula agrees; here it must not)."""
    x = torch.full(NOISE_SHAPE, signal, dtype=torch.float64)
    out = ops.add_noise(x, torch.tensor([std]), [torch.Generator().manual_seed(11)], "rician").flatten().numpy()
    n = out.size
    mean, var, _, kurt = (float(v) for v in stats.rice(signal / std, scale=std).stats(moments="mvsk"))
    assert abs(out.mean() - mean) < 5 * math.sqrt(var / n), (out.mean(), mean)
    # the sample variance's standard error: var * sqrt((excess kurtosis + 2) / n)
    assert abs(out.var() - var) < 5 * var * math.sqrt((kurt + 2) / n), (out.var(), var)


def test_percentile_clip_of_a_known_volume():
    """0..999 in shuffled voxels: numpy's linear 1st / 99th percentiles are 9.99 and 989.01 (the quantiles are
    float32: 6e-5 of rounding)."""
    values = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).double()
    x = values.reshape(1, 1, 10, 10, 10)
    out = ops.percentile_clip(x, 0.01, 0.99).flatten().numpy()
    np.testing.assert_allclose(out, np.clip(values.numpy(), 9.99, 989.01), atol=1e-4, rtol=0)


def _known_image_params(gen, tissue, mu):
    """Replayed parameters under which the generator's image before the clip is ``mu[label]`` voxel for voxel: the
    crop is the map (identity geometry), no texture, bias, gamma, blur, noise, skull-strip or flips."""
    p = gen.sample_params(tissue.shape, seed=0, batch=1)
    crop = tissue.shape[2:]
    zeros = torch.zeros_like
    return dataclasses.replace(
        p, matrix=torch.eye(3, dtype=torch.float64)[None], elastic=zeros(p.elastic), flip=zeros(p.flip),
        center=torch.tensor([[(n - 1) / 2 for n in crop]], dtype=torch.float64), gmm_mu=mu[None].to(p.gmm_mu.dtype),
        gmm_sigma=zeros(p.gmm_sigma), gmm_fwhm=zeros(p.gmm_fwhm), bias=zeros(p.bias), gamma=torch.ones_like(p.gamma),
        motion_fwhm=zeros(p.motion_fwhm), spacing=torch.ones_like(p.spacing), noise_std=zeros(p.noise_std),
        smooth_fwhm=zeros(p.smooth_fwhm), skull_strip=zeros(p.skull_strip))


def test_the_generator_clips_to_the_1st_and_99th_percentiles_by_default():
    """A map whose brightest and darkest labels cover under 1 % of the crop each: the default generator clips them
    to the 1st / 99th percentiles (computed here by numpy) before z-normalising."""
    crop = (16, 16, 16)
    rng = np.random.default_rng(2)
    labels = rng.integers(1, 3, crop).astype(np.uint8)                 # GM and WM
    flat = labels.reshape(-1)
    spots = rng.choice(flat.size, 60, replace=False)
    flat[spots[:30]], flat[spots[30:]] = 4, 3                          # 0.7 % CSF, 0.7 % PV
    mu = torch.zeros(16)
    mu[1], mu[2], mu[3], mu[4] = 40.0, 60.0, 5.0, 900.0               # (magnitude images: all positive)
    tissue = torch.from_numpy(labels)[None, None]
    gen = synthgen.SynthGenerator(GeneratorConfig(crop=crop))
    image, _ = gen(tissue, params=_known_image_params(gen, tissue, mu))
    v = mu.double().numpy()[labels]
    lo, hi = np.quantile(v, [0.01, 0.99])
    assert v.min() < lo and hi < v.max()                                # the clip bites
    clipped = np.clip(v, lo, hi)
    want = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(image[0, 0].double().numpy(), want, atol=1e-4, rtol=0)


# Nyul-style standard scale, as documented: foreground percentiles 1, 10, 20, ..., 90, 99 map to (p - 1) / 98
LANDMARKS = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


def test_histogram_landmarks_map_to_the_documented_scale():
    """Foreground 1..1001 (zeros, the minimum, are background): percentile p is 1 + 10 p exactly, and the output is
    the piecewise-linear map through (1 + 10 p, (p - 1) / 98), clamped to [0, 1]."""
    g = torch.Generator().manual_seed(3)
    values = torch.cat([torch.zeros(55), torch.arange(1, 1002, dtype=torch.float32)])[torch.randperm(1056, generator=g)]
    x = values.reshape(1, 1, 8, 11, 12)
    marks = [1 + 10 * p for p in LANDMARKS]
    scale = [(p - 1) / 98 for p in LANDMARKS]
    want = np.interp(values.numpy(), marks, scale)
    assert want[values.numpy() == 101] == pytest.approx(9 / 98) and want.max() == 1 and want.min() == 0
    np.testing.assert_allclose(ops.histogram_normalise(x).flatten().numpy(), want, atol=1e-4, rtol=0)
    # inference normalises alike
    np.testing.assert_allclose(segment.histogram_normalise(x[0, 0].numpy()).ravel(), want, atol=1e-4, rtol=0)
