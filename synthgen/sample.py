"""Write generated samples as NIfTI for any viewer: ``python -m synthgen.sample --out DIR -n 16``.

For sample ``i`` of stream ``--seed``: ``DIR/sample_<i>_image.nii.gz`` (float32, z-normalised),
``DIR/sample_<i>_target.nii.gz`` (uint8 classes: 0 background, 1 GM, 2 WM, 3 GM/WM PV, 4 CSF, 5 lesion; or 0/1 with
``--target lesion``) and ``DIR/sample_<i>_params.json`` (seed, index, affine, every random parameter, the config).
Both volumes carry the output grid's affine in world mm, so they overlay the tissue map they came from (exactly for
the crop, rotation, shear, zoom and flips; the elastic deformation moves voxels by a few mm about it). The sform
holds that affine exactly; the qform, which cannot hold shear, the nearest rotation and voxel sizes (what ITK-based
viewers, which cannot show shear, use). Samples whose three files exist are kept (an interrupted run resumes)
unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import HelpFormatter, add_crop, add_debug, cli_main
from .config import GeneratorConfig
from .generator import SynthGenerator
from .io import atomic_path, remove_stale_temporaries, save_nifti
from .preview import lesion_source


def sample_paths(out_dir, index: int) -> dict[str, Path]:
    """The files of sample ``index``: ``image``, ``target`` (NIfTI) and ``params`` (JSON)."""
    stem = Path(out_dir) / f"sample_{index:05d}"
    return {"image": Path(f"{stem}_image.nii.gz"), "target": Path(f"{stem}_target.nii.gz"),
            "params": Path(f"{stem}_params.json")}


def params_record(params, seed: int, index: int, affine: np.ndarray, map_affine: np.ndarray, config,
                  lesions: str) -> dict:
    """What the JSON beside a sample holds: enough to find it on its map and to replay it."""
    return {"seed": int(seed), "index": int(index), "affine": np.asarray(affine).tolist(),
            "map_affine": np.asarray(map_affine).tolist(), "lesions": lesions,
            "params": {k: v[0].tolist() for k, v in params.as_dict().items()}, "config": config.to_dict()}


def write_samples(out_dir, n: int, seed: int = 0, start: int = 0, config: GeneratorConfig | None = None,
                  lesions: str = "procedural", lesion_pattern: str | None = None, tissue_map=None,
                  device="cpu", overwrite: bool = False, progress: bool = True,
                  label_map=None) -> list[dict[str, Path]]:
    """Generate samples ``start .. start + n - 1`` of stream ``seed`` and write each as NIfTI + JSON.

    Args:
        out_dir: output folder (created).
        config: generator settings (the paper's by default).
        lesions: ``"procedural"``, ``"none"`` or a folder of lesion masks in the map's space.
        tissue_map: a NIfTI tissue map (:func:`synthgen.data.read_tissue_map`: 3D labels, ours or those of
            ``label_map``, or 4D probabilities); default: the bundled MNI152 map.
        label_map: the tissue map's label mapping (e.g. "freesurfer"); it sets ``config.labels``.
        overwrite: rewrite samples whose files exist (otherwise kept).

    Returns:
        The file paths of every sample (:func:`sample_paths`).

    Raises:
        ValueError: ``n`` < 1 or ``start`` < 0, or a bad tissue map / lesion folder.
    """
    from tqdm import tqdm
    if int(n) != n or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n}")
    if int(start) != start or start < 0:
        raise ValueError(f"`start` must be a non-negative int, got {start}")
    import dataclasses

    from .data.sources import DefaultTissueMap
    from .data.tissue import read_tissue_map, resolve_mapping
    from .validate import check_output_dir, resolve_device
    out_dir = check_output_dir(out_dir, "output folder")
    device = resolve_device(device)
    config = (config or GeneratorConfig()).validate()
    mapping = resolve_mapping(label_map)
    if mapping is not None:
        config = dataclasses.replace(config, labels=mapping.label_config()).validate()
    if tissue_map is None:
        item = DefaultTissueMap(config.voxel_size).load(0)
        tissue, map_affine = item.tensor(), item.affine
    else:
        tmap = read_tissue_map(tissue_map, label_map=mapping, voxel_size=config.voxel_size)
        tissue, map_affine = tmap.to_tensor(), tmap.affine
    tissue = tissue.to(device)
    gen = SynthGenerator(config, lesions=lesion_source(lesions, tissue, map_affine, lesion_pattern))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)            # what a killed run left
    written = []
    for index in tqdm(range(start, start + n), desc="sampling", unit="sample", disable=not progress):
        paths = sample_paths(out_dir, index)
        written.append(paths)
        if not overwrite and all(p.exists() for p in paths.values()):
            continue
        image, target, params = gen(tissue, seed=seed, index=index, return_params=True, affine=map_affine)
        affine = gen.output_affine(params, map_affine)[0].numpy()
        volume = image[0].float().cpu().numpy()            # (C, X, Y, Z): a 4D image for several contrasts
        save_nifti(paths["image"], volume[0] if len(volume) == 1 else np.moveaxis(volume, 0, -1), affine,
                   dtype=np.float32)
        save_nifti(paths["target"], target[0].cpu().numpy(), affine, dtype=np.uint8)
        record = params_record(params, seed, index, affine, map_affine, config, lesions)
        with atomic_path(paths["params"], ".json") as tmp, open(tmp, "w") as f:
            json.dump(record, f, indent=1)
    return written


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("-n", type=int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="sample stream (sample i is (seed, i))")
    p.add_argument("--start", type=int, default=0, help="first sample index")
    add_crop(p, "output size in voxels", default=(192, 192, 192))
    p.add_argument("--tissue-map", type=Path, default=None,
                   help="NIfTI tissue map: 3D labels 0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5-14 other (or any label set "
                        "with --label-map), or 4D probabilities (default: the bundled MNI152 map)")
    p.add_argument("--label-map", default=None,
                   help="label mapping of --tissue-map: 'freesurfer', a JSON file or 'gm=3,42;wm=2,41;...' "
                        "(default: synthgen's own labels)")
    p.add_argument("--lesions", default="procedural",
                   help="'procedural', 'none', or a folder of binary lesion masks in the map's space")
    p.add_argument("--lesion-pattern", default=None,
                   help="file names to take in the lesion folder (default '*.nii*'; SOOP: '*_lesion.nii.gz')")
    p.add_argument("--channels", type=int, default=1, help="contrasts of one anatomy per sample (a 4D image)")
    p.add_argument("--target", choices=("tissue", "lesion", "labels"), default="tissue",
                   help="6 classes (tissue + lesion), the binary lesion target, or the label mapping's target set")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--overwrite", action="store_true", help="rewrite samples whose files exist")
    add_debug(p)
    return p


@cli_main
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    config = GeneratorConfig(crop=tuple(args.crop), target=args.target, channels=args.channels)
    if args.label_map is not None:
        from .data.tissue import resolve_mapping
        config.labels = resolve_mapping(args.label_map).label_config()
    paths = write_samples(args.out, args.n, seed=args.seed, start=args.start, config=config.validate(),
                          lesions=args.lesions, lesion_pattern=args.lesion_pattern, tissue_map=args.tissue_map,
                          device=args.device, overwrite=args.overwrite, label_map=args.label_map)
    print(f"wrote {len(paths)} samples to {args.out} ({paths[0]['image'].name}, ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
