"""Does a checkpoint trained on synthetic samples find a real stroke? Scores on the shared ISLES'22 case.

    python benchmarks/transfer.py runs/quick/last.pt [more.pt ...] [--no-histnorm] [--json out.json] [--png overlay.png]

Predicts ``../shared/data/real_stroke_isles22/`` (one acute case: DWI b1000 and ADC, 2 mm, the expert mask drawn
on the DWI) with each checkpoint, as ``synthgen-predict`` would (RAS, reslice to the checkpoint's grid, histogram
normalisation, sliding window, 8-flip TTA), for the DWI, the ADC and the two ensembled, and prints per checkpoint
and input: lesion Dice, predicted and true volume (mL), lesion-wise F1 (26-connectivity) and seconds to predict.
One case checks transfer; it is far too small to tune on. ``checkpoint`` may be ``bundled`` (the packaged model).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_utils import REPO, git_sha

CASE = REPO.parent / "shared" / "data" / "real_stroke_isles22"
STEM = "sub-strokecase0001"
INPUTS = {"dwi": ("dwi",), "adc": ("adc",), "dwi+adc": ("dwi", "adc")}


def load_case(folder: Path = CASE):
    """``({contrast: (data, affine)}, truth mask, voxel volume in mL)`` of the shared case."""
    from synthgen.io import load_nifti
    scans = {c: load_nifti(folder / f"{STEM}_{c}.nii.gz") for c in ("dwi", "adc")}
    truth, aff = load_nifti(folder / f"{STEM}_lesion.nii.gz")
    return scans, np.asarray(truth) > 0, abs(float(np.linalg.det(aff[:3, :3]))) / 1000.0


def score_checkpoint(checkpoint, scans, truth, ml_per_voxel: float, tta: bool = True,
                     histnorm: bool = True) -> tuple[list[dict], dict]:
    """One row per input of :data:`INPUTS`: Dice, volumes, lesion F1, seconds; and the predictions by input."""
    from synthgen.metrics.scores import dice, lesion_f1
    from synthgen.segment import predict_volume
    rows, preds = [], {}
    for name, contrasts in INPUTS.items():
        t0 = time.perf_counter()
        out = predict_volume(checkpoint, [scans[c][0] for c in contrasts], [scans[c][1] for c in contrasts],
                             tta=tta, device="cpu", histnorm=histnorm)
        seconds = time.perf_counter() - t0
        pred = out["lesion"] > 0
        preds[name] = pred
        rows.append({"input": name, "dice": round(dice(pred, truth), 4),
                     "pred_ml": round(float(pred.sum()) * ml_per_voxel, 2),
                     "true_ml": round(float(truth.sum()) * ml_per_voxel, 2),
                     "lesion_f1": round(lesion_f1(pred, truth), 4), "seconds": round(seconds, 1)})
    return rows, preds


def save_overlay(scans, truth, preds: dict, path: Path, title: str) -> Path:
    """Axial slices through the true lesion: the DWI with the truth (green) and each prediction (red)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from synthgen.io import save_png
    dwi = np.asarray(scans["dwi"][0], dtype=np.float32)
    zs = np.flatnonzero(truth.sum((0, 1)))
    picks = np.unique(np.percentile(zs, [20, 50, 80]).round().astype(int)) if len(zs) else [truth.shape[2] // 2]
    fig, axes = plt.subplots(len(picks), 1 + len(preds), figsize=(2.6 * (1 + len(preds)), 2.7 * len(picks)),
                             squeeze=False)
    lo, hi = np.percentile(dwi, [1, 99.5])
    for i, z in enumerate(picks):
        for j, (name, mask) in enumerate([("truth", truth), *preds.items()]):
            ax = axes[i, j]
            ax.imshow(dwi[:, :, z].T[::-1], cmap="gray", vmin=lo, vmax=hi)
            rgba = np.zeros((*mask.shape[:2], 4))
            rgba[mask[:, :, z]] = (0.1, 0.9, 0.1, 0.7) if name == "truth" else (0.95, 0.1, 0.1, 0.7)
            ax.imshow(rgba.transpose(1, 0, 2)[::-1])
            ax.set_axis_off()
            ax.set_title(f"{name} z={z}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=80)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint files, or 'bundled'")
    p.add_argument("--case", default=str(CASE), help="folder of the shared ISLES'22 case")
    p.add_argument("--no-tta", action="store_true", help="one pass instead of the 8 flips")
    p.add_argument("--no-histnorm", dest="histnorm", action="store_false",
                   help="z-score only, as synthgen-predict --no-histnorm (the synthetic branch has no histogram step)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--png", help="overlay of the first checkpoint's predictions (PNG)")
    args = p.parse_args(argv)
    case = Path(args.case)
    if not (case / f"{STEM}_dwi.nii.gz").is_file():
        print(f"error: {case}: the shared ISLES'22 case is not there ({STEM}_dwi.nii.gz)", file=sys.stderr)
        return 2
    scans, truth, ml = load_case(case)
    results = []
    print("| checkpoint | input | Dice | predicted mL | true mL | lesion F1 | s |\n|---|---|---|---|---|---|---|")
    for i, ckpt in enumerate(args.checkpoints):
        source = None if ckpt == "bundled" else ckpt
        rows, preds = score_checkpoint(source, scans, truth, ml, tta=not args.no_tta, histnorm=args.histnorm)
        for r in rows:
            print(f"| {ckpt} | {r['input']} | {r['dice']:.3f} | {r['pred_ml']:.2f} | {r['true_ml']:.2f} | "
                  f"{r['lesion_f1']:.3f} | {r['seconds']:.1f} |", flush=True)
            results.append({"checkpoint": ckpt, **r})
        if args.png and i == 0:
            save_overlay(scans, truth, preds, Path(args.png), f"{ckpt} on ISLES'22 {STEM} ({git_sha()})")
    if args.json:
        meta = {"git": git_sha(), "tta": not args.no_tta, "histnorm": args.histnorm}
        Path(args.json).write_text(json.dumps({**meta, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
