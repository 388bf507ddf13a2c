"""python -m synthgen.sample: NIfTI samples with their output affine and parameters."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

from synthgen import GeneratorConfig, SynthGenerator
from synthgen.data import load_tissue_map
from synthgen.sample import main, sample_paths, write_samples

from conftest import agreement, phantom_labels

CROP = ("16", "20", "12")


def lps_map(path):
    """The phantom stored LPS at 1 mm with a shifted origin (reorienting it to RAS is exact: no reslice)."""
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[:3, 3] = (20.0, 30.0, -10.0)
    labels = phantom_labels()[0, 0].numpy()
    nib.save(nib.Nifti1Image(labels, aff), str(path))
    return labels, aff


def test_cli_writes_nifti_with_the_stated_affine_and_replayable_params(tmp_path, capsys):
    labels, aff = lps_map(tmp_path / "map.nii.gz")
    out = tmp_path / "samples"
    assert main(["--out", str(out), "-n", "2", "--seed", "4", "--crop", *CROP, "--tissue-map",
                 str(tmp_path / "map.nii.gz"), "--lesions", "none", "--device", "cpu"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    umask = os.umask(0)
    os.umask(umask)
    tissue, map_affine = load_tissue_map(tmp_path / "map.nii.gz", with_affine=True)
    for index in range(2):
        paths = sample_paths(out, index)
        image, target = nib.load(str(paths["image"])), nib.load(str(paths["target"]))
        record = json.loads(paths["params"].read_text())
        assert image.shape == target.shape == (16, 20, 12)
        assert image.get_data_dtype() == np.float32 and target.get_data_dtype() == np.uint8
        for img in (image, target):
            assert np.allclose(img.affine, record["affine"]) and np.allclose(img.get_sform(), record["affine"])
            assert img.header["sform_code"] > 0
        assert record["seed"] == 4 and record["index"] == index and np.allclose(record["map_affine"], map_affine)
        assert all((p.stat().st_mode & 0o777) == (0o666 & ~umask) for p in paths.values())
        # the JSON replays the sample exactly
        gen = SynthGenerator(GeneratorConfig.from_dict(record["config"]))
        again, again_target = gen(tissue, seed=record["seed"], index=record["index"])
        assert np.array_equal(again[0, 0].numpy(), image.get_fdata(dtype=np.float32))
        assert np.array_equal(again_target[0].numpy(), np.asarray(target.dataobj))
        assert np.allclose(gen.output_affine(gen.sample_params(tissue.shape, 4, index), map_affine)[0],
                           record["affine"])


def test_affine_places_the_target_on_the_source_file(tmp_path):
    labels, aff = lps_map(tmp_path / "map.nii.gz")
    cfg = GeneratorConfig.from_dict({"crop": (16, 20, 12), "elastic": {"max_std": 0.0}})
    paths = write_samples(tmp_path / "s", 3, config=cfg, lesions="none", tissue_map=tmp_path / "map.nii.gz",
                          progress=False)
    for p in paths:
        target = nib.load(str(p["target"]))
        assert agreement(np.asarray(target.dataobj), target.affine, labels, aff) >= 0.99
        assert agreement(np.asarray(target.dataobj), aff, labels, aff) < 0.9


def test_resume_and_errors(tmp_path, capsys):
    lps_map(tmp_path / "map.nii.gz")
    args = ["--out", str(tmp_path / "s"), "-n", "1", "--crop", *CROP, "--tissue-map", str(tmp_path / "map.nii.gz"),
            "--lesions", "none"]
    assert main(args) == 0
    image = sample_paths(tmp_path / "s", 0)["image"]
    image.write_bytes(b"kept")                       # a finished sample is not redone ...
    assert main(args) == 0 and image.read_bytes() == b"kept"
    assert main(args + ["--overwrite"]) == 0 and image.read_bytes() != b"kept"   # ... unless asked
    assert main(args[:2] + ["-n", "0"]) == 2 and "`n` must be a positive int" in capsys.readouterr().err
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 20, np.int16), np.eye(4)), str(tmp_path / "bad.nii.gz"))
    assert main(["--out", str(tmp_path / "s"), "--tissue-map", str(tmp_path / "bad.nii.gz")]) == 2
    assert "bad.nii.gz: labels up to 20 are not in our convention" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "s"), "--tissue-map", str(tmp_path / "none.nii.gz")]) == 2
    assert "none.nii.gz: no such file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`start` must be a non-negative int"):
        write_samples(tmp_path / "s", 1, start=-1)
    probs = np.stack([np.full((6, 6, 6), 0.2, np.float32)] * 5, -1)
    nib.save(nib.Nifti1Image(probs * 3, np.eye(4)), str(tmp_path / "p.nii.gz"))
    assert main(["--out", str(tmp_path / "s"), "--tissue-map", str(tmp_path / "p.nii.gz")]) == 2
    assert "p.nii.gz: probabilities must sum to at most 1" in capsys.readouterr().err


def test_cli_label_map_and_label_target(tmp_path):
    """A FreeSurfer-labelled map through --label-map: SynthSeg's structures in the target."""
    from synthgen.data.tissue import freesurfer_mapping
    lab = np.zeros((24, 28, 20), np.int16)
    lab[4:20, 4:24, 3:17] = 3                              # left cortex
    lab[12:20, 4:24, 3:17] = 42                            # right cortex
    lab[6:18, 8:20, 6:14] = np.where(np.arange(6, 18)[:, None, None] < 12, 2, 41)   # white matter
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "fs.nii.gz"))
    out = tmp_path / "samples"
    assert main(["--out", str(out), "-n", "1", "--crop", "16", "20", "12", "--tissue-map", str(tmp_path / "fs.nii.gz"),
                 "--label-map", "freesurfer", "--target", "labels", "--lesions", "none", "--device", "cpu"]) == 0
    target = np.asarray(nib.load(str(sample_paths(out, 0)["target"])).dataobj)
    names = freesurfer_mapping().label_config().target_names
    present = {names[c] for c in np.unique(target)}
    assert {"left_cerebral_cortex", "right_cerebral_cortex", "left_cerebral_white_matter"} <= present


def test_cli_several_contrasts_make_a_4d_image(tmp_path):
    out = tmp_path / "samples"
    assert main(["--out", str(out), "-n", "1", "--crop", *CROP, "--channels", "3", "--lesions", "none",
                 "--device", "cpu"]) == 0
    image = nib.load(str(sample_paths(out, 0)["image"]))
    assert image.shape == (16, 20, 12, 3)
    data = image.get_fdata()
    assert not np.allclose(data[..., 0], data[..., 1])
