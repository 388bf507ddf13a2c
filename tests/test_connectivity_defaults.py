"""Lesions are 26-connected unless asked otherwise: in the metrics library, in scoring folders, and in the CLI.

The truth is two voxels that touch only at a corner: one lesion with 26-connectivity, two with 6 or 18. The
prediction finds one of them. With 26: ALD 0, lesion-wise F1 1 (TP 1); with 6: ALD 1, F1 2/3 (TP 1, FN 1).
"""
import csv

import nibabel as nib
import numpy as np

from synthgen import metrics
from synthgen.metrics.evaluate import evaluate_dirs, score_case

SHAPE = (6, 7, 8)
AT_26 = {"ald": 0.0, "lesion_f1": 1.0, "n_truth_lesions": 1, "n_pred_lesions": 1}


def _pair():
    truth = np.zeros(SHAPE, np.uint8)
    truth[2, 2, 2] = truth[3, 3, 3] = 1                  # corner neighbours only
    pred = np.zeros(SHAPE, np.uint8)
    pred[2, 2, 2] = 1
    return pred, truth


def _folders(tmp_path):
    pred, truth = _pair()
    for folder, data in (("pred", pred), ("truth", truth)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / folder / "case.nii.gz"))
    return tmp_path / "pred", tmp_path / "truth"


def _picked(row):
    return {k: row[k] for k in AT_26}


def test_the_pair_tells_the_connectivities_apart():
    pred, truth = _pair()
    assert _picked(metrics.all_metrics(pred, truth, connectivity=26)) == AT_26
    for conn in (6, 18):
        got = metrics.all_metrics(pred, truth, connectivity=conn)
        assert _picked(got) == {"ald": 1.0, "lesion_f1": 2 / 3, "n_truth_lesions": 2, "n_pred_lesions": 1}, conn


def test_metrics_default_to_26_connectivity():
    pred, truth = _pair()
    assert _picked(metrics.all_metrics(pred, truth)) == AT_26
    assert metrics.ald(pred, truth) == 0.0 and metrics.lesion_f1(pred, truth) == 1.0
    assert metrics.label_components(truth)[1] == 1


def test_scoring_folders_defaults_to_26_connectivity(tmp_path):
    pred, truth = _folders(tmp_path)
    assert _picked(score_case("case", pred / "case.nii.gz", truth / "case.nii.gz")) == AT_26
    rows, _ = evaluate_dirs(pred, truth, tmp_path / "scores.csv", progress=False)
    assert [_picked(r) for r in rows] == [AT_26]


def test_the_evaluate_cli_defaults_to_26_connectivity(tmp_path):
    from synthgen.metrics.cli import main
    pred, truth = _folders(tmp_path)
    assert main(["--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "scores.csv")]) == 0
    with open(tmp_path / "scores.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert {k: float(row[k]) for k in AT_26} == AT_26
