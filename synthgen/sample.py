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

from .cli import HelpFormatter
from .config import GeneratorConfig
from .generator import SynthGenerator
from .io import atomic_path, save_nifti
from .preview import lesion_source


def sample_paths(out_dir, index: int) -> dict[str, Path]:
    """The files of sample ``index``: ``image``, ``target`` (NIfTI) and ``params`` (JSON)."""
    stem = Path(out_dir) / f"sample_{index:05d}"
    return {"image": Path(f"{stem}_image.nii.gz"), "target": Path(f"{stem}_target.nii.gz"),
            "params": Path(f"{stem}_params.json")}


def load_tissue_map(path) -> tuple[torch.Tensor, np.ndarray]:
    """A tissue map file as the generator's input, in RAS at 1 mm: ``((1, C, X, Y, Z), affine)``.

    3D integer labels (0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5+ other tissue) are resliced by nearest neighbour, 4D
    probabilities (channels in that order) trilinearly.

    Raises:
        FileNotFoundError, ValueError: naming the file (unreadable, not 3D/4D, labels out of range).
    """
    from .generator import check_tissue
    from .io import load_nifti, to_ras_1mm
    from .sampling import MAX_TISSUE_CHANNELS
    data, affine = load_nifti(path)
    if data.ndim == 3:
        if not np.array_equal(data, np.round(data)) or data.min() < 0 or data.max() > MAX_TISSUE_CHANNELS - 1:
            raise ValueError(f"{path}: a 3D tissue map must hold integer labels in [0, {MAX_TISSUE_CHANNELS - 1}] "
                             f"(0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5+ other), got values in [{data.min()}, {data.max()}]")
        vol, aff = to_ras_1mm(data.astype(np.uint8), affine, order=0)
        tissue = torch.from_numpy(vol)[None, None]
    else:
        vol, aff = to_ras_1mm(data.astype(np.float32), affine, order=1)
        tissue = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, -1, 0)))[None]
        try:
            check_tissue(tissue)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return tissue, aff


def params_record(params, seed: int, index: int, affine: np.ndarray, map_affine: np.ndarray, config,
                  lesions: str) -> dict:
    """What the JSON beside a sample holds: enough to find it on its map and to replay it."""
    return {"seed": int(seed), "index": int(index), "affine": np.asarray(affine).tolist(),
            "map_affine": np.asarray(map_affine).tolist(), "lesions": lesions,
            "params": {k: v[0].tolist() for k, v in params.as_dict().items()}, "config": config.to_dict()}


def write_samples(out_dir, n: int, seed: int = 0, start: int = 0, config: GeneratorConfig | None = None,
                  lesions: str = "procedural", lesion_pattern: str | None = None, tissue_map=None,
                  device="cpu", overwrite: bool = False, progress: bool = True) -> list[dict[str, Path]]:
    """Generate samples ``start .. start + n - 1`` of stream ``seed`` and write each as NIfTI + JSON.

    Args:
        out_dir: output folder (created).
        config: generator settings (the paper's by default).
        lesions: ``"procedural"``, ``"none"`` or a folder of lesion masks in the map's space.
        tissue_map: a NIfTI tissue map (see :func:`load_tissue_map`); default: the bundled MNI152 map.
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
    config = config or GeneratorConfig()
    if tissue_map is None:
        from .data import default_tissue_map
        tissue, map_affine = default_tissue_map(with_affine=True)
    else:
        tissue, map_affine = load_tissue_map(tissue_map)
    tissue = tissue.to(device)
    gen = SynthGenerator(config, lesions=lesion_source(lesions, tissue, map_affine, lesion_pattern))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in tqdm(range(start, start + n), desc="sampling", unit="sample", disable=not progress):
        paths = sample_paths(out_dir, index)
        written.append(paths)
        if not overwrite and all(p.exists() for p in paths.values()):
            continue
        image, target, params = gen(tissue, seed=seed, index=index, return_params=True)
        affine = gen.output_affine(params, map_affine)[0].numpy()
        save_nifti(paths["image"], image[0, 0].float().cpu().numpy(), affine, dtype=np.float32)
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
    p.add_argument("--crop", type=int, nargs=3, default=(192, 192, 192), metavar=("X", "Y", "Z"),
                   help="output size in voxels")
    p.add_argument("--tissue-map", type=Path, default=None,
                   help="NIfTI tissue map: 3D labels 0 bg, 1 GM, 2 WM, 3 PV, 4 CSF, 5+ other, or 4D probabilities "
                        "(default: the bundled MNI152 map)")
    p.add_argument("--lesions", default="procedural",
                   help="'procedural', 'none', or a folder of binary lesion masks in the map's space")
    p.add_argument("--lesion-pattern", default=None,
                   help="file names to take in the lesion folder (default '*.nii*'; SOOP: '*_lesion.nii.gz')")
    p.add_argument("--target", choices=("tissue", "lesion"), default="tissue",
                   help="6 classes (tissue + lesion) or the binary lesion target")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--overwrite", action="store_true", help="rewrite samples whose files exist")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        config = GeneratorConfig(crop=tuple(args.crop), target=args.target).validate()
        paths = write_samples(args.out, args.n, seed=args.seed, start=args.start, config=config,
                              lesions=args.lesions, lesion_pattern=args.lesion_pattern, tissue_map=args.tissue_map,
                              device=args.device, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} samples to {args.out} ({paths[0]['image'].name}, ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
