"""Write a montage of generated samples: ``python -m synthgen.preview --out samples.png -n 8``.

One row per sample: axial, coronal and sagittal slices through the image, each next to the same slice with the
target overlaid (GM dark blue, WM light blue, PV green, CSF amber, lesion red, as in the paper's figure 3).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import HelpFormatter, add_crop, add_debug, cli_main
from .config import GeneratorConfig
from .generator import SynthGenerator
from .io import save_png

CLASS_COLOURS = np.array([
    [0, 0, 0, 0],            # background: transparent
    [0.05, 0.15, 0.6, 0.55],  # GM: dark blue
    [0.35, 0.75, 1.0, 0.45],  # WM: light blue
    [0.1, 0.75, 0.2, 0.55],   # PV: green
    [1.0, 0.7, 0.0, 0.6],     # CSF: amber
    [0.95, 0.05, 0.05, 0.85],  # lesion: red
])


def _slices(volume: np.ndarray, centre) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a RAS-ordered (X, Y, Z) volume through ``centre``, display-oriented."""
    x, y, z = centre
    return [volume[:, :, z].T[::-1], volume[:, y, :].T[::-1], volume[x, :, :].T[::-1]]


def lesion_centre(target: np.ndarray) -> tuple[int, int, int]:
    """Slice through the lesion's centre of mass when there is one, else through the middle."""
    idx = np.argwhere(target == 5)
    if len(idx) == 0:
        return tuple(s // 2 for s in target.shape)
    return tuple(int(v) for v in idx.mean(0).round())


def save_montage(images: np.ndarray, targets: np.ndarray, path, title: str = "") -> Path:
    """Save a PNG montage of ``images`` (N, X, Y, Z) with ``targets`` (N, X, Y, Z) overlaid, atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 6, figsize=(12, 2.1 * n + 0.4), squeeze=False)
    for i in range(n):
        img, tgt = images[i], targets[i]
        lo, hi = np.percentile(img, [0.5, 99.5])
        for j, (s_img, s_tgt) in enumerate(zip(_slices(img, lesion_centre(tgt)), _slices(tgt, lesion_centre(tgt)))):
            for k, overlay in enumerate((False, True)):
                ax = axes[i, 2 * j + k]
                ax.imshow(s_img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
                if overlay:
                    ax.imshow(CLASS_COLOURS[np.clip(s_tgt, 0, 5)], interpolation="nearest")
                ax.set_axis_off()
        axes[i, 0].set_title(f"sample {i}", fontsize=8, loc="left")
    for j, name in enumerate(("axial", "coronal", "sagittal")):
        axes[0, 2 * j].set_title(f"sample 0 - {name}", fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=90)


def lesion_source(kind: str, tissue: torch.Tensor, affine, pattern: str | None = None):
    """The lesions a command line asks for: ``"procedural"``, ``"none"`` (None), or a folder of binary masks in the
    map's space (``pattern`` picks the files)."""
    if kind == "none":
        return None
    from .lesions import LesionSource
    if kind == "procedural":
        return LesionSource.procedural(affine=affine)
    return LesionSource.from_folder(kind, pattern=pattern, affine=affine)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--out", default="samples.png", help="PNG to write")
    p.add_argument("-n", type=int, default=8, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="sample stream (sample i is (seed, i))")
    add_crop(p, "output size in voxels", default=(192, 192, 192))
    p.add_argument("--lesions", default="procedural",
                   help="'procedural', 'none', or a folder of binary lesion masks in MNI space")
    p.add_argument("--lesion-pattern", default=None,
                   help="file names to take in the lesion folder (default '*.nii*'; SOOP: '*_lesion.nii.gz')")
    p.add_argument("--target", choices=("tissue", "lesion"), default="tissue",
                   help="6 classes (tissue + lesion) or the binary lesion target")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    add_debug(p)
    return p


@cli_main
def main(argv=None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.n < 1:
        cli.error(f"-n must be >= 1, got {args.n}")
    config = GeneratorConfig(crop=tuple(args.crop), target=args.target).validate()     # before any work
    from .validate import check_output_file, resolve_device
    check_output_file(args.out, "montage (--out)", example="montage.png")
    device = resolve_device(args.device)

    from .data import default_tissue_map
    tissue, affine = default_tissue_map(device=device, with_affine=True)
    source = lesion_source(args.lesions, tissue, affine, args.lesion_pattern)
    gen = SynthGenerator(config, lesions=source)
    images, targets = [], []
    from tqdm import tqdm
    for i in tqdm(range(args.n), desc="generating", unit="sample"):
        image, target = gen(tissue, seed=args.seed, index=i)
        images.append(image[0, 0].float().cpu().numpy())
        targets.append(target[0].cpu().numpy())
    path = save_montage(np.stack(images), np.stack(targets), args.out,
                        title=f"synthgen samples, seed {args.seed}, crop {tuple(args.crop)}, lesions: {args.lesions}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
