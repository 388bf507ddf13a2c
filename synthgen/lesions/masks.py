"""Banks of binary lesion masks resampled onto a tissue-map grid, kept compact on the device.

Each mask is binarised with an explicit threshold in its own grid, then resampled by affine (nearest
neighbour, through world coordinates) onto the target grid, and stored as its bounding-box crop (bool)
with the crop's offset: 1449 SOOP masks take about 0.2 GB instead of 12.6 GB dense.
"""
from __future__ import annotations

import fnmatch
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io import is_nifti, load_nifti, resample_to_grid

SPLITS = (None, "train", "holdout")


def holdout_bucket(name: str) -> float:
    """A number in [0, 1) fixed by the file name alone (SHA-1), so a split never depends on the file set."""
    return int(hashlib.sha1(Path(name).name.encode()).hexdigest()[:12], 16) / float(1 << 48)


@dataclass
class MaskBank:
    """Binary masks on one grid, stored as bounding-box crops."""
    shape: tuple                                  # (D, H, W) of the grid
    affine: np.ndarray                            # 4x4 voxel -> world of the grid
    crops: list = field(default_factory=list)     # bool tensors, one per mask
    offsets: list = field(default_factory=list)   # (3,) voxel index of each crop's first corner
    names: list = field(default_factory=list)
    volumes_ml: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)   # reason -> names of masks left out

    def __len__(self) -> int:
        return len(self.crops)

    def add(self, mask: torch.Tensor, name: str, voxel_ml: float, device) -> None:
        """Store a dense ``(D, H, W)`` bool mask as its crop (an empty mask is kept as a 1-voxel crop)."""
        idx = torch.nonzero(mask)
        if len(idx) == 0:
            lo, hi = [0, 0, 0], [1, 1, 1]
        else:
            lo, hi = idx.min(0).values.tolist(), (idx.max(0).values + 1).tolist()
        self.crops.append(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].to(device=device, dtype=torch.bool).clone())
        self.offsets.append(tuple(lo))
        self.names.append(name)
        self.volumes_ml.append(float(len(idx)) * voxel_ml)

    def paste(self, i: int, out: torch.Tensor) -> None:
        """OR mask ``i`` into the dense ``(D, H, W)`` bool tensor ``out``."""
        crop, (a, b, c) = self.crops[i], self.offsets[i]
        d, h, w = crop.shape
        out[a:a + d, b:b + h, c:c + w] |= crop.to(out.device)


def _resample_crop(data: np.ndarray, affine: np.ndarray, like_shape, like_affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a binary mask onto the whole target grid, touching only its box."""
    out = np.zeros(like_shape, dtype=np.uint8)
    idx = np.argwhere(data)
    if len(idx) == 0:
        return out
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0] - 1, hi[0] + 1) for y in (lo[1] - 1, hi[1] + 1)
                        for z in (lo[2] - 1, hi[2] + 1)])
    target = corners @ (np.linalg.inv(like_affine) @ affine).T
    olo = np.clip(np.floor(target[:, :3].min(0)), 0, like_shape).astype(int)
    ohi = np.clip(np.ceil(target[:, :3].max(0)) + 1, 0, like_shape).astype(int)
    if np.any(ohi <= olo):
        return out
    box_affine = like_affine.copy()
    box_affine[:3, 3] = like_affine[:3, :3] @ olo + like_affine[:3, 3]
    out[olo[0]:ohi[0], olo[1]:ohi[1], olo[2]:ohi[2]] = resample_to_grid(
        data.astype(np.uint8), affine, tuple(ohi - olo), box_affine, order=0)
    return out


def list_mask_files(path, pattern: str = "*.nii*") -> list[Path]:
    """NIfTI files of a folder (matching ``pattern``, sorted by name), or the given list of files."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"lesion mask files not found: {missing[:5]}")
        return files
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: lesion mask folder does not exist")
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and is_nifti(p))
    if not files:
        raise FileNotFoundError(f"{folder}: no NIfTI lesion masks matching {pattern!r}")
    return files


def load_mask_bank(files, like_shape, like_affine, threshold: float = 0.5, split=None,
                   holdout_fraction: float = 0.2, max_volume_ml=None, brain_mask=None,
                   max_outside_fraction=None, device="cpu", progress: bool = True) -> MaskBank:
    """Load, binarise, resample (by affine, nearest) and filter lesion masks onto a grid.

    Args:
        files: list of NIfTI paths.
        like_shape, like_affine: the tissue map's grid (3 sizes, 4x4 voxel -> world).
        threshold: a voxel is lesion where the stored value is above it (explicit, so float masks saved
            with interpolation are binarised where the user decides).
        split: None (all files), "train" or "holdout"; a file is held out when ``holdout_bucket(name) <
            holdout_fraction``.
        max_volume_ml: drop masks larger than this (mL on the target grid); None keeps all.
        brain_mask: ``(D, H, W)`` bool array/tensor on the target grid; with ``max_outside_fraction``, masks
            with a larger share of voxels outside it are dropped.
        device: where the crops live.

    Returns:
        A :class:`MaskBank`; ``dropped`` lists masks left out by reason ("empty", "outside_grid",
        "too_large", "outside_brain", "split").

    Raises:
        ValueError: bad ``split``/``threshold``, a mask whose values are not in [0, 1] (names the file), a
            3D grid mismatch of ``brain_mask``, or no mask left after filtering.
    """
    items = [(Path(p).name, p, lambda p=p: load_nifti(p)) for p in files]
    return mask_bank_from_arrays(items, like_shape, like_affine, threshold, split, holdout_fraction,
                                 max_volume_ml, brain_mask, max_outside_fraction, device, progress)


def mask_bank_from_arrays(items, like_shape, like_affine, threshold: float = 0.5, split=None,
                          holdout_fraction: float = 0.2, max_volume_ml=None, brain_mask=None,
                          max_outside_fraction=None, device="cpu", progress: bool = True) -> MaskBank:
    """The :class:`MaskBank` of masks given as arrays: what :func:`load_mask_bank` does after reading files.

    Args:
        items: sequence of ``(name, where, load)``: ``name`` (a file name) decides the split and names the
            mask in the bank, ``where`` (a path) names it in errors, ``load()`` returns ``(data, affine)``
            and is called only for masks in ``split``.
        Others: as for :func:`load_mask_bank`.

    Raises:
        ValueError: as for :func:`load_mask_bank`.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"`threshold` must be in [0, 1), got {threshold}")
    like_shape = tuple(int(s) for s in like_shape)
    like_affine = np.asarray(like_affine, dtype=np.float64)
    if brain_mask is not None:
        brain_mask = torch.as_tensor(np.asarray(brain_mask) if not torch.is_tensor(brain_mask) else brain_mask)
        if tuple(brain_mask.shape) != like_shape:
            raise ValueError(f"`brain_mask` must have shape {like_shape}, got {tuple(brain_mask.shape)}")
        brain_mask = brain_mask.bool().cpu()
    voxel_ml = abs(np.linalg.det(like_affine[:3, :3])) / 1000.0
    bank = MaskBank(like_shape, like_affine)
    drop = {k: [] for k in ("split", "empty", "outside_grid", "too_large", "outside_brain")}
    it = items
    if progress:
        from tqdm import tqdm
        it = tqdm(items, desc="lesion masks", unit="mask")
    for name, where, load in it:
        if split is not None and (holdout_bucket(name) < holdout_fraction) != (split == "holdout"):
            drop["split"].append(name)
            continue
        data, affine = load()
        if data.ndim != 3:
            raise ValueError(f"{where}: lesion mask must be 3D, got shape {data.shape}")
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        if lo < 0 or hi > 1 or np.isnan(data).any():
            raise ValueError(f"{where}: lesion mask values must lie in [0, 1] (binary), got range [{lo}, {hi}]")
        binary = data > threshold
        if not binary.any():
            drop["empty"].append(name)
            continue
        mask = torch.from_numpy(_resample_crop(binary, affine, like_shape, like_affine) > 0)
        n = int(mask.sum())
        if n == 0:
            drop["outside_grid"].append(name)
        elif max_volume_ml is not None and n * voxel_ml > max_volume_ml:
            drop["too_large"].append(name)
        elif (brain_mask is not None and max_outside_fraction is not None
              and float((mask & ~brain_mask).sum()) / n > max_outside_fraction):
            drop["outside_brain"].append(name)
        else:
            bank.add(mask, name, voxel_ml, device)
    bank.dropped = {k: v for k, v in drop.items() if v}
    for reason in ("empty", "outside_grid"):
        if drop[reason]:
            warnings.warn(f"{len(drop[reason])} lesion masks left out ({reason}): {drop[reason][:5]}"
                          + (" ..." if len(drop[reason]) > 5 else ""), stacklevel=3)
    if len(bank) == 0:
        counts = {k: len(v) for k, v in drop.items() if v}
        raise ValueError(f"no lesion mask left out of {len(items)} files after filtering: {counts}")
    return bank


def store_mask_items(store, pattern: str | None = None) -> list:
    """The lesion masks of a packed store as ``(name, where, load)`` items of :func:`mask_bank_from_arrays`.

    ``name`` is the source file's name (as recorded when packing), so a mask falls in the same split, and
    the bank in the same order, as when read from its folder; ``pattern`` (fnmatch, case-sensitive like a folder glob) keeps only the
    masks whose source file name matches.

    Args:
        store: a :class:`synthgen.data.store.PackedStore` or the path of one.

    Raises:
        FileNotFoundError: ``store`` is not a packed store.
    """
    if not hasattr(store, "lesions"):
        from ..data.store import open_store
        store = open_store(store)
    section, entries = store.lesions, store.index["sections"]["lesions"]
    items = []
    for i, key in enumerate(section.names):
        source = entries[key]["sources"][0]["path"]
        name = Path(source).name
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        where = f"{store.root / entries[key]['files']['data']} (packed from {source})"

        def load(i=i):
            item = section[i]
            return np.asarray(item.data), item.affine
        items.append((name, where, load))
    # the order of a folder's files: same bank indices, so the same masks drawn per key
    return sorted(items, key=lambda t: t[0])


def masks_from_tensor(masks: torch.Tensor, like_shape=None, like_affine=None, masks_affine=None,
                      threshold: float = 0.5, device=None) -> MaskBank:
    """A :class:`MaskBank` from an ``(N, D, H, W)`` or ``(N, 1, D, H, W)`` tensor of masks.

    Masks on another grid are resampled when both affines are given; empty masks are kept (they give
    lesion-free samples).

    Raises:
        ValueError: wrong tensor rank, or a grid mismatch without the affines to resample.
    """
    if not torch.is_tensor(masks) or masks.ndim not in (4, 5) or (masks.ndim == 5 and masks.shape[1] != 1):
        raise ValueError(f"`masks` must be a (N, D, H, W) or (N, 1, D, H, W) tensor, got "
                         f"{tuple(masks.shape) if torch.is_tensor(masks) else type(masks).__name__}")
    masks = masks.reshape(masks.shape[0], *masks.shape[-3:])
    src_shape = tuple(masks.shape[1:])
    like_shape = src_shape if like_shape is None else tuple(int(s) for s in like_shape)
    device = masks.device if device is None else device
    binary = masks.float() > threshold
    if like_shape != src_shape or (masks_affine is not None and like_affine is not None
                                   and not np.allclose(masks_affine, like_affine, atol=1e-5)):
        if masks_affine is None or like_affine is None:
            raise ValueError(f"`masks` grid {src_shape} differs from the tissue grid {like_shape}: pass "
                             "`masks_affine` and `like_affine` to resample by affine")
        binary = torch.stack([torch.from_numpy(_resample_crop(
            m.cpu().numpy(), np.asarray(masks_affine, np.float64), like_shape, np.asarray(like_affine, np.float64)
        ) > 0) for m in binary])
    affine = np.eye(4) if like_affine is None else np.asarray(like_affine, dtype=np.float64)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    bank = MaskBank(like_shape, affine)
    for i, m in enumerate(binary):
        bank.add(m, f"mask[{i}]", voxel_ml, device)
    return bank
