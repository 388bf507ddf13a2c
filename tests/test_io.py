import gzip

import nibabel as nib
import numpy as np
import pytest

from synthgen.io import (check_affine, load_nifti, reorient_to_ras, resample_to_grid, save_nifti, to_ras_1mm,
                         voxel_sizes)


def _world(affine, ijk):
    return (affine @ np.append(np.asarray(ijk, float), 1.0))[:3]


def test_save_load_round_trip_is_atomic(tmp_path):
    data = np.random.rand(4, 5, 6).astype(np.float32)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    path = save_nifti(tmp_path / "x.nii.gz", data, aff)
    back, back_aff = load_nifti(path)
    assert np.array_equal(back, data) and np.allclose(back_aff, aff)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz"]   # no temporary left behind


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load_nifti(tmp_path / "missing.nii.gz")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="a.txt: not a NIfTI"):
        load_nifti(tmp_path / "a.txt")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"garbage" * 10)[:20])
    with pytest.raises(ValueError, match="bad.nii.gz: cannot be read"):
        load_nifti(bad)
    img = nib.Nifti1Image(np.zeros((3, 3), np.float32), np.eye(4))
    nib.save(img, tmp_path / "flat.nii")
    with pytest.raises(ValueError, match="flat.nii: expected a 3D or 4D"):
        load_nifti(tmp_path / "flat.nii")


def test_check_affine():
    with pytest.raises(ValueError, match="NaN"):
        check_affine(np.full((4, 4), np.nan), "f.nii")
    with pytest.raises(ValueError, match="singular"):
        check_affine(np.zeros((4, 4)), "f.nii")
    with pytest.raises(ValueError, match="4x4"):
        check_affine(np.eye(3), "f.nii")


def test_reorient_keeps_world_positions():
    data = np.random.rand(5, 6, 7).astype(np.float32)
    aff = np.array([[0, 0, -2.0, 10], [-1.0, 0, 0, 3], [0, 3.0, 0, -4], [0, 0, 0, 1]])   # PIL-like
    ras, ras_aff = reorient_to_ras(data, aff)
    assert nib.aff2axcodes(ras_aff) == ("R", "A", "S")
    for ijk in [(0, 0, 0), (4, 5, 6), (1, 2, 3)]:
        target = np.linalg.solve(ras_aff, np.append(_world(aff, ijk), 1))[:3].round().astype(int)
        assert ras[tuple(target)] == data[ijk]


def test_to_ras_1mm_and_resample():
    data = np.random.rand(6, 5, 4).astype(np.float32)
    aff = np.diag([-2.0, 2.0, 2.0, 1.0])
    out, out_aff = to_ras_1mm(data, aff, order=1)
    assert np.allclose(voxel_sizes(out_aff), 1) and out.shape == (11, 9, 7)
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 1, 1)]:
        target = np.linalg.solve(out_aff, np.append(_world(aff, ijk), 1))[:3].round().astype(int)
        assert np.isclose(out[tuple(target)], data[ijk], atol=1e-5)
    labels = (data > 0.5).astype(np.uint8)
    lab = resample_to_grid(labels, aff, out.shape, out_aff, order=0)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
    four = resample_to_grid(np.stack([data, 2 * data], -1), aff, out.shape, out_aff, order=1)
    assert four.shape == (*out.shape, 2) and np.allclose(four[..., 1], 2 * four[..., 0], atol=1e-5)
    with pytest.raises(ValueError, match="order"):
        resample_to_grid(data, aff, out.shape, out_aff, order=3)


def test_atomic_path_keeps_the_old_file_on_error_and_sets_normal_permissions(tmp_path):
    import os
    from synthgen.io import atomic_path
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(target) as tmp:
        open(tmp, "w").write("new")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_downsampling_is_antialiased_as_nibabel_processing_smooths_then_resamples():
    import nibabel.processing
    rng = np.random.default_rng(0)
    data = rng.random((40, 36, 30)).astype(np.float32)             # white noise: every frequency present
    aff = np.diag([-0.8, 1.0, 1.2, 1.0])                           # LPS-like, anisotropic
    aff[:3, 3] = (31.2, 0.0, 0.0)
    out_aff = np.diag([2.0, 2.5, 1.0, 1.0])                        # coarser along x and y, finer along z
    out_aff[:3, 3] = (2.0, 2.0, 2.0)
    shape = (13, 12, 30)
    ours = resample_to_grid(data, aff, shape, out_aff, order=1)
    # independently: nibabel smooths by a FWHM in mm per voxel axis, then resamples trilinearly
    ratio = np.abs(np.diag(out_aff)[:3] / np.diag(aff)[:3])        # output / input voxel size: 2.5, 2.5, 0.83
    fwhm_mm = np.sqrt(np.clip(ratio ** 2 - 1, 0, None)) * np.abs(np.diag(aff)[:3])
    smoothed = nibabel.processing.smooth_image(nib.Nifti1Image(data, aff), fwhm_mm)
    ref = nibabel.processing.resample_from_to(smoothed, (shape, out_aff), order=1).get_fdata()
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    plain = resample_to_grid(data, aff, shape, out_aff, order=1, antialias=False)
    assert np.abs(plain - ref).max() > 0.1                          # the prefilter is what makes them agree
    # a pattern at the input's Nyquist frequency aliases into the coarse grid unless filtered out
    stripes = np.tile(np.array([1.0, -1.0], np.float32), 20)[:, None, None] * np.ones((40, 36, 30), np.float32)
    assert np.abs(resample_to_grid(stripes, aff, shape, out_aff, order=1)).max() < 0.05
    assert np.abs(resample_to_grid(stripes, aff, shape, out_aff, order=1, antialias=False)).max() > 0.5
    # labels are never smoothed, upsampling is never smoothed
    labels = (data > 0.5).astype(np.uint8)
    lab = resample_to_grid(labels, aff, shape, out_aff, order=0)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
    fine = np.diag([0.5, 0.5, 0.5, 1.0])
    fine[:3, 3] = (2.0, 2.0, 2.0)
    assert np.array_equal(resample_to_grid(data, aff, (8, 8, 8), fine, order=1),
                          resample_to_grid(data, aff, (8, 8, 8), fine, order=1, antialias=False))
