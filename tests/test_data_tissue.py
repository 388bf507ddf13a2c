"""Reading tissue maps, masks and scans in RAS at 1 mm; label mappings."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from synthgen.data.tissue import (LabelMapping, freesurfer_mapping, load_tissue_map, read_mask, read_scan,
                                  read_tissue_map, resolve_mapping, soft_channels)


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64)), str(path))
    return path


def _world(affine, ijk):
    return (affine @ np.append(np.asarray(ijk, float), 1.0))[:3]


def _labels(shape=(7, 9, 11), seed=0):
    return np.random.default_rng(seed).integers(0, 5, shape).astype(np.uint8)


def test_las_labels_come_out_ras_with_same_world_positions(tmp_path):
    lab = _labels()
    las = np.array([[-1.0, 0, 0, 10], [0, 1, 0, -20], [0, 0, 1, 5], [0, 0, 0, 1]])
    tm = read_tissue_map(_save(tmp_path / "las.nii.gz", lab, las))
    assert tm.kind == "labels" and tm.data.dtype == np.uint8
    assert nib.aff2axcodes(tm.affine) == ("R", "A", "S")
    for ijk in [(0, 0, 0), (6, 8, 10), (2, 5, 3)]:
        # find the output voxel at the same world point as input voxel ijk
        out = np.rint(np.linalg.solve(tm.affine, np.append(_world(las, ijk), 1))[:3]).astype(int)
        assert tm.data[tuple(out)] == lab[ijk]
    assert np.array_equal(tm.data, lab[::-1])


def test_oblique_input_is_resliced_on_an_axis_aligned_ras_grid(tmp_path):
    # a smooth scan rotated 20 degrees about z, stored LAS-like: values are a linear function of world x
    shape = (15, 17, 13)
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    aff = np.eye(4)
    aff[:3, :3] = np.array([[-c, -s, 0], [-s, c, 0], [0, 0, 1]])   # det -1: a flipped, rotated grid
    aff[:3, 3] = [5, -3, 2]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ aff[:3, :3].T + aff[:3, 3]
    vol = (world[:, 0] * 2.0 + world[:, 2]).reshape(shape).astype(np.float32) + 100
    scan, out_aff = read_scan(_save(tmp_path / "obl.nii.gz", vol, aff))
    assert np.allclose(out_aff[:3, :3], np.eye(3))
    # trilinear interpolation of a linear function is exact wherever the 8 neighbours are inside the input
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in scan.shape], indexing="ij"), -1).reshape(-1, 3)
    w = idx @ out_aff[:3, :3].T + out_aff[:3, 3]
    src = (w - aff[:3, 3]) @ np.linalg.inv(aff[:3, :3]).T
    inside = np.all((src >= 0) & (src <= np.array(shape) - 1), axis=1)
    expect = w[:, 0] * 2.0 + w[:, 2] + 100
    assert inside.sum() > 100
    assert np.allclose(scan.reshape(-1)[inside], expect[inside], atol=1e-3)


def test_2mm_labels_resampled_to_1mm_nearest(tmp_path):
    lab = _labels((6, 7, 8))
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-4, -6, -8]
    tm = read_tissue_map(_save(tmp_path / "lab2.nii.gz", lab, aff))
    assert tm.data.shape == (11, 13, 15)
    assert np.allclose(tm.affine, np.diag([1.0, 1, 1, 1]) + np.pad(np.array([[-4], [-6], [-8]]), ((0, 1), (3, 0))))
    assert np.array_equal(tm.data[::2, ::2, ::2], lab)      # even voxels sit on the original centres
    assert set(np.unique(tm.data)) <= set(np.unique(lab))   # nearest: no invented labels


def test_soft_map_without_background_gets_one_and_resamples_trilinear(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=(6, 7, 8)).astype(np.float32)[..., 1:]   # drop bg: MultiBrain style
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    tm = read_tissue_map(_save(tmp_path / "soft.nii.gz", p, aff))
    assert tm.kind == "soft" and tm.data.shape == (5, 11, 13, 15)
    assert np.allclose(tm.data.sum(0), 1.0, atol=1e-5)
    assert np.allclose(tm.data[1:, ::2, ::2, ::2], np.moveaxis(p, -1, 0), atol=1e-6)
    assert np.allclose(tm.data[1, 1, 0, 0], 0.5 * (p[0, 0, 0, 0] + p[1, 0, 0, 0]), atol=1e-6)
    t = tm.to_tensor()
    assert t.shape == (1, 5, 11, 13, 15) and t.dtype == torch.float32


def test_soft_channels_errors():
    ok = np.full((2, 2, 2, 5), 0.2, np.float32)
    assert soft_channels(ok, "x").shape == (5, 2, 2, 2)               # sums to 1: has a background channel
    with pytest.raises(ValueError, match="f.nii: probability map has NaN"):
        soft_channels(np.where(ok > 0, np.nan, ok), "f.nii")
    with pytest.raises(ValueError, match=r"f.nii: probabilities must lie in \[0, 1\]"):
        soft_channels(ok * 6, "f.nii")
    with pytest.raises(ValueError, match="f.nii: probabilities must sum to at most 1"):
        soft_channels(np.full((2, 2, 2, 5), 0.3, np.float32), "f.nii")
    with pytest.raises(ValueError, match="f.nii: a 4D tissue map needs channels"):
        soft_channels(np.full((2, 2, 2, 3), 0.1, np.float32), "f.nii")


def test_label_mapping_json_cli_and_freesurfer(tmp_path):
    fs = freesurfer_mapping()
    cli = LabelMapping.parse("gm=3,42;wm=2,41;csf=4,24;extra=502+503,30")
    # every source label its own label, in increasing source order: 2 3 4 24 30 41 42 502 503 -> 1..9
    lab = np.array([0, 2, 3, 4, 41, 42, 24, 502, 503, 30], dtype=np.int32).reshape(1, 2, 5)
    assert cli.apply(lab).ravel().tolist() == [0, 1, 2, 3, 6, 7, 4, 8, 9, 5]
    c = cli.label_config()
    assert c.classes == (0, 2, 1, 4, 4, 5, 2, 1, 5, 5) and c.names[1:] == ("2", "3", "4", "24", "30", "41", "42",
                                                                          "502", "503")
    assert c.gaussians == tuple(range(10)) and c.targets is None            # one Gaussian per label
    # one Gaussian per class (and per extra entry), numbered by first appearance
    assert LabelMapping.parse("gm=3,42;wm=2,41;csf=4,24;extra=502+503,30;gaussians=class").label_config(
        ).gaussians == (0, 1, 2, 3, 3, 4, 1, 2, 5, 5)
    tied = LabelMapping.parse("gm=3,42;wm=2,41;csf=4;tied=2+41,3+42;target=3,42,2+41").label_config()
    assert tied.gaussians == (0, 1, 2, 3, 1, 2)          # labels 2 3 4 41 42: 41 with 2, 42 with 3
    assert tied.targets == (0, 3, 1, 0, 3, 2) and tied.target_names == ("background", "3", "42", "2+41")
    # FreeSurfer / SynthSeg: 56 labels + background; contralateral copies share a Gaussian; SynthSeg's 32 targets
    fc = fs.label_config()
    g = {int(n): i for i, n in enumerate(fc.names) if n != "background"}
    assert fc.num_labels == 57 and fc.gaussians[g[2]] == fc.gaussians[g[41]] != fc.gaussians[g[3]]
    assert fc.classes[g[3]] == 1 and fc.classes[g[502]] == 5 and fc.targets[g[502]] == 0
    assert fc.targets[g[2]] == 1 and fc.targets[g[41]] == 19 and max(fc.targets) == 32
    assert fc.target_names[1] == "left_cerebral_white_matter"
    with pytest.raises(ValueError, match="`tied` label 7 is not in the label mapping"):
        LabelMapping.parse("gm=3;tied=3+7")
    with pytest.raises(ValueError, match="`target` label 3 must be in one group"):
        LabelMapping.parse("gm=3;target=3,3")
    with pytest.raises(ValueError, match="`target` label 0 is a background label"):
        LabelMapping.parse("gm=3;target=0,3")
    with pytest.raises(ValueError, match="`tied` label 24 is a background label"):
        LabelMapping.from_dict({"gm": [3], "background": [0, 24], "tied": [[3, 24]]})
    with pytest.raises(ValueError, match="`gaussians` must be 'label' or 'class'"):
        LabelMapping.from_dict({"gm": [3], "gaussians": "each"})
    with pytest.raises(ValueError, match="`target_names` must be one name per target entry"):
        LabelMapping.from_dict({"gm": [3], "target": [3], "target_names": ["a", "b"]})
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"gm": [3], "wm": [2], "csf": [4]}))
    assert resolve_mapping(str(path)).gm == (3,)
    assert resolve_mapping(None) is None and resolve_mapping("freesurfer") == fs
    with pytest.raises(ValueError, match=r"labels \[7\] are not in the label mapping"):
        LabelMapping.from_dict({"gm": [3]}).apply(np.array([0, 3, 7]), name="x")
    with pytest.raises(ValueError, match="label 3 must be in one class"):
        LabelMapping.from_dict({"gm": [3], "wm": [3]})
    with pytest.raises(ValueError, match="keys must be among"):
        LabelMapping.from_dict({"grey": [3]})
    with pytest.raises(ValueError, match="must hold non-negative integer labels"):
        LabelMapping.from_dict({"gm": [-1]})
    with pytest.raises(ValueError, match="must be a list of integer labels"):
        LabelMapping.from_dict({"gm": "3"})
    with pytest.raises(ValueError, match="`extra` must be a list"):
        LabelMapping.from_dict({"extra": 5.5})
    with pytest.raises(ValueError, match="must not contain empty groups"):
        LabelMapping.from_dict({"extra": [[]]})
    with pytest.raises(ValueError, match="must be a JSON object"):
        LabelMapping.from_dict([1])
    with pytest.raises(ValueError, match="must look like"):
        LabelMapping.parse("grey=3")
    with pytest.raises(ValueError, match="must look like"):
        LabelMapping.parse(" ; ")
    with pytest.raises(ValueError, match="labels must be integers"):
        LabelMapping.parse("gm=a")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        LabelMapping.from_json(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('{"gm": [3], "wm": [3]}')
    with pytest.raises(ValueError, match="bad2.json: .*one class"):
        LabelMapping.from_json(tmp_path / "bad2.json")
    with pytest.raises(FileNotFoundError, match="nope.json: no such label-mapping file"):
        LabelMapping.from_json(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="`label_map` must be None"):
        resolve_mapping(3)


def test_read_tissue_map_with_mapping_and_errors(tmp_path):
    fs_lab = np.zeros((6, 6, 6), np.int16)      # the smallest grid a map may have (synthgen.validate)
    fs_lab[1:3, 1:3, 1:3] = 42
    fs_lab[0, 0, 0] = 530
    t, aff = load_tissue_map(_save(tmp_path / "fs.nii.gz", fs_lab, np.eye(4)), label_map="freesurfer",
                             with_affine=True)
    # 530 is the largest of the mapping's 56 source labels besides background: generator label 56
    assert t.shape == (1, 1, 6, 6, 6) and t.dtype == torch.uint8 and int(t.max()) == 56 and aff.shape == (4, 4)
    assert int(t[0, 0, 1, 1, 1]) == sorted(freesurfer_mapping().source_labels - {0}).index(42) + 1
    with pytest.raises(ValueError, match="fs.nii.gz: labels up to 530 are not in our convention"):
        read_tissue_map(tmp_path / "fs.nii.gz")
    with pytest.raises(ValueError, match="p.nii.gz: a label mapping describes 3D label maps, got a 4D"):
        read_tissue_map(_save(tmp_path / "p.nii.gz", np.full((3, 3, 3, 5), 0.2, np.float32), np.eye(4)),
                        label_map="freesurfer")
    with pytest.raises(ValueError, match="p16.nii.gz: a 4D tissue map may have at most 15 channels"):
        read_tissue_map(_save(tmp_path / "p16.nii.gz", np.full((3, 3, 3, 16), 1 / 16, np.float32), np.eye(4)))
    with pytest.raises(ValueError, match="frac.nii.gz: 3D tissue map has non-integer values"):
        read_tissue_map(_save(tmp_path / "frac.nii.gz", np.full((3, 3, 3), 0.5, np.float32), np.eye(4)))
    with pytest.raises(ValueError, match="nan.nii.gz: label map has NaN"):
        read_tissue_map(_save(tmp_path / "nan.nii.gz", np.full((3, 3, 3), np.nan, np.float32), np.eye(4)))
    with pytest.raises(ValueError, match="neg.nii.gz: label map has negative labels"):
        read_tissue_map(_save(tmp_path / "neg.nii.gz", np.full((3, 3, 3), -1, np.int16), np.eye(4)))
    with pytest.raises(ValueError, match="five.nii.gz: a tissue map must be 3D"):
        read_tissue_map(_save(tmp_path / "five.nii.gz", np.zeros((3, 3, 3, 2, 2), np.float32), np.eye(4)))


def test_read_mask_and_scan(tmp_path):
    m = np.zeros((5, 5, 5), np.float32)
    m[2, 2, 2] = 1
    mask, _ = read_mask(_save(tmp_path / "m.nii.gz", m, np.eye(4)))
    assert mask.dtype == np.uint8 and mask.sum() == 1
    soft = m * 0.7
    with pytest.raises(ValueError, match=r"s.nii.gz: mask must be binary"):
        read_mask(_save(tmp_path / "s.nii.gz", soft, np.eye(4)))
    assert read_mask(tmp_path / "s.nii.gz", threshold=0.5)[0].sum() == 1
    with pytest.raises(ValueError, match="m4.nii.gz: a mask must be 3D"):
        read_mask(_save(tmp_path / "m4.nii.gz", np.zeros((3, 3, 3, 2), np.uint8), np.eye(4)))
    with pytest.raises(ValueError, match="mn.nii.gz: mask has NaN"):
        read_mask(_save(tmp_path / "mn.nii.gz", np.full((3, 3, 3), np.nan, np.float32), np.eye(4)))
    bad = np.ones((3, 3, 3), np.float32)
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="inf.nii.gz: scan has 1 NaN or Inf"):
        read_scan(_save(tmp_path / "inf.nii.gz", bad, np.eye(4)))
    with pytest.raises(ValueError, match="s4.nii.gz: a scan must be 3D"):
        read_scan(_save(tmp_path / "s4.nii.gz", np.zeros((3, 3, 3, 2), np.float32), np.eye(4)))


def test_freesurfer_mapping_covers_synthseg_maps(shared_data):
    path = sorted((shared_data / "synthseg_label_maps").glob("training_seg_*.nii.gz"))[0]
    values = np.unique(np.asanyarray(nib.load(str(path)).dataobj)).astype(int)
    assert freesurfer_mapping().unmapped(values) == []
