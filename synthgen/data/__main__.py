"""``python -m synthgen.data check|pack``: validate the user's NIfTI folders, pack them into a store.

    python -m synthgen.data check --tissue-maps DIR --lesions DIR [--real DIR] [--label-map freesurfer]
    python -m synthgen.data check --store STORE
    python -m synthgen.data pack  --tissue-maps DIR --lesions DIR --out STORE
    python -m synthgen.data pack  --tissue-maps synthseg/ --lesions soop/ --lesion-pattern '*_lesion.nii.gz' --out STORE

``check`` lists every problem of every file (or of a packed store) and exits 0 only when the data are usable
(warnings allowed), 2 when they are not; it writes nothing. ``pack`` checks its output folder and the data first,
then writes the store (incremental: run it again after adding files, only new or changed files are decoded).
Every folder is listed before any file is read: a missing folder or one without a matching file is answered at once.
``--glob`` (one pattern for every folder) and ``--quiet`` still work for one release, with a warning line.
"""
from __future__ import annotations

import argparse
import sys

from synthgen.cli import EXIT_INPUT, add_debug, add_deprecated, cli_main
from synthgen.data import check as check_mod
from synthgen.data import store as store_mod


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tissue-maps", metavar="DIR", help="healthy tissue maps: 3D labels or 4D probabilities (MNI)")
    p.add_argument("--lesions", metavar="DIR", help="binary lesion masks (MNI)")
    p.add_argument("--real", metavar="DIR", help="real scans with lesion masks, paired by file name "
                                                  "(<key>_T1w.nii.gz + <key>_mask.nii.gz / <key>_label*.nii.gz)")
    p.add_argument("--label-map", metavar="JSON", help="label mapping for 3D tissue maps with another label set: "
                                                        "'freesurfer', a JSON file or 'gm=3,42;wm=2,41;csf=4,...'")
    p.add_argument("--mask-threshold", type=float, metavar="T", help="binarise masks as value > T "
                                                                      "(default: masks must be {0, 1})")
    p.add_argument("--background-channel", choices=("auto", "yes", "no"), default="auto",
                   help="4D tissue maps: is channel 0 background? auto: yes when channels sum to 1")
    p.add_argument("--tissue-pattern", metavar="PATTERN", help="file names to take in --tissue-maps (default '*')")
    p.add_argument("--lesion-pattern", metavar="PATTERN", help="file names to take in --lesions (default '*'; "
                                                                "SOOP: '*_lesion.nii.gz')")
    p.add_argument("--real-pattern", metavar="PATTERN", help="file names to take in --real (default '*')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_deprecated(p, "--glob", "--tissue-pattern / --lesion-pattern / --real-pattern (one per folder)", "glob",
                   metavar="PATTERN")
    add_deprecated(p, "--quiet", "--no-progress", "no_progress", flag=True)
    add_debug(p)


def _patterns(args) -> dict:
    """Each folder's pattern: its own option, else the deprecated --glob, else every file."""
    return {"pattern": args.glob or "*", "tissue_pattern": args.tissue_pattern,
            "lesion_pattern": args.lesion_pattern, "real_pattern": args.real_pattern}


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthgen.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate folders; exit 0 only when all is usable; writes nothing")
    _add_inputs(p_check)
    p_check.add_argument("--store", metavar="STORE", help="check a packed store instead of (or as well as) folders")
    p_check.add_argument("--voxel-size", type=float, default=1.0, metavar="MM",
                         help="the training grid: tissue maps and scans must reslice to it within the memory limit")
    p_pack = sub.add_parser("pack", help="check, then write a memory-mappable store (incremental)")
    _add_inputs(p_pack)
    p_pack.add_argument("--out", required=True, metavar="STORE", help="store folder (created if needed)")
    p_pack.add_argument("--prob-dtype", choices=("uint8", "float16"), default="uint8",
                        help="storage of probability maps (uint8: x255)")
    p_pack.add_argument("--crop-masks", action="store_true", help="give each lesion mask its foreground box as "
                                                                   "its grid (affine shifted to match); the store "
                                                                   "keeps only the box, bit-packed, either way")
    p_pack.add_argument("--voxel-size", type=float, default=1.0, metavar="MM",
                        help="grid of the packed tissue maps and real scans (pack at the training voxel size: "
                             "training then reads them without resampling)")
    args = parser.parse_args(argv)
    store = getattr(args, "store", None)
    if not (args.tissue_maps or args.lesions or args.real or store):
        parser.error("give at least one of --tissue-maps, --lesions, --real" + (", --store" if args.command == "check"
                                                                                 else ""))
    if args.command == "pack":
        store_mod.check_output_store(args.out)          # before the check reads every file
    background = {"auto": None, "yes": True, "no": False}[args.background_channel]
    problems = store_mod.check_store(store) if store else []
    if args.tissue_maps or args.lesions or args.real:
        problems += check_mod.check_folders(args.tissue_maps, args.lesions, args.real, label_map=args.label_map,
                                            mask_threshold=args.mask_threshold, background_channel=background,
                                            progress=not args.no_progress, voxel_size=args.voxel_size,
                                            **_patterns(args))
    print(check_mod.format_problems(problems))
    if check_mod.has_errors(problems):
        return EXIT_INPUT
    if args.command == "pack":
        counts = store_mod.pack(args.out, args.tissue_maps, args.lesions, args.real, label_map=args.label_map,
                                mask_threshold=args.mask_threshold, background_channel=background,
                                prob_dtype=args.prob_dtype, crop_masks=args.crop_masks, progress=not args.no_progress,
                                check=False, voxel_size=args.voxel_size, **_patterns(args))
        print(f"{args.out}: {counts['packed']} packed, {counts['skipped']} unchanged, {counts['removed']} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
