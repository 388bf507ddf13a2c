"""Segment scans of any contrast, resolution and orientation with a trained checkpoint.

    python train/predict.py --checkpoint CKPT --out DIR scan1.nii.gz scan2.nii.gz ...
        [--ensemble [--name NAME]] [--probabilities] [--no-tta] [--window 192 | X,Y,Z] [--overlap 0.5]
        [--sw-batch-size 1] [--device cuda|cpu] [--no-histnorm] [--overwrite]

Pipeline (paper section 2, test time; Chalcroft et al., arXiv:2404.01946): load -> RAS -> 1 mm reslice
(trilinear) -> histogram normalisation -> z-score -> sliding window (Gaussian weights, sigma 0.125, 50 %
overlap) -> test-time augmentation over all 8 flips (mean logits) -> logits resliced (trilinear) to the
input grid -> softmax -> argmax. Outputs in ``--out`` (input's shape and affine):
``<name>_lesion.nii.gz`` (uint8 0/1: the last class), ``<name>_labels.nii.gz`` (uint8 argmax; equal to the
lesion mask for a 2-class model), and with ``--probabilities`` ``<name>_probs.nii.gz`` (4D, one volume per
class; uint16 scaled by scl_slope 1/65535, since NIfTI-1 has no float16). ``--ensemble`` treats all scans as one subject: every scan is resampled onto the first
scan's 1 mm grid, their logits are averaged before the softmax, and the outputs lie on the first scan's grid
(named after it unless ``--name``). Scans whose outputs exist are skipped unless ``--overwrite``, so an
interrupted run resumes. Exit status 1 when any scan failed (the others are still written).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):                     # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.io import load_nifti, nifti_stem, resample_to_grid, save_nifti, to_ras_1mm  # noqa: E402
from train.evaluate import fov_overlap  # noqa: E402
from train.model import load_checkpoint_model, total_stride  # noqa: E402

# Nyul-style landmarks: these foreground percentiles map to a fixed standard scale (p1 -> 0, p99 -> 1,
# deciles evenly in between), i.e. a piecewise-linear, outlier-robust coarse histogram equalisation
LANDMARK_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def histogram_normalise(volume: np.ndarray, percentiles=LANDMARK_PERCENTILES) -> np.ndarray:
    """Map intensities piecewise-linearly so that foreground percentile landmarks hit a fixed standard scale.

    Foreground is every finite voxel above the volume's minimum (drops zero padding and a flat background).
    Landmark ``p_i`` (the ``percentiles[i]``-th foreground percentile) maps to
    ``(percentiles[i] - percentiles[0]) / (percentiles[-1] - percentiles[0])``; values below the first or above
    the last landmark are clamped to 0 / 1 (the training pipeline's 1st/99th percentile clip). A fixed
    standard scale (Nyul & Udupa 1999 with the scale fixed instead of learned) needs no training statistics.

    Returns:
        float32 array of the same shape in [0, 1]; all zeros for a constant image. NaN/Inf become 0.
    """
    vol = np.nan_to_num(np.asarray(volume, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    fg = vol[vol > vol.min()]
    if fg.size < 2:
        return np.zeros_like(vol)
    pc = np.asarray(percentiles, dtype=np.float64)
    marks = np.percentile(fg, pc)
    # ties (e.g. a saturated or quantised scan) would make the mapping non-invertible: force increasing
    marks = marks + np.arange(marks.size) * max(1e-6 * (marks[-1] - marks[0]), 1e-12)
    scale = (pc - pc[0]) / (pc[-1] - pc[0])
    return np.interp(vol, marks, scale).astype(np.float32)


def zscore(volume: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation over the whole volume (as the training crops); zeros if constant."""
    vol = np.asarray(volume, dtype=np.float32)
    std = float(vol.std())
    return np.zeros_like(vol) if std == 0.0 else ((vol - vol.mean()) / std).astype(np.float32)


def preprocess(data: np.ndarray, affine: np.ndarray, histnorm: bool = True,
               voxel_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """RAS reslice to ``voxel_size`` mm (trilinear; paper: 1), histogram normalisation (optional), z-score:
    ``(volume, affine)``."""
    # NaN/Inf (masked-out voxels in some pipelines) would spread through the trilinear reslice
    data = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    vol, aff = to_ras_1mm(data, affine, order=1, voxel_size=voxel_size)
    if histnorm:
        vol = histogram_normalise(vol)
    return zscore(vol), aff


def _window(window) -> tuple[int, int, int]:
    win = (int(window),) * 3 if np.ndim(window) == 0 else tuple(int(w) for w in window)
    if len(win) != 3 or min(win) < 1:
        raise ValueError(f"`window` must be a positive int or 3 positive ints, got {window}")
    return win


@torch.no_grad()
def segment(model: torch.nn.Module, volumes: list[np.ndarray], window=192, tta: bool = True,
            overlap: float = 0.5, sw_batch_size: int = 1, device=None, amp: bool | None = None) -> np.ndarray:
    """Logits of one subject: sliding window over each volume (and its 8 flips), averaged.

    Args:
        model: network mapping ``(B, 1, *window)`` to ``(B, C, *window)`` logits; put in eval mode here.
        volumes: preprocessed 3D volumes (RAS, 1 mm, normalised) on one common grid; their logits are
            averaged (multi-contrast ensembling).
        window: sliding-window size (int or 3 ints; multiples of the network's total stride).
        tta: average over all 8 combinations of flips along the three axes.
        overlap: fraction of overlap between neighbouring windows.
        sw_batch_size: windows per forward pass.
        device: where the network runs (default: the model's device).
        amp: float16 autocast (default: on for CUDA only).

    Shape:
        volumes: each ``(X, Y, Z)``; returns ``(C, X, Y, Z)`` float32 logits on the CPU.

    Raises:
        ValueError: no volumes, a volume is not 3D, shapes differ, or a bad ``window``/``overlap``.
    """
    from monai.inferers import sliding_window_inference

    win = _window(window)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"`overlap` must be in [0, 1), got {overlap}")
    if int(sw_batch_size) != sw_batch_size or sw_batch_size < 1:
        raise ValueError(f"`sw_batch_size` must be a positive int, got {sw_batch_size}")
    if len(volumes) == 0:
        raise ValueError("`volumes` must hold at least one volume, got none")
    shapes = {np.shape(v) for v in volumes}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"`volumes` must be 3D arrays of one shape, got shapes {sorted(shapes)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    amp = device.type == "cuda" if amp is None else amp
    flips = [d for n in range(4) for d in itertools.combinations((2, 3, 4), n)] if tta else [()]
    total = None
    for vol in volumes:
        x = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None].to(device)
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                # pad (volumes smaller than the window) with the background value, not 0 = the mean
                y = sliding_window_inference(xi, win, sw_batch_size, model, overlap=overlap, mode="gaussian",
                                             sigma_scale=0.125, padding_mode="constant", cval=float(xi.min()))
            y = y.float()
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y
    return (total[0] / (len(volumes) * len(flips))).cpu().numpy()


def logits_to_outputs(logits: np.ndarray, logits_affine: np.ndarray, shape, affine
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reslice ``(C, ...)`` logits (trilinear) to the grid ``(shape, affine)``, then softmax and argmax.

    Returns:
        ``(lesion uint8, labels uint8, probabilities float32 (X, Y, Z, C))``; lesion is the last class.
    """
    chans_last = np.moveaxis(np.asarray(logits, dtype=np.float32), 0, -1)
    resliced = resample_to_grid(chans_last, logits_affine, tuple(shape)[:3], affine, order=1)
    t = torch.from_numpy(np.ascontiguousarray(resliced))
    probs = torch.softmax(t, dim=-1)
    labels = probs.argmax(dim=-1).to(torch.uint8).numpy()
    lesion = (labels == logits.shape[0] - 1).astype(np.uint8)
    return lesion, labels, probs.numpy()


def save_probabilities(path, probs: np.ndarray, affine: np.ndarray) -> Path:
    """Write probabilities in [0, 1] as uint16 with scl_slope 1/65535 (2 bytes, step 1.5e-5), atomically.

    NIfTI-1 has no float16 type; readers that apply scl_slope (nibabel ``get_fdata``, ITK, FSL) get floats.
    """
    q = np.round(np.clip(probs, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return save_nifti(path, q, affine, header_scale=(1.0 / 65535.0, 0.0))


def _check_scan(path: Path) -> None:
    import nibabel as nib

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scan")
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        shape = nib.load(str(path)).shape
    except Exception as err:   # noqa: BLE001 -- nibabel raises many types for broken headers
        raise ValueError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err})") from err
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise ValueError(f"{path}: expected a 3D scan, got shape {shape}")


def _load_scan(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data, affine = load_nifti(path)
    return data.reshape(data.shape[:3]), affine


def _output_paths(out_dir: Path, name: str, probabilities: bool) -> dict[str, Path]:
    paths = {"lesion": out_dir / f"{name}_lesion.nii.gz", "labels": out_dir / f"{name}_labels.nii.gz"}
    if probabilities:
        paths["probs"] = out_dir / f"{name}_probs.nii.gz"
    return paths


def predict_files(checkpoint, scans, out_dir, ensemble: bool = False, name: str | None = None,
                  window=None, tta: bool = True, overlap: float = 0.5, sw_batch_size: int = 1,
                  probabilities: bool = False, device=None, histnorm: bool = True, overwrite: bool = False,
                  progress: bool = True) -> list[dict]:
    """Segment NIfTI scans and write lesion masks, label maps (and probabilities) on each input's grid.

    Args:
        checkpoint: path of a checkpoint (see ``train.model.load_checkpoint_model``) or a ``(model, config)``
            pair.
        scans: NIfTI paths; one case each, or one case in all with ``ensemble``.
        out_dir: output folder (created).
        ensemble: average the logits of all scans (one subject) on the first scan's grid.
        name: output name of the ensemble case (default: the first scan's name).
        window: sliding-window size (default: the training crop stored in the checkpoint, else 192).
        tta, overlap, sw_batch_size: see ``segment``.

    Scans are resliced to the checkpoint's training voxel size (``generator.voxel_size``, 1 mm by default)
        probabilities: also write the softmax (4D, see ``save_probabilities``).
        device: torch device (default: CUDA when available, else CPU).
        histnorm: apply ``histogram_normalise`` before the z-score.
        overwrite: recompute cases whose outputs all exist (otherwise skipped).

    Returns:
        One dict per case: ``name``, ``scans``, ``outputs`` (kind -> path), ``status`` ("done", "skipped"
        or "error") and ``error``.

    Raises:
        FileNotFoundError, ValueError: before any work, for a missing/unreadable/non-3D scan, a checkpoint
            problem, two cases with the same output name, a window that is not a multiple of the network's
            total stride, or ``name`` without ``ensemble``.
    """
    from tqdm import tqdm

    scans = [Path(s) for s in scans]
    if not scans:
        raise ValueError("`scans` must name at least one NIfTI file, got none")
    if name is not None and not ensemble:
        raise ValueError(f"`name` is only used with `ensemble`, got name={name!r}")
    for path in scans:
        _check_scan(path)
    cases = [(name or nifti_stem(scans[0]), scans)] if ensemble else [(nifti_stem(p), [p]) for p in scans]
    seen: dict[str, Path] = {}
    for case, paths in cases:
        if case in seen:
            raise ValueError(f"{paths[0]} and {seen[case]} would both write outputs named '{case}'; "
                             f"rename one or run them separately")
        seen[case] = paths[0]
    if isinstance(checkpoint, (tuple, list)):
        model, cfg = checkpoint
    else:
        model, cfg = load_checkpoint_model(checkpoint, map_location="cpu")
    generator = cfg.get("generator") or {}
    win = _window(window if window is not None else generator.get("crop", 192))
    voxel_size = float(generator.get("voxel_size", 1.0))
    stride = total_stride(cfg.get("model") or {})
    if any(w % stride for w in win):
        raise ValueError(f"`window` must be a multiple of the network's total stride {stride}, got {win}")
    try:
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`device` must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    model = model.to(device).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    results = []
    for case, paths in tqdm(cases, desc="segmenting", unit="case", disable=not progress):
        outputs = _output_paths(out_dir, case, probabilities)
        result = {"name": case, "scans": paths, "outputs": outputs, "status": "done", "error": ""}
        results.append(result)
        if not overwrite and all(p.exists() for p in outputs.values()):
            result["status"] = "skipped"
            continue
        try:
            ref_data, ref_affine = _load_scan(paths[0])
            volumes, grid = [], None
            for path in paths:
                data, affine = (ref_data, ref_affine) if path == paths[0] else _load_scan(path)
                vol, aff = preprocess(data, affine, histnorm=histnorm, voxel_size=voxel_size)
                if grid is None:
                    grid = (vol.shape, aff)
                elif vol.shape != grid[0] or not np.allclose(aff, grid[1], atol=1e-4):
                    if fov_overlap(vol.shape, aff, *grid) < 0.5:
                        raise ValueError(f"{path} does not overlap {paths[0]} by half its field of view: "
                                         f"not the same subject/space, cannot ensemble")
                    vol = resample_to_grid(vol, aff, grid[0], grid[1], order=1)
                volumes.append(vol)
            logits = segment(model, volumes, win, tta=tta, overlap=overlap, sw_batch_size=sw_batch_size,
                             device=device)
            lesion, labels, probs = logits_to_outputs(logits, grid[1], ref_data.shape, ref_affine)
            save_nifti(outputs["lesion"], lesion, ref_affine, dtype=np.uint8)
            save_nifti(outputs["labels"], labels, ref_affine, dtype=np.uint8)
            if probabilities:
                save_probabilities(outputs["probs"], probs, ref_affine)
        except (OSError, ValueError, RuntimeError) as err:   # one bad scan must not stop the others
            result["status"], result["error"] = "error", f"{type(err).__name__}: {err}"
            print(f"error: {case}: {result['error']}", file=sys.stderr)
    return results


def _window_arg(text: str):
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be N or X,Y,Z (positive ints), got {text!r}") from None
    if len(sizes) not in (1, 3) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be N or X,Y,Z (positive ints), got {text!r}")
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scans", nargs="+", type=Path, help="NIfTI scans (any contrast, resolution, orientation)")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--ensemble", action="store_true", help="one subject: average logits of all scans")
    parser.add_argument("--name", default=None, help="output name with --ensemble (default: first scan's)")
    parser.add_argument("--probabilities", action="store_true", help="also write <name>_probs.nii.gz (4D)")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="skip the 8-flip test-time averaging")
    parser.add_argument("--window", type=_window_arg, default=None,
                        help="sliding window: N or X,Y,Z, multiples of the net stride (default: the training crop)")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=1)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-histnorm", dest="histnorm", action="store_false",
                        help="skip histogram normalisation (z-score only)")
    parser.add_argument("--overwrite", action="store_true", help="recompute cases whose outputs exist")
    args = parser.parse_args(argv)
    try:
        results = predict_files(args.checkpoint, args.scans, args.out, ensemble=args.ensemble, name=args.name,
                                window=args.window, tta=args.tta, overlap=args.overlap,
                                sw_batch_size=args.sw_batch_size, probabilities=args.probabilities,
                                device=args.device, histnorm=args.histnorm, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r['name']}: {r['status']}" + (f" ({r['error']})" if r["error"] else ""))
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
