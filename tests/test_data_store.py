"""Packed store: exact round trip, incremental packing, atomic files, clear errors."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

from synthgen.data import open_store, pack, read_mask, read_scan, read_tissue_map
from synthgen.data.__main__ import main

AFF = np.array([[-1.0, 0, 0, 8], [0, 1, 0, -30], [0, 0, 1, 0], [0, 0, 0, 1]])   # LAS: packing reorients


def _save(path, data, affine=AFF):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _folders(tmp_path, shape=(17, 24, 31)):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 6, shape).astype(np.uint8)
    lab[8, 12, 15] = 1
    _save(tmp_path / "t" / "sub-1_labels.nii.gz", lab)
    soft = rng.dirichlet(np.ones(5), size=shape).astype(np.float32)
    _save(tmp_path / "t" / "sub-2_soft.nii.gz", soft)
    for i in range(3):
        m = np.zeros(shape, np.uint8)
        m[3 + i:7 + i, 4:9, 5:8] = 1
        _save(tmp_path / "l" / f"sub-{i}_lesion.nii.gz", m)
    scan = (rng.random(shape) * 1000).astype(np.float32)
    _save(tmp_path / "r" / "sub-9_T1w.nii.gz", scan)
    _save(tmp_path / "r" / "sub-9_mask.nii.gz", (scan > 900).astype(np.uint8))
    return tmp_path / "t", tmp_path / "l", tmp_path / "r"


def test_pack_round_trips_exactly(tmp_path):
    t, les, r = _folders(tmp_path)
    counts = pack(tmp_path / "store", t, les, r, prob_dtype="float16", progress=False)
    assert counts == {"packed": 6, "skipped": 0, "removed": 0}
    store = open_store(tmp_path / "store")
    assert (len(store.tissue_maps), len(store.lesions), len(store.real)) == (2, 3, 1)
    lab_item, soft_item = store.tissue_maps[0], store.tissue_maps[1]
    ref = read_tissue_map(t / "sub-1_labels.nii.gz")
    assert isinstance(lab_item.data, np.memmap) and lab_item.data.dtype == np.uint8
    assert np.array_equal(lab_item.data, ref.data) and np.array_equal(lab_item.affine, ref.affine)
    soft_ref = read_tissue_map(t / "sub-2_soft.nii.gz")
    assert soft_item.kind == "soft" and soft_item.data.dtype == np.float16
    assert np.array_equal(soft_item.data, soft_ref.data.astype(np.float16))
    for i, item in enumerate(store["lesions"]):
        mask, aff = read_mask(les / f"sub-{i}_lesion.nii.gz")
        assert np.array_equal(item.data, mask) and np.array_equal(item.affine, aff)
    real = store.real[0]
    scan, aff = read_scan(r / "sub-9_T1w.nii.gz")
    assert real.scan.dtype == np.float16 and np.array_equal(real.scan, scan.astype(np.float16))
    assert np.array_equal(real.mask, read_mask(r / "sub-9_mask.nii.gz")[0])
    src = real.meta["sources"][0]
    assert src["size"] == os.path.getsize(r / "sub-9_T1w.nii.gz") and len(src["sha256"]) == 64
    assert not [p for p in (tmp_path / "store").rglob(".*")]   # no temporary files left


def test_uint8_probabilities_and_cropped_masks(tmp_path):
    t, les, _ = _folders(tmp_path)
    pack(tmp_path / "s", t, les, crop_masks=True, progress=False)
    store = open_store(tmp_path / "s")
    soft = store.tissue_maps[1]
    ref = read_tissue_map(t / "sub-2_soft.nii.gz").data
    assert soft.data.dtype == np.uint8 and np.abs(soft.data * soft.scale - ref).max() <= 0.5 / 255 + 1e-6
    item = store.lesions[1]
    full, full_aff = read_mask(les / "sub-1_lesion.nii.gz")
    assert item.data.shape == (4, 5, 3) and item.data.all()
    # the cropped voxel (0, 0, 0) sits where the full mask's first lesion voxel is, in world space
    first = np.argwhere(full)[0]
    assert np.allclose(item.affine[:3, 3], (full_aff @ np.append(first, 1))[:3])


def test_pack_is_incremental(tmp_path):
    t, les, _ = _folders(tmp_path)
    out = tmp_path / "s"
    pack(out, t, les, progress=False)
    assert pack(out, t, les, progress=False) == {"packed": 0, "skipped": 5, "removed": 0}
    m = np.zeros((17, 24, 31), np.uint8)
    m[1, 1, 1] = 1
    _save(les / "sub-0_lesion.nii.gz", m)   # changed content
    (les / "sub-2_lesion.nii.gz").unlink()
    assert pack(out, t, les, progress=False) == {"packed": 1, "skipped": 3, "removed": 1}
    store = open_store(out)
    assert store.lesions.names == ["sub-0_lesion", "sub-1_lesion"] and store.lesions[0].data.sum() == 1
    assert not (out / "lesions" / "sub-2_lesion.npy").exists()
    # same bytes, new mtime: the SHA-256 says unchanged
    os.utime(les / "sub-1_lesion.nii.gz", (1e9, 1e9))
    assert pack(out, lesions=les, progress=False)["packed"] == 0
    # other options: packed again
    assert pack(out, lesions=les, mask_threshold=0.5, progress=False)["packed"] == 2


def test_pack_refuses_bad_data_and_store_errors(tmp_path):
    _save(tmp_path / "l" / "soft.nii.gz", np.full((3, 3, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="cannot pack, the data have problems:\n.*soft.nii.gz: mask must be binary"):
        pack(tmp_path / "s", lesions=tmp_path / "l", progress=False)
    with pytest.raises(ValueError, match="`prob_dtype` must be 'uint8' or 'float16'"):
        pack(tmp_path / "s", lesions=tmp_path / "l", prob_dtype="float32")
    with pytest.raises(FileNotFoundError, match="not a packed store"):
        open_store(tmp_path / "nowhere")
    (tmp_path / "s").mkdir(exist_ok=True)
    (tmp_path / "s" / "index.json").write_text("{")
    with pytest.raises(ValueError, match="corrupt store index"):
        open_store(tmp_path / "s")
    (tmp_path / "s" / "index.json").write_text(json.dumps({"version": 99, "sections": {}}))
    with pytest.raises(ValueError, match=r"store version must be one of \[1, 2\] .*, got 99: pack the data again"):
        open_store(tmp_path / "s")


def test_store_item_errors(tmp_path):
    _, les, _ = _folders(tmp_path)
    pack(tmp_path / "s", lesions=les, progress=False)
    store = open_store(tmp_path / "s")
    with pytest.raises(IndexError, match=r"`index` must be in \[0, 3\)"):
        store.lesions[3]
    with pytest.raises(TypeError, match="`index` must be an int"):
        store.lesions["a"]
    with pytest.raises(KeyError, match="`section` must be one of"):
        store["scans"]
    np.save(tmp_path / "s" / "lesions" / "sub-0_lesion.npy", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="does not match the index"):
        store.lesions[0]
    (tmp_path / "s" / "lesions" / "sub-1_lesion.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="sub-1_lesion.npy: cannot be read from the store"):
        store.lesions[1]
    assert "lesions=3" in repr(store)


def test_cli_pack(tmp_path, capsys):
    _, les, _ = _folders(tmp_path)
    assert main(["pack", "--lesions", str(les), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert "3 packed" in capsys.readouterr().out
    assert len(open_store(tmp_path / "s").lesions) == 3
    _save(les / "bad.nii.gz", np.full((3, 3, 3), 0.5, np.float32))
    assert main(["pack", "--lesions", str(les), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert len(open_store(tmp_path / "s").lesions) == 3   # untouched
