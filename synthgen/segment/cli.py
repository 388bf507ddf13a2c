"""Segment scans of any contrast, resolution and orientation with a trained checkpoint.

    python train/predict.py [--checkpoint CKPT] --out DIR scan1.nii.gz scan2.nii.gz ...
        [--ensemble [--name NAME]] [--probabilities] [--no-tta] [--window 192 | X,Y,Z] [--overlap 0.5]
        [--sw-batch-size 1] [--device cuda|cpu] [--no-histnorm] [--overwrite]

The command line of :func:`synthgen.segment.predict_files` (installed as ``synthgen-predict``). Without
``--checkpoint`` the model that ships in the package segments (``--card`` prints what it is and how it scores).
Pipeline (paper section 2, test time): RAS -> reslice to the training voxel size -> histogram normalisation ->
z-score -> sliding window (Gaussian weights, 50 % overlap) -> 8-flip test-time augmentation -> logits resliced to
the input grid -> softmax -> argmax. Outputs in ``--out`` (input's shape and affine): ``<name>_lesion.nii.gz`` (uint8 0/1: the last
class), ``<name>_labels.nii.gz`` (uint8 argmax), and with ``--probabilities`` ``<name>_probs.nii.gz`` (4D, one
volume per class; uint16 scaled by scl_slope 1/65535). ``--ensemble`` treats all scans as one subject: their logits
are averaged on the first scan's grid (outputs named after it unless ``--name``). Scans whose outputs exist are
skipped unless ``--overwrite``, so an interrupted run resumes. Bad input is answered before any work, one line per
problem naming the file (:mod:`synthgen.validate`: unreadable, constant or all-zero scans, grids too small or too
coarse, a checkpoint that is corrupt or holds non-finite weights, an output folder that cannot be written, a device
that does not exist). Exit status 0 when every case is done, 1 when some failed (each named, the others written, a
summary at the end), 2 for bad arguments or when no case can be done; ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthgen.cli import EXIT_FAILED, EXIT_OK, HelpFormatter, add_debug, cli_main
from synthgen.segment import predict_files
from synthgen.segment.bundled import DEFAULT_MODEL, model_card


def _window_arg(text: str):
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be N or X,Y,Z (positive ints), got {text!r}") from None
    if len(sizes) not in (1, 3) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be N or X,Y,Z (positive ints), got {text!r}")
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("scans", nargs="*", type=Path, help="NIfTI scans (any contrast, resolution, orientation)")
    p.add_argument("--checkpoint", default=None,
                   help="trained checkpoint (e.g. runs/train/last.pt) or a bundled model's name (default: the "
                        f"model that ships in the package, {DEFAULT_MODEL!r}; its card: --card)")
    p.add_argument("--card", action="store_true", help="print the bundled model's card and exit")
    p.add_argument("--out", type=Path, help="output folder (required with scans; no default: --card needs none)")
    p.add_argument("--ensemble", action="store_true", help="one subject: average logits of all scans")
    p.add_argument("--name", default=None, help="output name with --ensemble (default: first scan's)")
    p.add_argument("--probabilities", action="store_true", help="also write <name>_probs.nii.gz (4D)")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="skip the 8-flip test-time averaging")
    p.add_argument("--window", type=_window_arg, default=None,
                   help="sliding window: N or X,Y,Z, multiples of the net stride (default: the training crop)")
    p.add_argument("--overlap", type=float, default=0.5, help="overlap of neighbouring windows, in [0, 1)")
    p.add_argument("--sw-batch-size", type=int, default=1, help="windows per forward pass")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-histnorm", dest="histnorm", action="store_false",
                   help="skip histogram normalisation (z-score only)")
    p.add_argument("--overwrite", action="store_true", help="recompute cases whose outputs exist")
    add_debug(p)
    return p


@cli_main
def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.card:
        print(model_card(args.checkpoint))
        return EXIT_OK
    if not args.scans or args.out is None:
        p.error("scans and --out are required (or --card)")
    results = predict_files(args.checkpoint, args.scans, args.out, ensemble=args.ensemble, name=args.name,
                            window=args.window, tta=args.tta, overlap=args.overlap,
                            sw_batch_size=args.sw_batch_size, probabilities=args.probabilities,
                            device=args.device, histnorm=args.histnorm, overwrite=args.overwrite)
    for r in results:
        print(f"{r['name']}: {r['status']}" + (f" ({r['error']})" if r["error"] else ""))
    failed = [r for r in results if r["status"] == "error"]
    if failed:
        print(f"{len(results) - len(failed)} of {len(results)} cases done; failed: "
              + ", ".join(str(r["scans"][0]) for r in failed), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
