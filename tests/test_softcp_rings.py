"""Soft-CP's rings (Dai et al. 2022, arXiv:2203.10507) on masks whose eroded core is not empty, so that every ring
``j = 1..d`` around the core is there to be seen, inside the mask and outside it; expected weights built with
scipy.ndimage, not with synthgen's morphology."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from synthgen.lesions import soft_cp

CUBE = np.ones((3, 3, 3), dtype=bool)
SHAPE = (19, 17, 21)


def _mask(seed: int) -> np.ndarray:
    """Two solid blocks (one cut by the volume border), a thin spur and random specks."""
    rng = np.random.default_rng(seed)
    m = np.zeros(SHAPE, bool)
    m[3:12, 4:13, 5:14] = True
    m[:6, 11:17, 14:21] = True                          # touches three faces of the volume
    m[8, 13:16, 9] = True                               # one voxel thin: erosion removes it
    m |= rng.random(SHAPE) > 0.985
    return m


def _expected(m: np.ndarray, alpha: float, e: int, d: int):
    """``(weights, core, rings)``: 1 on the core erode^e(m) (the border counts as mask), alpha^j on ring j of the
    core's dilations, at least alpha^e on the rest of the mask."""
    core = ndimage.binary_erosion(m, CUBE, iterations=e, border_value=1) if e else m.copy()
    want, rings, grown = core.astype(np.float64), [], core
    for j in range(1, d + 1):
        wider = ndimage.binary_dilation(grown, CUBE)
        rings.append(wider & ~grown)
        want[rings[-1]] = alpha ** j
        grown = wider
    return np.maximum(want, m * alpha ** e), core, rings


@pytest.mark.parametrize("alpha, e, d", [(0.5, 0, 3), (0.8, 2, 3), (0.9, 1, 2), (0.7, 2, 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_soft_cp_rings_around_a_non_empty_core(alpha, e, d, seed):
    m = _mask(seed)
    want, core, rings = _expected(m, alpha, e, d)
    assert core.sum() > 50
    for j, ring in enumerate(rings, start=1):      # every ring is seen: alpha^j is the weight on many of its voxels
        assert (ring & (want == alpha ** j)).sum() > 50, j
    got = soft_cp(torch.from_numpy(m)[None, None], alpha=alpha, erode_steps=e, dilate_steps=d)[0, 0]
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-7, rtol=0)
