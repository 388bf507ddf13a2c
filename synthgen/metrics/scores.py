"""Segmentation metrics of the paper: Dice, HD95, AVD, ALD and lesion-wise F1 on binary 3D masks.

Paper (Chalcroft et al., arXiv:2404.01946), section 2, evaluation. numpy masks in, Python floats out.
Empty masks: both empty -> Dice 1, HD95 0, AVD 0, ALD 0, lesion F1 1; exactly one empty -> Dice 0,
HD95 inf (a failure: callers exclude it from means and count it), lesion F1 0, AVD and ALD as computed.
Connected components use 26-connectivity unless told otherwise (6, 18 or 26), labelled by cc3d
(connected-components-3d) when it is installed (3-7x faster than scipy here: benchmarks/connected_components.py),
else by scipy.ndimage.label; both give the same components.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}
METRICS = ("dice", "hd95_mm", "avd_mm3", "ald", "lesion_f1")


def _as_mask(mask, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"`{name}` must be a 3D mask, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    if not np.isin(mask, (0, 1)).all():
        values = np.unique(mask)
        raise ValueError(f"`{name}` must be binary (0/1), got values {values[:6].tolist()}"
                         f"{'...' if values.size > 6 else ''}")
    return mask.astype(bool)


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as_mask(pred, "pred"), _as_mask(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"`pred` and `truth` must have the same shape, got {pred.shape} and {truth.shape}")
    return pred, truth


def _spacing(spacing) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)) if np.ndim(spacing) == 0 else \
        np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"`spacing` must be 3 positive voxel sizes in mm, got {spacing}")
    return sp


def structure(connectivity: int = 26) -> np.ndarray:
    """3x3x3 neighbourhood for ``connectivity`` 6 (faces), 18 (+edges) or 26 (+corners)."""
    if connectivity not in CONNECTIVITY_RANK:
        raise ValueError(f"`connectivity` must be 6, 18 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])


@functools.lru_cache(maxsize=1)
def _cc3d():
    try:
        import cc3d
    except ImportError:
        return None
    return cc3d


def label_components(mask, connectivity: int = 26, backend: str = "auto") -> tuple[np.ndarray, int]:
    """Connected components of a binary mask: ``(labels, count)``, labels an integer array (0 background, the
    components 1..count in some order).

    Args:
        backend: ``"auto"`` (cc3d when installed, else scipy), ``"cc3d"`` or ``"scipy"``.

    Raises:
        ValueError: a bad mask, connectivity or backend. ImportError: ``"cc3d"`` asked for but not installed.
    """
    if backend not in ("auto", "cc3d", "scipy"):
        raise ValueError(f"`backend` must be 'auto', 'cc3d' or 'scipy', got {backend!r}")
    mask = _as_mask(mask, "mask")
    struct = structure(connectivity)
    cc3d = _cc3d() if backend != "scipy" else None
    if backend == "cc3d" and cc3d is None:
        raise ImportError("`backend` 'cc3d' needs connected-components-3d: pip install connected-components-3d")
    if cc3d is not None:
        labels, n = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=connectivity, return_N=True)
        return labels, int(n)
    labels, n = ndimage.label(mask, structure=struct)
    return labels, int(n)


def dice(pred, truth) -> float:
    """Dice coefficient 2|P&T| / (|P| + |T|); 1.0 when both are empty."""
    pred, truth = _pair(pred, truth)
    denom = int(pred.sum()) + int(truth.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    # face-connected erosion (as MONAI / medpy); voxels on the array border count as surface
    return mask ^ ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def surface_distances(pred, truth, spacing=1.0) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``pred`` to the surface of ``truth``, and back.

    Surfaces are the voxels removed by a face-connected erosion (the MONAI / medpy definition); distances
    are exact Euclidean distances between voxel centres (``distance_transform_edt`` with ``sampling``).
    Both masks must be non-empty.

    Returns:
        ``(pred_to_truth, truth_to_pred)``, 1D float64 arrays.
    """
    pred, truth = _pair(pred, truth)
    sp = _spacing(spacing)
    if not pred.any() or not truth.any():
        raise ValueError("`pred` and `truth` must both be non-empty to measure surface distances")
    # crop to the union's bounding box (+1 voxel so the erosion sees the same neighbourhood): every
    # surface voxel lies inside it, so the distances are unchanged and large volumes stay cheap
    idx = np.argwhere(pred | truth)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = idx.max(0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sp_pred, sp_truth = _surface(pred[box]), _surface(truth[box])
    d_to_truth = ndimage.distance_transform_edt(~sp_truth, sampling=sp)
    d_to_pred = ndimage.distance_transform_edt(~sp_pred, sampling=sp)
    return d_to_truth[sp_pred], d_to_pred[sp_truth]


def hd95(pred, truth, spacing=1.0, reduction: str = "pooled") -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    Args:
        pred, truth: binary 3D masks of the same shape.
        spacing: voxel size in mm (scalar or 3 values, array axis order).
        reduction: ``"pooled"`` (default): 95th percentile of all pred->truth and truth->pred surface
            distances together (medpy ``hd95``, ISLES challenge convention); ``"max"``: the larger of the two
            directed 95th percentiles (``monai.metrics.compute_hausdorff_distance(percentile=95)``).

    Returns:
        HD95 in mm; 0.0 when both masks are empty, ``inf`` when exactly one is.

    Raises:
        ValueError: bad masks, spacing or ``reduction``.
    """
    if reduction not in ("pooled", "max"):
        raise ValueError(f"`reduction` must be 'pooled' or 'max', got {reduction!r}")
    pred, truth = _pair(pred, truth)
    _spacing(spacing)
    has_p, has_t = bool(pred.any()), bool(truth.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return float("inf")
    a, b = surface_distances(pred, truth, spacing)
    if reduction == "max":
        return float(max(np.percentile(a, 95), np.percentile(b, 95)))
    return float(np.percentile(np.concatenate([a, b]), 95))


def avd(pred, truth, spacing=1.0) -> float:
    """Absolute volume difference | |P| - |T| | in mm^3."""
    pred, truth = _pair(pred, truth)
    voxel = float(np.prod(_spacing(spacing)))
    return abs(int(pred.sum()) - int(truth.sum())) * voxel


def ald(pred, truth, connectivity: int = 26) -> float:
    """Absolute lesion (connected component count) difference |C(P) - C(T)|."""
    pred, truth = _pair(pred, truth)
    return float(abs(label_components(pred, connectivity)[1] - label_components(truth, connectivity)[1]))


def _lesion_counts(pred_labels, n_pred, truth_labels, n_truth) -> tuple[int, int, int]:
    overlap_t = np.unique(truth_labels[pred_labels > 0])
    tp = int((overlap_t > 0).sum())               # truth lesions touched by any predicted voxel
    overlap_p = np.unique(pred_labels[truth_labels > 0])
    fp = n_pred - int((overlap_p > 0).sum())      # predicted components touching no truth lesion
    return tp, fp, n_truth - tp


def lesion_f1(pred, truth, connectivity: int = 26) -> float:
    """Lesion-wise F1 = 2TP / (2TP + FP + FN); 1.0 when both masks are empty.

    A truth component counts as detected (TP) when any predicted voxel overlaps it, otherwise FN; a
    predicted component that overlaps no truth voxel is a FP.
    """
    pred, truth = _pair(pred, truth)
    lp, n_p = label_components(pred, connectivity)
    lt, n_t = label_components(truth, connectivity)
    return _f1(*_lesion_counts(lp, n_p, lt, n_t))


def _f1(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def all_metrics(pred, truth, spacing=1.0, connectivity: int = 26, hd_reduction: str = "pooled") -> dict:
    """Every metric for one case, labelling the components once.

    Returns:
        dict with ``dice, hd95_mm, avd_mm3, ald, lesion_f1, n_truth_lesions, n_pred_lesions, truth_ml,
        pred_ml`` (floats / ints).
    """
    pred, truth = _pair(pred, truth)
    sp = _spacing(spacing)
    structure(connectivity)
    lp, n_p = label_components(pred, connectivity)
    lt, n_t = label_components(truth, connectivity)
    voxel_ml = float(np.prod(sp)) / 1000.0
    return {
        "dice": dice(pred, truth),
        "hd95_mm": hd95(pred, truth, sp, reduction=hd_reduction),
        "avd_mm3": avd(pred, truth, sp),
        "ald": float(abs(n_p - n_t)),
        "lesion_f1": _f1(*_lesion_counts(lp, n_p, lt, n_t)),
        "n_truth_lesions": n_t,
        "n_pred_lesions": n_p,
        "truth_ml": int(truth.sum()) * voxel_ml,
        "pred_ml": int(pred.sum()) * voxel_ml,
    }
