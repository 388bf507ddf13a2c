"""Metrics on hand-made masks with known answers, and cross-checks against monai.metrics."""
import math

import numpy as np
import pytest
import torch

from synthgen import metrics as M


def cube(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


SHAPE = (17, 24, 31)


def test_identical_masks():
    t = cube(SHAPE, (3, 4, 5), (9, 12, 14))
    r = M.all_metrics(t, t, spacing=(1, 1, 1))
    assert r["dice"] == 1.0 and r["hd95_mm"] == 0.0 and r["avd_mm3"] == 0.0
    assert r["ald"] == 0.0 and r["lesion_f1"] == 1.0
    assert r["n_truth_lesions"] == r["n_pred_lesions"] == 1
    assert r["truth_ml"] == pytest.approx(6 * 8 * 9 / 1000)


def test_shifted_cube_known_values():
    t = cube(SHAPE, (2, 2, 2), (8, 8, 8))          # 6^3 = 216 voxels
    p = cube(SHAPE, (3, 2, 2), (9, 8, 8))          # shifted by one voxel along axis 0
    assert M.dice(p, t) == pytest.approx(2 * 180 / 432)
    # every surface voxel is within 1 voxel of the other surface, and the shifted faces are exactly 1 away
    assert M.hd95(p, t) == pytest.approx(1.0)
    assert M.hd95(p, t, spacing=(2.5, 1, 1)) == pytest.approx(2.5)
    assert M.hd95(p, t, spacing=(2.5, 1, 1), reduction="max") == pytest.approx(2.5)
    assert M.avd(p, t) == 0.0
    assert M.lesion_f1(p, t) == 1.0


def test_shift_along_anisotropic_axis():
    t = cube(SHAPE, (2, 2, 2), (8, 8, 8))
    p = cube(SHAPE, (2, 2, 5), (8, 8, 11))         # 3 voxels along axis 2 at 3 mm -> 9 mm
    sp = (0.9, 0.9, 3.0)
    a, b = M.surface_distances(p, t, sp)
    assert a.max() == pytest.approx(9.0) and b.max() == pytest.approx(9.0)
    assert M.hd95(p, t, sp) == pytest.approx(np.percentile(np.concatenate([a, b]), 95))
    assert M.avd(cube(SHAPE, (0, 0, 0), (2, 2, 2)), t, sp) == pytest.approx((216 - 8) * 0.81 * 3.0)


def test_two_components_and_lesion_f1():
    t = cube(SHAPE, (1, 1, 1), (4, 4, 4)) | cube(SHAPE, (10, 10, 10), (13, 13, 13))
    p = cube(SHAPE, (2, 2, 2), (3, 3, 3)) | cube(SHAPE, (1, 15, 20), (3, 18, 25))  # hits one, plus a FP
    # TP=1, FN=1, FP=1 -> 2 / (2 + 1 + 1)
    assert M.lesion_f1(p, t) == pytest.approx(0.5)
    assert M.ald(p, t) == 0.0
    assert M.ald(p, t[:, :, :] & cube(SHAPE, (0, 0, 0), (5, 5, 5))) == 1.0
    # one predicted blob covering both truth lesions: TP=2, FP=0, FN=0
    assert M.lesion_f1(cube(SHAPE, (0, 0, 0), (14, 14, 14)), t) == 1.0


def test_connectivity_changes_component_count():
    m = np.zeros(SHAPE, dtype=bool)
    m[2, 2, 2] = m[3, 3, 3] = True                   # corner neighbours
    assert M.label_components(m, 26)[1] == 1
    assert M.label_components(m, 18)[1] == 2
    m2 = np.zeros(SHAPE, dtype=bool)
    m2[2, 2, 2] = m2[3, 3, 2] = True                 # edge neighbours
    assert M.label_components(m2, 18)[1] == 1
    assert M.label_components(m2, 6)[1] == 2
    assert M.ald(m, np.zeros(SHAPE, bool), connectivity=6) == 2.0


def test_empty_cases():
    e = np.zeros(SHAPE, dtype=np.uint8)
    both = M.all_metrics(e, e)
    assert both == {"dice": 1.0, "hd95_mm": 0.0, "avd_mm3": 0.0, "ald": 0.0, "lesion_f1": 1.0,
                    "n_truth_lesions": 0, "n_pred_lesions": 0, "truth_ml": 0.0, "pred_ml": 0.0}
    t = cube(SHAPE, (3, 3, 3), (5, 5, 5)).astype(np.uint8)
    for p, tt in ((e, t), (t, e)):
        r = M.all_metrics(p, tt, spacing=2.0)
        assert r["dice"] == 0.0 and math.isinf(r["hd95_mm"]) and r["lesion_f1"] == 0.0
        assert r["avd_mm3"] == 8 * 8.0 and r["ald"] == 1.0


def _monai_ref(p, t, spacing):
    from monai.metrics import compute_dice, compute_hausdorff_distance
    yp = torch.from_numpy(np.stack([~p, p])[None].astype(np.float32))
    yt = torch.from_numpy(np.stack([~t, t])[None].astype(np.float32))
    d = compute_dice(yp, yt, include_background=False).item()
    h = compute_hausdorff_distance(yp, yt, include_background=False, percentile=95, spacing=spacing).item()
    return d, h


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_monai_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    from scipy import ndimage
    spacing = (0.9, 1.2, 3.0)
    smooth = [ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0) for _ in range(2)]
    p, t = smooth[0] > 0.1, smooth[1] > 0.1
    d_ref, h_ref = _monai_ref(p, t, spacing)
    assert M.dice(p, t) == pytest.approx(d_ref, abs=1e-6)
    assert M.hd95(p, t, spacing, reduction="max") == pytest.approx(h_ref, rel=1e-5)
    # the pooled percentile lies between the two directed percentiles
    a, b = M.surface_distances(p, t, spacing)
    lo, hi = sorted((np.percentile(a, 95), np.percentile(b, 95)))
    assert lo - 1e-9 <= M.hd95(p, t, spacing) <= hi + 1e-9


def test_crop_does_not_change_distances():
    rng = np.random.default_rng(3)
    p = rng.random(SHAPE) > 0.97
    t = rng.random(SHAPE) > 0.97
    p[0, 0, 0] = t[-1, -1, -1] = True                 # masks touching the array border
    pad = [(4, 4)] * 3
    assert M.hd95(p, t) == pytest.approx(M.hd95(np.pad(p, pad), np.pad(t, pad)))


def test_errors():
    t = cube(SHAPE, (1, 1, 1), (3, 3, 3))
    with pytest.raises(ValueError, match="`truth` must be binary"):
        M.dice(t, t.astype(np.uint8) * 2)
    with pytest.raises(ValueError, match="`pred` must be a 3D mask"):
        M.dice(t[0], t)
    with pytest.raises(ValueError, match="same shape"):
        M.dice(t[:5], t)
    with pytest.raises(ValueError, match="`spacing` must be 3 positive"):
        M.hd95(t, t, spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="`reduction` must be"):
        M.hd95(t, t, reduction="mean")
    with pytest.raises(ValueError, match="`connectivity` must be 6, 18 or 26"):
        M.ald(t, t, connectivity=8)
    with pytest.raises(ValueError, match="both be non-empty"):
        M.surface_distances(t, np.zeros_like(t))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_cc3d_and_scipy_find_the_same_components(connectivity):
    pytest.importorskip("cc3d")
    rng = np.random.default_rng(connectivity)
    for mask in (rng.random((23, 19, 17)) < 0.05, rng.random((16, 16, 16)) < 0.15):
        a, na = M.label_components(mask, connectivity, backend="scipy")
        b, nb = M.label_components(mask, connectivity, backend="cc3d")
        assert na == nb > 10
        # the same partition up to the numbering: label pairs map one to one
        pairs = np.unique(np.stack([a[mask], b[mask]]), axis=1)
        assert pairs.shape[1] == na and len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == na
        assert np.array_equal(a == 0, b == 0)
    pred, truth = rng.random((20, 20, 20)) < 0.1, rng.random((20, 20, 20)) < 0.1
    assert M.ald(pred, truth, connectivity) == abs(M.label_components(pred, connectivity, "scipy")[1]
                                                  - M.label_components(truth, connectivity, "scipy")[1])


def test_label_components_backend_errors(monkeypatch):
    with pytest.raises(ValueError, match="`backend` must be 'auto', 'cc3d' or 'scipy'"):
        M.label_components(np.zeros((3, 3, 3), bool), backend="gpu")
    monkeypatch.setattr(M.scores, "_cc3d", lambda: None)          # as without connected-components-3d
    with pytest.raises(ImportError, match="pip install connected-components-3d"):
        M.label_components(np.zeros((3, 3, 3), bool), backend="cc3d")
    assert M.label_components(np.ones((3, 3, 3), bool))[1] == 1     # auto falls back to scipy
