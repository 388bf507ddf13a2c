"""`check_folders` and `python -m synthgen.data check`: every kind of bad file gets its own message."""
import gzip

import nibabel as nib
import numpy as np
import pytest

from synthgen.data.__main__ import main
from synthgen.data.check import (Problem, check_folders, check_space, format_problems, has_errors,
                                 pair_real_files, pairing_key, world_box)

MNI = np.array([[1.0, 0, 0, -8], [0, 1, 0, -30], [0, 0, 1, 0], [0, 0, 0, 1]])   # small grid around the MNI brain centre


def _save(path, data, affine=MNI):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.asarray(affine, np.float64)), str(path))
    return path


def _tissue(shape=(17, 24, 31)):
    lab = np.zeros(shape, np.uint8)
    lab[2:-2, 2:-2, 2:-2] = 1
    lab[5:-5, 5:-5, 5:-5] = 2
    lab[8:-8, 10:-10, 12:-12] = 4
    return lab


def _lesion(shape=(17, 24, 31)):
    m = np.zeros(shape, np.uint8)
    m[6:9, 7:10, 12:15] = 1
    return m


def _messages(problems, name):
    return [p.message for p in problems if p.path.endswith(name)]


def test_good_folders_have_no_problems(tmp_path):
    _save(tmp_path / "t" / "a.nii.gz", _tissue())
    _save(tmp_path / "l" / "les1.nii.gz", _lesion())
    (tmp_path / "l" / "README.txt").write_text("not an image: ignored")
    _save(tmp_path / "r" / "sub-1_T1w.nii.gz", np.random.default_rng(0).random((17, 24, 31)).astype(np.float32))
    _save(tmp_path / "r" / "sub-1_label-L_desc-T1lesion_mask.nii.gz", _lesion())
    problems = check_folders(tmp_path / "t", tmp_path / "l", tmp_path / "r", progress=False)
    assert problems == []
    assert not has_errors(problems) and format_problems(problems).endswith("data usable")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # nibabel on the NaN affine we write on purpose
def test_every_kind_of_bad_file_is_listed_with_its_own_message(tmp_path):
    t, les, r = tmp_path / "t", tmp_path / "l", tmp_path / "r"
    _save(t / "good.nii.gz", _tissue())
    (t / "corrupt.nii.gz").parent.mkdir(parents=True, exist_ok=True)
    (t / "corrupt.nii.gz").write_bytes(b"not gzip at all")
    good_bytes = gzip.compress(nib.Nifti1Image(_tissue(), MNI).to_bytes())
    (t / "truncated.nii.gz").write_bytes(good_bytes[: len(good_bytes) // 2])
    _save(t / "plain.nii", _tissue())
    (t / "plain.nii").write_bytes((t / "plain.nii").read_bytes()[:-500])        # truncated data, uncompressed
    (t / "scan.img").write_bytes(b"analyze")
    (t / "scan.nii.bz2").write_bytes(b"bz")
    _save(t / "fourd.nii.gz", np.zeros((5, 5, 5, 2, 2), np.float32))
    _save(t / "fewchannels.nii.gz", np.full((5, 5, 5, 3), 0.1, np.float32))
    _save(t / "range.nii.gz", np.full((5, 5, 5, 5), 1.5, np.float32))
    _save(t / "sum.nii.gz", np.full((5, 5, 5, 5), 0.5, np.float32))
    _save(t / "pnan.nii.gz", np.full((5, 5, 5, 5), np.nan, np.float32))
    _save(t / "frac.nii.gz", np.full((5, 5, 5), 0.5, np.float32))
    _save(t / "lnan.nii.gz", np.full((5, 5, 5), np.nan, np.float32))
    _save(t / "neg.nii.gz", np.full((5, 5, 5), -2, np.int16))
    _save(t / "freesurfer.nii.gz", np.full((5, 5, 5), 42, np.int16))
    _save(t / "nogm.nii.gz", np.full((5, 5, 5), 2, np.int16))
    _save(t / "big.nii.gz", np.full((5, 5, 5), 530, np.int16))
    for name, (i, j, value) in {"nanaffine": (0, 0, np.nan), "singular": (2, 2, 0.0)}.items():
        bad_aff = MNI.copy()
        bad_aff[i, j] = value
        img = nib.Nifti1Image(_tissue(), None)
        img.header.set_sform(bad_aff, code=1)   # the qform cannot hold such affines: sform only
        img.header.set_qform(None, code=0)
        nib.save(img, str(t / f"{name}.nii.gz"))
    _save(les / "soft.nii.gz", _lesion() * 0.5)
    _save(les / "empty.nii.gz", np.zeros((5, 5, 5), np.uint8))
    _save(les / "mnan.nii.gz", np.full((5, 5, 5), np.nan, np.float32))
    _save(les / "m4d.nii.gz", np.zeros((5, 5, 5, 2), np.uint8))
    far = MNI.copy()
    far[:3, 3] += 400
    _save(les / "elsewhere.nii.gz", _lesion(), far)
    scan = np.random.default_rng(0).random((17, 24, 31)).astype(np.float32)
    _save(r / "a_T1w.nii.gz", np.where(scan > 0.99, np.nan, scan))
    _save(r / "a_mask.nii.gz", _lesion())
    _save(r / "b_T1w.nii.gz", np.zeros((17, 24, 31), np.float32))
    _save(r / "b_mask.nii.gz", _lesion()[:-1])
    _save(r / "c_T1w.nii.gz", scan)
    _save(r / "d_mask.nii.gz", _lesion())
    problems = check_folders(t, les, r, progress=False)
    expected = {
        "corrupt.nii.gz": "cannot be read as NIfTI",
        "truncated.nii.gz": "cannot be read as NIfTI",
        "plain.nii": "cannot be read as NIfTI",
        "scan.img": "non-NIfTI extension",
        "scan.nii.bz2": "non-NIfTI extension",
        "fourd.nii.gz": "must be 3D (labels) or 4D",
        "fewchannels.nii.gz": "needs channels",
        "range.nii.gz": r"must lie in [0, 1]",
        "sum.nii.gz": "must sum to at most 1",
        "pnan.nii.gz": "probability map has NaN",
        "frac.nii.gz": "non-integer values",
        "lnan.nii.gz": "label map has NaN",
        "neg.nii.gz": "negative labels",
        "freesurfer.nii.gz": "labels up to 42 are not in our convention",
        "nogm.nii.gz": "no GM (label 1)",
        "big.nii.gz": "labels up to 530",
        "nanaffine.nii.gz": "affine has NaN",
        "singular.nii.gz": "affine is singular",
        "soft.nii.gz": "mask must be binary",
        "empty.nii.gz": "mask is empty",
        "mnan.nii.gz": "mask has NaN",
        "m4d.nii.gz": "a mask must be 3D",
        "elsewhere.nii.gz": "outside the tissue maps' field of view",
        "a_T1w.nii.gz": "NaN or Inf voxels",
        "b_T1w.nii.gz": "scan is constant",
        "b_mask.nii.gz": "grid differs from its scan",
        "c_T1w.nii.gz": "scan without a mask",
        "d_mask.nii.gz": "mask without a scan",
    }
    for name, fragment in expected.items():
        msgs = _messages(problems, name)
        assert any(fragment in m for m in msgs), (name, msgs)
    assert _messages(problems, "good.nii.gz") == []
    assert [p.severity for p in problems if p.path.endswith("empty.nii.gz")] == ["warning"]
    assert has_errors(problems)


def test_mask_threshold_and_label_mapping_make_files_usable(tmp_path):
    _save(tmp_path / "l" / "soft.nii.gz", _lesion() * 0.8)
    assert check_folders(lesions=tmp_path / "l", mask_threshold=0.5, progress=False) == []
    fs = np.zeros((17, 24, 31), np.int16)
    fs[2:-2, 2:-2, 2:-2] = 3
    fs[5:-5, 5:-5, 5:-5] = 41
    fs[0, 0, 0] = 99
    _save(tmp_path / "t" / "fs.nii.gz", fs)
    problems = check_folders(tissue_maps=tmp_path / "t", label_map="freesurfer", progress=False)
    assert [p.message for p in problems] == ["labels [99] are not in the label mapping 'freesurfer.json'"]
    assert check_folders(tissue_maps=tmp_path / "t", label_map="gm=3;wm=41;extra=99", progress=False) == []
    bad = check_folders(tissue_maps=tmp_path / "t", label_map="gm=3;wm=3", progress=False)
    assert "must be in one class" in bad[0].message


def test_missing_and_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    problems = check_folders(tissue_maps=tmp_path / "nope", lesions=tmp_path / "empty", progress=False)
    assert any("no such file or folder" in p.message for p in problems)
    assert any("no NIfTI files" in p.message for p in problems)
    (tmp_path / "x.txt").write_text("x")
    assert "not a NIfTI file" in check_folders(lesions=tmp_path / "x.txt", progress=False)[0].message


def test_space_warns_when_brain_is_not_where_mni_puts_it(tmp_path):
    shifted = MNI.copy()
    shifted[:3, 3] += [60, 0, 0]
    _save(tmp_path / "t" / "native.nii.gz", _tissue(), shifted)
    problems = check_folders(tissue_maps=tmp_path / "t", progress=False)
    assert len(problems) == 1 and problems[0].severity == "warning" and "from where MNI puts it" in problems[0].message


def test_lesion_outside_mni_brain_box_warns_without_tissue_maps():
    from synthgen.data.check import FileReport
    r = FileReport(path="x.nii.gz", affine=np.eye(4), shape=(3, 3, 3))
    r.foreground_box = (np.array([200.0, 200, 200]), np.array([210.0, 210, 210]))
    (p,) = check_space([], [r])
    assert p.severity == "warning" and "MNI brain box" in p.message


def test_pairing_rule():
    assert pairing_key("/d/sub-r1_ses-1_space-MNI_T1w.nii.gz") == ("/d/sub-r1_ses-1_space-MNI", False)
    assert pairing_key("/d/sub-r1_ses-1_space-MNI_label-L_desc-T1lesion_mask.nii.gz") == ("/d/sub-r1_ses-1_space-MNI",
                                                                                          True)
    assert pairing_key("/d/case3_T1w_mask.nii") == ("/d/case3", True)
    assert pairing_key("/d/case3.nii.gz") == ("/d/case3", False)
    assert pairing_key("/d/case3_seg.nii.gz") == ("/d/case3", True)
    pairs, problems = pair_real_files(["/d/a_T1w.nii.gz", "/d/a_FLAIR.nii.gz", "/d/a_mask.nii.gz",
                                       "/e/a_mask.nii.gz", "/d/b_mask.nii.gz", "/d/b_lesion.nii.gz"])
    assert [(p.scan.name, p.mask.name) for p in pairs] == [("a_FLAIR.nii.gz", "a_mask.nii.gz"),
                                                           ("a_T1w.nii.gz", "a_mask.nii.gz")]
    msgs = sorted(f"{p.path}: {p.message.split(' (')[0]}" for p in problems)
    assert msgs[0].startswith("/d/b_") and "several masks" in " ".join(msgs)
    assert any(m.startswith("/e/a_mask.nii.gz: mask without a scan") for m in msgs)


def test_world_box_and_problem_str():
    lo, hi = world_box((3, 4, 5), np.diag([-1.0, 2, 1, 1]))
    assert lo.tolist() == [-2, 0, 0] and hi.tolist() == [0, 6, 4]
    assert str(Problem("f.nii", "bad")) == "error: f.nii: bad"


def test_cli_check_exit_status(tmp_path, capsys):
    _save(tmp_path / "l" / "ok.nii.gz", _lesion())
    assert main(["check", "--lesions", str(tmp_path / "l"), "--no-progress"]) == 0
    _save(tmp_path / "l" / "soft.nii.gz", _lesion() * 0.5)
    assert main(["check", "--lesions", str(tmp_path / "l"), "--no-progress"]) == 2   # input errors: exit 2
    out = capsys.readouterr().out
    assert "soft.nii.gz: mask must be binary" in out and "1 error(s)" in out
    assert main(["check", "--lesions", str(tmp_path / "l"), "--mask-threshold", "0.2", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == ["ok.nii.gz", "soft.nii.gz"]   # nothing written
    with pytest.raises(SystemExit):
        main(["check"])


def test_shared_lesions_check(shared_data):
    problems = check_folders(lesions=shared_data / "lesions_lesymap_mni", pattern="Subject_00[1-2]*",
                             progress=False)
    assert problems == []
