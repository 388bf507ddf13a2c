"""Score predicted lesion masks against ground truth: Dice, HD95, AVD, ALD, lesion-wise F1.

    python train/evaluate.py --pred DIR --truth DIR --out scores.csv [--paper-protocol]
        [--connectivity 26] [--label auto|N] [--pred-suffix _lesion] [--hd-reduction pooled|max]

The command line of :func:`synthgen.metrics.evaluate_dirs` (installed as ``synthgen-evaluate``; the protocols,
pairing and outputs are described there). Files are paired by name (``--pred-suffix _lesion`` pairs
``sub-01_lesion.nii.gz`` with truth ``sub-01.nii.gz``, as ``train/predict.py`` names its output). By default
scores are computed on the truth's grid (ISLES'22); ``--paper-protocol`` reslices to 1 mm RAS and pads to 256^3.
Outputs: the per-case CSV, ``<stem>_summary.csv`` and ``<stem>_boxplots.png`` (checked to be writable before any
case is scored). Exit status 0 when every case was scored, 1 when any case failed (each named, the others scored),
2 for bad arguments or when nothing could be paired; ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthgen.cli import EXIT_FAILED, EXIT_OK, HelpFormatter, add_debug, cli_main
from synthgen.metrics import evaluate_dirs, format_summary


def _label_arg(text: str):
    if text == "auto":
        return text
    what = "the lesion's label in the predictions: 1 for binary masks, 5 for the 6-class model's _labels maps"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive int ({what}), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive int ({what}), got {text!r}"
                                         + (": label 0 is background" if value == 0 else ""))
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted masks / label maps")
    p.add_argument("--truth", required=True, type=Path, help="folder of binary ground-truth masks")
    p.add_argument("--out", required=True, type=Path, help="per-case CSV (summary and PNG go beside it)")
    p.add_argument("--paper-protocol", action="store_true",
                   help="reslice to 1 mm RAS and pad to 256^3 as the paper does (default: score on the truth grid)")
    p.add_argument("--connectivity", type=int, default=26, choices=(6, 18, 26),
                   help="voxel neighbourhood of a connected lesion (ALD, lesion F1)")
    p.add_argument("--label", type=_label_arg, default="auto",
                   help="lesion label in the predictions, or 'auto' (max label if > 1, else 1)")
    p.add_argument("--pred-suffix", default="",
                   help="prediction name = truth name + this suffix (e.g. _lesion for predict.py output)")
    p.add_argument("--hd-reduction", default="pooled", choices=("pooled", "max"),
                   help="HD95 of the pooled symmetric distances, or the max of the two directed ones (MONAI's)")
    add_debug(p)
    return p


@cli_main
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    rows, summary = evaluate_dirs(args.pred, args.truth, args.out, args.paper_protocol, args.connectivity,
                                  args.label, args.pred_suffix, args.hd_reduction)
    print(format_summary(summary))
    print(f"wrote {args.out}, {args.out.stem}_summary.csv and {args.out.stem}_boxplots.png")
    failed = [r["case"] for r in rows if r["error"]]
    if failed:
        print(f"{len(rows) - len(failed)} of {len(rows)} cases scored; failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
