"""Lesion masks in a packed store as bit-packed boxes (store version 2), and version-1 stores still read."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

import synthgen
from synthgen.config import FadingConfig, GeneratorConfig, LesionConfig
from synthgen.data import open_store, pack, read_mask
from synthgen.data.store import PackedBox, pack_box
from synthgen.lesions import LesionSource

from conftest import phantom_labels

LAS = np.array([[-1.0, 0, 0, 20], [0, 1, 0, -15], [0, 0, 1, -10], [0, 0, 0, 1]])   # packing reorients to RAS


def _save(path, data, affine=LAS):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.uint8), affine), str(path))
    return path


def _bounding_box(mask):
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    return mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], lo


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (2, 3, 5), (9, 1, 2), (4, 4, 4), (0, 0, 0)])
@pytest.mark.parametrize("fill", ["random", "empty", "full"])
def test_packed_box_round_trips_any_size(shape, fill):
    """Bit counts that are not a multiple of 8 (the last byte part-filled), empty and full boxes, zero size."""
    rng = np.random.default_rng(sum(shape))
    box = {"random": rng.random(shape) > 0.5, "empty": np.zeros(shape, bool), "full": np.ones(shape, bool)}[fill]
    bits = pack_box(box.astype(np.uint8))
    n = int(np.prod(shape))
    assert bits.dtype == np.uint8 and bits.shape == ((n + 7) // 8,)
    # bit i of the C-order box is bit 7 - i % 8 of byte i // 8 (numpy's big bit order), independently of unpackbits
    flat = box.ravel()
    want = [sum(int(flat[8 * k + j]) << (7 - j) for j in range(8) if 8 * k + j < n) for k in range(len(bits))]
    assert bits.tolist() == want
    got = np.asarray(PackedBox(bits, shape))
    assert got.dtype == np.uint8 and got.shape == shape and np.array_equal(got, box.astype(np.uint8))
    assert np.asarray(PackedBox(bits, shape), bool).dtype == bool


def _mask_folder(tmp_path, shape=(13, 11, 9)):
    """Masks whose boxes have odd voxel counts, one full box, one single voxel and an empty one."""
    rng = np.random.default_rng(1)
    masks = {}
    m = np.zeros(shape, np.uint8)
    m[2:7, 3:6, 1:8] = rng.random((5, 3, 7)) > 0.4      # 5 x 3 x 7 = 105 bits
    m[2, 3, 1] = m[6, 5, 7] = 1                         # the box corners, so the box is what was written
    masks["a_lesion"] = m
    full = np.zeros(shape, np.uint8)
    full[1:12, 2:9, 0:5] = 1                            # a full box of 385 bits (a mask of all ones is refused)
    masks["b_lesion"] = full
    one = np.zeros(shape, np.uint8)
    one[12, 0, 8] = 1
    masks["c_lesion"] = one
    masks["d_lesion"] = np.zeros(shape, np.uint8)
    for name, mask in masks.items():
        _save(tmp_path / "l" / f"{name}.nii.gz", mask)
    return tmp_path / "l", masks


@pytest.mark.parametrize("crop", [False, True])
def test_store_keeps_each_mask_box_as_bits_and_reads_it_back(tmp_path, crop):
    folder, masks = _mask_folder(tmp_path)
    pack(tmp_path / "s", lesions=folder, crop_masks=crop, progress=False)
    store = open_store(tmp_path / "s")
    assert store.index["version"] == 2
    for i, name in enumerate(store.lesions.names):
        ras, affine = read_mask(folder / f"{name}.nii.gz")          # the RAS mask, read apart from the store
        item = store.lesions[i]
        entry = item.meta
        size = (tmp_path / "s" / entry["files"]["data"]).stat().st_size
        if not ras.any():
            assert entry["voxels"] == 0 and np.array_equal(item.data, ras) and size <= 128
            continue
        box, lo = _bounding_box(ras)
        assert entry["encoding"] == "packbits" and size <= 128 + (box.size + 7) // 8   # .npy header + bits
        assert np.array_equal(item.data, box if crop else ras)
        got, box_affine, voxels = store.lesions.mask_box(i)
        assert isinstance(got, PackedBox) and np.array_equal(np.asarray(got), box) and voxels == int(ras.sum())
        want_affine = affine.copy()
        want_affine[:3, 3] += affine[:3, :3] @ lo          # the box's voxel 0 sits where voxel lo of the mask is
        assert np.allclose(box_affine, want_affine)


def _as_version_1(new, old):
    """The store ``new`` rewritten as version 1 wrote it: each mask a uint8 array of its grid (from the source file,
    not from the store's bits), no encoding."""
    index = json.loads((new / "index.json").read_text())
    index["version"] = 1
    (old / "lesions").mkdir(parents=True)
    for name, entry in index["sections"]["lesions"].items():
        mask, _ = read_mask(entry["sources"][0]["path"])
        off, shape = entry["crop_offset"], entry["shape"]
        np.save(old / entry["files"]["data"], mask[off[0]:off[0] + shape[0], off[1]:off[1] + shape[1],
                                                   off[2]:off[2] + shape[2]])
        del entry["encoding"], entry["options"]["encoding"]
    (old / "index.json").write_text(json.dumps(index))
    return old


@pytest.mark.filterwarnings("ignore:.*lesion masks left out")
@pytest.mark.parametrize("crop", [False, True])
def test_the_generator_reads_a_version_1_store_as_a_version_2_one(tmp_path, crop):
    folder, _ = _mask_folder(tmp_path, shape=(20, 22, 18))
    new = tmp_path / "new"
    pack(new, lesions=folder, crop_masks=crop, progress=False)
    old = _as_version_1(new, tmp_path / "old")
    cfg = LesionConfig(healthy_probability=0.0, fading=FadingConfig(probability=0.0), max_volume_ml=1e6)
    banks = [LesionSource.from_store(s, config=cfg, progress=False) for s in (old, new)]
    assert banks[0].bank.names == banks[1].bank.names == ["a_lesion.nii.gz", "b_lesion.nii.gz", "c_lesion.nii.gz"]
    assert banks[0].bank.dropped == banks[1].bank.dropped == {"empty": ["d_lesion.nii.gz"]}
    assert not isinstance(banks[0].bank.crops[0], PackedBox) and isinstance(banks[1].bank.crops[0], PackedBox)
    tissue = phantom_labels((20, 22, 18))
    grid = np.diag([1.0, 1.0, 1.0, 1.0])
    grid[:3, 3] = [-2, -17, -12]                      # the masks' world box lies inside the map
    outs = [synthgen.SynthGenerator(GeneratorConfig(crop=(16, 16, 16)), lesions=src)(
        tissue, seed=3, batch_size=3, affine=grid) for src in banks]
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert (outs[1][1] == 5).any()                     # the masks were pasted


def test_packing_into_a_version_1_store_re_encodes_its_masks(tmp_path):
    folder, _ = _mask_folder(tmp_path)
    new = tmp_path / "new"
    pack(new, lesions=folder, progress=False)
    old = _as_version_1(new, tmp_path / "old")
    raw = (old / "lesions" / "a_lesion.npy").stat().st_size
    assert pack(old, lesions=folder, progress=False) == {"packed": 4, "skipped": 0, "removed": 0}
    store = open_store(old)
    assert store.index["version"] == 2 and all(e["encoding"] == "packbits"
                                               for e in store.index["sections"]["lesions"].values())
    assert (old / "lesions" / "a_lesion.npy").stat().st_size < raw / 4
    assert pack(old, lesions=folder, progress=False)["skipped"] == 4


def test_a_corrupt_packed_mask_is_refused_naming_the_file(tmp_path):
    folder, _ = _mask_folder(tmp_path)
    pack(tmp_path / "s", lesions=folder, progress=False)
    np.save(tmp_path / "s" / "lesions" / "a_lesion.npy", np.zeros(3, np.uint8))       # 105 bits need 14 bytes
    with pytest.raises(ValueError, match=r"a_lesion.npy: shape \[3\] does not match the index \[14\]; pack again"):
        open_store(tmp_path / "s").lesions.mask_box(0)
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    index["sections"]["lesions"]["b_lesion"]["encoding"] = "zip"
    (tmp_path / "s" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"lesions/b_lesion: 'encoding' must be 'packbits', got 'zip'; pack again"):
        open_store(tmp_path / "s")
    index["sections"]["lesions"]["b_lesion"]["encoding"] = "packbits"
    index["sections"]["lesions"]["b_lesion"]["box"] = [[0, 0, 0], [14, 11, 9]]       # beyond the 13 x 11 x 9 grid
    (tmp_path / "s" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"lesions/b_lesion: 'box' must be \[lo, hi\].*got \[\[0, 0, 0\], \[14"):
        open_store(tmp_path / "s")
