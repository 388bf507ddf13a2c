"""Lesion blending, the paper's (default) beside the one before issue 12: weights, targets and image contrast.

For each blending (``LesionConfig()`` and ``LesionConfig().with_inward_blending()``), on the bundled default tissue
map (1 mm MNI152) with real SOOP masks when ``../shared/data`` has them (else procedural lesions):

- lesion weight quantiles: the intensity weight (Soft-CP x fading x tissue clip) over the lesion's target voxels
  (label weight > 0.5), pooled over ``--n`` lesions;
- target / mask volume: per lesion, the target's voxels (label weight > 0.5) over the mask's, p10 / p50 / p90;
- halo: the mean intensity weight on the first voxel ring outside the mask;
- lesion-to-surround contrast of generated samples (``--samples`` per blending, ``--crop`` crops, a dark-lesion
  prior so that the sign is known: tissues mu ~ U(80, 255), lesion mu ~ U(0, 40)): (mean of the ring 2-4 voxels
  outside the target lesion, within the brain - mean of the target lesion) / std of that ring, on the z-scored
  image; median over samples.

Prints a markdown table; ``--json`` and ``--png`` (a montage of one sample per blending) are written only when
asked, via ``synthgen.io.atomic_path``. Never pass/fail.

Usage: ``python benchmarks/lesion_blending.py [--n 100] [--samples 12] [--crop 96] [--json F] [--png F]``
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import synthgen  # noqa: E402
from synthgen.config import GeneratorConfig, GMMConfig, LesionConfig  # noqa: E402
from synthgen.data.default_map import default_tissue_map  # noqa: E402
from synthgen.io import atomic_path, save_png  # noqa: E402
from synthgen.lesions import LesionSource  # noqa: E402

SOOP = ROOT.parent / "shared" / "data" / "lesions_soop_mni"


def blendings() -> dict[str, LesionConfig]:
    base = LesionConfig(healthy_probability=0.0)
    return {"paper (default)": base, "inward (before issue 12)": base.with_inward_blending()}


def _source(config: LesionConfig, affine, masks: int, seed: int) -> tuple[LesionSource, str]:
    if SOOP.is_dir() and masks > 0:
        files = sorted(SOOP.glob("*_lesion.nii.gz"))
        pick = np.random.default_rng(seed).choice(len(files), size=min(masks, len(files)), replace=False)
        src = LesionSource.from_folder([files[i] for i in sorted(pick)], config=config, affine=affine, progress=False)
        return src, f"{len(pick)} SOOP masks"
    return LesionSource.procedural(affine=affine, config=config), "procedural lesions"


def _ring(mask: torch.Tensor, inner: int, outer: int) -> torch.Tensor:
    """Voxels between ``inner`` and ``outer`` 3x3x3 dilations of a (B, 1, ...) bool mask."""
    m = mask.float()
    grow = lambda x, k: F.max_pool3d(x, 2 * k + 1, 1, k) if k > 0 else x  # noqa: E731
    return (grow(m, outer) > 0) & ~(grow(m, inner) > 0)


def weight_stats(src: LesionSource, tissue, affine, n: int, seed: int) -> dict:
    """Intensity-weight quantiles over mask voxels, target / mask volume ratios and the first ring's weight."""
    weights, ratios, halo = [], [], []
    keys = [seed * 1_000_003 + i for i in range(n)]
    for k in keys:
        masks, _ = src.sample_masks(tissue, [k], affine=affine)
        if not masks.any():
            continue
        iw, lw = src.sample_dense(tissue, [k], affine=affine)
        m = masks[0, 0]
        weights.append(iw[0, 0][lw[0, 0] > 0.5].numpy())
        ratios.append(float((lw[0, 0] > 0.5).sum()) / float(m.sum()))
        ring = _ring(masks.float() > 0, 0, 1)[0, 0]
        halo.append(float(iw[0, 0][ring].mean()))
    w = np.concatenate(weights)
    return {"weight_quantiles": dict(zip(("p10", "p50", "p90"), np.quantile(w, (0.1, 0.5, 0.9)).tolist())),
            "weight_mean": float(w.mean()),
            "target_over_mask": dict(zip(("p10", "p50", "p90"), np.quantile(ratios, (0.1, 0.5, 0.9)).tolist())),
            "halo_weight_mean": float(np.mean(halo)), "lesions": len(ratios)}


def contrast_stats(src: LesionSource, tissue, affine, samples: int, crop: int, seed: int):
    """Median (ring - lesion) / std(ring) of the z-scored images, and the first sample with a lesion in view."""
    cfg = GeneratorConfig(crop=(crop,) * 3, gmm=GMMConfig(mu=(80.0, 255.0), lesion_mu=(0.0, 40.0)))
    gen = synthgen.SynthGenerator(cfg, lesions=src)
    cnr, shown = [], None
    for i in range(samples):
        image, target = gen(tissue, seed=seed, index=i, affine=affine)
        lesion = target[:, None] == 5
        if int(lesion.sum()) < 20:
            continue
        ring = _ring(lesion, 2, 4) & (target[:, None] > 0)
        img = image.float()
        cnr.append(float((img[ring].mean() - img[lesion].mean()) / img[ring].std()))
        if shown is None:
            shown = (image[0, 0].numpy(), target[0].numpy())
    return (float(np.median(cnr)) if cnr else float("nan")), len(cnr), shown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="lesions measured per blending")
    parser.add_argument("--masks", type=int, default=200, help="SOOP masks to draw from (0: procedural lesions)")
    parser.add_argument("--samples", type=int, default=12, help="generated samples per blending")
    parser.add_argument("--crop", type=int, default=96, help="crop of the generated samples (voxels, 1 mm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--png", type=Path, default=None, help="write a montage of one sample per blending")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tissue, affine = default_tissue_map(with_affine=True)
    rows, shown = {}, {}
    for name, config in blendings().items():
        src, kind = _source(config, affine, args.masks, args.seed)
        row = weight_stats(src, tissue, affine, args.n, args.seed)
        row["contrast"], row["contrast_samples"], shown[name] = contrast_stats(src, tissue, affine, args.samples,
                                                                               args.crop, args.seed)
        row["config"] = dataclasses.asdict(config)
        rows[name] = row
    names = list(rows)
    print(f"# lesion blending: {kind}, {args.n} lesions and {args.samples} samples ({args.crop}^3, 1 mm) each\n")
    print("| statistic | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    fmt = lambda q: " / ".join(f"{q[k]:.2f}" for k in ("p10", "p50", "p90"))  # noqa: E731
    print("| lesion weight over the target p10 / p50 / p90 | " + " | ".join(fmt(rows[n]["weight_quantiles"])
                                                                        for n in names) + " |")
    print("| target / mask volume p10 / p50 / p90 | " + " | ".join(fmt(rows[n]["target_over_mask"]) for n in names)
          + " |")
    print("| mean weight on the first ring outside the mask | " + " | ".join(f"{rows[n]['halo_weight_mean']:.2f}"
                                                                           for n in names) + " |")
    print("| lesion-to-surround contrast, (ring - lesion) / std ring, median | "
          + " | ".join(f"{rows[n]['contrast']:.2f} (n={rows[n]['contrast_samples']})" for n in names) + " |")
    if args.json is not None:
        with atomic_path(args.json, ".json") as tmp:
            Path(tmp).write_text(json.dumps({"lesions": kind, "n": args.n, "samples": args.samples, "crop": args.crop,
                                             "seed": args.seed, "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    if args.png is not None and all(v is not None for v in shown.values()):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4), squeeze=False)
        for ax, (name, (img, tgt)) in zip(axes[0], shown.items()):
            z = int(np.argmax((tgt == 5).sum((0, 1))))
            ax.imshow(img[:, :, z].T, cmap="gray", origin="lower")
            ax.contour((tgt[:, :, z] == 5).T, levels=[0.5], colors="red", linewidths=0.6)
            ax.set_title(name)
            ax.axis("off")
        save_png(fig, args.png, dpi=80, bbox_inches="tight")
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
