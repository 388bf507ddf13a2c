"""Train the paper's stroke + tissue segmentation UNet on synthetic data generated on the training device.

    python train/run.py                          # preset by device: paper on CUDA, quick on CPU
    python train/run.py --preset quick --out runs/quick
    python train/run.py --out runs/quick --resume  # continue exactly where the last checkpoint stopped
    python train/run.py --store STORE              # data from `python -m synthgen.data pack` (fast start)
    torchrun --nproc_per_node 4 train/run.py --preset paper --out runs/paper   # DDP, one stream per rank

Options given on the command line override the preset. With ``--resume`` the run's saved config is used and
only run-control options (device, intervals, steps-to-go) may change; changing the recipe is an error; a folder
that already holds a run is not started again without ``--resume`` or ``--overwrite``. Ctrl-C / SIGTERM finishes
the current step, writes a checkpoint and exits with status 128 + the signal (130, 143). Checkpoints: ``last.pt``
and the one before it, ``prev.pt`` (each with a checksum; ``--resume`` falls back to ``prev.pt`` with a warning
when ``last.pt`` is damaged). Exit status: 0 done, 1 training diverged (loss or weights not finite: the last good
checkpoint is kept) or an internal error, 2 bad arguments or data (one line per problem, naming the file),
128 + N stopped by signal N; ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from synthgen.cli import EXIT_FAILED, EXIT_OK, HelpFormatter, add_crop, add_debug, cli_main
from synthgen.train.config import PRESETS, TrainConfig, preset

# options that may differ from the saved config on --resume (they do not change the recipe)
RESUMABLE = {"device", "log_every", "val_every", "ckpt_every", "plot_samples", "generate_ahead", "data.prefetch"}


# command-line option -> TrainConfig field it overrides
OPTION_PATHS = {"steps": "steps", "out": "out", "seed": "seed", "device": "device", "batch_size": "batch_size",
                "log_every": "log_every", "val_every": "val_every", "val_samples": "val_samples",
                "ckpt_every": "ckpt_every", "tissue_maps": "data.tissue_maps", "label_map": "data.label_map",
                "lesions": "data.lesions", "lesion_pattern": "data.lesion.mask_pattern", "real": "data.real",
                "real_val": "data.real_val", "store": "data.store", "voxel_size": "generator.voxel_size",
                "lr": "optim.lr", "amp": "optim.amp", "crop": "generator.crop", "generate_ahead": "generate_ahead",
                "work_dtype": "generator.work_dtype", "target": "generator.target", "prefetch": "data.prefetch",
                "channels": "generator.channels"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                                epilog="Options not given take the preset's value, shown as [paper: ..., quick: ...] "
                                       "(with --resume or --config: the saved config's).")
    p.add_argument("--preset", choices=PRESETS, help="recipe (default: paper on CUDA, quick on CPU)")
    p.add_argument("--steps", type=int, help="total iterations N of the poly schedule")
    p.add_argument("--out", help="output folder (config.json, last.pt, metrics.csv, PNGs)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt (or prev.pt if it is damaged)")
    p.add_argument("--overwrite", action="store_true", help="start again in an --out that already holds a run "
                                                               "(its checkpoints are removed)")
    p.add_argument("--tissue-maps", help="folder of tissue maps (default: bundled MNI152 map)")
    p.add_argument("--label-map", help="label mapping of the tissue maps ('freesurfer', JSON file, 'gm=3,42;...'; "
                                        "default: synthgen's own labels, 0 bg 1 GM 2 WM 3 PV 4 CSF 5+ other)")
    p.add_argument("--lesions", help="folder of lesion masks in MNI space (default: procedural lesions)")
    p.add_argument("--lesion-pattern", help="file names to take in --lesions (default '*.nii*'; SOOP: "
                                             "'*_lesion.nii.gz')")
    p.add_argument("--real", help="folder of real scans + lesion masks, alternated 1:1 with synthetic samples "
                                       "(default: synthetic samples only)")
    p.add_argument("--store", help="packed store (python -m synthgen.data pack) instead of --tissue-maps, "
                                   "--lesions and --real (default: read those folders)")
    p.add_argument("--real-val", help="folder of real validation scans + lesion masks (default: "
                                          "synthetic validation only)")
    p.add_argument("--baseline", action="store_true", help="real scans only, 2 classes (needs --real)")
    p.add_argument("--target", choices=("tissue", "lesion", "labels"),
                   help="what the network segments: tissue (6 classes), lesion (binary) or labels (the label "
                        "mapping's target label set, e.g. SynthSeg's 32 structures with --label-map freesurfer)")
    p.add_argument("--prefetch", type=int, help="training steps whose maps / scans are read ahead (default 2)")
    p.add_argument("--channels", type=int, help="contrasts of one anatomy per sample (each its own GMM and "
                                                "intensity chain); the network takes them together")
    p.add_argument("--seed", type=int, help="base seed (rank r uses seed + r)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, help="samples per step per rank")
    add_crop(p, "training crop in voxels (multiples of the net stride)")
    p.add_argument("--voxel-size", type=float, help="training grid in mm")
    p.add_argument("--lr", type=float, help="AdamW learning rate")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), help="mixed precision (auto: bf16 on CUDA)")
    p.add_argument("--generate-ahead", choices=("auto", "on", "off"),
                   help="synthesise the next batch on a side stream while this one trains (auto: on CUDA)")
    p.add_argument("--work-dtype", choices=("float32", "float16"),
                   help="intermediate volumes of the GPU generator (float16: half the memory traffic)")
    p.add_argument("--log-every", type=int, help="steps per log line")
    p.add_argument("--val-every", type=int, help="steps between validations (0: never)")
    p.add_argument("--val-samples", type=int, help="held-out synthetic validation samples")
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    p.add_argument("--config", help="JSON config to start from (e.g. a run's config.json) instead of a preset "
                                    "(default: --preset)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    add_debug(p)
    _show_preset_defaults(p)
    return p


def _show_preset_defaults(p: argparse.ArgumentParser) -> None:
    """Append each preset's value to the help of the options that override a config field."""
    presets = {name: preset(name) for name in PRESETS}
    for action in p._actions:
        path = OPTION_PATHS.get(action.dest)
        if path is None:
            continue
        values = {name: _get(cfg, path) for name, cfg in presets.items()}
        if all(v is None for v in values.values()):
            continue                          # unset in every preset: the help says what happens then
        shown = ", ".join(f"{name}: {_shown(v)}" for name, v in values.items())
        action.help = f"{action.help} [{shown}]".replace("%", "%%")


def _shown(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


def overrides(args) -> dict:
    """The options given on the command line, as ``{TrainConfig path: value}``."""
    out = {path: getattr(args, name) for name, path in OPTION_PATHS.items() if getattr(args, name) is not None}
    if args.baseline:
        out["baseline"] = True
        out["generator.target"] = "lesion"
    return out


def _set(cfg, path: str, value) -> None:
    *parents, leaf = path.split(".")
    obj = cfg
    for name in parents:
        obj = getattr(obj, name)
    setattr(obj, leaf, value)


def _get(cfg, path: str):
    obj = cfg
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def resolve_config(args) -> TrainConfig:
    """The run's config: preset (or --config, or the saved one on --resume) plus command-line overrides.

    Raises:
        ValueError: on --resume, an option that would change the saved recipe.
    """
    opts = overrides(args)
    out = Path(opts.get("out", "runs/train"))
    if args.resume and (out / "config.json").is_file():
        cfg = _read_config(out / "config.json")
        changed = sorted(k for k, v in opts.items()
                         if k not in RESUMABLE | {"out"} and _normal(_get(cfg, k)) != _normal(v))
        if changed:
            raise ValueError(f"`--resume` must keep the saved recipe of {out / 'config.json'}, got changes to "
                             f"{changed}; start a new --out instead")
    elif args.config:
        cfg = _read_config(Path(args.config))
    else:
        name = args.preset
        if name is None:
            import torch
            device = opts.get("device", "auto")
            name = "paper" if (device == "auto" and torch.cuda.is_available()) or device.startswith("cuda") \
                else "quick"
            print(f"no --preset given: using '{name}' for this device", flush=True)
        cfg = preset(name)
    for path, value in opts.items():
        _set(cfg, path, value)
    return cfg.resolve_labels().validate()


def _read_config(path: Path) -> TrainConfig:
    """A saved ``config.json`` (or a ``--config`` file); a missing or unreadable one is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a training config ({type(err).__name__}: {err})") from err


def _normal(v):
    return list(v) if isinstance(v, tuple) else v


@cli_main
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cfg = resolve_config(args)
    from synthgen.train.loop import TrainingDiverged, train
    try:
        metrics = train(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    if metrics.get("signal"):
        print(f"stopped by signal {metrics['signal']} after step {metrics['step']}; checkpoint in {cfg.out} "
              "(continue with --resume)", file=sys.stderr)
        return 128 + int(metrics["signal"])
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float) and "dice" in k}
    print(f"done: step {metrics['step']} -> {cfg.out}  {shown}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
