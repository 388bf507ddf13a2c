"""Training from a packed store (--store): same data as from the folders, empty sections fall back, clear errors."""
import nibabel as nib
import numpy as np
import pytest
import torch

import synthgen
from synthgen.data import open_store, pack
from synthgen.train import run
from synthgen.train.config import TrainConfig
from synthgen.data.sources import RealScans, real_scans, tissue_maps
from synthgen.data.training import TrainingBatches, training_lesions
from synthgen.train.loop import train

from test_train import tiny

LAS = np.array([[-1.0, 0, 0, 24], [0, 1, 0, -30], [0, 0, 1, -20], [0, 0, 0, 1]])   # packing reorients
SHAPE = (48, 56, 44)


def _save(path, data, affine=LAS):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


def _folders(root):
    """A tiny ellipsoid 'brain' label map, 10 lesion masks inside it (2 held out at 0.2), one real scan + mask."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"), -1)
    r = np.sqrt((grid ** 2).sum(-1))
    labels = np.select([r < 0.3, r < 0.6, r < 0.8, r < 0.9], [4, 2, 3, 1], 0).astype(np.uint8)
    _save(root / "t" / "sub-01_labels.nii.gz", labels)
    rng = np.random.default_rng(0)
    for i in range(10):                 # sub-05 and sub-07 fall in the hold-out split
        m = np.zeros(SHAPE, np.uint8)
        lo = rng.integers(14, 26, 3)
        m[lo[0]:lo[0] + 6, lo[1]:lo[1] + 8, lo[2]:lo[2] + 5] = 1
        _save(root / "l" / f"sub-{i:02d}_lesion.nii.gz", m)
    scan = (labels * 40 + rng.normal(0, 3, SHAPE)).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    mask[20:28, 20:30, 18:24] = 1
    _save(root / "r" / "case1_T1w.nii.gz", scan)
    _save(root / "r" / "case1_mask.nii.gz", mask)
    return root / "t", root / "l", root / "r"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    t, les, r = _folders(root)
    pack(root / "store", t, les, r, crop_masks=True, progress=False)
    pack(root / "lesions_only", lesions=les, progress=False)
    return {"t": t, "l": les, "r": r, "store": root / "store", "lesions_only": root / "lesions_only"}


def test_two_steps_from_store_equal_two_steps_from_folders(data, tmp_path):
    a = tiny(tmp_path / "folders", steps=2)
    a.data.tissue_maps, a.data.lesions = str(data["t"]), str(data["l"])
    b = tiny(tmp_path / "store", steps=2)
    b.data.store = str(data["store"])
    store = open_store(data["store"])
    # same tissue maps on the training grid, same lesion masks in the same split
    vs = a.generator.voxel_size
    ma, mb = tissue_maps(folder=data["t"], voxel_size=vs).load(0), tissue_maps(store, voxel_size=vs).load(0)
    assert np.array_equal(ma.data, mb.data) and np.array_equal(ma.affine, mb.affine) and ma.data.shape == (12, 14, 11)
    la, lb = training_lesions(a.data.lesion, folder=data["l"]), training_lesions(b.data.lesion, store)
    for i, names in ((0, 8), (1, 2)):
        assert len(lb[i].bank) == names and lb[i].bank.names == la[i].bank.names
        for j in range(names):       # placed alike on the training grid
            da, db = torch.zeros(ma.data.shape, dtype=torch.bool), torch.zeros(ma.data.shape, dtype=torch.bool)
            la[i].bank.paste(j, da, ma.affine)
            lb[i].bank.paste(j, db, mb.affine)
            assert torch.equal(da, db) and da.any()
    assert {"sub-05_lesion.nii.gz", "sub-07_lesion.nii.gz"} == set(lb[1].bank.names)
    # the store also holds a real scan: step 1 is real there, so compare the synthetic step 0 of both runs
    out_a = train(a, stop_at=1, progress=False)
    b_synth = tiny(tmp_path / "store_synth", steps=2)
    b_synth.data.store = str(data["store"])
    out_b = train(b_synth, stop_at=1, progress=False)
    assert out_a["loss"] == out_b["loss"]
    out = train(b, progress=False)           # steps 0 (synthetic) and 1 (real, from the store)
    assert out["step"] == 2 and np.isfinite(out["loss"])


def test_real_scans_from_store_match_folder(data):
    cfg = tiny("unused")
    a = RealScans(folder=str(data["r"]))
    b = real_scans(open_store(data["store"]))
    c = RealScans(store=data["store"])            # a path works too
    assert len(a) == len(b) == len(c) == 1
    (sa, ma), (sb, mb) = a.load(0), b.load(0)
    assert torch.equal(ma, mb) and torch.equal(sb, c.load(0)[0])
    assert torch.allclose(sa.float(), sb.float(), rtol=2e-3, atol=0.1)     # packed as fp16
    image, target = TrainingBatches(synthgen.SynthGenerator(cfg.generator), None, 0, 1, "cpu", real=b,
                                    real_only=True)(0)
    assert image.shape == (1, 1, 24, 24, 24) and set(target.unique().tolist()) <= {0, 1}


def test_empty_sections_fall_back(data, tmp_path):
    cfg = tiny(tmp_path, steps=1)
    cfg.data.store = str(data["lesions_only"])
    store = open_store(data["lesions_only"])
    assert type(tissue_maps(store)).__name__ == "DefaultTissueMap"        # the bundled map
    assert training_lesions(cfg.data.lesion, store)[0].bank is not None
    only_tissue = tmp_path / "only_tissue"
    pack(only_tissue, tissue_maps=data["t"], progress=False)
    assert training_lesions(cfg.data.lesion, open_store(only_tissue))[0].bank is None   # procedural
    assert real_scans(store) is None
    cfg.val_every = 0
    out = train(cfg, progress=False)            # no real section: no real steps
    assert out["step"] == 1


def test_store_errors(data, tmp_path, capsys):
    for flag in ("--tissue-maps", "--lesions", "--real", "--label-map"):
        args = ["--preset", "quick", "--out", str(tmp_path), "--store", str(data["store"]), flag, "x"]
        assert run.main(args) == 2
        assert "`data.store` (--store) must be given without" in capsys.readouterr().err
    cfg = TrainConfig()
    cfg.data.store, cfg.data.lesions = "s", "l"
    with pytest.raises(ValueError, match=r"`data.store` \(--store\) must be given without \['data.lesions'\]"):
        cfg.validate()
    cfg = tiny(tmp_path, steps=1, baseline=True)
    cfg.generator.target = "lesion"
    cfg.data.store = str(data["lesions_only"])
    with pytest.raises(ValueError, match="`baseline` trains on real scans only: the store .* must hold real scans"):
        train(cfg, progress=False)
    cfg.data.store = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere: not a packed store"):
        train(cfg, progress=False)
    with pytest.raises(ValueError, match="`folder` or `store` must be given, not both nor neither"):
        RealScans()
    with pytest.raises(ValueError, match="`folder` or `store` must be given, not both nor neither"):
        RealScans(str(data["r"]), store=data["store"])
