"""Segment scans of any contrast, resolution and orientation with a trained checkpoint: in memory
(:func:`predict_volume`) or file to file (:func:`predict_files`, the library behind ``train/predict.py``).

Pipeline (paper section 2, test time; Chalcroft et al., arXiv:2404.01946): RAS -> reslice to the training voxel
size (1 mm; trilinear) -> histogram normalisation -> z-score -> sliding window (Gaussian weights, sigma 0.125, 50 %
overlap) -> test-time augmentation over all 8 flips (mean logits) -> logits resliced (trilinear) to the input
grid -> softmax -> argmax. Outputs lie on the input's own grid: the lesion mask (uint8 0/1: the last class), the
label map (uint8 argmax; equal to the lesion mask for a 2-class model) and the probabilities (one volume per
class). Several contrasts of one subject are ensembled: every volume is resampled onto the first one's training
grid and their logits are averaged before the softmax; the outputs then lie on the first volume's grid.
"""
from __future__ import annotations

import itertools
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import validate
from ..cli import report
from ..io import (check_affine, fov_overlap, load_nifti, nifti_stem, remove_stale_temporaries, resample_to_grid,
                  save_nifti, to_ras_1mm)
from ..config import MAX_VOXEL_MM, MIN_VOXEL_MM
from .model import load_checkpoint_model, total_stride

from synthgen.ops import LANDMARK_PERCENTILES  # noqa: E402  (re-exported: the landmarks' home is the op)


def histogram_normalise(volume: np.ndarray, percentiles=LANDMARK_PERCENTILES) -> np.ndarray:
    """:func:`synthgen.ops.histogram_normalise` (foreground landmarks to a fixed scale, the one normalisation
    that training's real branch uses too) on a numpy volume: float32 of the same shape in [0, 1]."""
    from synthgen.ops import histogram_normalise as normalise
    vol = torch.from_numpy(np.ascontiguousarray(np.asarray(volume, dtype=np.float32)))
    return normalise(vol[None, None], percentiles)[0, 0].numpy()


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
        model: network mapping ``(B, 1, *window)`` to ``(B, C, *window)`` logits; put in eval mode here. A network
            trained on several contrasts (``GeneratorConfig.channels``) takes them together: ``volumes`` are then
            its input channels, in the training order.
        volumes: preprocessed 3D volumes (RAS, 1 mm, normalised) on one common grid; their logits are
            averaged (multi-contrast ensembling), or they are the channels of a multi-contrast network.
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
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    contrasts = convs[0].in_channels if convs else 1
    if contrasts > 1 and len(volumes) != contrasts:
        raise ValueError(f"the network takes {contrasts} contrasts of a subject together (trained with "
                         f"channels={contrasts}), got {len(volumes)} volume(s): give them as one case, in the "
                         "training order (train/predict.py --ensemble)")
    inputs = [np.stack(volumes)] if contrasts > 1 else [v[None] for v in volumes]
    for vol in inputs:
        x = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None].to(device)
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                # pad (volumes smaller than the window) with the background value, not 0 = the mean
                y = sliding_window_inference(xi, win, sw_batch_size, model, overlap=overlap, mode="gaussian",
                                             sigma_scale=0.125, padding_mode="constant", cval=float(xi.min()))
            y = y.float()
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y
    return (total[0] / (len(inputs) * len(flips))).cpu().numpy()


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


def _scan_problem(path: Path, voxel_size: float):
    """The first problem of a scan file found from its header alone (before any work), or None: missing, not NIfTI,
    unreadable header, not 3D, bad affine, a grid too small or too coarse, or too large to reslice
    (:mod:`synthgen.validate`)."""
    import nibabel as nib

    if not path.is_file():
        return FileNotFoundError(f"{path}: no such scan")
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return ValueError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        shape, affine = img.shape, np.asarray(img.affine, dtype=np.float64)
    except Exception as err:   # noqa: BLE001 -- nibabel raises many types for broken headers
        return ValueError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err})")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        return ValueError(f"{path}: expected a 3D scan, got shape {shape}")
    try:
        check_affine(affine, path)
        validate.check_grid(shape, affine, path)
        validate.check_reslice(shape, affine, voxel_size, path)
        if math.prod(shape[:3]) > validate.MAX_GRID_VOXELS:
            raise ValueError(f"{path}: its {'x'.join(map(str, shape[:3]))} grid holds more than "
                             f"{validate.MAX_GRID_VOXELS:.3g} voxels (512^3): the outputs on it would not fit")
    except ValueError as err:
        return err
    return None


def _load_scan(path: Path, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """A scan's data and affine, refused when degenerate (:func:`synthgen.data.tissue.scan_array`: constant, all
    zero); NaN / Inf voxels and little foreground are warned about."""
    from ..data.tissue import scan_array
    data, affine = load_nifti(path)
    data, warned = scan_array(data, affine, path, voxel_size, nonfinite="warning")
    for message in warned:
        report(f"warning: {path}: {message}")      # while the cases' progress bar runs
    return data, affine


def _output_paths(out_dir: Path, name: str, probabilities: bool) -> dict[str, Path]:
    paths = {"lesion": out_dir / f"{name}_lesion.nii.gz", "labels": out_dir / f"{name}_labels.nii.gz"}
    if probabilities:
        paths["probs"] = out_dir / f"{name}_probs.nii.gz"
    return paths


def _stored_window(crop, source: str) -> tuple[int, int, int]:
    """The sliding window a checkpoint's training crop gives, refused naming the checkpoint when it is no size."""
    try:
        return _window(crop)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: its training crop {crop!r} is no window size (give --window)") from err


def _resolve(checkpoint, window, device) -> tuple[torch.nn.Module, tuple, float, torch.device]:
    """``(model on device, window, voxel size, device)`` from a checkpoint path or a ``(model, config)`` pair."""
    from .bundled import DEFAULT_MODEL, is_bundled_name, load_bundled_model
    if isinstance(checkpoint, (tuple, list)):
        model, cfg = checkpoint
        source = "the checkpoint"
    elif checkpoint is None or is_bundled_name(checkpoint):
        model, cfg = load_bundled_model(checkpoint)
        source = f"bundled model {checkpoint or DEFAULT_MODEL!r}"
    else:
        model, cfg = load_checkpoint_model(checkpoint, map_location="cpu")
        source = str(checkpoint)
    generator = cfg.get("generator") or {}
    win = _window(window) if window is not None else _stored_window(generator.get("crop", 192), source)
    voxel_size = generator.get("voxel_size", 1.0)
    if not (isinstance(voxel_size, (int, float)) and MIN_VOXEL_MM <= voxel_size <= MAX_VOXEL_MM):
        raise ValueError(f"{source}: its training voxel size must be in [{MIN_VOXEL_MM:g}, {MAX_VOXEL_MM:g}] mm, got "
                         f"{voxel_size!r}: a damaged or hand-edited config? (retrain, or fix its config)")
    stride = total_stride(cfg.get("model") or {})
    validate.check_network_input(win, stride, "`window` (--window)" if window is not None
                                 else f"{source}: its training crop, the default window (or give --window),")
    device = validate.resolve_device(device)
    return model.to(device).eval(), win, voxel_size, device


def _segment_subject(model, volumes, names, win, voxel_size, device, tta, overlap, sw_batch_size,
                     histnorm) -> dict:
    """Outputs of one subject's ``volumes`` (list of ``(data 3D, affine)``) on the first volume's grid."""
    ref_data, ref_affine = volumes[0]
    prepared, grid = [], None
    for (data, affine), name in zip(volumes, names):
        vol, aff = preprocess(data, affine, histnorm=histnorm, voxel_size=voxel_size)
        if grid is None:
            grid = (vol.shape, aff)
        elif vol.shape != grid[0] or not np.allclose(aff, grid[1], atol=1e-4):
            if fov_overlap(vol.shape, aff, *grid) < 0.5:
                raise ValueError(f"{name} does not overlap {names[0]} by half its field of view: "
                                 f"not the same subject/space, cannot ensemble")
            vol = resample_to_grid(vol, aff, grid[0], grid[1], order=1)
        prepared.append(vol)
    logits = segment(model, prepared, win, tta=tta, overlap=overlap, sw_batch_size=sw_batch_size, device=device)
    lesion, labels, probs = logits_to_outputs(logits, grid[1], ref_data.shape, ref_affine)
    return {"lesion": lesion, "labels": labels, "probabilities": probs, "affine": np.asarray(ref_affine)}


def predict_volume(checkpoint, volumes, affines, window=None, tta: bool = True, overlap: float = 0.5,
                   sw_batch_size: int = 1, device=None, histnorm: bool = True) -> dict:
    """Segment one subject held in memory: a volume with its affine, or several contrasts ensembled.

    Example::

        data, affine = synthgen.io.load_nifti("sub-01_T1w.nii.gz")
        out = synthgen.segment.predict_volume("runs/train/last.pt", data, affine)
        synthgen.io.save_nifti("sub-01_lesion.nii.gz", out["lesion"], out["affine"])

    Args:
        checkpoint: path of a checkpoint (:func:`load_checkpoint_model`), a ``(model, config)`` pair, or None (or a
            bundled model's name) for the model that ships in the package (:mod:`synthgen.segment.bundled`).
        volumes: a 3D array ``(X, Y, Z)`` (numpy or torch; any orientation and voxel size), or a list of them:
            contrasts of one subject, whose logits are averaged (ensembling).
        affines: the voxel -> world affine ``(4, 4)`` of each volume (one, or a list as long as ``volumes``).
        window: sliding-window size (default: the training crop stored in the checkpoint, else 192).
        tta, overlap, sw_batch_size: see :func:`segment`.
        device: torch device (default: CUDA when available, else CPU).
        histnorm: apply :func:`histogram_normalise` before the z-score.

    Returns:
        ``{"lesion": uint8 (X, Y, Z), "labels": uint8 (X, Y, Z), "probabilities": float32 (X, Y, Z, C),
        "affine": (4, 4)}`` on the first volume's grid.

    Raises:
        ValueError: a volume that is not 3D, a bad affine, as many affines as volumes missing, volumes that do not
            overlap, a checkpoint problem (corrupt, weights not finite), a window that is not a multiple of the
            network's total stride, or a degenerate volume (:mod:`synthgen.validate`: constant, a grid too small or
            too coarse, too large to reslice); NaN voxels and little foreground are warnings.
    """
    single = not isinstance(volumes, (list, tuple))
    volumes = [volumes] if single else list(volumes)
    affines = [affines] * len(volumes) if single or (np.ndim(affines) == 2) else list(affines)
    if not volumes:
        raise ValueError("`volumes` must hold at least one volume, got none")
    if len(affines) != len(volumes):
        raise ValueError(f"`affines` must hold one affine per volume ({len(volumes)}), got {len(affines)}")
    pairs, names = [], []
    for i, (vol, aff) in enumerate(zip(volumes, affines)):
        name = "volume" if single else f"volumes[{i}]"
        vol = vol.detach().cpu().numpy() if isinstance(vol, torch.Tensor) else np.asarray(vol)
        if vol.ndim == 4 and vol.shape[3] == 1:
            vol = vol[..., 0]
        if vol.ndim != 3:
            raise ValueError(f"`{name}` must be a 3D volume, got shape {vol.shape}")
        aff = np.asarray(aff.detach().cpu() if isinstance(aff, torch.Tensor) else aff, dtype=np.float64)
        check_affine(aff, f"`{'affine' if single else f'affines[{i}]'}`")
        pairs.append((vol, aff))
        names.append(name)
    model, win, voxel_size, device = _resolve(checkpoint, window, device)
    from ..data.tissue import scan_array
    for (vol, aff), name in zip(pairs, names):
        _, warned = scan_array(vol, aff, f"`{name}`", voxel_size, nonfinite="warning")
        for message in warned:
            warnings.warn(f"`{name}`: {message}", stacklevel=2)
    return _segment_subject(model, pairs, names, win, voxel_size, device, tta, overlap, sw_batch_size, histnorm)


def predict_files(checkpoint, scans, out_dir, ensemble: bool = False, name: str | None = None,
                  window=None, tta: bool = True, overlap: float = 0.5, sw_batch_size: int = 1,
                  probabilities: bool = False, device=None, histnorm: bool = True, overwrite: bool = False,
                  progress: bool = True) -> list[dict]:
    """Segment NIfTI scans and write lesion masks, label maps (and probabilities) on each input's grid.

    Outputs in ``out_dir``: ``<name>_lesion.nii.gz``, ``<name>_labels.nii.gz`` and, with ``probabilities``,
    ``<name>_probs.nii.gz`` (see :func:`save_probabilities`). Cases whose outputs all exist are skipped unless
    ``overwrite``, so an interrupted run resumes. Scans are resliced to the checkpoint's training voxel size
    (``generator.voxel_size``, 1 mm by default).

    Args:
        checkpoint: path of a checkpoint (:func:`load_checkpoint_model`), a ``(model, config)`` pair, or None (or a
            bundled model's name) for the model that ships in the package (:mod:`synthgen.segment.bundled`).
        scans: NIfTI paths; one case each, or one case in all with ``ensemble``.
        out_dir: output folder (created).
        ensemble: average the logits of all scans (one subject) on the first scan's grid.
        name: output name of the ensemble case (default: the first scan's name).
        window: sliding-window size (default: the training crop stored in the checkpoint, else 192).
        tta, overlap, sw_batch_size: see :func:`segment`.
        probabilities: also write the softmax (4D, see :func:`save_probabilities`).
        device: torch device (default: CUDA when available, else CPU).
        histnorm: apply :func:`histogram_normalise` before the z-score.
        overwrite: recompute cases whose outputs all exist (otherwise skipped).
        progress: show a progress bar.

    Before any work the output folder (writable, a folder), the checkpoint (readable, checksum, finite weights),
    the device and every scan's header (readable, 3D, a grid that holds a head, not too large to reslice:
    :mod:`synthgen.validate`) are checked. A case whose scans fail (or whose data turn out degenerate when read:
    constant, all zero) is reported with ``status`` "error" and the others are segmented; only when every case
    fails is that an exception.

    Returns:
        One dict per case: ``name``, ``scans``, ``outputs`` (kind -> path), ``status`` ("done", "skipped"
        or "error") and ``error``.

    Raises:
        FileNotFoundError, ValueError: before any work: an output folder that cannot be written, a checkpoint
            problem, two cases with the same output name, a window that is not a multiple of the network's total
            stride, ``name`` without ``ensemble``, a device that does not exist, or every case's scans bad (a single
            case: its own error, e.g. FileNotFoundError for a missing scan).
    """
    from tqdm import tqdm

    scans = [Path(s) for s in scans]
    if not scans:
        raise ValueError("`scans` must name at least one NIfTI file, got none")
    if name is not None and not ensemble:
        raise ValueError(f"`name` is only used with `ensemble`, got name={name!r}")
    out_dir = validate.check_output_dir(out_dir, "output folder")
    cases = [(name or nifti_stem(scans[0]), scans)] if ensemble else [(nifti_stem(p), [p]) for p in scans]
    seen: dict[str, Path] = {}
    for case, paths in cases:
        if case in seen:
            raise ValueError(f"{paths[0]} and {seen[case]} would both write outputs named '{case}'; "
                             f"rename one or run them separately")
        seen[case] = paths[0]
    model, win, voxel_size, device = _resolve(checkpoint, window, device)

    # before any work: every scan's header, every output's place; a bad case is reported and the others run
    problems = {p: err for p in dict.fromkeys(scans) if (err := _scan_problem(p, voxel_size)) is not None}
    results, failed = [], []
    for case, paths in cases:
        outputs = _output_paths(out_dir, case, probabilities)
        result = {"name": case, "scans": paths, "outputs": outputs, "status": "todo", "error": ""}
        errors = [problems[p] for p in paths if p in problems]
        errors += [IsADirectoryError(f"{p}: is a folder where an output file goes") for p in outputs.values()
                   if p.is_dir()]
        if errors:
            result["status"], result["error"] = "error", "; ".join(str(e) for e in errors)
            failed.append(errors[0])
        results.append(result)
    if len(failed) == len(cases):                  # nothing to do: an input error
        if len(failed) == 1:
            raise failed[0]
        raise ValueError("no scan can be segmented:\n" + "\n".join(r["error"] for r in results))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)              # what a killed run left
    for r in results:
        if r["status"] == "error":
            print(f"error: {r['name']}: {r['error']}", file=sys.stderr)

    for result in tqdm(results, desc="segmenting", unit="case", disable=not progress):
        if result["status"] == "error":
            continue
        outputs, paths = result["outputs"], result["scans"]
        result["status"] = "done"
        if not overwrite and all(p.exists() for p in outputs.values()):
            result["status"] = "skipped"
            continue
        try:
            out = _segment_subject(model, [_load_scan(p, voxel_size) for p in paths], [str(p) for p in paths], win,
                                   voxel_size, device, tta, overlap, sw_batch_size, histnorm)
            save_nifti(outputs["lesion"], out["lesion"], out["affine"], dtype=np.uint8)
            save_nifti(outputs["labels"], out["labels"], out["affine"], dtype=np.uint8)
            if probabilities:
                save_probabilities(outputs["probs"], out["probabilities"], out["affine"])
        except (OSError, ValueError, RuntimeError, MemoryError) as err:   # one bad scan must not stop the others
            result["status"], result["error"] = "error", f"{type(err).__name__}: {err}"
            report(f"error: {result['name']}: {result['error']}")
            if isinstance(err, (ValueError, FileNotFoundError)):
                failed.append(err)
    if len(failed) == len(cases):                  # every case was bad input: nothing was done
        raise failed[0] if len(failed) == 1 else ValueError(
            "no scan can be segmented:\n" + "\n".join(r["error"] for r in results))
    return results
