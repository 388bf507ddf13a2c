"""Score folders of predicted lesion masks against ground truth (Dice, HD95, AVD, ALD, lesion-wise F1): the
library behind ``train/evaluate.py``.

Files are paired by name (``sub-01.nii.gz`` in both folders; with ``pred_suffix="_lesion"`` the prediction
``sub-01_lesion.nii.gz`` pairs with truth ``sub-01.nii.gz``, as ``train/predict.py`` names its output).
Protocols:
- default (ISLES'22 style): scored on the truth's own grid and voxel size; a prediction on another grid is
  resampled to it by nearest neighbour (through world coordinates). Grids whose fields of view overlap by
  less than half are an error (the two files are not in the same space).
- ``paper_protocol`` (paper section 2): the truth is reoriented to RAS and resliced to 1 mm (nearest),
  the prediction is resampled onto that grid, and both are zero-padded (centred) to at least 256^3.
Prediction labels: ``label=N`` takes voxels equal to N as lesion; ``auto`` (default) takes the largest
label present when it is > 1 (the lesion is the last class of a tissue + lesion label map), else 1. With
multi-class maps prefer an explicit ``label`` (5 for the 6-class model): under ``auto`` a map without any
lesion voxel would score its largest tissue label; a warning lists cases whose auto label differs.
Truth masks must be binary (0/1). One failing case is recorded with an ``error`` and never stops the rest; an explicit
label that no prediction holds is warned about.
Outputs: the per-case CSV, ``<stem>_summary.csv`` (mean, median, std over finite values; HD95 ``inf``
cases, i.e. exactly one empty mask, are excluded from mean/median and counted as failures) and
``<stem>_boxplots.png``.
"""
from __future__ import annotations

import csv
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from ..io import (atomic_path, fov_overlap, load_nifti, nifti_stem, remove_stale_temporaries, resample_to_grid,
                  save_png, to_ras_1mm, voxel_sizes)
from ..validate import check_output_file
from .scores import METRICS, all_metrics

COLUMNS = ("case",) + METRICS + ("n_truth_lesions", "n_pred_lesions", "truth_ml", "pred_ml", "error")
SUMMARY_COLUMNS = ("metric", "mean", "median", "std", "n_finite", "n_inf", "n_error")
PAPER_PAD = 256


def _nifti_files(folder: Path, suffix: str = "") -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not path.name.lower().endswith((".nii", ".nii.gz")) or path.name.startswith("."):
            continue
        key = nifti_stem(path)
        if suffix:
            if not key.endswith(suffix):
                continue
            key = key[: -len(suffix)]
        if key in out:
            raise ValueError(f"{folder}: case '{key}' appears twice ({out[key].name} and {path.name})")
        out[key] = path
    return out


def find_pairs(pred_dir, truth_dir, pred_suffix: str = "") -> tuple[list[tuple[str, Path, Path]], list[Path],
                                                                    list[Path]]:
    """Pair prediction and truth NIfTI files by case name.

    Returns:
        ``(pairs, unpaired_pred, unpaired_truth)``, pairs as ``(case, pred_path, truth_path)`` sorted by case.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: a case name occurs twice in one folder (e.g. ``a.nii`` and ``a.nii.gz``).
    """
    preds = _nifti_files(Path(pred_dir), pred_suffix)
    truths = _nifti_files(Path(truth_dir))
    pairs = [(k, preds[k], truths[k]) for k in sorted(set(preds) & set(truths))]
    return (pairs, [preds[k] for k in sorted(set(preds) - set(truths))],
            [truths[k] for k in sorted(set(truths) - set(preds))])


def binarise_prediction(pred: np.ndarray, label="auto", name="prediction") -> tuple[np.ndarray, int]:
    """Lesion mask from a predicted label map: voxels equal to ``label`` (``"auto"``: max label if > 1, else 1).

    Raises:
        ValueError: the prediction holds non-integer or negative values (e.g. probabilities), or is binary (0/1)
            while ``label`` asks for a label above 1.
    """
    values = np.unique(pred)
    if np.any(values < 0) or not np.all(np.equal(np.mod(values, 1), 0)):
        raise ValueError(f"{name}: prediction must be a label map of non-negative integers, got values "
                         f"{values[:6].tolist()}{'...' if values.size > 6 else ''}")
    if label != "auto" and int(label) > 1 and np.isin(values, (0, 1)).all():
        raise ValueError(f"{name}: prediction is a binary mask (0/1) but --label {int(label)} asks for label "
                         f"{int(label)}, which it cannot hold: pass --label 1 (or auto)")
    if label == "auto":
        label = int(values.max()) if values.size and values.max() > 1 else 1
    return pred == int(label), int(label)


def load_case(pred_path, truth_path, paper_protocol: bool = False, label="auto", values_out: set | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Load one prediction/truth pair onto a common grid (``values_out``, a set, collects the prediction's labels).

    Returns:
        ``(pred_mask, truth_mask, spacing_mm, label_used)``.

    Raises:
        FileNotFoundError, ValueError: unreadable files, non-3D images, non-binary truth, non-label
            prediction, or a pair whose fields of view do not overlap (not in the same space). Messages
            name the file(s).
    """
    truth, t_aff = load_nifti(truth_path)
    pred, p_aff = load_nifti(pred_path)
    for data, path in ((truth, truth_path), (pred, pred_path)):
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"{path}: expected a 3D mask, got shape {data.shape}")
    truth = truth.reshape(truth.shape[:3])
    pred = pred.reshape(pred.shape[:3])
    t_values = np.unique(truth)
    if not np.isin(t_values, (0, 1)).all():
        raise ValueError(f"{truth_path}: truth mask must be binary (0/1), got values "
                         f"{t_values[:6].tolist()}{'...' if t_values.size > 6 else ''}")
    pred_mask, used = binarise_prediction(pred, label, name=str(pred_path))
    if values_out is not None:
        values_out.update(int(v) for v in np.unique(pred))
    overlap = fov_overlap(pred.shape, p_aff, truth.shape, t_aff)
    if overlap < 0.5:
        raise ValueError(f"{pred_path} and {truth_path} are not in the same space: their fields of view "
                         f"overlap by {100 * overlap:.0f}% of the smaller one")
    truth_mask = truth.astype(bool)
    if paper_protocol:
        truth_u8, grid = to_ras_1mm(truth_mask.astype(np.uint8), t_aff, order=0, name=truth_path)
        pred_u8 = resample_to_grid(pred_mask.astype(np.uint8), p_aff, truth_u8.shape, grid, order=0)
        pad = [((max(PAPER_PAD - n, 0)) // 2, (max(PAPER_PAD - n, 0) + 1) // 2) for n in truth_u8.shape]
        return np.pad(pred_u8, pad).astype(bool), np.pad(truth_u8, pad).astype(bool), np.ones(3), used
    same_grid = pred.shape == truth.shape and np.allclose(p_aff, t_aff, atol=1e-4)
    if not same_grid:
        pred_mask = resample_to_grid(pred_mask.astype(np.uint8), p_aff, truth.shape, t_aff, order=0).astype(bool)
    return pred_mask, truth_mask, voxel_sizes(t_aff), used


def score_case(case, pred_path, truth_path, paper_protocol=False, connectivity=26, label="auto",
               hd_reduction="pooled") -> dict:
    """All metrics for one pair as a CSV row; a failure gives a row with ``error`` set and empty metrics."""
    row = {c: "" for c in COLUMNS}
    row["case"] = case
    values: set = set()
    try:
        pred, truth, spacing, used = load_case(pred_path, truth_path, paper_protocol, label, values)
        row.update(all_metrics(pred, truth, spacing, connectivity, hd_reduction=hd_reduction))
        row["label"] = used
        row["pred_values"] = values        # not a CSV column: which labels the prediction holds
    except Exception as err:   # noqa: BLE001 -- one bad case must never lose the others
        row["error"] = f"{type(err).__name__}: {err}"
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """Per metric: mean, median, std over finite values; counts of finite, infinite and failed cases."""
    out = []
    for metric in METRICS:
        vals = [r[metric] for r in rows if r.get("error") == "" and r[metric] != ""]
        finite = np.array([v for v in vals if math.isfinite(v)], dtype=np.float64)
        out.append({
            "metric": metric,
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "median": float(np.median(finite)) if finite.size else float("nan"),
            "std": float(finite.std()) if finite.size else float("nan"),
            "n_finite": int(finite.size),
            "n_inf": sum(1 for v in vals if not math.isfinite(v)),
            "n_error": len(rows) - len(vals),
        })
    return out


def write_csv(path, rows: list[dict], columns) -> Path:
    """Write ``rows`` (dicts) with ``columns`` to ``path`` atomically; inf is written as ``inf``."""
    with atomic_path(path, ".csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return Path(path)


def plot_boxplots(rows: list[dict], path) -> Path:
    """Box plot per metric (finite values of scored cases) to a PNG, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3 * len(METRICS), 4))
    for ax, metric in zip(axes, METRICS):
        vals = [r[metric] for r in rows if r.get("error") == "" and r[metric] != "" and math.isfinite(r[metric])]
        n_inf = sum(1 for r in rows if r.get("error") == "" and r[metric] != "" and not math.isfinite(r[metric]))
        if vals:
            ax.boxplot(vals, widths=0.6)
            ax.scatter(np.ones(len(vals)), vals, s=8, alpha=0.5, color="k")
        ax.set_title(metric + (f"\n({n_inf} inf excluded)" if n_inf else ""), fontsize=10)
        ax.set_xticks([])
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def format_summary(summary: list[dict]) -> str:
    """The summary as an aligned text table."""
    lines = [f"{'metric':<10} {'mean':>10} {'median':>10} {'std':>10} {'n':>5} {'inf':>5} {'error':>5}"]
    for s in summary:
        lines.append(f"{s['metric']:<10} {s['mean']:>10.4g} {s['median']:>10.4g} {s['std']:>10.4g} "
                     f"{s['n_finite']:>5} {s['n_inf']:>5} {s['n_error']:>5}")
    return "\n".join(lines)


def evaluate_dirs(pred_dir, truth_dir, out, paper_protocol=False, connectivity=26, label="auto",
                  pred_suffix="", hd_reduction="pooled", progress=True) -> tuple[list[dict], list[dict]]:
    """Score every pair of two folders and write the CSV, summary CSV and box plots next to ``out``.

    Returns:
        ``(rows, summary)``.

    The three outputs are checked first (writable files, not folders), so a bad ``out`` fails before any case is
    scored. An explicit ``label`` found in no prediction is warned about (every case then scores as empty), a label
    above 1 asked of a binary prediction is that case's error.

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: an output that cannot be written, no pairs, a duplicated case name, or a bad option value.
    """
    from tqdm import tqdm

    if connectivity not in (6, 18, 26):
        raise ValueError(f"`connectivity` must be 6, 18 or 26, got {connectivity}")
    if label != "auto" and (isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 1):
        raise ValueError(f"`label` must be 'auto' or a positive int (the lesion's label in the predictions), got "
                         f"{label!r}")
    out = Path(out)
    outputs = (out, out.with_name(out.stem + "_summary.csv"), out.with_name(out.stem + "_boxplots.png"))
    for path in outputs:                           # before scoring: a bad --out must not lose the work
        check_output_file(path)
    pairs, lone_pred, lone_truth = find_pairs(pred_dir, truth_dir, pred_suffix)
    for path in lone_pred:
        print(f"warning: prediction {path} has no truth file of the same name in {truth_dir}", file=sys.stderr)
    for path in lone_truth:
        print(f"warning: truth {path} has no prediction in {pred_dir}"
              f"{f' (looked for suffix {pred_suffix!r})' if pred_suffix else ''}", file=sys.stderr)
    if not pairs:
        raise ValueError(f"no prediction in {pred_dir} pairs with a truth file in {truth_dir} by name")
    rows = [score_case(case, p, t, paper_protocol, connectivity, label, hd_reduction)
            for case, p, t in tqdm(pairs, desc="scoring", unit="case", disable=not progress)]
    used = {r["case"]: r["label"] for r in rows if "label" in r}
    if label == "auto" and len(set(used.values())) > 1:
        warnings.warn(f"--label auto chose different lesion labels across cases {used}; pass --label",
                      stacklevel=2)
    for r in rows:
        if r["error"]:
            print(f"error: case {r['case']}: {r['error']}", file=sys.stderr)
    scored = [r for r in rows if not r["error"]]
    found = set().union(*(r["pred_values"] for r in scored)) if scored else set()
    if label != "auto" and scored and int(label) not in found:
        print(f"warning: --label {label} occurs in no prediction (labels found: {sorted(found)}): every case was "
              "scored as an empty prediction; wrong --label? (5 for the 6-class model, 1 for binary masks)",
              file=sys.stderr)
    summary = summarise(rows)
    remove_stale_temporaries(out.parent)
    write_csv(outputs[0], rows, COLUMNS)
    write_csv(outputs[1], summary, SUMMARY_COLUMNS)
    plot_boxplots(rows, outputs[2])
    return rows, summary
