"""evaluate.py: pairing, grids, protocols, bad cases, outputs."""
import csv
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from synthgen import metrics as M
from synthgen.metrics import cli as E
from conftest import SHARED_DATA, source_file

SHAPE = (17, 24, 31)
AFF = np.diag([1.0, 1.0, 2.0, 1.0])


def blob(lo=(4, 5, 6), hi=(10, 12, 14), shape=SHAPE, value=1):
    m = np.zeros(shape, dtype=np.uint8)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return m


def save(path, data, affine=AFF):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def lps_copy(mask, affine):
    """The same image stored with the first two axes flipped (LPS): identical in world space."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = mask.shape[0] - 1, mask.shape[1] - 1
    return mask[::-1, ::-1].copy(), affine @ flip


@pytest.fixture
def folders(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    t = blob()
    save(truth / "good.nii.gz", t)
    save(pred / "good.nii.gz", t)
    save(truth / "regrid.nii.gz", t)
    save(pred / "regrid.nii.gz", *lps_copy(t, AFF))
    save(truth / "missed.nii.gz", t)
    save(pred / "missed.nii.gz", np.zeros(SHAPE, np.uint8))
    save(truth / "nonbinary.nii.gz", blob(value=2))
    save(pred / "nonbinary.nii.gz", t)
    save(truth / "corrupt.nii.gz", t)
    (pred / "corrupt.nii.gz").write_bytes(b"\x1f\x8bgarbage")
    far = AFF.copy()
    far[:3, 3] = 500.0
    save(truth / "elsewhere.nii.gz", t)
    save(pred / "elsewhere.nii.gz", t, far)
    save(pred / "lonely.nii.gz", t)
    return pred, truth


def test_folder_with_bad_cases_scores_the_good_ones(folders, tmp_path, capsys):
    pred, truth = folders
    out = tmp_path / "res" / "scores.csv"
    rc = E.main(["--pred", str(pred), "--truth", str(truth), "--out", str(out)])
    assert rc == 1
    text = capsys.readouterr()
    assert "lonely.nii.gz has no truth file" in text.err
    with open(out) as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert list(rows["good"]) == list(M.COLUMNS)
    assert set(rows) == {"good", "regrid", "missed", "nonbinary", "corrupt", "elsewhere"}
    for case in ("good", "regrid"):
        assert float(rows[case]["dice"]) == 1.0 and float(rows[case]["hd95_mm"]) == 0.0
        assert rows[case]["error"] == ""
    assert float(rows["good"]["truth_ml"]) == pytest.approx(6 * 7 * 8 * 2 / 1000)
    assert math.isinf(float(rows["missed"]["hd95_mm"])) and float(rows["missed"]["dice"]) == 0.0
    assert "nonbinary.nii.gz: truth mask must be binary" in rows["nonbinary"]["error"]
    assert "corrupt.nii.gz" in rows["corrupt"]["error"] and rows["corrupt"]["dice"] == ""
    assert "not in the same space" in rows["elsewhere"]["error"]
    with open(tmp_path / "res" / "scores_summary.csv") as f:
        summary = {r["metric"]: r for r in csv.DictReader(f)}
    hd = summary["hd95_mm"]
    assert (hd["n_finite"], hd["n_inf"], hd["n_error"]) == ("2", "1", "3")
    assert float(hd["mean"]) == 0.0
    assert float(summary["dice"]["mean"]) == pytest.approx(2 / 3)
    assert (tmp_path / "res" / "scores_boxplots.png").read_bytes()[:4] == b"\x89PNG"
    assert "hd95_mm" in text.out and "median" in text.out


def test_paper_protocol_reslices_to_1mm_and_pads(tmp_path):
    t = blob()
    p = blob(lo=(4, 5, 7))
    save(tmp_path / "t.nii.gz", t)
    save(tmp_path / "p.nii.gz", *lps_copy(p, AFF))
    pm, tm, sp, used = M.load_case(tmp_path / "p.nii.gz", tmp_path / "t.nii.gz", paper_protocol=True)
    assert pm.shape == tm.shape == (256, 256, 256) and np.all(sp == 1) and used == 1
    # the z extent (8 voxels of 2 mm) becomes ~16 slices of 1 mm
    assert 14 <= np.flatnonzero(tm.any((0, 1))).size <= 16
    native = M.load_case(tmp_path / "p.nii.gz", tmp_path / "t.nii.gz")
    assert np.all(native[2] == (1, 1, 2)) and native[0].shape == SHAPE
    assert native[0][4:10, 5:12, 7:14].all() and native[0].sum() == p.sum()


def test_pred_suffix_and_multiclass_labels(tmp_path):
    t = blob()
    labels = np.where(blob(lo=(2, 2, 2), hi=(15, 20, 25)) > 0, 3, 0).astype(np.uint8)
    labels[t > 0] = 5
    save(tmp_path / "truth" / "sub-01.nii.gz", t)
    save(tmp_path / "pred" / "sub-01_lesion.nii.gz", labels)
    save(tmp_path / "pred" / "sub-01_labels.nii.gz", labels)
    rows, _ = M.evaluate_dirs(tmp_path / "pred", tmp_path / "truth", tmp_path / "s.csv",
                              pred_suffix="_lesion", progress=False)
    assert [r["case"] for r in rows] == ["sub-01"] and rows[0]["dice"] == 1.0 and rows[0]["label"] == 5
    rows, _ = M.evaluate_dirs(tmp_path / "pred", tmp_path / "truth", tmp_path / "s.csv",
                              pred_suffix="_lesion", label=3, progress=False)
    assert rows[0]["dice"] < 1.0


def test_binarise_prediction():
    m, used = M.binarise_prediction(np.array([[[0, 1, 4, 5]]]))
    assert used == 5 and m.tolist() == [[[False, False, False, True]]]
    m, used = M.binarise_prediction(np.array([[[0.0, 1.0]]]))
    assert used == 1 and m.sum() == 1
    with pytest.raises(ValueError, match="p.nii: prediction must be a label map"):
        M.binarise_prediction(np.array([[[0.2, 0.9]]]), name="p.nii")


def test_errors(tmp_path):
    save(tmp_path / "a" / "x.nii.gz", blob())
    save(tmp_path / "a" / "x.nii", blob())
    save(tmp_path / "b" / "y.nii.gz", blob())
    with pytest.raises(ValueError, match="case 'x' appears twice"):
        M.find_pairs(tmp_path / "a", tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="nope: no such folder"):
        M.find_pairs(tmp_path / "nope", tmp_path / "b")
    save(tmp_path / "c" / "z.nii.gz", blob())
    with pytest.raises(ValueError, match="no prediction in .* pairs with a truth file"):
        M.evaluate_dirs(tmp_path / "c", tmp_path / "b", tmp_path / "o.csv", progress=False)
    with pytest.raises(ValueError, match="`connectivity` must be 6, 18 or 26"):
        M.evaluate_dirs(tmp_path / "c", tmp_path / "b", tmp_path / "o.csv", connectivity=4)
    with pytest.raises(ValueError, match="`label` must be 'auto' or a positive int"):
        M.evaluate_dirs(tmp_path / "c", tmp_path / "b", tmp_path / "o.csv", label=0)
    save(tmp_path / "d" / "v.nii.gz", np.zeros(SHAPE + (2,), np.uint8))
    with pytest.raises(ValueError, match="v.nii.gz: expected a 3D mask"):
        M.load_case(tmp_path / "d" / "v.nii.gz", tmp_path / "b" / "y.nii.gz")
    with pytest.raises(SystemExit):
        E.main(["--pred", "p", "--truth", "t", "--out", "o.csv", "--label", "lesion"])
    with pytest.raises(SystemExit):
        E.main(["--pred", "p", "--truth", "t", "--out", "o.csv", "--label", "0"])
    assert E.main(["--pred", str(tmp_path / "c"), "--truth", str(tmp_path / "b"), "--out", "o.csv"]) == 2


def test_cli_script_runs(tmp_path):
    save(tmp_path / "t" / "a.nii.gz", blob())
    save(tmp_path / "p" / "a.nii.gz", blob(lo=(5, 5, 6)))
    res = subprocess.run([sys.executable, str(source_file("train", "evaluate.py")), "--pred", str(tmp_path / "p"),
                          "--truth", str(tmp_path / "t"), "--out", str(tmp_path / "o.csv")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "lesion_f1" in res.stdout and (tmp_path / "o_boxplots.png").exists()


DATA = SHARED_DATA / "lesions_soop_mni"


@pytest.mark.skipif(not DATA.is_dir(), reason="shared real data not available")
def test_real_soop_masks_native_equals_paper_protocol_on_1mm_grid(tmp_path):
    """SOOP masks are 1 mm LAS: the paper protocol (RAS reorientation, 256^3 pad) must not change scores."""
    files = sorted(DATA.glob("bwsrsub-*_lesion.nii.gz"))[:2]
    for f in files:
        img = nib.load(str(f))
        t = np.asarray(img.dataobj) > 0
        save(tmp_path / "t" / f.name, t.astype(np.uint8), img.affine)
        save(tmp_path / "p" / f.name, np.roll(t, 2, axis=1).astype(np.uint8), img.affine)
    native, _ = M.evaluate_dirs(tmp_path / "p", tmp_path / "t", tmp_path / "n.csv", progress=False)
    paper, _ = M.evaluate_dirs(tmp_path / "p", tmp_path / "t", tmp_path / "q.csv", paper_protocol=True,
                               progress=False)
    for a, b in zip(native, paper):
        assert a["error"] == b["error"] == ""
        for metric in M.METRICS:
            assert a[metric] == pytest.approx(b[metric]), (a["case"], metric)
        assert 0.0 < a["dice"] < 1.0 and a["hd95_mm"] == pytest.approx(2.0)
