"""Tests of the bundled MNI152 2009a tissue map and the script that derives it."""

import importlib.util

import nibabel as nib
import numpy as np
import pytest
import torch

from synthgen.data.default_map import (
    DEFAULT_TISSUE_LABELS,
    _load_labels,
    default_tissue_map,
    default_tissue_map_path,
)
from conftest import source_file

SHAPE = (197, 233, 189)
MNI_2009_AFFINE = np.array(
    [[1.0, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1]], dtype=np.float64
)


def _script():
    spec = importlib.util.spec_from_file_location(
        "derive_default_tissue_map", source_file("scripts", "derive_default_tissue_map.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def labels():
    return default_tissue_map()[0, 0].numpy()


def test_label_table():
    assert DEFAULT_TISSUE_LABELS == {
        "background": 0, "gm": 1, "wm": 2, "pv": 3, "csf": 4, "non_brain": 5, "head_inner": 6, "head_middle": 7,
        "head_outer": 8,
    }


def test_shape_dtype_affine():
    path = default_tissue_map_path()
    assert path.is_file() and path.stat().st_size < 2_000_000
    t, affine = default_tissue_map(with_affine=True)
    assert t.shape == (1, 1, *SHAPE) and t.dtype == torch.uint8 and t.device.type == "cpu"
    assert affine.dtype == np.float64 and affine.shape == (4, 4)
    np.testing.assert_array_equal(affine, MNI_2009_AFFINE)
    assert default_tissue_map(device="cpu").shape == (1, 1, *SHAPE)


def test_fresh_tensor_each_call_and_cached_read():
    a = default_tissue_map()
    a.zero_()
    b, affine = default_tissue_map(with_affine=True)
    affine[0, 3] = 0.0
    assert int(b.max()) == 8
    assert default_tissue_map(with_affine=True)[1][0, 3] == -98.0
    assert _load_labels.cache_info().hits >= 2


def test_label_values(labels):
    assert set(np.unique(labels).tolist()) == set(range(9))


def test_class_volumes_plausible(labels):
    # MNI space: the average head is ~1.3x a typical adult's (intracranial volume 1.89 L), so the
    # ranges sit above native-space norms; GM/WM agree with the template's soft volumes (1008/670 mL).
    ml = np.bincount(labels.ravel(), minlength=9) / 1000.0
    assert 850 < ml[1] < 1150  # GM
    assert 450 < ml[2] < 750  # WM
    assert 80 < ml[3] < 300  # PV: a thin band, not a slab
    assert 80 < ml[4] < 400  # CSF
    assert 1400 < ml[1] + ml[2] + ml[3] < 1900
    assert 5 < ml[5] < 100  # dura, sinuses, vessels inside the intracranial mask
    assert 500 < ml[6] + ml[7] + ml[8] < 1600  # the head around it, in three layers
    assert min(ml[6], ml[7], ml[8]) > 100
    assert ml[3] < 0.25 * ml[1]  # PV is a band along the GM/WM boundary


def test_left_right_symmetric(labels):
    mid = SHAPE[0] // 2  # x index 98 is x = 0 mm
    assert (labels != labels[::-1]).mean() < 0.01
    for k in range(1, 9):
        left, right = (labels[:mid] == k).sum(), (labels[mid + 1:] == k).sum()
        assert abs(left - right) <= 0.02 * max(left, right)


def test_head_layers_run_inner_to_outer_from_the_brain(labels):
    """Not one uniform shell: along a ray up from the vertex and out to the side, the non-brain layers follow one
    another inside out (5.5, 3.5 and 2 mm thick), then air."""
    ijk = np.round(np.linalg.inv(MNI_2009_AFFINE) @ np.array([0.0, -20.0, 0.0, 1.0])).astype(int)
    for ray in (labels[ijk[0], ijk[1], ijk[2]:], labels[ijk[0]:, ijk[1], ijk[2]]):
        outside = ray[np.nonzero(ray == 0)[0][0] - 1::-1]       # from the head's surface inwards
        runs = [int(v) for i, v in enumerate(outside) if i == 0 or v != outside[i - 1]]
        assert runs[:3] == [8, 7, 6], runs
        counts = [int((ray == k).sum()) for k in (6, 7, 8)]
        assert 4 <= counts[0] <= 7 and 2 <= counts[1] <= 5 and 1 <= counts[2] <= 3, counts


def test_ventricles_are_csf(labels):
    # lateral ventricle bodies at MNI (+-12, -14, 23) mm (T1 template ~70 there, GM ~166)
    ijk = np.round(np.linalg.inv(MNI_2009_AFFINE) @ np.array([[-12, 12], [-14, -14], [23, 23], [1, 1]]))
    vals = labels[tuple(ijk[:3].astype(int))]
    assert (vals == DEFAULT_TISSUE_LABELS["csf"]).all(), vals


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="default tissue map not found: .*nope.nii.gz"):
        _load_labels(str(tmp_path / "nope.nii.gz"))


def test_load_wrong_shape(tmp_path):
    path = tmp_path / "small.nii"
    nib.save(nib.Nifti1Image(np.zeros((17, 24, 31), np.uint8), np.eye(4)), path)
    with pytest.raises(ValueError, match=r"small.nii` must have shape \(197, 233, 189\), got \(17, 24, 31\)"):
        _load_labels(str(path))


def test_load_wrong_dtype_and_values(tmp_path):
    path = tmp_path / "float.nii"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), np.eye(4)), path)
    with pytest.raises(ValueError, match="float.nii` must store uint8 labels, got int16"):
        _load_labels(str(path))
    path = tmp_path / "six.nii"
    arr = np.zeros(SHAPE, np.uint8)
    arr[5, 5, 5] = 9
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    with pytest.raises(ValueError, match="six.nii` must hold labels 0..8, got maximum 9"):
        _load_labels(str(path))


def test_derive_labels_recipe_on_small_volume(monkeypatch):
    mod = _script()
    monkeypatch.setattr(mod, "LAYERS_MM", ((1.0, 6), (2.0, 7), (3.0, 8)))
    shape = (17, 24, 31)
    gm = np.zeros(shape, np.uint8)
    wm = np.zeros(shape, np.uint8)
    t1 = np.zeros(shape, np.uint8)
    t1[4:13, 6:18, 8:23] = 60  # intracranial block, dark (CSF) by default
    gm[4:13, 6:18, 8:14] = 255
    t1[4:13, 6:18, 8:14] = 165
    wm[4:13, 6:18, 16:23] = 255
    t1[4:13, 6:18, 16:23] = 220
    gm[4:13, 6:18, 14], wm[4:13, 6:18, 14] = 128, 128  # equal mix -> PV
    t1[4:13, 6:18, 14] = 190
    t1[8, 12, 15] = 200  # bright, no tissue probability -> non-brain inside the mask
    lab, info = mod.derive_labels(gm, wm, t1)
    assert info["mu_gm"] == 165 and info["mu_csf"] == 60
    assert lab[8, 12, 10] == 1 and lab[8, 12, 20] == 2 and lab[8, 12, 14] == 3
    assert lab[8, 13, 15] == 4 and lab[8, 12, 15] == 5
    # the head's layers by distance from the intracranial block (x = 4..12): 1, 2, 3 mm -> 6, 7, 8
    assert lab[3, 12, 15] == 6 and lab[2, 12, 15] == 7 and lab[1, 12, 15] == 8
    assert lab[0, 0, 0] == 0 and lab[0, 12, 15] == 0  # 4 mm and more outside: air
    assert set(np.unique(lab).tolist()) <= set(range(9))


def test_derive_rejects_mismatched_grids(tmp_path):
    mod = _script()
    for k, name in mod.TEMPLATE_FILES.items():
        shape = (17, 24, 31) if k != "wm" else (17, 24, 30)
        nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), tmp_path / name)
    with pytest.raises(ValueError, match=r"wm_tal_nlin_sym_09a_converted.nii.gz` must share the T1 grid"):
        mod.derive(tmp_path)


def test_template_dir_missing_file(monkeypatch):
    pytest.importorskip("nilearn")
    mod = _script()
    monkeypatch.setitem(mod.TEMPLATE_FILES, "t1", "missing_t1.nii.gz")
    with pytest.raises(FileNotFoundError, match="MNI152 2009a template file not found: .*missing_t1"):
        mod.template_dir()


def test_committed_file_equals_script_output(tmp_path):
    pytest.importorskip("nilearn")
    mod = _script()
    out = tmp_path / "labels.nii.gz"
    mod.main(["--out", str(out)])
    assert out.read_bytes() == default_tissue_map_path().read_bytes()
