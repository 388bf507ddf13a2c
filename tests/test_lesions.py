"""Lesions: morphology, Soft-CP, fading, mask banks and LesionSource (synthgen.lesions)."""
from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from synthgen.config import FadingConfig, LesionConfig, ProceduralLesionConfig, SoftCPConfig
from synthgen.lesions import (LesionSource, dilate, erode, fading_coefficients, fading_field, holdout_bucket,
                              list_mask_files, load_mask_bank, masks_from_tensor, soft_cp)
from conftest import SHARED_DATA

CUBE = np.ones((3, 3, 3), dtype=bool)


pytestmark = pytest.mark.usefixtures("one_thread")


def tissue_map(shape=(40, 40, 40)) -> torch.Tensor:
    """(1, 1, D, H, W) uint8 ellipsoid brain: GM shell, WM core, CSF ventricles, non-brain rim."""
    axes = [torch.linspace(-1, 1, n) for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    r = (x ** 2 + (y / 1.1) ** 2 + z ** 2).sqrt()
    t = torch.zeros(shape, dtype=torch.uint8)
    t[r < 0.97] = 5
    t[r < 0.88] = 4
    t[r < 0.82] = 1
    t[r < 0.62] = 2
    t[(r > 0.6) & (r < 0.64)] = 3
    t[(r < 0.3) & (x.abs() > 0.1) & (x.abs() < 0.3)] = 4
    return t[None, None]


def ball(shape, centre, radius) -> torch.Tensor:
    idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"), -1).float()
    return ((idx - torch.tensor(centre, dtype=torch.float32)).norm(dim=-1) <= radius)


def no_fading(**kw) -> LesionConfig:
    return LesionConfig(healthy_probability=0.0, fading=FadingConfig(probability=0.0), **kw)


# ---- morphology -------------------------------------------------------------------------------------------
def test_dilate_erode_match_scipy_with_border():
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(7, 9, 11, generator=g) > 0.6)
    ref_d = ndimage.binary_dilation(m.numpy(), CUBE, iterations=2)
    ref_e = ndimage.binary_erosion(m.numpy(), CUBE, iterations=1, border_value=1)
    f = m.float()[None, None]
    assert np.array_equal(dilate(f, 2)[0, 0].numpy() > 0.5, ref_d)
    assert np.array_equal(erode(f, 1)[0, 0].numpy() > 0.5, ref_e)


def test_soft_cp_equals_its_definition_by_scipy_morphology():
    """w = 1 on erode^e(mask) (the border counts as mask), alpha^j on ring j of dilate^j(core), alpha^e on the rest
    of the mask: built with scipy.ndimage on random masks touching the border."""
    g = torch.Generator().manual_seed(4)
    for trial in range(3):
        m = torch.rand(1, 1, 13, 17, 11, generator=g) > (0.35 + 0.1 * trial)
        e, d, alpha = 2, 3, 0.8
        core = ndimage.binary_erosion(m[0, 0].numpy(), CUBE, iterations=e, border_value=1)
        want = core.astype(np.float64)
        grown = core
        for j in range(1, d + 1):
            grown = ndimage.binary_dilation(grown, CUBE)
            want = np.maximum(want, grown * alpha ** j)
        want = np.maximum(want, m[0, 0].numpy() * alpha ** e)
        got = soft_cp(m, alpha=alpha, erode_steps=e, dilate_steps=d)[0, 0].double().numpy()
        assert np.allclose(got, want, atol=1e-7), trial


def test_soft_cp_core_one_and_monotone_decay():
    m = ball((31, 31, 31), (15, 15, 15), 9)[None, None]
    w = soft_cp(m, alpha=0.9, erode_steps=3, dilate_steps=5)[0, 0]
    core = ndimage.binary_erosion(m[0, 0].numpy(), CUBE, iterations=3, border_value=1)
    assert torch.all(w[torch.from_numpy(core)] == 1)
    # ring j around the core has weight alpha^j (inside the mask at least alpha^3)
    for j in range(1, 6):
        ring = ndimage.binary_dilation(core, CUBE, iterations=j) & ~ndimage.binary_dilation(core, CUBE, iterations=j - 1)
        expected = max(0.9 ** j, 0.9 ** 3)
        assert torch.allclose(w[torch.from_numpy(ring & m[0, 0].numpy())], torch.tensor(expected), atol=1e-6) \
            or not (ring & m[0, 0].numpy()).any()
        assert torch.allclose(w[torch.from_numpy(ring & ~m[0, 0].numpy())], torch.tensor(0.9 ** j), atol=1e-6)
    # along every ray from the centre the weight never increases
    for ray in (w[15, 15, 15:], w[15, 15:, 15], w[15:, 15, 15], torch.stack([w[15 + i, 15 + i, 15] for i in range(16)])):
        assert torch.all(ray[1:] <= ray[:-1] + 1e-7)
    assert float(w[0, 0, 0]) == 0.0


def test_soft_cp_default_target_equals_mask_thin_parts_kept():
    m = ball((25, 25, 25), (12, 12, 12), 6)
    m[12, 12, :] = True                                 # a 1-voxel-thin spur that erosion removes
    w = soft_cp(m[None, None], **{"alpha": 0.9, "erode_steps": 2, "dilate_steps": 2})[0, 0]
    assert torch.equal(w > 0.5, m)
    assert float(w[12, 12, 0]) == pytest.approx(0.81)


def test_soft_cp_at_volume_border_not_eroded_by_border():
    m = torch.zeros(12, 12, 12, dtype=torch.bool)
    m[:5, 3:9, 3:9] = True                              # cut by the field of view at index 0
    w = soft_cp(m[None, None], 0.9, 2, 2)[0, 0]
    assert float(w[0, 5, 5]) == 1.0 and float(w[4, 5, 5]) < 1.0
    assert torch.equal(w > 0.5, m)


# ---- fading -----------------------------------------------------------------------------------------------
FADE_SHAPE = (40, 40, 40)


def _fade_stats(n_draws=40):
    """Per-draw min/max/mean of the default fading field over a 10-voxel-radius ball (a ~4 mL lesion)."""
    lesion = ball(FADE_SHAPE, (20, 20, 20), 10)
    cfg = FadingConfig()
    stats = []
    for k in range(n_draws):
        c = fading_coefficients(torch.Generator().manual_seed(k), FADE_SHAPE, cfg.control_spacing)
        f = fading_field(c, FADE_SHAPE, cfg.range, cfg.gain)[0, 0][lesion]
        stats.append((float(f.min()), float(f.max()), float(f.mean())))
    return np.array(stats)


def test_fading_spans_configured_range_without_saturating():
    s = _fade_stats()
    lo, hi = FadingConfig().range
    assert s[:, 0].min() >= lo and s[:, 1].max() <= hi
    assert s[:, 0].min() < lo + 0.1 * (hi - lo) and s[:, 1].max() > hi - 0.1 * (hi - lo)
    span = s[:, 1] - s[:, 0]
    assert np.median(span) > 0.25 * (hi - lo)            # not a constant over the lesion in most draws
    assert (span < 0.02).mean() < 0.1
    # documented in synthgen.lesions.morphology.fading_field
    assert 0.35 < np.median(s[:, 2]) < 0.85


def test_fading_distribution_is_the_stated_one():
    """``hi - (hi - lo) Phi(f)^power`` with f ~ N(0, 1): the fade's quantile q is hi - (hi - lo) (1 - q)^power
    (FadingConfig's docstring: p10 / p50 / p90 = 0.35 / 0.80 / 0.99 by default); voxels 12 apart, 150 draws."""
    cfg = FadingConfig()
    lo, hi = cfg.range
    values = []
    for k in range(150):
        c = fading_coefficients(torch.Generator().manual_seed(k), FADE_SHAPE, cfg.control_spacing)
        f = fading_field(c, FADE_SHAPE, cfg.range, cfg.gain, mapping=cfg.mapping, power=cfg.power)[0, 0]
        values.append(f[4::12, 4::12, 4::12].flatten())
    v = torch.cat(values).numpy()
    for q, stated in ((0.1, 0.35), (0.5, 0.80), (0.9, 0.99)):
        assert hi - (hi - lo) * (1 - q) ** cfg.power == pytest.approx(stated, abs=0.005)
        assert np.quantile(v, q) == pytest.approx(stated, abs=0.04)
    # the fading before issue 12 (sigmoid) has its median in the middle of the range
    sig = fading_field(c, FADE_SHAPE, cfg.range, cfg.gain, mapping="sigmoid")
    assert float(sig.min()) >= lo and float(sig.max()) <= hi
    with pytest.raises(ValueError, match="`mapping` must be one of"):
        fading_field(c, FADE_SHAPE, mapping="linear")


def test_fading_deterministic_for_generator():
    a = fading_coefficients(torch.Generator().manual_seed(3), (9, 10, 11), 4.0)
    b = fading_coefficients(torch.Generator().manual_seed(3), (9, 10, 11), 4.0)
    assert torch.equal(a, b) and a.shape == (1, 1, 4, 4, 4)


def test_soft_cp_default_edge_decays_by_alpha_per_ring_outside_the_mask():
    """The default Soft-CP (Dai et al.): weight 1 on every mask voxel, alpha^j on the j-th ring outside it."""
    m = ball((31, 31, 31), (15, 15, 15), 6)
    m[15, 15, 21:25] = True                              # a spur: rings follow the mask, not a sphere
    cfg = SoftCPConfig()
    w = soft_cp(m[None, None], cfg.alpha, cfg.erode, cfg.dilate)[0, 0]
    grown = [m.numpy()]
    for _ in range(cfg.dilate + 1):
        grown.append(ndimage.binary_dilation(grown[-1], CUBE))
    assert torch.all(w[m] == 1)
    for j in range(1, cfg.dilate + 1):
        ring = torch.from_numpy(grown[j] & ~grown[j - 1])
        assert ring.any() and torch.allclose(w[ring], torch.tensor(cfg.alpha ** j), atol=1e-6)
    assert not bool(w[torch.from_numpy(~grown[cfg.dilate])].any())
    # and so do the intensity weights LesionSource makes (brain all around, fading off)
    t = torch.full((1, 1, 31, 31, 31), 2, dtype=torch.uint8)
    iw, lw = LesionSource.from_tensor(m[None], config=no_fading()).sample_dense(t, [0])
    assert torch.allclose(iw[0, 0], w, atol=1e-6) and torch.equal(lw[0, 0], m.float())


# ---- LesionSource from masks ------------------------------------------------------------------------------
def test_target_volume_equals_source_mask_volume():
    t = tissue_map()
    m = ball(t.shape[2:], (20, 16, 22), 6) & (t[0, 0] == 2)
    src = LesionSource.from_tensor(m[None], config=no_fading())
    iw, lw = src.sample_dense(t, [1])
    assert iw.shape == lw.shape == (1, 1, 40, 40, 40) and iw.dtype == lw.dtype == torch.float32
    assert int((lw > 0.5).sum()) == int(m.sum()) and torch.equal(lw[0, 0] > 0.5, m)
    assert torch.equal(iw[0, 0][m], lw[0, 0][m])          # fading off: weight 1 on the mask
    assert float(iw.max()) <= 1 and float(lw.min()) >= 0


def test_lesion_target_is_the_mask_inside_the_brain():
    """A mask reaching through CSF and non-brain tissue out of the head: the label weight is the mask inside the
    brain (GM, WM, PV, CSF), nothing outside it; the intensity weight is cut there too."""
    t = tissue_map()
    m = ball(t.shape[2:], (20, 20, 33), 8)               # from WM out through GM, CSF, scalp, into the air
    labels = t[0, 0]
    brain = (labels >= 1) & (labels <= 4)
    assert (m & (labels == 4)).any() and (m & (labels == 5)).any() and (m & (labels == 0)).any()
    iw, lw = LesionSource.from_tensor(m[None], config=no_fading()).sample_dense(t, [2])
    assert int((lw > 0.5).sum()) == int((m & brain).sum())
    assert torch.equal(lw[0, 0] > 0.5, m & brain)
    assert not bool(iw[0, 0][~brain].any())
    # the blending before issue 12 clipped to parenchyma: its target misses the CSF part of the mask
    old = LesionSource.from_tensor(m[None], config=no_fading().with_inward_blending())
    _, lw_old = old.sample_dense(t, [2])
    assert int((lw_old > 0.5).sum()) == int((m & (labels >= 1) & (labels <= 3)).sum()) < int((m & brain).sum())


def test_soft_cp_wider_halo_grows_target_by_stated_amount():
    t = torch.full((1, 1, 30, 30, 30), 2, dtype=torch.uint8)
    m = ball((30, 30, 30), (15, 15, 15), 7)
    cfg = no_fading(target="softcp", softcp=SoftCPConfig(alpha=0.9, erode=1, dilate=2))
    _, lw = LesionSource.from_tensor(m[None], config=cfg).sample_dense(t, [0])
    grown = ndimage.binary_dilation(ndimage.binary_erosion(m.numpy(), CUBE, border_value=1), CUBE, iterations=2)
    assert int((lw > 0.5).sum()) == int((grown | m.numpy()).sum())


def test_lesion_clipped_to_parenchyma_and_probabilities_match_labels():
    t = tissue_map()
    m = ball(t.shape[2:], (20, 20, 20), 12)             # covers the ventricles (CSF)
    src = LesionSource.from_tensor(m[None], config=LesionConfig(healthy_probability=0.0, clip_to="parenchyma"))
    iw, lw = src.sample_dense(t, [5])
    assert not bool((lw[0, 0][t[0, 0] == 4] > 0).any()) and not bool((iw[0, 0][t[0, 0] == 4] > 0).any())
    probs = torch.nn.functional.one_hot(t[:, 0].long(), 6).permute(0, 4, 1, 2, 3).float()
    iw2, lw2 = src.sample_dense(probs, [5])
    assert torch.allclose(lw, lw2) and torch.allclose(iw, iw2)
    assert bool((iw[lw > 0] <= lw[lw > 0] + 1e-7).all()) and float(iw[lw > 0].min()) >= 0.2 - 1e-6


def test_empty_mask_gives_healthy_sample():
    t = tissue_map()
    src = LesionSource.from_tensor(torch.zeros(1, 40, 40, 40), config=LesionConfig(healthy_probability=0.0))
    iw, lw = src.sample_dense(t, [7])
    assert not iw.any() and not lw.any()


def test_healthy_probability_one_gives_zeros():
    t = tissue_map()
    src = LesionSource.from_tensor(ball((40, 40, 40), (20, 20, 20), 5)[None],
                                   config=LesionConfig(healthy_probability=1.0))
    iw, lw = src.sample_dense(t.expand(3, -1, -1, -1, -1), [1, 2, 3])
    assert not iw.any() and not lw.any()


def test_mask_reproducible_per_key_and_differs_between_keys():
    t = tissue_map().expand(2, -1, -1, -1, -1)
    masks = torch.stack([ball((40, 40, 40), c, 4) for c in ((14, 14, 20), (26, 26, 20), (20, 14, 26))])
    src = LesionSource.from_tensor(masks, config=LesionConfig(healthy_probability=0.0))
    a = src.sample_dense(t, [11, 12])
    b = src.sample_dense(t, [11, 12])
    c = src.sample_dense(t[:1], [11])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0][:1], c[0])                     # a sample does not depend on its batch
    outs = {src.sample_dense(t[:1], [k])[0].numpy().tobytes() for k in range(8)}
    assert len(outs) > 1


def test_mask_on_other_grid_placed_by_affine():
    # masks on a 2 mm grid, tissue on 1 mm: both cover the same world box
    m2 = torch.zeros(1, 10, 10, 10)
    m2[0, 3:6, 3:6, 3:6] = 1
    aff2 = np.diag([2.0, 2.0, 2.0, 1.0])
    aff1 = np.eye(4)
    aff1[:3, 3] = 0.25                                   # off the half-voxel ties of nearest neighbour
    bank = masks_from_tensor(m2, masks_affine=aff2)
    assert bank.space == "world" and bank.volumes_ml[0] == pytest.approx(27 * 8 / 1000)
    dense = torch.zeros(20, 20, 20, dtype=torch.bool)
    bank.paste(0, dense, aff1)
    # the 2 mm voxels 3..5 cover world [5, 11) mm: the 1 mm voxels whose centre i + 0.25 lies there, i = 5..10
    expected = torch.zeros(20, 20, 20, dtype=torch.bool)
    expected[5:11, 5:11, 5:11] = True
    assert torch.equal(dense, expected)
    src = LesionSource.from_tensor(m2, masks_affine=aff2)
    with pytest.raises(ValueError, match="placed by the tissue map's affine"):
        src.sample(tissue_map(), [0])
    _, lw = LesionSource.from_tensor(m2, masks_affine=aff2, config=no_fading(clip_to="none")).sample_dense(
        tissue_map((20, 20, 20)), [0], affine=aff1)
    assert torch.equal(lw[0, 0] > 0.5, expected)


def test_multiple_masks_per_sample():
    t = tissue_map()
    masks = torch.stack([ball((40, 40, 40), c, 3) for c in ((14, 14, 20), (26, 26, 20))])
    cfg = no_fading(count=(2, 2))
    vols = {int((LesionSource.from_tensor(masks, config=cfg).sample_dense(t, [k])[1] > 0.5).sum()) for k in range(6)}
    both = int(((masks[0] | masks[1]) & (t[0, 0] >= 1) & (t[0, 0] <= 4)).sum())
    assert max(vols) == both                               # two distinct masks pasted in some sample


# ---- folders, splits, filters -----------------------------------------------------------------------------
def _write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def test_from_folder_las_masks_placed_onto_ras_grid(tmp_path):
    ras = np.eye(4)
    ras[:3, 3] = [-10, -10, -10]
    las = ras.copy()
    las[0, 0] = -1
    las[0, 3] = 10                                        # x world = 10 - i: same box, flipped
    data = np.zeros((21, 21, 21), dtype=np.uint8)
    data[2:6, 8:12, 8:12] = 1                             # world x in [5, 8] (right)
    _write(tmp_path / "a_lesion.nii.gz", data, las)
    _write(tmp_path / "b_lesion.nii.gz", np.zeros((21, 21, 21), np.uint8), las)
    with pytest.warns(UserWarning, match="empty"):
        src = LesionSource.from_folder(tmp_path, progress=False)
    assert src.bank.names == ["a_lesion.nii.gz"] and src.bank.dropped["empty"] == ["b_lesion.nii.gz"]
    assert src.bank.crops[0].shape == (4, 4, 4)           # kept as its bounding box
    dense = torch.zeros(21, 21, 21, dtype=torch.bool)
    src.bank.paste(0, dense, ras)
    expected = np.zeros((21, 21, 21), bool)
    expected[15:19, 8:12, 8:12] = True                    # i_ras = x + 10
    assert np.array_equal(dense.numpy(), expected)
    # the same bank on a map whose grid sits elsewhere (shifted by 3 voxels, 2 mm): placed by world position
    other = np.diag([2.0, 2.0, 2.0, 1.0])
    other[:3, 3] = [-4, -10, -10]
    small = torch.zeros(12, 11, 11, dtype=torch.bool)
    src.bank.paste(0, small, other)
    idx = torch.nonzero(small)
    world = idx.double() * 2 + torch.tensor([-4.0, -10, -10])
    assert len(idx) and bool(((world[:, 0] >= 4.5) & (world[:, 0] <= 8.5)).all())


def test_filters_and_clear_errors(tmp_path):
    aff = np.eye(4)
    big = np.zeros((20, 20, 20), np.float32)
    big[2:18, 2:18, 2:18] = 1.0                           # 4.1 mL
    small = np.zeros((20, 20, 20), np.float32)
    small[0:3, 0:3, 0:3] = 0.7                            # in the corner, outside the "brain"
    _write(tmp_path / "big.nii.gz", big, aff)
    _write(tmp_path / "small.nii.gz", small, aff)
    brain = np.zeros((20, 20, 20), bool)
    brain[4:16, 4:16, 4:16] = True
    bank = load_mask_bank(list_mask_files(tmp_path), max_volume_ml=1.0, progress=False)
    assert bank.names == ["small.nii.gz"] and bank.dropped == {"too_large": ["big.nii.gz"]}
    with pytest.raises(ValueError, match=r"no lesion mask left out of 2 files.*too_large.*outside_brain"):
        load_mask_bank(list_mask_files(tmp_path), max_volume_ml=1.0, brain_mask=(brain, aff),
                       max_outside_fraction=0.2, progress=False)
    shifted = aff.copy()
    shifted[:3, 3] = -4                                   # the brain box moved onto the corner: "small" inside
    assert load_mask_bank(list_mask_files(tmp_path), max_volume_ml=1.0, brain_mask=(brain, shifted),
                          max_outside_fraction=0.2, progress=False).names == ["small.nii.gz"]
    with pytest.raises(ValueError, match="binarised|binary"):
        _write(tmp_path / "x.nii.gz", big * 3, aff)
        load_mask_bank([tmp_path / "x.nii.gz"], progress=False)
    with pytest.raises(ValueError, match="must be 3D"):
        _write(tmp_path / "four.nii.gz", np.zeros((4, 4, 4, 2), np.uint8), aff)
        load_mask_bank([tmp_path / "four.nii.gz"], progress=False)
    with pytest.raises(ValueError, match="`brain_mask` must be"):
        load_mask_bank([tmp_path / "big.nii.gz"], brain_mask=np.ones((3, 3, 3)), progress=False)
    with pytest.raises(ValueError, match="`split` must be one of"):
        load_mask_bank([tmp_path / "big.nii.gz"], split="test", progress=False)
    with pytest.raises(ValueError, match="`threshold` must be in"):
        load_mask_bank([tmp_path / "big.nii.gz"], threshold=1.5, progress=False)
    with pytest.raises(FileNotFoundError, match="no NIfTI lesion masks matching"):
        list_mask_files(tmp_path, "*.mgz")
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        list_mask_files(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="lesion mask files not found"):
        list_mask_files([tmp_path / "nope.nii.gz"])


def test_mask_outside_a_grid_pastes_nothing(tmp_path):
    aff = np.eye(4)
    far = aff.copy()
    far[:3, 3] = 500.0
    m = np.zeros((8, 8, 8), np.uint8)
    m[2:4, 2:4, 2:4] = 1
    _write(tmp_path / "far.nii.gz", m, far)
    _write(tmp_path / "near.nii.gz", m, aff)
    bank = load_mask_bank(list_mask_files(tmp_path), progress=False)
    assert bank.names == ["far.nii.gz", "near.nii.gz"]     # a mask belongs to no grid: every map decides
    dense = torch.zeros(8, 8, 8, dtype=torch.bool)
    assert bank.paste(0, dense, aff) is None and not dense.any()
    assert bank.paste(1, dense, aff) is not None and int(dense.sum()) == 8


def test_holdout_split_deterministic_and_disjoint(tmp_path):
    aff = np.eye(4)
    m = np.zeros((6, 6, 6), np.uint8)
    m[2:4, 2:4, 2:4] = 1
    for i in range(12):
        _write(tmp_path / f"s{i:02d}.nii.gz", m, aff)
    files = list_mask_files(tmp_path)
    train = load_mask_bank(files, split="train", holdout_fraction=0.4, progress=False)
    hold = load_mask_bank(files, split="holdout", holdout_fraction=0.4, progress=False)
    assert set(train.names).isdisjoint(hold.names) and sorted(train.names + hold.names) == [f.name for f in files]
    assert hold.names == [f.name for f in files if holdout_bucket(f.name) < 0.4]
    assert train.reads == len(train) and hold.reads == len(hold)   # the other split's files are not read
    # one bank read once gives both splits
    both = load_mask_bank(files, progress=False)
    assert both.split("train", 0.4).names == train.names and both.split("holdout", 0.4).names == hold.names
    # a file's split does not depend on the other files present
    assert load_mask_bank(files[:6], split="train", holdout_fraction=0.4,
                          progress=False).names == [n for n in train.names if n in {f.name for f in files[:6]}]


def test_source_input_errors():
    src = LesionSource.procedural()
    with pytest.raises(ValueError, match=r"`tissue` must be a \(B, C, D, H, W\) tensor"):
        src.sample(torch.zeros(4, 4, 4), [0])
    with pytest.raises(ValueError, match="`keys` must hold one key per sample"):
        src.sample(torch.zeros(2, 1, 4, 4, 4, dtype=torch.uint8), [0])
    with pytest.raises(ValueError, match="`masks` must be a"):
        LesionSource.from_tensor(torch.zeros(4, 4))


# ---- config -----------------------------------------------------------------------------------------------
BAD = [
    (FadingConfig, "probability", 1.5, "lesion.fading.probability"),
    (FadingConfig, "range", (0.5, 0.2), "lesion.fading.range"),
    (FadingConfig, "range", (0.0, 1.5), "lesion.fading.range"),
    (FadingConfig, "control_spacing", 0.5, "lesion.fading.control_spacing"),
    (FadingConfig, "gain", 0.0, "lesion.fading.gain"),
    (FadingConfig, "mapping", "linear", "lesion.fading.mapping"),
    (FadingConfig, "power", 0.0, "lesion.fading.power"),
    (SoftCPConfig, "alpha", 0.0, "lesion.softcp.alpha"),
    (SoftCPConfig, "erode", -1, "lesion.softcp.erode"),
    (SoftCPConfig, "dilate", 1.5, "lesion.softcp.dilate"),
    (ProceduralLesionConfig, "volume_quantiles_ml", (3.0, 1.0), "volume_quantiles_ml"),
    (ProceduralLesionConfig, "max_volume_ml", 0.0, "max_volume_ml"),
    (ProceduralLesionConfig, "component_count_pmf", (0.5, 0.1), "component_count_pmf"),
    (ProceduralLesionConfig, "component_count_max", 3, "component_count_max"),
    (ProceduralLesionConfig, "largest_component_share_quantiles", (0.9, 0.5), "largest_component_share"),
    (ProceduralLesionConfig, "satellite_distance_mm", 0.0, "satellite_distance_mm"),
    (ProceduralLesionConfig, "left_probability", -0.1, "left_probability"),
    (ProceduralLesionConfig, "bilateral_probability", 2.0, "bilateral_probability"),
    (ProceduralLesionConfig, "territory_probabilities", (1.0,), "territory_probabilities"),
    (ProceduralLesionConfig, "territory_mean_mm", ((0, 0, 0),), "territory_mean_mm"),
    (ProceduralLesionConfig, "territory_std_mm", ((1, 1, 0),) * 5, "territory_std_mm"),
    (ProceduralLesionConfig, "elongation", 0.5, "elongation"),
    (ProceduralLesionConfig, "roughness", -1.0, "roughness"),
    (ProceduralLesionConfig, "noise_scale", 0.0, "noise_scale"),
    (LesionConfig, "mask_threshold", 1.0, "lesion.mask_threshold"),
    (LesionConfig, "max_volume_ml", -1.0, "lesion.max_volume_ml"),
    (LesionConfig, "max_outside_fraction", 1.2, "lesion.max_outside_fraction"),
    (LesionConfig, "holdout_fraction", -0.5, "lesion.holdout_fraction"),
    (LesionConfig, "count", (2, 1), "lesion.count"),
    (LesionConfig, "healthy_probability", 1.1, "lesion.healthy_probability"),
    (LesionConfig, "clip_to", "csf", "lesion.clip_to"),
    (LesionConfig, "target", "halo", "lesion.target"),
]


@pytest.mark.parametrize("cls,name,value,match", BAD)
def test_config_validate_names_field(cls, name, value, match):
    cfg = dataclasses.replace(cls(), **{name: value})
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def test_lesion_config_nested_validate_and_defaults_valid():
    assert LesionConfig().validate() is not None
    with pytest.raises(ValueError, match="lesion.softcp.alpha"):
        LesionConfig(softcp=SoftCPConfig(alpha=2.0)).validate()


# ---- real data (skipped without ../shared/data) -----------------------------------------------------------
DATA = SHARED_DATA


@pytest.mark.skipif(not (DATA / "lesions_soop_mni").is_dir(), reason="shared data absent")
def test_real_soop_masks_placed_on_a_2mm_ras_grid_keep_volume():
    folder = DATA / "lesions_soop_mni"
    files = sorted(folder.glob("*_lesion.nii.gz"))[:3]
    like = np.diag([2.0, 2.0, 2.0, 1.0])
    like[:3, 3] = [-96, -132, -78]
    bank = load_mask_bank(files, progress=False)
    for i, f in enumerate(files):
        ref = float((nib.load(str(f)).get_fdata() > 0.5).sum()) / 1000.0
        assert bank.volumes_ml[i] == pytest.approx(ref)
        dense = torch.zeros(97, 115, 97, dtype=torch.bool)
        bank.paste(i, dense, like)
        assert float(dense.sum()) * 8 / 1000 == pytest.approx(ref, rel=0.25, abs=0.05)
    with pytest.raises(ValueError, match="values must lie in"):
        LesionSource.from_folder(folder, pattern="ArterialAtlas136.nii.gz", progress=False)


def test_box_restricted_weights_equal_the_full_volume_formula():
    """LesionSource works inside each lesion's bounding box; the result equals the whole-volume maths."""
    from synthgen.lesions.morphology import fading_coefficients, fading_config, soft_cp_config
    from synthgen.lesions.source import BRAIN, tissue_share

    shape = (30, 34, 28)
    tissue = torch.zeros(1, 1, *shape, dtype=torch.uint8)
    tissue[..., 3:27, 3:31, 3:25] = 2
    masks = torch.zeros(3, 1, *shape)
    masks[0, 0, 0:6, 10:15, 12:20] = 1          # touches the border
    masks[2, 0, 12:18, 14:22, 9:13] = 1         # sample 1 stays lesion-free
    src = LesionSource.from_tensor(masks)
    keys = [11, 12, 13]
    intensity, label = src.sample_dense(tissue.expand(3, -1, -1, -1, -1), keys)
    drawn, gens = src.sample_masks(tissue.expand(3, -1, -1, -1, -1), keys)
    cfg = src.config
    for i, g in enumerate(gens):
        coeffs = fading_coefficients(g, shape, cfg.fading.control_spacing)
        faded = float(torch.rand(1, generator=g, dtype=torch.float64)) < cfg.fading.probability
        share = tissue_share(tissue, BRAIN)
        full = soft_cp_config(drawn[i:i + 1], cfg.softcp) * share
        fade = fading_config(coeffs, shape, cfg.fading) if faded else 1.0
        assert torch.allclose(label[i:i + 1], drawn[i:i + 1].float() * share, atol=1e-6)
        assert torch.allclose(intensity[i:i + 1], full * fade, atol=1e-6)
    assert label[1].sum() == 0 or drawn[1].any()


def _store_fixture(tmp_path, n=12):
    """Masks in a LAS folder (names whose file-name and stem orders differ) and a cropped store of them."""
    from synthgen.data import pack
    las = np.diag([-1.0, 1, 1, 1])
    las[:3, 3] = [12, -10, -9]
    folder = tmp_path / "masks"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        m = np.zeros((17, 24, 19), np.uint8)
        lo = rng.integers(1, 9, 3)
        m[lo[0]:lo[0] + 3 + i % 4, lo[1]:lo[1] + 4, lo[2]:lo[2] + 2 + i % 3] = 1
        _write(folder / f"{'a-b' if i == 0 else 'a'}{i:02d}_lesion.nii.gz", m, las)
    _write(folder / "a.nii.gz", np.zeros((17, 24, 19), np.uint8), las)          # empty: dropped alike
    _write(folder / "notes_lesion.nii.gz", np.zeros((17, 24, 19), np.uint8), las)
    pack(tmp_path / "store", lesions=folder, crop_masks=True, progress=False)
    grid = np.diag([2.0, 2, 2, 1])                    # the training grid: 2 mm RAS, another box
    grid[:3, 3] = [-6, -12, -10]
    return folder, tmp_path / "store", (12, 14, 12), grid


@pytest.mark.filterwarnings("ignore:.*lesion masks left out")
def test_from_store_same_masks_and_split_as_from_folder(tmp_path):
    from synthgen.data import open_store
    folder, store, shape, grid = _store_fixture(tmp_path)
    cfg = LesionConfig(holdout_fraction=0.4, max_volume_ml=0.15)
    for split in (None, "train", "holdout"):
        a = LesionSource.from_folder(folder, split=split, config=cfg, progress=False).bank
        for s in (store, open_store(store)):
            b = LesionSource.from_store(s, split=split, config=cfg, progress=False).bank
            assert b.names == a.names and b.dropped == a.dropped and b.volumes_ml == a.volumes_ml
            for i in range(len(a)):     # placed alike on the training grid (the store's crops are RAS, the folder's LAS)
                da, db = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
                a.paste(i, da, grid)
                b.paste(i, db, grid)
                assert torch.equal(da, db)
    train = LesionSource.from_store(store, split="train", config=cfg, progress=False).bank.names
    hold = LesionSource.from_store(store, split="holdout", config=cfg, progress=False).bank.names
    assert train and hold and set(train).isdisjoint(hold)
    # the pattern selects by source file name, as a folder glob does
    only = LesionSource.from_store(store, pattern="a0[1-3]_*", progress=False).bank.names
    assert only == ["a01_lesion.nii.gz", "a02_lesion.nii.gz", "a03_lesion.nii.gz"]


def test_from_store_errors(tmp_path):
    _, store, shape, grid = _store_fixture(tmp_path, n=2)
    with pytest.raises(ValueError, match=r"store: no lesion mask in the store packed from a file matching '\*.mgz'"):
        LesionSource.from_store(store, pattern="*.mgz", progress=False)
    with pytest.raises(FileNotFoundError, match="not a packed store"):
        LesionSource.from_store(tmp_path / "nowhere", progress=False)
    with pytest.raises(ValueError, match=r"no lesion mask left out of 1 files.*too_large"):
        LesionSource.from_store(store, pattern="a0*", max_volume_ml=1e-6, progress=False)
